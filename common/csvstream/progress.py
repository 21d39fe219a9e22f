"""Progress of long imports and exports, rows so far and rows per second: lines in the log,
events on the call's span."""

from __future__ import annotations

import logging
import time

from common import tracing

log = logging.getLogger("csv")

REPORT_EVERY_ROWS = 100_000
REPORT_EVERY_SECONDS = 10.0


class RateLog:
    """Logs when `REPORT_EVERY_ROWS` more rows or `REPORT_EVERY_SECONDS` have passed."""

    def __init__(self, label: str, action: str) -> None:
        self._label, self._action = label, action
        self._started = self._last_time = time.monotonic()
        self._last_rows = 0

    def tick(self, rows: int) -> None:
        now = time.monotonic()
        if rows - self._last_rows >= REPORT_EVERY_ROWS or now - self._last_time >= (
            REPORT_EVERY_SECONDS
        ):
            self._last_rows, self._last_time = rows, now
            self._report("csv progress", rows, now)

    def done(self, rows: int) -> None:
        self._report("csv done", rows, time.monotonic())

    def _report(self, message: str, rows: int, now: float) -> None:
        elapsed = max(now - self._started, 1e-9)
        tracing.event(message, rows=rows, rows_per_second=round(rows / elapsed))
        log.info(
            message,
            extra={
                "csv": self._label,
                "action": self._action,
                "rows": rows,
                "rows_per_second": round(rows / elapsed),
                "seconds": round(elapsed, 3),
            },
        )
