"""The start-up contract, through real processes: refuse to serve without a key, migrate a named
PostgreSQL on demand (in any of its URL forms) and refuse to serve it unmigrated, say in one line
when its database does not exist, and with no DATABASE_URL at all start (or reuse) the embedded
PostgreSQL, migrate it and serve.

Every process here gets EMBEDDED_PGDATA inside the test's own folder: a developer's
var/postgres is never started, read or stopped by these tests."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from progress.v1 import progress_pb2 as pb
from progress.v1 import progress_pb2_grpc

from bench.scratch import scratch_database
from common.db import asyncpg_dsn
from tests.conftest import ROOT
from tests.support.callers import Caller
from tests.support.databases import head_revision
from tests.support.processes import ServiceProcess, private_pgdata, service_env, start_service

SERVING = health_pb2.HealthCheckResponse.SERVING
KEY = {"JWT_SECRET": "k" * 40}


def run(
    args: list[str], env: dict[str, str], *, pgdata: Path, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """`python -m <args>` with `env` and no key unless `env` has one; `pgdata` is where the
    embedded server would live, should the command start it."""
    base = service_env(EMBEDDED_PGDATA=str(pgdata))
    del base["JWT_SECRET"]
    return subprocess.run(  # noqa: S603 - our own interpreter and modules
        [sys.executable, "-m", *args],
        env={**base, **env},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def with_scheme(url: str, scheme: str) -> str:
    return urlunsplit(urlsplit(url)._replace(scheme=scheme))


def with_database(url: str, name: str) -> str:
    return urlunsplit(urlsplit(asyncpg_dsn(url))._replace(path=f"/{name}"))


def health(target: str) -> health_pb2.HealthCheckResponse.ServingStatus.ValueType:
    with grpc.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        return stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=10).status


def upsert(target: str, item: str) -> pb.UserProgress:
    """One write through the service (its tables exist and it can reach them)."""
    with grpc.insecure_channel(target) as channel:
        stub = progress_pb2_grpc.UserProgressServiceStub(channel)
        data = pb.UserProgressInput(progress_type="sign_learned", item_id=item, value="v")
        return stub.UpsertUserProgress(
            pb.UpsertUserProgressRequest(data=data), metadata=Caller().md, timeout=10
        )


def messages(service: ServiceProcess) -> list[str]:
    return [str(entry.get("msg")) for entry in service.log]


# --- configuration comes first ----------------------------------------------------------


def test_serve_refuses_to_start_without_a_key(tmp_path: Path) -> None:
    pgdata = tmp_path / "postgres"
    result = run(["progress_service", "serve"], {}, pgdata=pgdata)
    assert result.returncode == 2
    assert "configuration error" in result.stderr and "JWT_SECRET" in result.stderr
    assert not pgdata.exists()  # refused before any database was started


def test_serve_refuses_a_weak_secret(tmp_path: Path) -> None:
    pgdata = tmp_path / "postgres"
    result = run(["progress_service"], {"JWT_SECRET": "too-short"}, pgdata=pgdata)
    assert result.returncode == 2 and "too weak" in result.stderr
    assert not pgdata.exists()


# --- a named PostgreSQL -------------------------------------------------------------------


@pytest.fixture
def empty_pg_database(postgres_url: str) -> Iterator[str]:
    """A new, empty database on the test server, dropped afterwards."""
    with scratch_database(postgres_url) as url:
        yield url


async def _schema(url: str) -> tuple[set[str], set[str], list[str]]:
    """Tables, indexes and the progress service's recorded revision(s) of a database."""
    conn = await asyncpg.connect(asyncpg_dsn(url))
    try:
        tables = {r[0] for r in await conn.fetch("SELECT tablename FROM pg_tables")}
        indexes = {r[0] for r in await conn.fetch("SELECT indexname FROM pg_indexes")}
        versions = [
            r[0] for r in await conn.fetch("SELECT version_num FROM alembic_version_progress")
        ]
    finally:
        await conn.close()
    return tables, indexes, versions


def test_migrate_creates_tables_indexes_and_version_table(
    empty_pg_database: str, tmp_path: Path
) -> None:
    from progress_service.app import DEFINITION

    env = {"DATABASE_URL": empty_pg_database}
    result = run(["progress_service", "migrate"], env, pgdata=tmp_path / "postgres")
    assert result.returncode == 0, result.stderr
    assert "newest revision" in result.stdout
    tables, indexes, versions = asyncio.run(_schema(empty_pg_database))
    assert {"user_progress", "alembic_version_progress"} <= tables
    assert {"user_progress_owner_item_key", "user_progress_user_type_created"} <= indexes
    assert versions == [head_revision(DEFINITION)]
    again = run(["progress_service", "migrate"], env, pgdata=tmp_path / "postgres")
    assert again.returncode == 0, again.stderr
    assert asyncio.run(_schema(empty_pg_database))[2] == versions
    assert not (tmp_path / "postgres").exists()  # a named server: no embedded one


