"""Content-addressed cache of phase outputs (Phase-1 models, their evaluations, replay data, ...).

An artifact lives in `<cache_dir>/<kind>/<key>/`, where the key hashes the config subtree that
determines it and nothing else, so that a sweep over strategies builds its Phase-1 model once.
Two jobs that need the same artifact do not both build it: the builder holds a file lock,
builds into a temporary folder, writes `DONE` last and renames the folder into place. A folder
without `DONE` (left by a killed job) is never used: it is removed and rebuilt.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from filelock import FileLock

from cft.training import distributed

log = logging.getLogger(__name__)

DONE = "DONE"


def key_of(spec: Any) -> str:
    """A short stable hash of a JSON-able spec (dict key order does not matter)."""
    blob = json.dumps(spec, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def is_complete(path: Path) -> bool:
    return (Path(path) / DONE).exists()


def cached(cache_dir: str | Path, kind: str, spec: Any, build: Callable[[Path], None], *, collective: bool = False) -> Path:
    """Return the folder of the artifact `kind` for `spec`, building it with `build(tmp_dir)` if needed.

    `build` writes everything into the folder it is given; it must not write `DONE`.

    With several ranks (cft.training.distributed), rank 0 alone takes the lock and decides. By default it
    alone builds and the other ranks wait for `DONE`. With `collective=True` (e.g. training a model
    with every rank) all ranks call `build(tmp_dir)` with the same folder, and only rank 0 may
    write into it.
    """
    key = key_of(spec)
    root = Path(cache_dir) / kind
    final = root / key
    if distributed.world_size() > 1:
        token = distributed.job_token()  # collective: every rank calls cached() in the same order
        if not distributed.is_main():
            return _follow(root, final, kind, key, token, build, collective)
        marker = root / f".{key}.building-{token}"
        try:
            return _lead(root, final, kind, key, spec, build, marker)
        finally:
            marker.unlink(missing_ok=True)
    return _lead(root, final, kind, key, spec, build, None)


def _lead(root: Path, final: Path, kind: str, key: str, spec: Any, build, marker: Path | None) -> Path:
    if is_complete(final):
        log.info("Reusing %s artifact %s", kind, final)
        return final
    root.mkdir(parents=True, exist_ok=True)
    with FileLock(str(root / f"{key}.lock")):
        if is_complete(final):  # another job built it while we waited for the lock
            log.info("Reusing %s artifact %s (built by another job)", kind, final)
            return final
        if final.exists():
            log.warning("Removing incomplete %s artifact %s (no %s marker)", kind, final, DONE)
            shutil.rmtree(final)
        for stale in root.glob(f".{key}.tmp-*"):  # left by a killed builder (we hold the lock)
            shutil.rmtree(stale, ignore_errors=True)
        tmp = root / f".{key}.tmp-{os.getpid()}"
        tmp.mkdir(parents=True)
        if marker is not None:
            marker.write_text(str(tmp))  # tells this job's other ranks to build with us, in tmp
        log.info("Building %s artifact %s", kind, final)
        try:
            build(tmp)
            (tmp / "spec.json").write_text(json.dumps(spec, indent=2, sort_keys=True, default=str))
            (tmp / DONE).write_text("")
            os.replace(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)  # never leave a half artifact behind
            raise
    return final


def _follow(root: Path, final: Path, kind: str, key: str, token: str, build, collective: bool) -> Path:
    """A rank other than 0: wait for rank 0's artifact, joining its build when it is collective."""
    marker = root / f".{key}.building-{token}"
    joined = False
    while True:
        state = distributed.wait_until(
            lambda: "done" if is_complete(final) else ("build" if marker.exists() else None), f"{kind} artifact {key}"
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
    recipe and for strategies alike (`ctx.artifact(kind, spec, build)`)."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    def artifact(self, kind: str, spec: Any, build: Callable[[Path], None], *, collective: bool = False) -> Path:
        """The folder of artifact `kind` for `spec` (see `cached`)."""
        return cached(self.root, kind, spec, build, collective=collective)

    def key(self, spec: Any) -> str:
        return key_of(spec)
