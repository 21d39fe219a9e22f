"""Orchestrates one benchmark run: database, datasets, servers, alternating rounds, report."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import asyncpg
from sqlalchemy import make_url

from bench import data
from bench.cases import (
    AY_PERMISSIONS,
    SECRET,
    CallBuilder,
    Identities,
    ay_get_calls,
    ay_list_calls,
    list_calls,
    upsert_calls,
)
from bench.load import LoadGenerator, Record
from bench.report import check_targets, print_table, summarise
from bench.scratch import scratch_database
from bench.servers import REPO_ROOT, Server, Target
from common.db import sqlalchemy_url
from common.migrations import upgrade

DEFAULT_URL = "postgresql://postgres@127.0.0.1:5432/postgres"


@dataclass(frozen=True, slots=True)
class Options:
    quick: bool
    rounds: int
    concurrency: int
    channels: int
    requests: int
    warmup: int
    list_users: int  # users whose lists are read; each has `rows_per_user` rows
    rows_per_user: int
    big_users: int  # users in the big table (big_users * rows_per_user rows)
    upsert_users: int
    upsert_items: int
    ay_years: int  # academic years in each of two organizations
    ay_with_refs: int  # years of organization 0 that have classes and timetables
    workers2: bool
    variants: tuple[tuple[str, Path | None, dict[str, str]], ...]
    cases: tuple[str, ...]
    out: Path


class Bench:
    def __init__(self, options: Options, targets: dict[str, dict[str, Server]], dsn: str) -> None:
        self.options = options
        self.dsn = dsn
        self.targets = targets  # target name -> service ("progress", "ay") -> its server
        self.records: list[Record] = []
        self._runs = 0

    async def measure(
        self, case: str, target: str, server: Server, build: CallBuilder, rnd: int
    ) -> Record:
        o = self.options
        self._runs += 1
        calls = build(self._runs, o.warmup + o.requests)
        async with (
            LoadGenerator(server.addr, channels=o.channels, concurrency=o.concurrency) as gen,
            ConnectionSampler(self.dsn) as connections,
        ):
            await gen.run(calls[: o.warmup])
            cpu0, client0 = server.cpu_seconds(), time.process_time()
            connections.reset()
            result = await gen.run(calls[o.warmup :])
            cpu = server.cpu_seconds() - cpu0
            client = time.process_time() - client0
        record = Record(
            case=case,
            target=target,
            round=rnd,
            requests=result.requests,
            errors=result.errors,
            rps=round(result.rps, 1),
            p50_ms=round(result.p50_ms, 3),
            p99_ms=round(result.p99_ms, 3),
            mean_ms=round(result.mean_ms, 3),
            server_cpu_s=round(cpu, 3),
            server_cpu_us_per_req=round(cpu / result.requests * 1e6, 1),
            client_cpu_s=round(client, 3),
            db_connections=connections.most(server.pids()),
        )
        self.records.append(record)
        print(
            f"  {case:<22} {record.target:<18} round {rnd}: {record.rps:8.1f} rps"
            f"  p50 {record.p50_ms:7.2f} ms  p99 {record.p99_ms:7.2f} ms"
            f"  cpu {record.server_cpu_us_per_req:7.1f} us/req"
            f"  errors {sum(result.errors.values())}"
            f"  db conns {record.db_connections if record.db_connections is not None else '-'}",
            flush=True,
        )
        return record

    async def case(self, name: str, service: str, build: CallBuilder) -> None:
        """Every target once per round; the order rotates so none always goes first."""
        if self.options.cases and not name.startswith(self.options.cases):
            return
        for rnd in range(self.options.rounds):
            names = list(self.targets)
            shift = rnd % len(names)
            for target in names[shift:] + names[:shift]:
                await self.measure(name, target, self.targets[target][service], build, rnd)


class ConnectionSampler:
    """Samples pg_stat_activity every 50 ms while a round runs: the most connections each
    named process (application_name `<service>/<pid>`) held at once."""

    def __init__(self, dsn: str) -> None:
        self._dsn = dsn
        self._most: dict[str, int] = {}
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> ConnectionSampler:
        self._conn = await asyncpg.connect(self._dsn)
        self._task = asyncio.create_task(self._sample())
        return self

    async def __aexit__(self, *_exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        await self._conn.close()

    def reset(self) -> None:
        self._most.clear()

    async def _sample(self) -> None:
        while True:
            rows = await self._conn.fetch(
                "SELECT application_name, count(*) FROM pg_stat_activity"
                " WHERE datname = current_database() AND application_name LIKE '%/%'"
                " GROUP BY application_name"
            )
            for name, count in rows:
                self._most[name] = max(self._most.get(name, 0), count)
            await asyncio.sleep(0.05)

    def most(self, pids: list[int]) -> int | None:
        """The most connections any one of `pids` held, or None if none of them is named."""
        counts = [n for name, n in self._most.items() if int(name.rsplit("/", 1)[1]) in pids]
        return max(counts) if counts else None


def cpu_model() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor()


async def machine(dsn: str) -> dict[str, Any]:
    conn = await asyncpg.connect(dsn)
    try:
        pg = await conn.fetchval("SHOW server_version")
    finally:
        await conn.close()
    return {
        "nproc": os.cpu_count(),
        "cpu_model": cpu_model(),
        "postgresql": pg,
        "python": platform.python_version(),
    }


SERVICES = {"progress": "progress_service", "ay": "academic_years_service"}


def service_targets(options: Options, sa_url: str) -> list[tuple[str, dict[str, Target]]]:
    """Each service target is one process per service, as deployed."""
    # The postgresql+asyncpg:// form: every build reads it, also one from before the services
    # took plain postgresql:// URLs (a `before@…` variant).
    env = {
        "DATABASE_URL": sqlalchemy_url(sa_url),
        "JWT_SECRET": SECRET,
        "LOG_FORMAT": "json",
        "WORKERS": "1",
    }
    variants: list[tuple[str, Path, dict[str, str]]] = [("service", REPO_ROOT, env)]
    if options.workers2:
        variants.append(("service-workers2", REPO_ROOT, {**env, "WORKERS": "2"}))
    for name, source, extra in options.variants:
        variants.append((name, source or REPO_ROOT, {**env, **extra}))
    return [
        (
            name,
            {
                kind: Target(f"{name}-{kind}", ("-m", module, "serve"), venv, source)
                for kind, module in SERVICES.items()
            },
        )
        for name, source, venv in variants
    ]


async def run(options: Options, sa_url: str) -> dict[str, Any]:
    """The whole run on the fresh database `sa_url`; every server is stopped before returning."""
    dsn = make_url(sa_url).set(drivername="postgresql").render_as_string(hide_password=False)
    servers: list[Server] = []
    try:
        return await _run_in(options, dsn, sa_url, servers)
    finally:
        for server in servers:
            server.stop()


async def start_targets(
    o: Options, dsn: str, sa_url: str, servers: list[Server]
) -> dict[str, dict[str, Server]]:
    """Every target's servers, started and answering; `servers` collects them for shutdown."""
    logs = o.out / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    baseline = Server(
        Target("baseline", ("-m", "bench.baseline", "--dsn", dsn, "--pool-size", "10")), logs
    )
    servers.append(baseline)
    targets = {"baseline": {kind: baseline for kind in SERVICES}}
    for name, by_kind in service_targets(o, sa_url):
        targets[name] = {kind: Server(target, logs) for kind, target in by_kind.items()}
        servers.extend(targets[name].values())
    await asyncio.gather(*(s.wait_ready() for s in servers))
    return targets


