"""Cost of naming the tenant at the start of each transaction (row-level security settings).

Usage: .venv/bin/python -m bench tenant-settings postgresql+asyncpg://postgres@127.0.0.1/db
Runs the same read transaction with and without a principal, interleaved, and prints both.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
import uuid

from sqlalchemy import text

from common.auth import Principal
from common.db import Database

ROUNDS, PER_ROUND = 10, 200
WHO = Principal(str(uuid.uuid4()), str(uuid.uuid4()), None, False, frozenset())


async def timed(db: Database, principal: Principal | None) -> float:
    started = time.perf_counter()
    for _ in range(PER_ROUND):
        async with db.transaction(principal=principal) as conn:
            await conn.execute(text("SELECT 1"))
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
    print(f"transaction without principal: {p:.0f} us (median of {ROUNDS} x {PER_ROUND})")
    print(f"transaction with principal:    {s:.0f} us")
    print(f"added per transaction:         {s - p:.0f} us ({s / p:.2f}x)")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("url", help="a SQLAlchemy URL, e.g. postgresql+asyncpg://postgres@host/db")


def main(args: argparse.Namespace) -> int:
    asyncio.run(measure(args.url))
    return 0
