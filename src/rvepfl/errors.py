"""Error types of rvepfl.

Every error a user can cause (bad config, bad data, bad checkpoint) is a subclass of
:class:`RvepflError`, itself a ``ValueError``. The CLI prints such errors as one line on stderr
and exits non-zero; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class RvepflError(ValueError):
    """Base class of the errors a user can cause and fix."""


class ConfigError(RvepflError):
    """A configuration file or CLI option is invalid."""


class DataError(RvepflError):
    """A data set is missing, unreadable or malformed."""


class CheckpointError(RvepflError):
    """A checkpoint or run directory is missing, corrupt or of another configuration."""
