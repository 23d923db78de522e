"""Content-addressed cache of phase outputs (Phase-1 models, their evaluations, replay data, ...).

An artifact lives in `<cache_dir>/<kind>/<key>/`, where the key hashes the config subtree that
determines it and nothing else, so that a sweep over strategies builds its Phase-1 model once.
Two jobs that need the same artifact do not both build it: the builder holds a file lock,
builds into a temporary folder, writes `DONE` last and renames the folder into place. A folder
without `DONE` (left by a killed job) is never used: it is removed and rebuilt.

Artifacts verify themselves. `DONE` holds the artifact's manifest: every file's size and xxh3_64
checksum, computed before `DONE` is written. Every reuse checks the sizes and, with
`verify="checksum"` (the default, `paths.verify`), the checksums; with `verify="size"` only files up
to `CHEAP_BYTES` are checksummed (for slow shared filesystems: see the README's measured cost). A
process checksums an unchanged folder once (same sizes, mtimes and inodes: no second read). A damaged
artifact (a file truncated, replaced, scrambled, bit-flipped or missing, an unreadable manifest) is
named in a warning, moved aside to `<cache_dir>/<kind>/.damaged/<key>-<time>/` (kept for inspection,
never deleted by cft) and rebuilt, under the same lock that builds it.

An artifact from before manifests (an empty `DONE`) has nothing to compare with: it is checked by its
structure instead (every JSON and JSONL file parses, every safetensors header parses and its tensors
cover the file exactly, every .npy header matches its size), then adopted (its manifest written, so
later reuses check checksums); one that fails is damaged like any other. A bit flip inside the tensor
data of such an old artifact cannot be seen (there is no reference to compare with).

Trained artifacts survive a full or read-only cache disk. A build that trains (the Phase-1 model, MPD's
Phase-2-alone model, phase 0's base) returns a `Trained` (how to write its result into any folder)
instead of writing it: `cached` writes it, and when the cache refuses it (any writer's exception type:
cft.run.disk) keeps it, with its manifest, in a rescue place (`cft.run.disk.rescue`: the temporary
folder's `cft-rescue/<kind>-<key>`, then `paths.rescue_dir`), and stops with one line naming it (exit 1).
The next build of that artifact, in any job, verifies the rescued copy against its manifest and moves it
into the cache instead of training again.

`python -m cft.run.artifacts verify <cache_dir or artifact>` checks a cache by hand and prints the cost.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import struct
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from filelock import FileLock

from cft.errors import CftError
from cft.run import disk
from cft.training import distributed

log = logging.getLogger(__name__)

DONE = "DONE"
DAMAGED = ".damaged"
ALGORITHM = "xxh3_64"
MANIFEST_VERSION = 1
VERIFY_MODES = ("checksum", "size")
# With verify="size", files up to this size are still checksummed: JSON, tokenizers, replay data and
# embeddings cost microseconds, and a same-size scramble of metrics.json must not pass.
CHEAP_BYTES = 64 << 20
_CHUNK = 8 << 20


def key_of(spec: Any) -> str:
    """A short stable hash of a JSON-able spec (dict key order does not matter)."""
    blob = json.dumps(spec, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def is_complete(path: Path) -> bool:
    return (Path(path) / DONE).exists()


# ---------------------------------------------------------------- manifests


def manifest_digest(path: str | Path) -> str | None:
    """A digest of the manifest of the artifact that holds `path` (the folder itself or one of its two
    parents): it changes whenever a rebuild writes other bytes, so what is keyed by it (an evaluation)
    describes the exact model it scored. None outside the cache or for an artifact from before manifests."""
    folder = Path(path)
    for candidate in (folder, *list(folder.parents)[:2]):
        done = candidate / DONE
        if done.is_file():
            try:
                return key_of(json.loads(done.read_text())["files"])
            except (OSError, ValueError, KeyError, TypeError):
                return None
    return None


def checksum(path: str | Path) -> str:
    """The xxh3_64 checksum of a file (hex), read in 8 MiB chunks."""
    import xxhash

    digest = xxhash.xxh3_64()
    buf = bytearray(_CHUNK)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buf):
            digest.update(view[:n])
    return digest.hexdigest()


def _files(folder: Path) -> Iterable[tuple[str, Path]]:
    """(relative POSIX path, path) of every regular file of an artifact folder but DONE."""
    for path in sorted(folder.rglob("*")):
        if path.is_file() and not path.is_symlink():
            rel = path.relative_to(folder).as_posix()
            if rel != DONE:
                yield rel, path


def manifest_of(folder: str | Path) -> dict[str, Any]:
    """The manifest of a finished folder: every file's size and checksum (DONE itself left out)."""
    files = {rel: {"size": path.stat().st_size, ALGORITHM: checksum(path)} for rel, path in _files(Path(folder))}
    return {"manifest": MANIFEST_VERSION, "algorithm": ALGORITHM, "files": files}


