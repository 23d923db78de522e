"""A patched low-level writer for tests/test_faults*.py: a full or read-only disk on chosen paths.

Put this folder on PYTHONPATH of a subprocess and set CFT_FAULT_PATHS (fnmatch patterns of absolute
paths, separated by os.pathsep) and CFT_FAULT_ERRNO (ENOSPC, the default, EROFS or EACCES). Every write
the process makes through Python to a matching path (open for writing, os.open with a write flag,
mkdir, rename or replace onto it) fails with that error, as a full or read-only filesystem would.
Tests run as root, where chmod does not stop writes, and a real full disk cannot be made on demand,
so the fault is planted here, beneath cft, rather than by mocking cft's own code.

CFT_FAULT_RAISE picks the exception the writers of a full disk really raise, for writes to matching
paths: `safetensors` (safetensors.torch.save_file raises SafetensorError "No space left on device") or
`torch` (torch.save raises torch's RuntimeError from inline_container.cc). CFT_FAULT_OOM_AT=N makes the
N-th backward pass of the process raise torch.cuda.OutOfMemoryError (a GPU out of memory, on a CPU).
CFT_FAULT_PAUSE_AT=N with CFT_FAULT_RESUME=path holds the N-th backward pass: it prints "cft-fault: paused"
and waits until that path exists, so a test changes the disk at a known point of training, without a race.
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


_RAISE = os.environ.get("CFT_FAULT_RAISE", "")
if _PATTERNS and _RAISE == "safetensors":
    import safetensors.torch
    from safetensors import SafetensorError

    _save_file = safetensors.torch.save_file

    def _full_save_file(tensors, filename, *args, **kwargs):
        if _hit(filename):
            raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")
        return _save_file(tensors, filename, *args, **kwargs)

    safetensors.torch.save_file = _full_save_file
if _PATTERNS and _RAISE == "torch":
    import torch

    _torch_save = torch.save

    def _full_torch_save(obj, f, *args, **kwargs):
        if not hasattr(f, "write") and _hit(f):
            raise RuntimeError(
                "[enforce fail at inline_container.cc:672] . unexpected pos 106624 vs 106516"
            )  # what a full disk gives torch's zip writer
        return _torch_save(obj, f, *args, **kwargs)

    torch.save = _full_torch_save

if os.environ.get("CFT_FAULT_OOM_AT"):
    import torch

    _oom_at, _backwards = int(os.environ["CFT_FAULT_OOM_AT"]), [0]
    _backward = torch.Tensor.backward

    def _backward_oom(self, *args, **kwargs):
        _backwards[0] += 1
        if _backwards[0] == _oom_at:
            raise torch.cuda.OutOfMemoryError(
                "CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of 79.19 GiB"
            )
        return _backward(self, *args, **kwargs)

    torch.Tensor.backward = _backward_oom

if os.environ.get("CFT_FAULT_PAUSE_AT"):
    import sys
    import time

    import torch

    _pause_at, _resume, _passes = int(os.environ["CFT_FAULT_PAUSE_AT"]), os.environ["CFT_FAULT_RESUME"], [0]
    _backward_on = torch.Tensor.backward

    def _backward_paused(self, *args, **kwargs):
        _passes[0] += 1
        if _passes[0] == _pause_at:
            print("cft-fault: paused", file=sys.stdout, flush=True)
            while not os.path.exists(_resume):
                time.sleep(0.02)
        return _backward_on(self, *args, **kwargs)

    torch.Tensor.backward = _backward_paused
