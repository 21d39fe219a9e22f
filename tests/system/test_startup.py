"""The start-up contract: refuse to serve without a key, migrate on demand, guard PostgreSQL."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from bench.scratch import free_port, scratch_database
from tests.conftest import ROOT
from tests.support.databases import head_revision


def run(
    args: list[str], env: dict[str, str], timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("JWT_", "DATABASE_URL"))}
    return subprocess.run(  # noqa: S603
        [sys.executable, "-m", *args],
        env={**base, "LOG_FORMAT": "json", **env},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def test_serve_refuses_to_start_without_a_key(tmp_path: Path) -> None:
    result = run(
        ["progress_service", "serve"], {"DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path}/x.db"}
    )
    assert result.returncode == 2
    assert "configuration error" in result.stderr and "JWT_SECRET" in result.stderr


def test_serve_refuses_a_weak_secret(tmp_path: Path) -> None:
    result = run(["progress_service"], {"JWT_SECRET": "too-short"})
    assert result.returncode == 2 and "too weak" in result.stderr


def test_migrate_creates_tables_and_version_table_on_sqlite(tmp_path: Path) -> None:
    path = tmp_path / "progress.db"
    result = run(["progress_service", "migrate"], {"DATABASE_URL": f"sqlite+aiosqlite:///{path}"})
    assert result.returncode == 0, result.stderr
    with sqlite3.connect(path) as conn:
        tables = {r[0] for r in conn.execute("select name from sqlite_master where type='table'")}
        indexes = {r[0] for r in conn.execute("select name from sqlite_master where type='index'")}
        [(version,)] = conn.execute("select version_num from alembic_version_progress")
    assert {"user_progress", "alembic_version_progress"} <= tables
    assert {"user_progress_owner_item_key", "user_progress_user_type_created"} <= indexes
    from progress_service.app import DEFINITION

    assert version == head_revision(DEFINITION)
    again = run(["progress_service", "migrate"], {"DATABASE_URL": f"sqlite+aiosqlite:///{path}"})
    assert again.returncode == 0, again.stderr


@pytest.fixture
def empty_pg_database(postgres_url: str) -> Iterator[str]:
    """A new, empty database on the test server, dropped afterwards."""
    with scratch_database(postgres_url) as url:
        yield url


@pytest.mark.postgres
def test_postgres_needs_explicit_migrate_then_serves_and_drains(empty_pg_database: str) -> None:
    env = {"DATABASE_URL": empty_pg_database, "JWT_SECRET": "k" * 40}
    refused = run(["progress_service", "serve"], {**env, "GRPC_ADDR": "127.0.0.1:0"})
    assert refused.returncode == 3
    assert "progress_service migrate" in refused.stderr
    assert run(["progress_service", "migrate"], env).returncode == 0

    port = free_port()
    base = {k: v for k, v in os.environ.items() if not k.startswith(("JWT_", "DATABASE_URL"))}
    proc = subprocess.Popen(
        [sys.executable, "-m", "progress_service", "serve"],
        env={**base, **env, "GRPC_ADDR": f"127.0.0.1:{port}", "LOG_FORMAT": "json"},
        cwd=ROOT,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            grpc.channel_ready_future(channel).result(timeout=30)
            health = health_pb2_grpc.HealthStub(channel)
            reply = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    assert '"draining"' in (proc.stderr.read() if proc.stderr else "")