async def _run_in(options: Options, dsn: str, sa_url: str, servers: list[Server]) -> dict[str, Any]:
    from academic_years_service.app import DEFINITION as AY_DEF
    from progress_service.app import DEFINITION as PROGRESS_DEF

    o = options
    started = time.perf_counter()
    for definition in (PROGRESS_DEF, AY_DEF):
        await asyncio.to_thread(
            upgrade, sa_url, definition.migrations_dir, definition.version_table
        )
    await data.seed_academic_years(dsn, 2, o.ay_years, o.ay_with_refs, 5, 3)
    await data.seed_progress(dsn, 0, o.list_users, o.rows_per_user)
    small_rows = await data.count_rows(dsn, "user_progress")
    bench = Bench(o, await start_targets(o, dsn, sa_url, servers), dsn)
    ids = Identities()
    print(f"list on {small_rows} rows", flush=True)
    await bench.case("progress.list@10k", "progress", list_calls(ids, o.list_users))
    await data.seed_progress(dsn, o.list_users, o.big_users, o.rows_per_user)
    big_rows = await data.count_rows(dsn, "user_progress")
    print(f"list on {big_rows} rows", flush=True)
    await bench.case("progress.list@1M", "progress", list_calls(ids, o.list_users))
    await bench.case(
        "progress.upsert", "progress", upsert_calls(ids, o.upsert_users, o.upsert_items)
    )
    ay_ids = Identities(org_of=lambda _user: data.ay_org_id(0), permissions=AY_PERMISSIONS)
    await bench.case("ay.list-name-filter", "ay", ay_list_calls(ay_ids))
    await bench.case("ay.get-associations", "ay", ay_get_calls(ay_ids, o.ay_with_refs))
    summary = summarise(bench.records)
    checks = check_targets(summary)
    return {
        "machine": await machine(dsn),
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(o).items()}
        | {"small_table_rows": small_rows, "big_table_rows": big_rows},
        "seconds": round(time.perf_counter() - started, 1),
        "runs": [asdict(r) for r in bench.records],
        "summary": summary,
        "targets": checks,
    }


