"""CSV import/export of academic years through the running service, against `psql \\copy`.

Creates a fresh PostgreSQL database, migrates it, serves academic_years_service from a
subprocess, streams a generated file in and out over gRPC, then times `psql \\copy` in and out
of the same file on the same database, and prints rows/s, ratios and the server's peak RSS.

`--variant name@dir` adds another build of the service (a checkout in `dir`), measured the same
way on a database of its own migrated by that build; with `--passes N` the builds take turns N
times, so their ratios come from one run and the same minutes.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import secrets
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from academic_years.v1 import academic_years_pb2 as pb
from academic_years.v1 import academic_years_pb2_grpc
from google.api import httpbody_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from sqlalchemy import make_url

from bench.scratch import free_port, scratch_database
from common.db import sqlalchemy_url
from common.token import mint

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "out"
CHUNK = 64 * 1024


@dataclass(frozen=True)
class Build:
    """A build of academic_years_service: this checkout (`service`) or another one's tree."""

    name: str
    source: Path

    def env(self, db_url: str, **extra: str) -> dict[str, str]:
        """Its environment: its own modules first, the generated stubs, and the database in the
        postgresql+asyncpg:// form every build reads."""
        path = os.pathsep.join([str(self.source), str(ROOT / "gen")])
        return dict(os.environ, PYTHONPATH=path, DATABASE_URL=sqlalchemy_url(db_url), **extra)


def generate(path: Path, rows: int) -> None:
    """name,start_date,end_date,current,importHash: one row per year, a unique hash each."""
    if path.exists():
        return
    rng = random.Random(rows)
    with path.open("w", newline="") as out:
        out.write("name,start_date,end_date,current,importHash\n")
        for i in range(rows):
            year = 1900 + i % 200
            name = f'"Year {year}/{year + 1}, cohort {i}"' if i % 10 == 0 else f"Year {year} #{i}"
            current = "true" if rng.random() < 0.1 else "false"
            out.write(f"{name},{year}-09-01,{year + 1}-07-31,{current},h{i:012x}\n")


def psql(url: str, command: str) -> float:
    started = time.perf_counter()
    argv = ["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", url, "-c", command]
    subprocess.run(argv, check=True)  # noqa: S603  # psql from PATH, our own arguments
    return time.perf_counter() - started


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def upload(path: Path) -> AsyncIterator[httpbody_pb2.HttpBody]:
    with path.open("rb") as source:
        while chunk := source.read(CHUNK):
            yield httpbody_pb2.HttpBody(content_type="text/csv", data=chunk)


async def wait_serving(channel: grpc.aio.Channel, process: subprocess.Popen[bytes]) -> None:
    health = health_pb2_grpc.HealthStub(channel)
    for _ in range(200):
        if process.poll() is not None:
            raise SystemExit("the server exited during start-up")
        try:
            reply = await health.Check(health_pb2.HealthCheckRequest(), timeout=1)
            if reply.status == health_pb2.HealthCheckResponse.SERVING:
                return
        except grpc.aio.AioRpcError:
            pass
        await asyncio.sleep(0.1)
    raise SystemExit("the server did not start")


def prepare_copy_table(url: str, org: str) -> None:
    """A table built like academic_years (same indexes) that `\\copy` can fill from the file,
    each row in the bench's organization, as the service's import places them."""
    defaults = (
        'ALTER id SET DEFAULT gen_random_uuid(), ALTER "createdAt" SET DEFAULT now(), '
        f'ALTER "updatedAt" SET DEFAULT now(), ALTER "organizationId" SET DEFAULT \'{org}\''
    )
    psql(
        url,
        "DROP TABLE IF EXISTS bench_copy; CREATE TABLE bench_copy "
        f"(LIKE academic_years INCLUDING ALL); ALTER TABLE bench_copy {defaults}",
    )


def psql_copy_in(url: str, csv_path: Path) -> float:
    return psql(url, '\\copy bench_copy (name, start_date, end_date, current, "importHash") '
                     f"FROM '{csv_path}' WITH (FORMAT csv, HEADER)")  # fmt: skip


def psql_copy_out(url: str, out_path: Path, org: str) -> float:
    """The service's export query (default order), to a file."""
    query = (
        "SELECT id, name, start_date, end_date FROM academic_years "  # noqa: S608  # a UUID
        f'WHERE "organizationId" = \'{org}\' AND "deletedAt" IS NULL '
        'ORDER BY "createdAt" DESC, id DESC'
    )
    return psql(url, f"\\copy ({query}) TO '{out_path}' WITH (FORMAT csv, HEADER)")


