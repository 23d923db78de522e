"""Disk faults: telling a full or read-only disk from a bug, whatever type the writer raised.

A full disk does not always raise OSError: safetensors raises its own SafetensorError ("No space
left on device"), torch.save a RuntimeError from inline_container.cc ("file write failed"). Every
place that writes trained work asks `reason(exc)`: a short cause for a disk fault, None for anything
else (which stays a bug with its traceback). `DiskError` is the one-line failure that follows
(exit 1: the inputs were fine, the machine refused).

Trained work a disk refused is not thrown away: `rescue(write, need, places)` writes it into the first
rescue place that takes it (outside the output root and the cache: the temporary folder's `cft-rescue`,
then `paths.rescue_dir`; `rescue_places` names them), so the same command continues without training
again. The final Phase-2 model (cft.recipes.train) and every trained cached artifact (the Phase-1 model,
phase 0's base: cft.run.artifacts) go through it.
"""

from __future__ import annotations

import errno
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from cft.errors import CftError

# errno -> the cause a message names
_ERRNOS = {
    errno.ENOSPC: "No space left on device",
    errno.EDQUOT: "Disk quota exceeded",
    errno.EROFS: "Read-only file system",
    errno.EACCES: "Permission denied",
    errno.EPERM: "Operation not permitted",
    errno.EIO: "Input/output error",
}
# What writers that do not raise OSError say (safetensors, torch's PytorchStreamWriter)
_TEXTS = {
    "no space left on device": "No space left on device",
    "disk quota exceeded": "Disk quota exceeded",
    "read-only file system": "Read-only file system",
    "permission denied": "Permission denied",
    "file write failed": "file write failed (a full disk?)",
    "pytorchstreamwriter failed": "file write failed (a full disk?)",
    "inline_container.cc": "file write failed (a full disk?)",  # torch.save's zip writer, past the end of the disk
    "basic_ios::clear: iostream error": "file write failed (a full disk?)",
}


class DiskError(CftError):
    """A disk refused trained work (full, read-only); the message says what was kept where."""

    exit_code = 1


def reason(exc: BaseException) -> str | None:
    """The cause when `exc` is a disk refusing a write (any writer's exception type), else None."""
    for current in _chain(exc):
        if isinstance(current, OSError) and current.errno in _ERRNOS:
            return _ERRNOS[current.errno]
        if isinstance(current, (OSError, RuntimeError)) or type(current).__name__ == "SafetensorError":
            text = str(current).lower()
            if "pytorchstreamreader" in text:  # the same zip code reading a damaged file: not a disk refusing writes
                continue
            for needle, cause in _TEXTS.items():
                if needle in text:
                    return cause
    return None


def _chain(exc: BaseException):
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def free_bytes(folder: str | Path) -> int:
    """Free space where `folder` is (or would be made); 0 when nothing of it can be read."""
    path = Path(folder).absolute()
    while not path.exists() and path.parent != path:
        path = path.parent
    try:
        return shutil.disk_usage(path).free
    except OSError:
        return 0


def model_bytes(model) -> int:
    """What saving `model` takes on disk, about (its tensors, plus a margin for the tokenizer and config)."""
    try:
        tensors = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    except Exception:  # a wrapper without a state dict: no estimate, no refusal
        return 0
    return int(tensors * 1.05) + 16 * 2**20


def rescue_places(name: str, second: str | Path | None) -> list[Path]:
    """The rescue places of the thing called `name`, in the order they are tried: the temporary folder's
    `cft-rescue`, then `second` (`paths.rescue_dir`: for when the temporary folder is on the same full or
    read-only filesystem; None: none)."""
    first = Path(tempfile.gettempdir()) / "cft-rescue" / name
    return [first] + ([Path(str(second)).expanduser() / name] if second else [])


def rescue(write: Callable[[Path], None], need: int, places: list[Path]) -> tuple[Path | None, list[str]]:
    """Keep trained work a disk refused: `write(place)` into the first of `places` with `need` bytes free
    that takes it (`write` writes everything, its completion marker last). Returns (the place that took it,
    or None; why each earlier place did not). An exception that is not a disk fault goes up."""
    refused = []
    for place in places:
        free = free_bytes(place)
        if free < need:  # checked first: a half-written rescue is worse than none
            refused.append(f"{place.parent}: {free / 2**20:.0f} MiB free, {need / 2**20:.0f} MiB needed")
            continue
        try:
            shutil.rmtree(place, ignore_errors=True)
            place.mkdir(parents=True)
            write(place)
            return place, refused
        except Exception as exc:
            if reason(exc) is None:
                raise
            shutil.rmtree(place, ignore_errors=True)
            refused.append(f"{place.parent}: {reason(exc)}")
    return None, refused


def quiet_log_files() -> None:
    """A log file on a full or read-only disk: one warning line on stderr instead of logging's traceback
    for every record (the run's own one-line message must stay the last word)."""
    import logging
    import sys

    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler) and not getattr(handler, "_cft_quiet", False):
            handler._cft_quiet = True
            handler.handleError = _quiet_error(handler, sys.stderr)


def _quiet_error(handler, stream):
    told = []

    def handle_error(record) -> None:
        import sys

        exc = sys.exc_info()[1]
        if exc is None or reason(exc) is None:
            return type(handler).handleError(handler, record)  # not a disk fault: logging's own report
        if not told:
            told.append(True)
            print(f"cft: warning: the log file {handler.baseFilename} cannot be written: {reason(exc)}", file=stream, flush=True)

    return handle_error
