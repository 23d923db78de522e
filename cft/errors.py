"""User-facing errors.

A `CftError` is a problem with the user's input (config, data, checkpoint) rather than a
bug: the entry scripts print its message alone, without a traceback, and exit with 2.
"""


class CftError(Exception):
    """A problem the user can fix; the message says what and where."""


class ConfigError(CftError):
    """A config value is invalid (names the option)."""


class DataError(CftError):
    """A data file or record is invalid (names the file and line)."""