async def export(stub: Any, metadata: Any, path: Path) -> tuple[float, int]:
    started, lines = time.perf_counter(), 0
    with path.open("wb") as sink:
        async for body in stub.ExportAcademicYearsCsv(
            pb.ListAcademicYearsRequest(), metadata=metadata
        ):
            sink.write(body.data)
            lines += body.data.count(b"\n")
    return time.perf_counter() - started, lines - 1


async def measure(
    build: Build,
    db_url: str,
    csv_path: Path,
    rows: int,
    psql_first: bool,
    rounds: int,
    export_rounds: int,
) -> dict[str, Any]:
    """Service and psql take turns on the same database: import and \\copy in (the second one
    pays for the first one's checkpoint), then, on the imported rows vacuumed (so neither
    export pays for setting freshly loaded rows' hint bits, or runs beside autovacuum), export
    and \\copy out `export_rounds` times each, taking turns (the best of each counts)."""
    secret, port, org = secrets.token_hex(32), free_port(), str(uuid.uuid4())
    plain_url = make_url(db_url).set(drivername="postgresql").render_as_string(hide_password=False)
    env = build.env(db_url, GRPC_ADDR=f"127.0.0.1:{port}", JWT_SECRET=secret, LOG_FORMAT="json")
    log = (OUT / f"server_{build.name}_{rows}.log").open("wb")
    process = subprocess.Popen(  # noqa: ASYNC220  # started once, before any timing
        [sys.executable, "-m", "academic_years_service", "serve"],
        env=env,
        stderr=log,
        cwd=build.source,
    )
    try:
        token = mint(secret, sub=str(uuid.uuid4()), org=org, permissions=[
            "CREATE_ACADEMIC_YEARS", "READ_ACADEMIC_YEARS"])  # fmt: skip
        metadata = (("authorization", f"Bearer {token}"),)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            await wait_serving(channel, process)
            stub = academic_years_pb2_grpc.AcademicYearsServiceStub(channel)
            import_s, copy_in_s = float("inf"), float("inf")
            for turn in range(rounds):
                # Alternate who goes first: the second pays for the first one's checkpoint.
                service_first = (turn % 2 == 0) != psql_first
                if turn:
                    psql(plain_url, "TRUNCATE academic_years")
                prepare_copy_table(plain_url, org)
                if not service_first:
                    copy_in_s = min(
                        copy_in_s, await asyncio.to_thread(psql_copy_in, plain_url, csv_path)
                    )
                started = time.perf_counter()
                summary = await stub.ImportAcademicYearsCsv(upload(csv_path), metadata=metadata)
                import_s = min(import_s, time.perf_counter() - started)
                assert summary.created == rows, summary
                import_peak = peak_rss_mb(process.pid)
                if service_first:
                    copy_in_s = min(
                        copy_in_s, await asyncio.to_thread(psql_copy_in, plain_url, csv_path)
                    )
            psql(plain_url, "VACUUM (ANALYZE) academic_years")
            export_s, copy_out_s = float("inf"), float("inf")
            for turn in range(export_rounds):
                out = OUT / f"psql_export_{rows}.csv"
                if turn % 2:
                    copy_out_s = min(
                        copy_out_s, await asyncio.to_thread(psql_copy_out, plain_url, out, org)
                    )
                exported_to = OUT / f"export_{build.name}_{rows}.csv"
                seconds, exported = await export(stub, metadata, exported_to)
                assert exported == rows, exported
                export_s = min(export_s, seconds)
                if not turn % 2:
                    copy_out_s = min(
                        copy_out_s, await asyncio.to_thread(psql_copy_out, plain_url, out, org)
                    )
        peak = peak_rss_mb(process.pid)
    finally:
        process.terminate()
        process.wait(timeout=30)
        log.close()
    return {
        "build": build.name,
        "rows": rows,
        "import_rows_s": rows / import_s,
        "psql_in_rows_s": rows / copy_in_s,
        "export_rows_s": rows / export_s,
        "psql_out_rows_s": rows / copy_out_s,
        "import_ratio": copy_in_s / import_s,
        "export_ratio": copy_out_s / export_s,
        "peak_rss_mb": peak,
        "import_peak_rss_mb": import_peak,
        "psql_first": psql_first,
    }


