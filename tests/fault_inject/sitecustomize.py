"""A patched low-level writer for tests/test_faults.py: a full or read-only disk on chosen paths.

Put this folder on PYTHONPATH of a subprocess and set CFT_FAULT_PATHS (fnmatch patterns of absolute
paths, separated by os.pathsep) and CFT_FAULT_ERRNO (ENOSPC, the default, EROFS or EACCES). Every write
the process makes through Python to a matching path (open for writing, os.open with a write flag,
mkdir, rename or replace onto it) fails with that error, as a full or read-only filesystem would.
Tests run as root, where chmod does not stop writes, and a real full disk cannot be made on demand,
so the fault is planted here, beneath cft, rather than by mocking cft's own code.
"""

import builtins
import errno
import fnmatch
import io
import os

_PATTERNS = [p for p in os.environ.get("CFT_FAULT_PATHS", "").split(os.pathsep) if p]
_ERRNO = getattr(errno, os.environ.get("CFT_FAULT_ERRNO", "ENOSPC"))


def _hit(path) -> bool:
    if isinstance(path, int):
        return False
    try:
        full = os.path.abspath(os.fsdecode(os.fspath(path)))
    except TypeError:
        return False
    return any(fnmatch.fnmatch(full, pattern) for pattern in _PATTERNS)


def _refuse(path):
    raise OSError(_ERRNO, os.strerror(_ERRNO), os.fsdecode(os.fspath(path)))


if _PATTERNS:
    _open, _os_open, _mkdir, _replace, _rename = builtins.open, os.open, os.mkdir, os.replace, os.rename
    _WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC

    def _patched_open(file, mode="r", *args, **kwargs):
        if any(c in mode for c in "wax+") and _hit(file):
            _refuse(file)
        return _open(file, mode, *args, **kwargs)

    def _patched_os_open(path, flags, *args, **kwargs):
        if flags & _WRITE_FLAGS and _hit(path):
            _refuse(path)
        return _os_open(path, flags, *args, **kwargs)

    def _patched_mkdir(path, *args, **kwargs):
        if _hit(path):
            _refuse(path)
        return _mkdir(path, *args, **kwargs)

    def _patched_replace(src, dst, *args, **kwargs):
        if _hit(dst):
            _refuse(dst)
        return _replace(src, dst, *args, **kwargs)

    def _patched_rename(src, dst, *args, **kwargs):
        if _hit(dst):
            _refuse(dst)
        return _rename(src, dst, *args, **kwargs)

    builtins.open = io.open = _patched_open
    os.open, os.mkdir, os.replace, os.rename = _patched_os_open, _patched_mkdir, _patched_replace, _patched_rename
