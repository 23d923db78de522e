"""A run folder: resolved config, run_meta.json, metrics.json, the final checkpoint, and DONE last.

Folders are named by the run's choices, not by time, so rerunning a command finds its own
folder (and every rank of a multi-process run computes the same one; rank 0 alone writes it): a
finished run (DONE present) is skipped, an unfinished one resumes. A folder that holds a run with
a different config is refused rather than overwritten or mixed.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
from collections.abc import Mapping
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path
from typing import Any

import yaml

from cft.errors import ConfigError
from cft.run import layout
from cft.run.layout import latest_run  # noqa: F401 (re-exported: where run folders are found)

PACKAGES = ("torch", "transformers", "accelerate", "datasets", "peft", "deepspeed", "lm_eval", "hydra-core", "wandb", "cft")


def _drop(cfg: Mapping[str, Any], dotted: str) -> None:
    head, _, rest = dotted.partition(".")
    if head in cfg:
        if rest:
            if isinstance(cfg[head], dict):
                _drop(cfg[head], rest)
        else:
            del cfg[head]


def comparable(cfg: Mapping[str, Any]) -> dict:
    out = json.loads(json.dumps(cfg, default=str))
    for key in layout.RESULT_NEUTRAL:  # settings that cannot change a result
        _drop(out, key)
    return out


def _diff(a: Any, b: Any, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        keys = sorted(set(a) | set(b))
        return [d for k in keys for d in _diff(a.get(k), b.get(k), f"{prefix}{k}.")]
    return [] if a == b else [f"{prefix.rstrip('.')}: {a!r} -> {b!r}"]


def git_sha() -> str | None:
    try:
        here = Path(__file__).resolve().parent
        return (
            subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5).stdout.strip()
            or None
        )
    except Exception:
        return None


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


def rescue_dirs(run_path: str | Path, second: str | Path | None) -> list[Path]:
    """Where a trained Phase-2 model goes when its run folder cannot take it (full or read-only disk):
    outside the output root, named by the run folder, so the same command finds it again. The places in
    the order they are tried: the temporary folder's, then `paths.rescue_dir`'s
    (for when the temporary folder is on the same full or read-only filesystem): `cft.run.disk.rescue_places`."""
    from cft.run.artifacts import key_of
    from cft.run.disk import rescue_places

    return rescue_places(key_of(str(Path(run_path).resolve())), second)


def _main() -> bool:
    from cft.training import distributed

    return distributed.is_main()


class RunDir:
    def __init__(self, path: str | Path):
        self.path = Path(path)

    @property
    def checkpoint(self) -> Path:
        return self.path / layout.CHECKPOINT

    def is_done(self) -> bool:
        return (self.path / layout.DONE).exists()

    def check_config(self, resolved: Mapping[str, Any]) -> None:
        """Refuse to reuse a folder that holds a finished run of another config. With several ranks rank 0
        alone calls it (under the run lock) and tells the others: they could read config.yaml half-written."""
        old_file = self.path / layout.CONFIG
        if not old_file.exists():
            return
        try:
            old = yaml.safe_load(old_file.read_text())
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(
                f"{old_file} cannot be read ({type(exc).__name__}), so this folder's run cannot be compared with this "
                "config: move the folder away or choose another sweep_id=..."
            ) from None
        diffs = _diff(comparable(old), comparable(resolved))
        if diffs and self.is_done():
            raise ConfigError(
                f"{self.path} already holds a finished run with a different config ("
                + "; ".join(diffs[:5])
                + (" ..." if len(diffs) > 5 else "")
                + "). Choose another sweep_id=... or remove the folder."
            )
        if diffs:
            # An unfinished run of another config: its checkpoints, its saved or rescued final model must not be reused.
            import shutil

            shutil.rmtree(self.path / layout.CHECKPOINTS, ignore_errors=True)
            shutil.rmtree(self.checkpoint, ignore_errors=True)
            for place in rescue_dirs(self.path, (resolved.get("paths") or {}).get("rescue_dir")):
                shutil.rmtree(place, ignore_errors=True)

    # Writers are no-ops on ranks other than 0: every rank of a multi-process run holds a RunDir.

    def start(self, resolved: Mapping[str, Any], meta: Mapping[str, Any]) -> None:
        if not _main():
            return
        with self._writing(self.path / layout.CONFIG):
            self.path.mkdir(parents=True, exist_ok=True)
            (self.path / layout.FAILED).unlink(missing_ok=True)  # this attempt starts afresh
            (self.path / layout.CONFIG).write_text(
                yaml.safe_dump(json.loads(json.dumps(resolved, default=str)), sort_keys=False, allow_unicode=True)
            )
        full_meta = {**meta, "git_sha": git_sha(), "versions": versions(), "host": platform.node()}
        self.write_json(layout.META, full_meta)

    def update_meta(self, **values: Any) -> None:
        """Add facts learnt during the run (e.g. where its Phase-1 model is) to run_meta.json."""
        if not _main():
            return
        meta = json.loads((self.path / layout.META).read_text())
        self.write_json(layout.META, {**meta, **values})

    def write_json(self, name: str, obj: Any) -> None:
        if not _main():
            return
        tmp = self.path / f".{name}.tmp"
        with self._writing(self.path / name, tmp):
            tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False, default=str))
            os.replace(tmp, self.path / name)

    @contextmanager
    def _writing(self, path: Path, tmp: Path | None = None):
        """A full or read-only disk while writing a run file: CftError naming the file and what the run
        folder keeps (the old file stays whole: files are written beside it and renamed into place)."""
        try:
            yield
        except OSError as exc:
            if tmp is not None:
                try:
                    tmp.unlink(missing_ok=True)
                except OSError:
                    pass
            from cft.run.disk import DiskError

            raise DiskError(
                f"could not write {path}: {exc.strerror or exc}. Kept: {self.kept()}; shared artifacts in the cache "
                "are not affected. Free space or fix the permissions, then run the same command again: it resumes this cell."
            ) from None

    def kept(self) -> str:
        """What the run folder holds that a rerun reuses or a user may want (for messages after a failure)."""
        kept = []
        if self.checkpoint.is_dir():
            kept.append(f"the final model in {self.checkpoint}")
        resumable = self.path / layout.CHECKPOINTS
        if resumable.is_dir() and any(resumable.rglob(layout.DONE)):
            kept.append(f"resumable checkpoints in {resumable}")
        if (self.path / layout.METRICS).is_file():
            kept.append(f"the metrics written before, {self.path / layout.METRICS}")
        return "; ".join(kept) or f"nothing of this cell's training in {self.path}"

    def metrics(self) -> dict[str, Any]:
        """metrics.json ({} when missing or unreadable: the file is the record, and a damaged one is not ours to fix)."""
        f = self.path / layout.METRICS
        if not f.exists():
            return {}
        try:
            return json.loads(f.read_text())
        except (OSError, ValueError) as exc:
            import logging

            logging.getLogger(__name__).warning("%s cannot be read (%s)", f, exc)
            return {}

    def lock(self) -> RunLock:
        """Hold this run folder for this process (see RunLock); ConfigError naming the holder if another has it."""
        return RunLock(self.path).acquire()

    def mark_done(self) -> None:
        if not _main():
            return
        with self._writing(self.path / layout.DONE):
            (self.path / layout.DONE).write_text("")


class RunLock:
    """One process per cell: the process that runs a cell holds `<run>/.run.lock` (an OS file lock, so
    it is released when the process dies, even by SIGKILL) and writes who it is beside it. A second
    process on the same cell (the same command started twice, or twice by a scheduler) stops at once
    with a message naming the holder, before it writes anything into the folder."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._lock = None

    @property
    def holder_file(self) -> Path:
        return self.path / f"{layout.LOCK}.holder"

    def _holder(self) -> str:
        try:
            holder = json.loads(self.holder_file.read_text())
            return f"process {holder.get('pid')} on {holder.get('host')} (since {holder.get('since')})"
        except (OSError, ValueError, AttributeError):
            return "another process"

    def held_by(self) -> str | None:
        """Who holds this cell now (another process), or None when nobody does. Creates nothing."""
        from filelock import FileLock, Timeout

        if not (self.path / layout.LOCK).exists() or self._lock is not None:
            return None
        probe = FileLock(str(self.path / layout.LOCK))
        try:
            probe.acquire(timeout=0)
        except Timeout:
            return self._holder()
        except OSError:
            return None
        probe.release()
        return None

    def _busy(self, who: str) -> ConfigError:
        return ConfigError(
            f"{who} is running this cell ({self.path}); not starting it twice. "
            "When that process ends, the same command skips the cell if it finished and resumes it if not."
        )

    def check_free(self) -> None:
        """ConfigError naming the holder when another process holds this cell (creates nothing)."""
        who = self.held_by()
        if who:
            raise self._busy(who)

    def acquire(self) -> RunLock:
        from filelock import FileLock, Timeout

        self.path.mkdir(parents=True, exist_ok=True)
        lock = FileLock(str(self.path / layout.LOCK))
        try:
            lock.acquire(timeout=0)
        except Timeout:
            raise self._busy(self._holder()) from None
        self._lock = lock
        import time

        holder = {"pid": os.getpid(), "host": platform.node(), "since": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        try:
            self.holder_file.write_text(json.dumps(holder))
        except OSError:  # a read-only folder still gets the lock; the holder is just not named
            pass
        return self

    def release(self) -> None:
        """Never raises: it runs in cleanup, after a full or read-only disk may have failed the run, and
        must not bury that message (the OS lock goes with the process anyway; a stale holder file is harmless)."""
        if self._lock is None:
            return
        try:
            self.holder_file.unlink(missing_ok=True)
        except OSError:
            pass
        try:
            self._lock.release()
        except OSError:
            pass
        self._lock = None