def run(admin_url: str, build: Build, rows: int, args: argparse.Namespace) -> dict[str, Any]:
    """One build on a fresh database that build migrated."""
    OUT.mkdir(parents=True, exist_ok=True)
    csv_path = OUT / f"academic_years_{rows}.csv"
    generate(csv_path, rows)
    with scratch_database(admin_url, prefix="bench_csv") as db_url:
        subprocess.run([sys.executable, "-m", "academic_years_service", "migrate"], check=True,
                       env=build.env(db_url), cwd=build.source,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
        rounds = (args.psql_first, args.rounds, args.export_rounds)
        return asyncio.run(measure(build, db_url, csv_path, rows, *rounds))


def report(r: dict[str, Any]) -> None:
    rows = int(r["rows"])
    order = "psql \\copy in first" if r["psql_first"] else "service import first"
    print(f"\n{r['build']}: {rows:,} rows, file {OUT / f'academic_years_{rows}.csv'} ({order})")
    print(f"  import via gRPC  {r['import_rows_s']:>12,.0f} rows/s")
    print(
        f"  psql \\copy in    {r['psql_in_rows_s']:>12,.0f} rows/s   ratio {r['import_ratio']:.2f}"
    )
    print(f"  export via gRPC  {r['export_rows_s']:>12,.0f} rows/s")
    print(
        f"  psql \\copy out   {r['psql_out_rows_s']:>12,.0f} rows/s   ratio {r['export_ratio']:.2f}"
    )
    after_import = r["import_peak_rss_mb"]
    print(
        f"  server peak RSS  {r['peak_rss_mb']:>12.1f} MB (VmHWM; {after_import:.1f} after import)"
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--flat-memory", action="store_true",
                        help="also run twice the rows and compare the peak RSS")  # fmt: skip
    parser.add_argument("--admin-url", default=os.environ.get(
        "BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres"))  # fmt: skip
    parser.add_argument("--psql-first", action="store_true",
                        help="run psql \\copy in before the service's import")  # fmt: skip
    parser.add_argument("--rounds", type=int, default=2,
                        help="import rounds, taking turns to go first")  # fmt: skip
    parser.add_argument("--export-rounds", type=int, default=4,
                        help="export rounds, service and psql taking turns")  # fmt: skip
    parser.add_argument("--variant", action="append", default=[], type=_build,
                        help="another build to measure in this run: name@checkout_dir")  # fmt: skip
    parser.add_argument("--passes", type=int, default=1,
                        help="times every build is measured, the builds taking turns")  # fmt: skip


def _build(text: str) -> Build:
    name, at, source = text.partition("@")
    if not (name and at and source) or name == "service":
        raise argparse.ArgumentTypeError("expected name@checkout_dir, name not 'service'")
    return Build(name, Path(source).resolve())


def compare(runs: list[dict[str, Any]]) -> None:
    """Each build's ratios in every pass, in the order they ran, then the best of each."""
    print("\nbuild        pass  import ratio  export ratio  import rows/s  export rows/s  peak MB")
    for name in dict.fromkeys(r["build"] for r in runs):
        mine = [r for r in runs if r["build"] == name]
        for i, r in enumerate(mine, 1):
            print(f"{name:<12} {i:>4}  {r['import_ratio']:>12.2f}  {r['export_ratio']:>12.2f}  "
                  f"{r['import_rows_s']:>13,.0f}  {r['export_rows_s']:>13,.0f}  "
                  f"{r['peak_rss_mb']:>7.1f}")  # fmt: skip
        best = max(r["import_ratio"] for r in mine), max(r["export_ratio"] for r in mine)
        print(f"{name:<12} best  {best[0]:>12.2f}  {best[1]:>12.2f}")


def main(args: argparse.Namespace) -> int:
    builds = [Build("service", ROOT), *args.variant]
    runs: list[dict[str, Any]] = []
    for turn in range(args.passes):
        # Take turns: whoever ran last in one pass runs first in the next.
        for build in builds if turn % 2 == 0 else builds[::-1]:
            runs.append(run(args.admin_url, build, args.rows, args))
            report(runs[-1])
    if len(runs) > 1:
        compare(runs)
    if args.flat_memory:
        results = [next(r for r in runs if r["build"] == "service")]
        results.append(run(args.admin_url, builds[0], args.rows * 2, args))
        report(results[1])
        a, b = results[0]["peak_rss_mb"], results[1]["peak_rss_mb"]
        print(f"\npeak RSS {a:.1f} MB for {args.rows:,} rows, {b:.1f} MB for {args.rows * 2:,}")
    return 0
