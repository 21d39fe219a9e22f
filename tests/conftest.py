"""Real servers on port 0 over real channels, on SQLite always and PostgreSQL when configured."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from grpc import aio
from sqlalchemy import MetaData

from bench.scratch import scratch_database
from common import client
from common.config import JwtSettings, Settings
from common.db import Database
from common.migrations import upgrade
from common.server import RunningServer, ServiceDefinition, start_server
from tests.support.callers import SECRET

BACKENDS = ["sqlite", "postgres"]


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str | None]:
    """A fresh PostgreSQL database for this test session, dropped afterwards."""
    base = os.environ.get("TEST_DATABASE_URL")
    if not base:
        yield None
        return
    with scratch_database(base) as url:
        yield url


@pytest.fixture(scope="session")
def backend_urls(pg_url: str | None, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    urls = {"sqlite": f"sqlite+aiosqlite:///{tmp_path_factory.mktemp('db') / 'test.sqlite3'}"}
    if pg_url:
        urls["postgres"] = pg_url
    return urls


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    """The one PostgreSQL-only rule. A test marked `postgres`, and every test on the `postgres`
    backend, is skipped without TEST_DATABASE_URL (an error when REQUIRE_POSTGRES_TESTS is set,
    as in CI); a marked test on the `sqlite` backend is skipped."""
    callspec = getattr(item, "callspec", None)
    on = callspec.params.get("backend") if callspec is not None else None
    marked = item.get_closest_marker("postgres") is not None
    if marked and on == "sqlite":
        pytest.skip("PostgreSQL only")
    if (marked or on == "postgres") and not os.environ.get("TEST_DATABASE_URL"):
        if os.environ.get("REQUIRE_POSTGRES_TESTS"):
            pytest.fail("REQUIRE_POSTGRES_TESTS is set but TEST_DATABASE_URL is not")
        pytest.skip("PostgreSQL tests need TEST_DATABASE_URL")


@pytest.fixture(scope="session")
def postgres_url(pg_url: str | None) -> str:
    """The session's PostgreSQL database, for tests marked `postgres` (skipped without one)."""
    assert pg_url, "a test that needs PostgreSQL is marked @pytest.mark.postgres"
    return pg_url


@pytest.fixture(scope="session", params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    """Each backend in turn; `pytest_runtest_setup` skips `postgres` without a database."""
    return str(request.param)


def test_settings(service: str, url: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "service": service,
        "database_url": url,
        "grpc_addr": "127.0.0.1:0",
        "jwt": JwtSettings("HS256", SECRET.encode()),
        "log_format": "json",
        "grace_seconds": 2.0,
    }
    values.update(overrides)
    return Settings(**values)


@dataclass
class Harness:
    """A running service, a channel to it, and direct database access for assertions."""

    running: RunningServer
    channel: aio.Channel
    metadata: MetaData

    @property
    def db(self) -> Database:
        return self.running.db

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.running.port}"

    async def wipe(self) -> None:
        async with self.db.transaction(write=True) as conn:
            for table in reversed(self.metadata.sorted_tables):
                await conn.execute(table.delete())


_migrated: set[tuple[str, str]] = set()


async def start_harness(
    definition: ServiceDefinition, url: str, metadata: MetaData, **overrides: Any
) -> Harness:
    if (definition.name, url) not in _migrated:
        await asyncio.to_thread(upgrade, url, definition.migrations_dir, definition.version_table)
        _migrated.add((definition.name, url))
    running = await start_server(definition, test_settings(definition.name, url, **overrides))
    channel = client.channel(f"127.0.0.1:{running.port}")
    return Harness(running, channel, metadata)


async def stop_harness(harness: Harness) -> None:
    await harness.channel.close()
    await harness.running.shutdown(1.0)


@pytest_asyncio.fixture(scope="session")
async def progress_harness(backend: str, backend_urls: dict[str, str]) -> AsyncIterator[Harness]:
    from progress_service.app import DEFINITION
    from progress_service.tables import metadata

    harness = await start_harness(DEFINITION, backend_urls[backend], metadata)
    yield harness
    await stop_harness(harness)


@pytest_asyncio.fixture
async def progress(progress_harness: Harness) -> AsyncIterator[Harness]:
    """The progress service with empty tables."""
    await progress_harness.wipe()
    yield progress_harness


ROOT = Path(__file__).resolve().parents[1]


@pytest_asyncio.fixture(scope="session")
async def academic_years_harness(
    backend: str, backend_urls: dict[str, str]
) -> AsyncIterator[Harness]:
    from academic_years_service.app import DEFINITION
    from academic_years_service.tables import metadata

    harness = await start_harness(DEFINITION, backend_urls[backend], metadata)
    yield harness
    await stop_harness(harness)


@pytest_asyncio.fixture
async def academic_years(academic_years_harness: Harness) -> AsyncIterator[Harness]:
    """The academic years service with empty tables (reference tables included)."""
    await academic_years_harness.wipe()
    yield academic_years_harness