def _write_done(folder: Path, manifest: dict[str, Any]) -> None:
    """DONE, holding the manifest, written atomically (a reader sees the old DONE or the new one)."""
    tmp = folder / f".{DONE}.tmp"
    tmp.write_text(json.dumps(manifest, indent=1, sort_keys=True))
    os.replace(tmp, folder / DONE)


@dataclass
class Verdict:
    """What `verify` found: `problems` (empty: sound), whether the artifact predates manifests, and the cost."""

    problems: list[str] = field(default_factory=list)
    legacy: bool = False
    files: int = 0
    bytes_total: int = 0
    bytes_hashed: int = 0
    unhashed: int = 0  # files whose checksum was skipped (verify="size": large files)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.problems


# A process checksums an unchanged folder once: path -> fingerprint (size, mtime, inode of every file)
# of the last sound verification. Sizes are compared on every call; a rewrite changes the fingerprint.
_VERIFIED: dict[str, tuple] = {}


def _fingerprint(folder: Path) -> tuple:
    out = []
    for rel, path in [(DONE, folder / DONE), *_files(folder)]:
        st = path.stat()
        out.append((rel, st.st_size, st.st_mtime_ns, st.st_ino))
    return tuple(out)


def verify(folder: str | Path, mode: str = "checksum") -> Verdict:
    """Check a finished artifact folder against the manifest in its DONE (see the module docstring)."""
    if mode not in VERIFY_MODES:
        raise CftError(f"paths.verify={mode!r} is not one of {', '.join(VERIFY_MODES)}")
    folder = Path(folder)
    start = time.perf_counter()
    verdict = Verdict()
    try:
        text = (folder / DONE).read_text(encoding="utf-8", errors="replace")
        fingerprint = _fingerprint(folder)
    except OSError as exc:
        verdict.problems.append(f"cannot read the folder ({exc.strerror or exc})")
        return verdict
    if not text.strip():
        verdict.legacy = True
        verdict.problems = _structure_problems(folder, verdict)
    else:
        _check_manifest(folder, text, mode, _VERIFIED.get(str(folder)) == fingerprint, verdict)
    verdict.seconds = time.perf_counter() - start
    if verdict.ok and not verdict.legacy and not verdict.unhashed:  # remembered only when every file was checksummed
        _VERIFIED[str(folder)] = fingerprint
    else:
        _VERIFIED.pop(str(folder), None)
    return verdict


