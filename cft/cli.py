"""What the entry scripts share: user errors are printed as one clear message, not a traceback."""

from __future__ import annotations

import logging
import sys

from cft.errors import CftError

log = logging.getLogger("cft")


def guarded(fn, *args, **kwargs):
    """Call fn; a CftError (bad config, bad data, missing checkpoint) exits with status 2 and its message."""
    try:
        return fn(*args, **kwargs)
    except CftError as exc:
        log.error("%s", exc)
        print(f"cft: error: {exc}", file=sys.stderr, flush=True)
        sys.exit(2)
