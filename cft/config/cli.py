"""What the entry scripts share: user errors are printed as one clear message, not a traceback."""

from __future__ import annotations

import logging
import sys

from cft.errors import CftError

log = logging.getLogger("cft")


def guarded(fn, *args, **kwargs):
    """Call fn; a CftError (bad config, bad data, missing checkpoint) exits with its message and
    status 2 (or the error's own `exit_code`: 143 for a run stopped by SIGTERM)."""
    try:
        return fn(*args, **kwargs)
    except CftError as exc:
        log.error("%s", exc)
        print(f"cft: error: {exc}", file=sys.stderr, flush=True)
        sys.exit(getattr(exc, "exit_code", 2))
