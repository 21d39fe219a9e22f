"""Real servers on port 0 over real channels, on the PostgreSQL that TEST_DATABASE_URL names or
else on an embedded one under var/test-postgres (started once, stopped when the session ends)."""

from __future__ import annotations

import asyncio
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
from tests.support.databases import test_server_url

BACKENDS = ["postgres"]


@pytest.fixture(scope="session")
def server_url() -> str:
    """The PostgreSQL server the suite runs on: TEST_DATABASE_URL's, or the embedded one."""
    return test_server_url()


@pytest.fixture(scope="session")
def pg_url(server_url: str) -> Iterator[str]:
    """A fresh PostgreSQL database for this test session, dropped afterwards."""
    with scratch_database(server_url) as url:
        yield url


@pytest.fixture(scope="session")
def backend_urls(pg_url: str) -> dict[str, str]:
    return {"postgres": pg_url}


@pytest.fixture(scope="session")
def postgres_url(pg_url: str) -> str:
    """The session's database, for tests that talk to PostgreSQL without a service."""
    return pg_url


@pytest.fixture(scope="session", params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
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


def _no_repository(*_: Any) -> None:
    return None


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

    async def rows(self, statement: Any, params: dict[str, Any] | None = None) -> list[Any]:
        """What `statement` selects, read outside any tenant (for assertions)."""
        async with self.db.unit_of_work(None, _no_repository) as uow:
            return await uow.executor.rows(statement, params or {})

    async def scalar(self, statement: Any, params: dict[str, Any] | None = None) -> Any:
        async with self.db.unit_of_work(None, _no_repository) as uow:
            return await uow.executor.scalar(statement, params or {})

    async def execute(self, statement: Any, params: dict[str, Any] | None = None) -> int:
        """Runs and commits one statement outside any tenant (to arrange a test)."""
        async with self.db.unit_of_work(None, _no_repository) as uow:
            count = await uow.executor.execute(statement, params or {})
            await uow.commit()
        return count

    async def wipe(self) -> None:
        async with self.db.unit_of_work(None, _no_repository) as uow:
            for table in reversed(self.metadata.sorted_tables):
                await uow.executor.execute(table.delete())
            await uow.commit()


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