@pytest.mark.parametrize("scheme", ["postgresql", "postgres", "postgresql+asyncpg"])
def test_postgres_needs_explicit_migrate_then_serves_and_drains(
    empty_pg_database: str, tmp_path: Path, scheme: str
) -> None:
    url = with_scheme(empty_pg_database, scheme)
    pgdata = tmp_path / "postgres"  # where an embedded server would go; none may start
    env = {"DATABASE_URL": url, **KEY}
    refused = run(["progress_service", "serve"], {**env, "GRPC_ADDR": "127.0.0.1:0"}, pgdata=pgdata)
    assert refused.returncode == 3, refused.stderr
    assert "progress_service migrate" in refused.stderr
    migrated = run(["progress_service", "migrate"], env, pgdata=pgdata)
    assert migrated.returncode == 0, migrated.stderr

    assert not pgdata.exists()

    service = start_service("progress_service", tmp_path, DATABASE_URL=url)
    try:
        assert health(service.target) == SERVING
        assert upsert(service.target, f"via-{scheme}").item_id == f"via-{scheme}"
        assert service.pgdata is not None and not service.pgdata.exists()
    finally:
        code = service.stop(timeout=60)
    assert code == 0
    assert "draining" in messages(service)


@pytest.mark.parametrize("command", ["serve", "migrate"])
def test_a_database_that_does_not_exist_is_one_line_and_exit_3(
    server_url: str, tmp_path: Path, command: str
) -> None:
    name = f"missing_{uuid.uuid4().hex[:12]}"
    env = {"DATABASE_URL": with_database(server_url, name), **KEY}
    result = run(["progress_service", command], env, pgdata=tmp_path / "postgres")
    assert result.returncode == 3
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("progress: ") and name in line and "does not exist" in line, line
    assert "Traceback" not in result.stderr


# --- no DATABASE_URL: the embedded PostgreSQL ---------------------------------------------


@dataclass(frozen=True)
class Postmaster:
    """What postmaster.pid says of a running server (see PostgreSQL's pidfile.h)."""

    pid: int
    port: int
    socket_dir: str
    listen_addresses: str

    @classmethod
    def of(cls, pgdata: Path) -> Postmaster | None:
        pidfile = pgdata / "postmaster.pid"
        if not pidfile.exists():
            return None
        lines = pidfile.read_text().splitlines()
        return cls(int(lines[0]), int(lines[3]), lines[4].strip(), lines[5].strip())

    async def connect(self) -> asyncpg.Connection:
        return await asyncpg.connect(
            host=self.socket_dir, port=self.port, user="postgres", database="school", timeout=5
        )

    def accepts_connections(self) -> bool:
        async def probe() -> bool:
            try:
                conn = await self.connect()
            except (OSError, asyncpg.PostgresError):
                return False
            await conn.close()
            return True

        return asyncio.run(probe())

    async def revisions(self) -> dict[str, str]:
        """Each service's recorded revision in the embedded `school` database."""
        conn = await self.connect()
        try:
            return {
                table: await conn.fetchval(f"SELECT version_num FROM {table}")
                for table in ("alembic_version_progress", "alembic_version_academic_years")
            }
        finally:
            await conn.close()


def test_serve_without_a_database_url_starts_reuses_and_stops_the_embedded_server(
    tmp_path: Path,
) -> None:
    from academic_years_service.app import DEFINITION as AY_DEFINITION
    from progress_service.app import DEFINITION

    pgdata = private_pgdata(tmp_path)  # where start_service puts it for this folder
    assert not pgdata.exists()
    started: list[ServiceProcess] = []
    server: Postmaster | None = None
    try:
        started.append(start_service("progress_service", tmp_path))
        server = Postmaster.of(pgdata)
        assert server is not None and server.accepts_connections()
        assert server.listen_addresses == ""  # a unix socket only, no TCP port
        assert health(started[0].target) == SERVING
        assert upsert(started[0].target, "embedded").item_id == "embedded"

        # A second service on the same data directory reuses the running server.
        started.append(start_service("academic_years_service", tmp_path))
        assert health(started[1].target) == SERVING
        assert Postmaster.of(pgdata) == server
        assert asyncio.run(server.revisions()) == {
            "alembic_version_progress": head_revision(DEFINITION),
            "alembic_version_academic_years": head_revision(AY_DEFINITION),
        }

        # The server outlives the first process to stop, and stops with the last.
        assert started[0].stop() == 0
        assert Postmaster.of(pgdata) == server and server.accepts_connections()
        assert health(started[1].target) == SERVING
        assert started[1].stop() == 0
        # (stop() removes the data directory only once the server has removed its pid file)
        assert Postmaster.of(pgdata) is None
        assert not server.accepts_connections()
    finally:
        for service in started:
            if service.proc.poll() is None:
                service.stop()
        if server is not None and Postmaster.of(pgdata) == server:
            os.kill(server.pid, signal.SIGINT)  # a failed test leaves no server: fast shutdown
