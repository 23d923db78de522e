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
from pathlib import Path
from typing import Any, Callable

from filelock import FileLock

log = logging.getLogger(__name__)

DONE = "DONE"


def key_of(spec: Any) -> str:
    """A short stable hash of a JSON-able spec (dict key order does not matter)."""
    blob = json.dumps(spec, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def is_complete(path: Path) -> bool:
    return (Path(path) / DONE).exists()


def cached(cache_dir: str | Path, kind: str, spec: Any, build: Callable[[Path], None]) -> Path:
    """Return the folder of the artifact `kind` for `spec`, building it with `build(tmp_dir)` if needed.

    `build` writes everything into the folder it is given; it must not write `DONE`.
    """
    key = key_of(spec)
    root = Path(cache_dir) / kind
    final = root / key
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
        tmp = root / f".{key}.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        log.info("Building %s artifact %s", kind, final)
        build(tmp)
        (tmp / "spec.json").write_text(json.dumps(spec, indent=2, sort_keys=True, default=str))
        (tmp / DONE).write_text("")
        os.replace(tmp, final)
    return final
