"""CSV limits, read from the environment when a service starts."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from common.config import ConfigError

DEFAULT_MAX_BYTES = 1 << 30  # 1 GiB
DEFAULT_MAX_RECORD_CHARS = 1 << 20  # a quoted field may span lines, but not without end


@dataclass(frozen=True, slots=True)
class CsvLimits:
    max_bytes: int = DEFAULT_MAX_BYTES
    max_record_chars: int = DEFAULT_MAX_RECORD_CHARS

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> CsvLimits:
        """`CSV_MAX_BYTES` (bytes per upload, default 1 GiB)."""
        raw = (os.environ if env is None else env).get("CSV_MAX_BYTES", "").strip()
        if not raw:
            return cls()
        try:
            max_bytes = int(raw)
        except ValueError:
            raise ConfigError(f"CSV_MAX_BYTES must be a number of bytes, not {raw!r}") from None
        if max_bytes < 1:
            raise ConfigError("CSV_MAX_BYTES must be positive")
        return cls(max_bytes=max_bytes)