def _check_manifest(folder: Path, text: str, mode: str, known_sound: bool, verdict: Verdict) -> None:
    try:
        manifest = json.loads(text)
        files = manifest["files"]
        if not isinstance(files, dict) or manifest.get("algorithm") != ALGORITHM:
            raise ValueError("unknown manifest format")
    except (ValueError, KeyError, TypeError) as exc:
        verdict.problems.append(f"{DONE}: the manifest cannot be read ({type(exc).__name__}: {str(exc)[:80]}); truncated?")
        return
    for rel, entry in sorted(files.items()):
        path = folder / rel
        if Path(rel).is_absolute() or ".." in Path(rel).parts:
            verdict.problems.append(f"{DONE}: the manifest names a path outside the folder ({rel})")
            continue
        if not path.is_file():
            verdict.problems.append(f"{rel}: missing")
            continue
        size = path.stat().st_size
        verdict.files += 1
        verdict.bytes_total += size
        if size != entry.get("size"):
            verdict.problems.append(f"{rel}: {size} bytes, the manifest says {entry.get('size')} (truncated or replaced)")
            continue
        if known_sound:
            continue
        if mode == "size" and size > CHEAP_BYTES:
            verdict.unhashed += 1
            continue
        verdict.bytes_hashed += size
        try:
            digest = checksum(path)
        except OSError as exc:
            verdict.problems.append(f"{rel}: cannot be read ({exc.strerror or exc})")
            continue
        if digest != entry.get(ALGORITHM):
            verdict.problems.append(f"{rel}: checksum {digest}, the manifest says {entry.get(ALGORITHM)} (contents changed)")


def _structure_problems(folder: Path, verdict: Verdict) -> list[str]:
    """Problems of an artifact without a manifest, judged by each file's own structure."""
    problems = []
    for rel, path in _files(folder):
        verdict.files += 1
        verdict.bytes_total += path.stat().st_size
        try:
            problem = structure_problem(path)
        except OSError as exc:
            problem = f"cannot be read ({exc.strerror or exc})"
        if problem:
            problems.append(f"{rel}: {problem}")
    return problems


