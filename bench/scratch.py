"""Throw-away resources the benchmarks and the tests share: free loopback ports and scratch
PostgreSQL databases (tests import them from here too, so there is one copy of each)."""

from __future__ import annotations

import asyncio
import socket
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from common.db import asyncpg_dsn


def free_port() -> int:
    """A loopback port nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def scratch_database(server_url: str, prefix: str = "t") -> Iterator[str]:
    """A new, empty PostgreSQL database on `server_url`'s server, dropped afterwards.

    Yields its `postgresql://` URL (credentials and a unix-socket `?host=` kept); not to be
    entered from a running event loop (creating and dropping run their own)."""
    parts = urlsplit(asyncpg_dsn(server_url))
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"

    async def admin(sql: str) -> None:
        conn = await asyncpg.connect(urlunsplit(parts))
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(admin(f'CREATE DATABASE "{name}"'))
    try:
        yield urlunsplit(parts._replace(path=f"/{name}"))
    finally:
        asyncio.run(admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
