"""Waiting out a lost database: a unit of work that could not begin waits for it, within its call.

Only the start of a unit of work is waited on: until its BEGIN has gone through, nothing of the
call has reached the database, so beginning again cannot apply anything twice. A failure after
that (a statement, or a COMMIT whose answer was lost) is answered UNAVAILABLE as before; the
client's retry policy decides about it (common.client).

One probe per process asks whether the database is back, with exponential back-off and jitter;
the waiting calls are parked on it rather than each reconnecting in a loop, and when it is back
they go through the pool, which opens at most DB_POOL_SIZE connections: a recovering server sees
a handful of connection attempts, not one per waiting call.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Awaitable, Callable
from contextvars import ContextVar

from common.db.errors import is_unavailable

log = logging.getLogger("db")

FIRST_PROBE_DELAY = 0.05
LAST_PROBE_DELAY = 1.0
# A probe whose connection attempt hangs (packets dropped, not refused) is given up and retried.
PROBE_TIMEOUT = 2.0

# When the current call must be answered by (time.monotonic()), or None for no deadline.
_call_deadline: ContextVar[float | None] = ContextVar("call_deadline", default=None)


def set_call_deadline(seconds_remaining: float | None) -> None:
    """Called as each RPC starts (common.drain.Admission) with its time remaining."""
    deadline = None if seconds_remaining is None else time.monotonic() + seconds_remaining
    _call_deadline.set(deadline)


class Outage:
    """Parks units of work while the database is unreachable, until one probe finds it back."""

    def __init__(self, probe: Callable[[], Awaitable[None]], *, max_wait: float) -> None:
        self._probe = probe
        self.max_wait = max_wait
        self._prober: asyncio.Task[None] | None = None
        self._back = asyncio.Event()
        self._waiting = 0

    def wait_until(self) -> float:
        """Until when (time.monotonic()) the current call may wait for the database: at most
        `max_wait`, and at most half the time its deadline leaves, so that a caller whose
        replica cannot reach the database keeps time to try another one."""
        now = time.monotonic()
        until = now + self.max_wait
        deadline = _call_deadline.get()
        if deadline is not None:
            until = min(until, now + (deadline - now) / 2)
        return until

    @property
    def ongoing(self) -> bool:
        """A unit of work found the database gone and the probe has not found it back yet."""
        return self._prober is not None and not self._prober.done()

    async def wait(self, until: float) -> bool:
        """Wait until the probe reaches the database (True) or `until` passes (False)."""
        remaining = until - time.monotonic()
        if remaining <= 0:
            return False
        if not self.ongoing:
            self._back = asyncio.Event()
            self._prober = asyncio.create_task(self._find(self._back), name="db-probe")
        back = self._back
        self._waiting += 1
        try:
            async with asyncio.timeout(remaining):
                await back.wait()
        except TimeoutError:
            return False
        finally:
            self._waiting -= 1
        return True

    async def _find(self, back: asyncio.Event) -> None:
        """Probe until the database answers, or until no call waits for it any more."""
        started, attempts, delay = time.monotonic(), 0, FIRST_PROBE_DELAY
        while True:
            attempts += 1
            try:
                async with asyncio.timeout(PROBE_TIMEOUT):
                    await self._probe()
            except Exception as exc:
                if is_unavailable(exc):
                    if attempts == 1:
                        reason = str(exc.__cause__ or exc)
                        log.warning(
                            "database unreachable: calls wait for it",
                            extra={"error": reason, "max_wait_seconds": self.max_wait},
                        )
                    if self._waiting == 0:
                        return  # the next call to find it gone starts a new probe
                    await asyncio.sleep(random.uniform(delay / 2, delay))
                    delay = min(delay * 2, LAST_PROBE_DELAY)
                    continue
                # It answered, if only to refuse (a password, a missing database): the calls
                # go on and meet that error themselves.
            back.set()
            if attempts > 1:
                log.info(
                    "database reachable again",
                    extra={"attempts": attempts, "seconds": round(time.monotonic() - started, 2)},
                )
            return

    async def close(self) -> None:
        prober, self._prober = self._prober, None
        if prober is not None and not prober.done():
            prober.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await prober
