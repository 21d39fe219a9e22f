"""Which database failures mean "unreachable right now" (UNAVAILABLE, safe to retry)."""

from __future__ import annotations

import asyncpg

from common.errors import UnavailableError

# SQLSTATEs of a server that cannot serve right now: connection exceptions (08…), too many
# connections (53300), shutting down or crashed (57P01, 57P02), starting up (57P03).
_UNAVAILABLE_SQLSTATES = ("08", "53300", "57P01", "57P02", "57P03")


def is_unavailable(exc: BaseException) -> bool:
    """The database could not be reached or dropped the connection."""
    if isinstance(exc, UnavailableError):
        return True
    if isinstance(exc, asyncpg.PostgresError):
        return (getattr(exc, "sqlstate", None) or "").startswith(_UNAVAILABLE_SQLSTATES)
    if isinstance(exc, asyncpg.exceptions.InternalClientError):
        return True  # the connection's protocol state was broken by a lost or aborted operation
    if isinstance(exc, asyncpg.InterfaceError):  # also raised for an argument it cannot encode
        text = str(exc)
        return "connection is closed" in text or "connection was closed" in text
    return isinstance(exc, OSError | TimeoutError)


def unavailable(exc: BaseException) -> UnavailableError:
    """The one error a lost database becomes; the cause stays attached for the log."""
    error = UnavailableError("database unavailable")
    error.__cause__ = exc
    return error
