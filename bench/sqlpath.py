"""`python -m bench sqlpath`: CPU per progress list call through each layer, in one process.

Sequential calls on one connection, so only the client-side cost differs: raw asyncpg (the
benchmark baseline's SQL), the same with the tenant BEGIN the unit of work sends, the repository
in a unit of work, and the whole service call.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
from collections.abc import Awaitable, Callable

import asyncpg
from sqlalchemy import make_url

from bench import baseline, data
from bench.baseline_ay import begin_as
from bench.run import DEFAULT_URL
from bench.scratch import scratch_database
from common.auth import Principal
from common.db import Database
from common.migrations import upgrade
from common.pagination import PageRequest
from common.tenancy import tenant_scope
from progress_service.app import DEFINITION
from progress_service.repository import UserProgressRepository
from progress_service.service import UserProgressService

Step = Callable[[], Awaitable[object]]


async def cpu_per_call(step: Step, calls: int) -> float:
    for _ in range(calls // 10):
        await step()
    started = time.process_time()
    for _ in range(calls):
        await step()
    return (time.process_time() - started) / calls * 1e6


async def measure(dsn: str, sa_url: str, calls: int) -> dict[str, float]:
    principal = Principal(data.user_id(1), data.user_org_id(1), None, False, frozenset())
    db = Database(dsn, pool_size=1)
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=1)
    service = UserProgressService(db)
    args = (principal.organization_id, principal.user_id, "sign_learned")
    scope = tenant_scope(principal)

    async def raw() -> object:
        async with pool.acquire() as conn, conn.transaction():
            await conn.fetchval(baseline.COUNT_SQL, *args)
            return await conn.fetch(baseline.LIST_SQL, *args, 10, 0)

    async def raw_tenant() -> object:
        async with pool.acquire() as conn:
            await begin_as(conn, data.user_org_id(1), principal.user_id)
            await conn.fetchval(baseline.COUNT_SQL, *args)
            rows = await conn.fetch(baseline.LIST_SQL, *args, 10, 0)
            await conn.execute("ROLLBACK")
            return rows

    async def repository() -> object:
        async with db.unit_of_work(scope, UserProgressRepository) as uow:
            return await uow.repo.list("sign_learned", None, PageRequest(10, 0), None)

    async def full_service() -> object:
        return await service.list(principal, "sign_learned", None, 10, 0)

    steps: dict[str, Step] = {
        "asyncpg": raw,
        "asyncpg + tenant BEGIN": raw_tenant,
        "repository in a unit of work": repository,
        "service": full_service,
    }
    results: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(3):  # alternate, keep the best of three
        for name, step in steps.items():
            results[name].append(await cpu_per_call(step, calls))
    await db.dispose()
    await pool.close()
    return {name: min(values) for name, values in results.items()}


async def run(sa_url: str) -> None:
    """Migrate and seed the fresh database `sa_url`, then measure and print each layer."""
    dsn = make_url(sa_url).set(drivername="postgresql").render_as_string(hide_password=False)
    await asyncio.to_thread(upgrade, sa_url, DEFINITION.migrations_dir, DEFINITION.version_table)
    await data.seed_progress(dsn, 0, 10, 1000)
    for layer, cpu in (await measure(dsn, sa_url, 2000)).items():
        print(f"{layer:<28} {cpu:7.1f} us CPU per list call (count + page of 10)")


def main(_args: argparse.Namespace) -> int:
    import uvloop

    server = (
        os.environ.get("BENCH_DATABASE_URL") or os.environ.get("TEST_DATABASE_URL") or DEFAULT_URL
    )
    with scratch_database(server, prefix="bench_sqlpath") as sa_url:
        uvloop.run(run(sa_url))
    return 0
