"""What the entry scripts share: user errors are printed as one clear message, not a traceback, and
in a sweep a failing cell does not stop the others.

Alone, a cell that fails on a `CftError` (bad config, bad data, missing checkpoint) exits with its
message and status 2 (or the error's own `exit_code`: 1 for a full or read-only disk or a GPU out of
memory, 143 for a run stopped by SIGTERM). In a multirun the cell's recipe has written FAILED (its
step and message) into its run folder; the error is logged and the sweep goes on with the next cell. At its end the sweep prints the failed cells and
exits non-zero (`cft.config.hydra.SweepId.on_multirun_end`). SIGTERM (exit 143) and Ctrl-C stop the
whole sweep: they mean "stop", not "this cell is broken".
"""

from __future__ import annotations

import logging
import sys
import traceback

from cft.errors import CftError

log = logging.getLogger("cft")


def _in_multirun() -> bool:
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN
    except Exception:
        return False


def guarded(fn, *args, **kwargs):
    """Call fn with the error handling described in the module docstring."""
    try:
        return fn(*args, **kwargs)
    except CftError as exc:
        code = getattr(exc, "exit_code", 2)
        log.error("%s", exc)
        print(f"cft: error: {exc}", file=sys.stderr, flush=True)
        if code in (1, 2) and _in_multirun():  # a bad input (2) or a disk that refused this cell's work (1)
            return None  # the next cell runs; the sweep reports this one at its end
        sys.exit(code)
    except Exception as exc:  # a bug, or a library failing: in a sweep, the other cells still run
        if not _in_multirun():
            raise
        log.error("cell failed: %s\n%s", exc, traceback.format_exc())
        print(f"cft: error: {type(exc).__name__}: {exc} (traceback in the cell's log)", file=sys.stderr, flush=True)
        return None
