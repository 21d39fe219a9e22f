"""`python -m bench csv-export`: the academic-years CSV export in one process, by batch size.

Seeds a scratch database with `--rows` years in one organization (VACUUM ANALYZE, so every
boundary query is index-only), then times, best of `--repeat`, alternating: one raw asyncpg
`COPY (SELECT ...) TO STDOUT` of the same rows in the same order (no formula escaping, as
`psql \\copy` in `bench csv`), the service's `export_csv` for the organization's caller (one
COPY), and for a global-access caller (keyset pages, one COPY each) with each `--batch` as
`EXPORT_BATCH_ROWS`. All write to a file. No gRPC: the server's share of `bench csv`'s export
ratio.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import replace
from pathlib import Path

import asyncpg
from sqlalchemy import make_url

from academic_years_service.app import DEFINITION
from academic_years_service.domain import FilterRequest
from academic_years_service.service import AcademicYearsService
from bench.run import DEFAULT_URL
from bench.scratch import scratch_database
from common.auth import Principal
from common.csvstream import export as csv_export
from common.db import Database
from common.migrations import upgrade

ORG = str(uuid.uuid4())
SEED = (
    'INSERT INTO academic_years (id, name, start_date, end_date, "importHash", "organizationId", '
    '"createdAt", "updatedAt") SELECT gen_random_uuid(), CASE WHEN i % 10 = 0 '
    "THEN 'Year, ' || i ELSE 'Year ' || i END, date '2020-01-01' + i % 1000, "
    "date '2021-01-01' + i % 1000, md5(i::text), $1::uuid, now() - i * interval '1 second', now() "
    "FROM generate_series(1, $2::int) i"
)
RAW = (
    "SELECT id, name, start_date, end_date FROM academic_years "  # noqa: S608  # a UUID
    f'WHERE "organizationId" = \'{ORG}\' AND "deletedAt" IS NULL ORDER BY "createdAt" DESC, id DESC'
)


async def timed(step: Callable[[], Awaitable[None]]) -> float:
    started = time.perf_counter()
    await step()
    return time.perf_counter() - started


async def measure(dsn: str, sa_url: str, args: argparse.Namespace, out: Path) -> None:
    conn = await asyncpg.connect(dsn)
    await conn.execute(SEED, ORG, args.rows)
    await conn.execute("VACUUM ANALYZE academic_years")
    db = Database(sa_url, pool_size=1)
    service = AcademicYearsService(db)
    staff = Principal(str(uuid.uuid4()), ORG, None, False, frozenset({"READ_ACADEMIC_YEARS"}))
    everyone = replace(staff, global_access=True)  # the same rows: the only organization

    async def raw() -> None:
        with (out / "raw.csv").open("wb") as sink:

            async def write(piece: bytes) -> None:
                sink.write(piece)

            await conn.copy_from_query(RAW, output=write, format="csv")

    def export(principal: Principal) -> Callable[[], Awaitable[None]]:
        async def run() -> None:
            with (out / "service.csv").open("wb") as sink:
                async for chunk in service.export_csv(principal, FilterRequest()):
                    sink.write(chunk)

        return run

    best: dict[str, float] = {}

    def keep(name: str, seconds: float) -> None:
        best[name] = min(best.get(name, 1e9), seconds)

    for _ in range(args.repeat):
        keep("raw COPY", await timed(raw))
        keep("service, one organization", await timed(export(staff)))
        for batch in args.batch:
            csv_export.EXPORT_BATCH_ROWS = batch
            keep(f"service, global, batch {batch:,}", await timed(export(everyone)))
    for name, seconds in best.items():
        print(f"{name:<34} {seconds * 1000:7.1f} ms  {args.rows / seconds:12,.0f} rows/s")
    await db.dispose()
    await conn.close()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--rows", type=int, default=300_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--batch", type=int, nargs="+", default=[csv_export.EXPORT_BATCH_ROWS])


def main(args: argparse.Namespace) -> int:
    server = (
        os.environ.get("BENCH_DATABASE_URL") or os.environ.get("TEST_DATABASE_URL") or DEFAULT_URL
    )
    with (
        scratch_database(server, prefix="bench_csv_export") as sa_url,
        tempfile.TemporaryDirectory() as tmp,
    ):
        dsn = make_url(sa_url).set(drivername="postgresql").render_as_string(hide_password=False)
        upgrade(sa_url, DEFINITION.migrations_dir, DEFINITION.version_table)
        asyncio.run(measure(dsn, sa_url, args, Path(tmp)))
    return 0
