"""Error types of rvepfl.

Every error a user can cause (bad config, bad data, bad checkpoint) is a subclass of
:class:`RvepflError`, itself a ``ValueError``. The CLI prints such errors as one line on stderr
and exits non-zero; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

__all__ = ["CheckpointError", "ConfigError", "DataError", "NoAttackSurface", "RoundFailedError", "RvepflError",
           "short_repr"]


class RvepflError(ValueError):
    """Base class of the errors a user can cause and fix."""

    exit_code = 2
    """The CLI's exit status for this error."""


class ConfigError(RvepflError):
    """A configuration file or CLI option is invalid."""


class DataError(RvepflError):
    """A data set is missing, unreadable or malformed."""


class CheckpointError(RvepflError):
    """A checkpoint or run directory is missing, corrupt or of another configuration."""


class NoAttackSurface(ConfigError):
    """A method exposes nothing that an attack under a threat model could work on (for example a
    gradient attack on a method whose shared part is not a whole path from input to logits)."""


class RoundFailedError(RvepflError):
    """Too many clients of a round failed (see ``[faults]``); the run stops resumable."""

    exit_code = 3


def short_repr(value: object, limit: int = 60) -> str:
    """A one-line ``repr`` of ``value`` for an error message, at most about ``limit`` characters.

    Input can hold what ``repr`` cannot show: ints of more than 4300 digits (Python refuses to
    print them), structures nested too deep. Those are named instead of printed.

    >>> print(short_repr("line\\nbreak"))
    'line\\nbreak'
    >>> print(short_repr(10**5000), short_repr((2, 10**30)))
    <int of 16610 bits> (2, <int of 100 bits>)
    >>> print(short_repr("x" * 100, limit=10))
    'xxxxxx...
    """
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 64:
        return f"<int of {value.bit_length()} bits>"
    if isinstance(value, tuple) and value and all(isinstance(v, int) for v in value):
        items = [short_repr(v) for v in value]
        return f"({items[0]},)" if len(items) == 1 else f"({', '.join(items)})"
    try:
        text = repr(value)
    except (ValueError, RecursionError):
        return f"<{type(value).__name__}>"
    return text if len(text) <= limit else f"{text[: limit - 3]}..."
