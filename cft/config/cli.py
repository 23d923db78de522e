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


def hydra_error_line(exc: BaseException) -> str | None:
    """Hydra's own composition errors (an unknown group option, a key not in the config, a bad override) as
    one line naming the group or key and what is available; None for anything else."""
    import re

    from hydra.errors import ConfigCompositionException, MissingConfigException, OverrideParseException
    from omegaconf.errors import ConfigAttributeError, ConfigKeyError

    text = str(exc).strip()
    first = text.splitlines()[0] if text else type(exc).__name__
    if isinstance(exc, MissingConfigException):
        found = re.search(r"Could not find '([^']+)/([^'/]+)'", first)
        options = ", ".join(exc.options or [])
        if found:
            group, option = found.groups()
            return f"{group}={option}: no such option in config group '{group}'; available: {options or 'none'}"
        return first + (f"; available: {options}" if options else "")
    if isinstance(exc, ConfigCompositionException):
        key = re.match(r"Could not override '([^']+)'", first)
        cause = exc.__cause__
        if key and isinstance(cause, (ConfigKeyError, ConfigAttributeError)):
            dotted = key.group(1).lstrip("+~")
            group = dotted.split(".")[0]
            having = _options_with(group, dotted.split(".")[1:])
            return (
                f"{dotted}: no such key in this config ({str(cause).splitlines()[0]})"
                + (
                    f"; of config group '{group}', only {', '.join(having)} have it: sweep those options on their own"
                    if having
                    else ""
                )
                + f"; to add a new key, write +{dotted}=..."
            )
        detail = f" ({str(cause).splitlines()[0]})" if cause is not None and str(cause) else ""
        return " ".join(first.split()) + detail
    if isinstance(exc, OverrideParseException):
        return " ".join(text.split())
    return None


def _options_with(group: str, path: list[str]) -> list[str]:
    """The options of conf/<group> whose YAML has the key `path` (for a key that only some cells have)."""
    from pathlib import Path

    import yaml

    folder = Path(__file__).resolve().parents[2] / "conf" / group
    having = []
    for option in sorted(folder.glob("*.yaml")) if path and folder.is_dir() else []:
        try:
            node = yaml.safe_load(option.read_text()) or {}
        except (OSError, yaml.YAMLError):
            continue
        for part in path:
            node = node.get(part) if isinstance(node, dict) else None
        if node is not None:
            having.append(f"{group}={option.stem}")
    return having


def hydra_errors_in_one_line() -> None:
    """Hydra prints its composition errors over several lines and exits 1; an entry script calls this
    before `@hydra.main` runs so that they read like cft's own: one `cft: error:` line, exit 2.
    (Hydra offers no hook for its errors: its reporting function is wrapped.)"""
    import hydra._internal.utils as hydra_utils

    original = hydra_utils.run_and_report
    if getattr(original, "_cft", False):
        return

    def run_and_report(func):
        try:
            return func()
        except Exception as exc:
            line = hydra_error_line(exc)
            if line is None:
                error = exc

                def again():
                    raise error

                return original(again)  # Hydra reports everything else, as before
            print(f"cft: error: {line}", file=sys.stderr, flush=True)
            sys.exit(2)

    run_and_report._cft = True
    hydra_utils.run_and_report = run_and_report