def _variant(text: str) -> tuple[str, Path | None, dict[str, str]]:
    """`name[@source_dir][:KEY=VALUE,...]`: another service build or setting to compare."""
    head, _, settings = text.partition(":")
    name, _, source = head.partition("@")
    env = dict(item.split("=", 1) for item in settings.split(",") if item)
    return name, Path(source) if source else None, env


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quick", action="store_true", help="small counts: checks the harness only")
    p.add_argument("--rounds", type=int, help="rounds per case (targets alternate in each)")
    p.add_argument("--concurrency", type=int, default=32, help="concurrent callers")
    p.add_argument("--channels", type=int, default=4, help="client connections")
    p.add_argument("--requests", type=int, help="measured requests per target and round")
    p.add_argument("--cases", help="comma-separated case name prefixes to run (default all)")
    p.add_argument("--no-workers2", action="store_true", help="skip the WORKERS=2 service")
    p.add_argument(
        "--variant",
        action="append",
        default=[],
        type=_variant,
        help="extra service target: name[@source_dir][:KEY=VALUE,...]",
    )
    p.add_argument("--out", type=Path, default=REPO_ROOT / "bench" / "out")


def options_from(a: argparse.Namespace) -> Options:
    if a.quick:
        sizes = {
            "rounds": 1,
            "requests": 200,
            "warmup": 20,
            "list_users": 4,
            "rows_per_user": 50,
            "big_users": 20,
            "upsert_users": 20,
            "upsert_items": 20,
            "ay_years": 200,
            "ay_with_refs": 10,
        }
    else:
        sizes = {
            "rounds": 3,
            "requests": 4000,
            "warmup": 400,
            "list_users": 10,
            "rows_per_user": 1000,
            "big_users": 1000,
            "upsert_users": 1000,
            "upsert_items": 200,
            "ay_years": 10_000,
            "ay_with_refs": 100,
        }
    sizes["rounds"] = a.rounds or sizes["rounds"]
    sizes["requests"] = a.requests or sizes["requests"]
    return Options(
        quick=a.quick,
        concurrency=a.concurrency,
        channels=a.channels,
        workers2=not (a.no_workers2 or a.quick),
        variants=tuple(a.variant),
        cases=tuple(a.cases.split(",")) if a.cases else (),
        out=a.out,
        **sizes,
    )


def main(args: argparse.Namespace) -> int:
    options = options_from(args)
    options.out.mkdir(parents=True, exist_ok=True)
    server = (
        os.environ.get("BENCH_DATABASE_URL") or os.environ.get("TEST_DATABASE_URL") or DEFAULT_URL
    )
    with scratch_database(server, prefix="bench") as sa_url:
        try:
            import uvloop
        except ImportError:
            result = asyncio.run(run(options, sa_url))
        else:
            result = uvloop.run(run(options, sa_url))
    print_table(result["summary"], result["targets"])
    path = options.out / "results.json"
    path.write_text(json.dumps(result, indent=2, default=str) + "\n")
    print(f"\nwrote {path}")
    return 0 if not any(r["errors"] for r in result["summary"]) else 1
