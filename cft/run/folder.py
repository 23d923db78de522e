"""A run folder: resolved config, run_meta.json, metrics.json, the final checkpoint, and DONE last.

Folders are named by the run's choices, not by time, so rerunning a command finds its own
folder (and every rank of a multi-process run computes the same one; rank 0 alone writes it): a finished run (DONE present) is skipped, an unfinished one resumes. A folder that holds a
run with a different config is refused rather than overwritten or mixed.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any, Mapping

import yaml

from cft.errors import ConfigError

# Keys that may differ between two invocations of the same run without changing its results.
VOLATILE = ("tracking", "paths", "eval.batch_size")

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
    for key in VOLATILE:
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
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5).stdout.strip() or None
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


def _main() -> bool:
    from cft.training import distributed

    return distributed.is_main()


def latest_run(output_root: str | Path) -> Path | None:
    """The most recently finished run folder under output_root (by its DONE marker's time), or None.
    Cached artifacts also end with DONE; a run folder is the one with run_meta.json beside it."""
    root = Path(output_root)
    if not root.is_dir():
        return None
    done = [d for d in root.rglob("DONE") if (d.parent / "run_meta.json").is_file()]
    return max(done, key=lambda d: (d.stat().st_mtime, str(d))).parent if done else None


class RunDir:
    def __init__(self, path: str | Path):
        self.path = Path(path)

    @property
    def checkpoint(self) -> Path:
        return self.path / "checkpoint"

    def is_done(self) -> bool:
        return (self.path / "DONE").exists()

    def check_config(self, resolved: Mapping[str, Any]) -> None:
        """Refuse to reuse a folder that holds a finished run of another config."""
        old_file = self.path / "config.yaml"
        if not old_file.exists():
            return
        old = yaml.safe_load(old_file.read_text())
        diffs = _diff(comparable(old), comparable(resolved))
        if diffs and self.is_done():
            raise ConfigError(
                f"{self.path} already holds a finished run with a different config ("
                + "; ".join(diffs[:5]) + (" ..." if len(diffs) > 5 else "")
                + "). Choose another sweep_id=... or remove the folder."
            )
        if diffs:
            # An unfinished run of another config: its checkpoints must not be resumed.
            import shutil

            from cft.training import distributed

            if distributed.is_main():
                shutil.rmtree(self.path / "checkpoints", ignore_errors=True)
            distributed.barrier()

    # Writers are no-ops on ranks other than 0: every rank of a multi-process run holds a RunDir.

    def start(self, resolved: Mapping[str, Any], meta: Mapping[str, Any]) -> None:
        if not _main():
            return
        self.path.mkdir(parents=True, exist_ok=True)
        (self.path / "config.yaml").write_text(yaml.safe_dump(json.loads(json.dumps(resolved, default=str)), sort_keys=False, allow_unicode=True))
        full_meta = {**meta, "git_sha": git_sha(), "versions": versions(), "host": platform.node()}
        self.write_json("run_meta.json", full_meta)

    def update_meta(self, **values: Any) -> None:
        """Add facts learnt during the run (e.g. where its Phase-1 model is) to run_meta.json."""
        if not _main():
            return
        meta = json.loads((self.path / "run_meta.json").read_text())
        self.write_json("run_meta.json", {**meta, **values})

    def write_json(self, name: str, obj: Any) -> None:
        if not _main():
            return
        tmp = self.path / f".{name}.tmp"
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False, default=str))
        os.replace(tmp, self.path / name)

    def metrics(self) -> dict[str, Any]:
        f = self.path / "metrics.json"
        return json.loads(f.read_text()) if f.exists() else {}

    def mark_done(self) -> None:
        if not _main():
            return
        (self.path / "DONE").write_text("")
