"""Column types shared by every table of both services, and the clock and ids they hold."""

from __future__ import annotations

import datetime as dt
import uuid

from sqlalchemy import DateTime, Uuid
from sqlalchemy.dialects.postgresql import JSONB

# Ids travel as text: the executor's codec hands asyncpg strings and gets strings back.
UUID_TYPE = Uuid(as_uuid=False)
# Python None is SQL NULL (not JSON null), as the original stored an absent value.
JSON_TYPE = JSONB(none_as_null=True)
# timestamptz; the executor always binds aware UTC datetimes and reads them back aware.
UtcDateTime = DateTime(timezone=True)


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def new_id() -> str:
    return str(uuid.uuid4())
