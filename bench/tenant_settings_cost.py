"""Cost of naming the tenant at the start of each transaction (row-level security settings).

Usage: .venv/bin/python -m bench tenant-settings postgresql://postgres@127.0.0.1/db
Runs the same read unit of work with and without a tenant, interleaved, and prints both (the
unit of work sends BEGIN and the settings in one message, so the difference is what the
settings themselves cost the server).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
import uuid

from sqlalchemy import literal, select

from common.auth import Principal
from common.db import Database
from common.tenancy import TenantScope, tenant_scope

ROUNDS, PER_ROUND = 10, 200
WHO = tenant_scope(Principal(str(uuid.uuid4()), str(uuid.uuid4()), None, False, frozenset()))
ONE = select(literal(1))


async def timed(db: Database, scope: TenantScope | None) -> float:
    started = time.perf_counter()
    for _ in range(PER_ROUND):
        async with db.unit_of_work(scope, lambda *_: None) as uow:
            await uow.executor.scalar(ONE)
    return (time.perf_counter() - started) / PER_ROUND * 1e6


async def measure(url: str) -> None:
    db = Database(url, pool_size=1)
    await timed(db, WHO)  # warm the pool and statement caches
    plain, scoped = [], []
    for _ in range(ROUNDS):
        plain.append(await timed(db, None))
        scoped.append(await timed(db, WHO))
    await db.dispose()
    p, s = statistics.median(plain), statistics.median(scoped)
    print(f"unit of work without a tenant: {p:.0f} us (median of {ROUNDS} x {PER_ROUND})")
    print(f"unit of work with a tenant:    {s:.0f} us")
    print(f"added per transaction:         {s - p:.0f} us ({s / p:.2f}x)")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("url", help="a PostgreSQL URL, e.g. postgresql://postgres@host/db")


def main(args: argparse.Namespace) -> int:
    asyncio.run(measure(args.url))
    return 0