def structure_problem(path: str | Path) -> str | None:
    """Why a file is not whole by its own format (JSON, JSONL, safetensors, .npy), or None."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".json":
        try:
            json.loads(path.read_bytes())
        except ValueError as exc:
            return f"not valid JSON ({str(exc)[:80]}); truncated?"
    elif suffix == ".jsonl":
        with open(path, encoding="utf-8", errors="strict") as f:
            for number, line in enumerate(f, 1):
                try:
                    if line.strip():
                        json.loads(line)
                except ValueError:
                    return f"line {number} is not valid JSON; truncated?"
    elif suffix == ".safetensors":
        return safetensors_problem(path)
    elif suffix == ".npy":
        import numpy as np

        try:
            array = np.load(path, mmap_mode="r", allow_pickle=False)
        except Exception as exc:  # numpy raises ValueError, OSError or EOFError on a damaged file
            return f"cannot be read as .npy ({type(exc).__name__}: {str(exc)[:80]}); truncated?"
        size = path.stat().st_size
        expected = getattr(array, "offset", 0) + array.nbytes
        if isinstance(array, np.memmap) and size != expected:
            return f"{size} bytes, its header describes {expected}; truncated?"
    return None


def safetensors_problem(path: str | Path) -> str | None:
    """Why a safetensors file cannot be whole (its header unreadable, or its tensors not covering the file
    exactly), or None. Reads the header only: cheap for any size."""
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            return f"{size} bytes: too short for a safetensors header; truncated?"
        (n,) = struct.unpack("<Q", head)
        if n > min(size - 8, 100 << 20):
            return f"the header length {n} does not fit the file ({size} bytes); truncated or not safetensors"
        try:
            header = json.loads(f.read(n))
        except ValueError:
            return "the header is not valid JSON; scrambled or not safetensors"
    if not isinstance(header, dict):
        return "the header is not a table of tensors"
    try:
        end = max((int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"), default=0)
    except (KeyError, TypeError, ValueError, IndexError):
        return "the header's tensor offsets cannot be read; scrambled?"
    if 8 + n + end != size:
        return f"{size} bytes, its header describes {8 + n + end}; truncated?"
    return None


def _set_aside(root: Path, final: Path, key: str) -> Path:
    """Move a damaged artifact out of the way (kept for inspection), returning where it went."""
    shelf = root / DAMAGED
    shelf.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%S")
    dest = shelf / f"{key}-{stamp}"
    n = 1
    while dest.exists():
        n += 1
        dest = shelf / f"{key}-{stamp}-{n}"
    os.replace(final, dest)
    _VERIFIED.pop(str(final), None)
    return dest


# ---------------------------------------------------------------- the cache


@dataclass
class Trained:
    """What a build that trains returns instead of writing its result: `write(folder)` writes it into any
    folder (the cache's, or a rescue place when the cache refuses it); `bytes`, about what it takes (the
    free space a rescue place must have; 0: not checked)."""

    write: Callable[[Path], None]
    bytes: int = 0


def rescue_places(kind: str, key: str, second: str | Path | None) -> list[Path]:
    """Where a trained artifact goes when the cache refuses it (`cft.run.disk.rescue_places`). Named by kind and
    key alone: the key says what it is, so any cache that needs that artifact may take it."""
    return disk.rescue_places(f"{kind}-{key}", second)


def cached(
    cache_dir: str | Path,
    kind: str,
    spec: Any,
    build: Callable[[Path], Trained | None],
    *,
    collective: bool = False,
    verify: str = "checksum",
    rescue_dir: str | Path | None = None,
) -> Path:
    """Return the folder of the artifact `kind` for `spec`, building it with `build(tmp_dir)` if needed.

    `build` writes everything into the folder it is given, or (a build that trains) returns a `Trained`
    that `cached` writes there, rescuing it when the disk refuses (see the module docstring; `rescue_dir`
    is the second rescue place, `paths.rescue_dir`); it must not write `DONE`. A finished artifact is
    verified before it is reused (`verify`: "checksum" or "size", see the module docstring).

    With several ranks (cft.training.distributed), rank 0 alone takes the lock, verifies and decides. By
    default it alone builds and the other ranks wait for its decision. With `collective=True` (e.g.
    training a model with every rank) all ranks call `build(tmp_dir)` with the same folder, and only
    rank 0 may write into it.
    """
    if verify not in VERIFY_MODES:
        raise CftError(f"paths.verify={verify!r} is not one of {', '.join(VERIFY_MODES)}")
    key = key_of(spec)
    root = Path(cache_dir) / kind
    final = root / key
    if distributed.world_size() > 1:
        token = distributed.job_token()  # collective: every rank calls cached() in the same order
        if not distributed.is_main():
            return _follow(root, final, kind, key, token, build, collective)
        marker = root / f".{key}.building-{token}"
        try:
            path = _lead(root, final, kind, key, spec, build, marker, verify, rescue_dir)
        finally:
            marker.unlink(missing_ok=True)
        # The other ranks use the artifact only once rank 0 has verified (or rebuilt) it: a damaged folder
        # with DONE must not look finished to them while rank 0 sets it aside. The marker stays (rank 0 may
        # end before a follower's next look); markers older than a day are removed here.
        (root / f".{key}.ready-{token}").write_text("")
        for old in root.glob(f".{key}.ready-*"):
            try:
                if time.time() - old.stat().st_mtime > 86400:
                    old.unlink()
            except OSError:  # another job removed it first
                pass
        return path
    return _lead(root, final, kind, key, spec, build, None, verify, rescue_dir)


def _lead(
    root: Path, final: Path, kind: str, key: str, spec: Any, build, marker: Path | None, mode: str, rescue_dir=None
) -> Path:
    seen_complete = is_complete(final)
    if seen_complete:
        verdict = verify(final, mode)
        if verdict.ok and not verdict.legacy:
            log.info("Reusing %s artifact %s", kind, final)
            return final
    root.mkdir(parents=True, exist_ok=True)
    with FileLock(str(root / f"{key}.lock")):
        if is_complete(final):
            verdict = verify(final, mode)
            if verdict.ok:
                if verdict.legacy:
                    _write_done(final, manifest_of(final))
                    log.info(
                        "Adopted %s artifact %s from before manifests: its structure is sound; manifest written", kind, final
                    )
                note = "" if seen_complete else " (built by another job)"
                log.info("Reusing %s artifact %s%s", kind, final, note)
                return final
            dest = _set_aside(root, final, key)
            log.warning(
                "Damaged %s artifact %s: %s. Moved to %s (kept for inspection); rebuilding it.",
                kind,
                final,
                "; ".join(verdict.problems[:5])
                + (f"; and {len(verdict.problems) - 5} more" if len(verdict.problems) > 5 else ""),
                dest,
            )
        elif final.exists():
            log.warning("Removing incomplete %s artifact %s (no %s marker)", kind, final, DONE)
            shutil.rmtree(final)
        for stale in root.glob(f".{key}.tmp-*"):  # left by a killed builder (we hold the lock)
            shutil.rmtree(stale, ignore_errors=True)
        tmp = root / f".{key}.tmp-{os.getpid()}"
        places = rescue_places(kind, key, rescue_dir)
        if _take_rescued(final, tmp, kind, places, mode):
            return final  # before the marker: this job's other ranks wait for it, as for a reuse
        tmp.mkdir(parents=True)
        if marker is not None:
            marker.write_text(str(tmp))  # tells this job's other ranks to build with us, in tmp
        log.info("Building %s artifact %s", kind, final)
        try:
            made = build(tmp)
            if isinstance(made, Trained):
                _write_trained(made, tmp, final, kind, spec, places)
            else:
                _seal(tmp, spec)
            os.replace(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)  # never leave a half artifact behind
            raise
        _VERIFIED[str(final)] = _fingerprint(final)  # just written and checksummed: no second read in this process
    return final


def _seal(folder: Path, spec: Any) -> None:
    """spec.json, then DONE with the manifest: an artifact's folder made complete."""
    (folder / "spec.json").write_text(json.dumps(spec, indent=2, sort_keys=True, default=str))
    _write_done(folder, manifest_of(folder))  # checksums of what was just written (still in the page cache)


def _write_trained(made: Trained, tmp: Path, final: Path, kind: str, spec: Any, places: list[Path]) -> None:
    """Write a trained result into the cache's `tmp`, sealed; when the disk refuses it, keep it (sealed: the
    next build verifies the copy against its manifest) in the first rescue place that takes it and stop with
    one line (disk.DiskError) naming it."""

    def write(folder: Path) -> None:
        made.write(folder)
        _seal(folder, spec)

    try:
        write(tmp)
        return
    except Exception as exc:
        cause = disk.reason(exc)
        if cause is None:
            raise
    shutil.rmtree(tmp, ignore_errors=True)  # what the half write took, before the rescue looks for space
    kept, refused = disk.rescue(write, made.bytes, places)
    why = f" ({'; '.join(refused)})" if refused else ""
    raise disk.DiskError(
        f"could not write the {kind} artifact {final}: {cause}. "
        + (
            f"What it trained is kept in {kept}{why}; free space or fix the permissions and run the same command "
            "again: it takes it from there without training again."
            if kept
            else f"Keeping it elsewhere failed too{why}: its training is lost. Set paths.rescue_dir to a folder with space."
        )
    ) from None


def _take_rescued(final: Path, tmp: Path, kind: str, places: list[Path], mode: str) -> bool:
    """Move a rescued copy of this artifact (verified against its manifest) into the cache instead of building
    it; False when there is none. A damaged copy is named in a warning and removed (it is built again)."""
    for place in places:
        if not (place / DONE).is_file():
            continue
        verdict = verify(place, mode)
        if not verdict.ok or verdict.legacy:
            log.warning(
                "The rescued %s artifact %s is damaged (%s); removing it and building the artifact again",
                kind,
                place,
                "; ".join(verdict.problems[:3]) or "no manifest",
            )
            shutil.rmtree(place, ignore_errors=True)
            continue
        try:
            shutil.copytree(place, tmp)  # DONE (the verified manifest) included
            os.replace(tmp, final)
        except Exception as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            cause = disk.reason(exc)
            if cause is None:
                raise
            raise disk.DiskError(
                f"could not write the {kind} artifact {final}: {cause}. It is still kept in {place}; free space or "
                "fix the permissions and run the same command again."
            ) from None
        log.warning(
            "The %s artifact was built before but the cache refused it: taking it from %s (verified) instead of "
            "building it again",
            kind,
            place,
        )
        for other in places:
            shutil.rmtree(other, ignore_errors=True)
        return True
    return False


def _follow(root: Path, final: Path, kind: str, key: str, token: str, build, collective: bool) -> Path:
    """A rank other than 0: wait for rank 0's verified artifact, joining its build when it is collective."""
    marker = root / f".{key}.building-{token}"
    ready = root / f".{key}.ready-{token}"
    joined = False
    while True:
        state = distributed.wait_until(
            lambda: "done" if ready.exists() else ("build" if marker.exists() else None), f"{kind} artifact {key}"
        )
        if state == "done":
            return final
        if collective and not joined:
            try:
                tmp = Path(marker.read_text())
            except FileNotFoundError:  # rank 0 finished between our two looks
                continue
            build(tmp)
            joined = True
        else:
            time.sleep(1.0)


class Cache:
    """The artifact cache of a run (`paths.cache_dir`): the one way to make a cached thing, for the
    recipe and for strategies alike (`ctx.artifact(kind, spec, build)`). `verify` is `paths.verify`."""

    def __init__(self, root: str | Path, verify: str = "checksum", rescue_dir: str | Path | None = None):
        self.root = Path(root)
        self.verify = str(verify)
        self.rescue_dir = rescue_dir  # paths.rescue_dir: the second place for a trained artifact the cache refuses

    def artifact(self, kind: str, spec: Any, build: Callable[[Path], Trained | None], *, collective: bool = False) -> Path:
        """The folder of artifact `kind` for `spec` (see `cached`)."""
        return cached(self.root, kind, spec, build, collective=collective, verify=self.verify, rescue_dir=self.rescue_dir)

    def key(self, spec: Any) -> str:
        return key_of(spec)


# ---------------------------------------------------------------- checking a cache by hand


def _artifact_folders(path: Path) -> list[Path]:
    if (path / DONE).is_file():
        return [path]
    return sorted(
        done.parent for done in path.rglob(DONE) if DAMAGED not in done.parent.parts and not done.parent.name.startswith(".")
    )


def _evict(folder: Path) -> None:
    """Drop a folder's files from the page cache (to measure a cold read); best effort."""
    for _, path in _files(folder):
        try:
            fd = os.open(path, os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)
        except (OSError, AttributeError):
            pass


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m cft.run.artifacts",
        description="Verify cached artifacts against their manifests and print what it cost.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    check = sub.add_parser("verify", help="verify every artifact under a cache folder (or one artifact)")
    check.add_argument("path", type=Path)
    check.add_argument("--mode", choices=VERIFY_MODES, default="checksum")
    check.add_argument("--cold", action="store_true", help="drop the files from the page cache first (a cold read)")
    args = parser.parse_args(argv)
    folders = _artifact_folders(args.path)
    damaged = 0
    for folder in folders:
        if args.cold:
            _evict(folder)
        verdict = verify(folder, args.mode)
        rate = verdict.bytes_hashed / verdict.seconds / 1e9 if verdict.seconds and verdict.bytes_hashed else 0.0
        state = "ok" if verdict.ok else "DAMAGED"
        state += " (no manifest: structure checked)" if verdict.legacy else ""
        print(
            f"{state:8s} {folder}  {verdict.files} files, {verdict.bytes_total / 1e6:.1f} MB, "
            f"{verdict.bytes_hashed / 1e6:.1f} MB checksummed in {verdict.seconds:.3f} s ({rate:.2f} GB/s)"
        )
        for problem in verdict.problems:
            print(f"         {problem}")
        damaged += not verdict.ok
    print(f"{len(folders)} artifact(s), {damaged} damaged")
    return 1 if damaged else 0


if __name__ == "__main__":
    raise SystemExit(main())
