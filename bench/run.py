"""Orchestrates one benchmark run: database, datasets, servers, alternating rounds, report."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import asyncpg
from grpc import aio
from progress.v1 import progress_pb2, progress_pb2_grpc
from sqlalchemy import make_url

from bench import data
from bench.cases import (
    AY_PERMISSIONS,
    SECRET,
    CallBuilder,
    Identities,
    ay_get_calls,
    ay_list_calls,
    deep_page,
    global_years,
    list_calls,
    list_skip_calls,
    upsert_calls,
)
from bench.load import LoadGenerator, Record
from bench.plans import explain_cases
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
    ay_organizations: int  # organizations of ay_years each for the global-access cases
    deep_rows: int  # rows of the one caller the keyset paging cases page through
    deep_limit: int  # their page size
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
        self, case: str, target: str, server: Server, build: CallBuilder, rnd: int, share: int = 1
    ) -> Record:
        o = self.options
        self._runs += 1
        warmup, requests = max(1, o.warmup // share), max(1, o.requests // share)
        calls = build(self._runs, warmup + requests)
        async with (
            LoadGenerator(server.addr, channels=o.channels, concurrency=o.concurrency) as gen,
            ConnectionSampler(self.dsn) as connections,
        ):
            await gen.run(calls[:warmup])
            cpu0, client0 = server.cpu_seconds(), time.process_time()
            connections.reset()
            result = await gen.run(calls[warmup:])
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
            f"  {case:<26} {record.target:<18} round {rnd}: {record.rps:8.1f} rps"
            f"  p50 {record.p50_ms:7.2f} ms  p99 {record.p99_ms:7.2f} ms"
            f"  cpu {record.server_cpu_us_per_req:7.1f} us/req"
            f"  errors {sum(result.errors.values())}"
            f"  db conns {record.db_connections if record.db_connections is not None else '-'}",
            flush=True,
        )
        return record

    def selected(self, name: str) -> bool:
        return not self.options.cases or name.startswith(self.options.cases)

    async def case(
        self,
        name: str,
        service: str,
        build: CallBuilder,
        only: tuple[str, ...] = (),
        share: int = 1,
    ) -> None:
        """Every target (or those in `only`) once per round; the order rotates so none always
        goes first. A case whose every call reads the whole table runs 1/`share` of the calls."""
        await self.side_by_side(service, [(name, build, only)], share)

    async def side_by_side(
        self, service: str, cases: list[tuple[str, CallBuilder, tuple[str, ...]]], share: int = 1
    ) -> None:
        """Cases (name, calls, targets as in `case`) taking turns within each round, so that
        their ratio is measured on the same minutes of the machine."""
        chosen = [case for case in cases if self.selected(case[0])]
        for rnd in range(self.options.rounds):
            shift = rnd % max(len(chosen), 1)
            for name, build, only in chosen[shift:] + chosen[:shift]:
                names = [n for n in self.targets if not only or n in only]
                turn = rnd % len(names)
                for target in names[turn:] + names[:turn]:
                    server = self.targets[target][service]
                    await self.measure(name, target, server, build, rnd, share)


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


def uses_sink(options: Options) -> bool:
    """Whether a variant names the OTLP sink (`{sink}` in a value, e.g. an OTLP endpoint)."""
    return any("{sink}" in value for _, _, env in options.variants for value in env.values())


def service_targets(
    options: Options, sa_url: str, own_urls: dict[str, str], sink: str | None = None
) -> list[tuple[str, dict[str, Target]]]:
    """Each service target is one process per service, as deployed. A variant built from other
    source (`name@dir`) serves from a database of its own (`own_urls`), migrated by that
    source: a build from before a migration must not be measured on the indexes it added."""
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
        extra = {k: v.replace("{sink}", sink or "") for k, v in extra.items()}
        url = own_urls.get(name)
        own = {"DATABASE_URL": sqlalchemy_url(url)} if url else {}
        variants.append((name, source or REPO_ROOT, {**env, **own, **extra}))
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


def _dsn(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


async def run(options: Options, sa_url: str, own_urls: dict[str, str]) -> dict[str, Any]:
    """The whole run on the fresh database `sa_url` (and each variant's own, `own_urls`);
    every server is stopped before returning."""
    servers: list[Server] = []
    try:
        return await _run_in(options, _dsn(sa_url), sa_url, own_urls, servers)
    finally:
        for server in servers:
            server.stop()


def migrate_with(source: Path, url: str) -> None:
    """Both services' migrations as the build in `source` has them."""
    env = {
        **os.environ,
        "DATABASE_URL": sqlalchemy_url(url),
        "PYTHONPATH": os.pathsep.join([str(source), str(REPO_ROOT / "gen")]),
    }
    for module in SERVICES.values():
        subprocess.run(  # noqa: S603  # our own interpreter and the variant's module
            [sys.executable, "-m", module, "migrate"], cwd=source, env=env, check=True
        )


async def start_targets(
    o: Options, dsn: str, sa_url: str, own_urls: dict[str, str], servers: list[Server]
) -> dict[str, dict[str, Server]]:
    """Every target's servers, started and answering; `servers` collects them for shutdown."""
    logs = o.out / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    baseline = Server(
        Target("baseline", ("-m", "bench.baseline", "--dsn", dsn, "--pool-size", "10")), logs
    )
    servers.append(baseline)
    targets = {"baseline": {kind: baseline for kind in SERVICES}}
    sink = None
    if uses_sink(o):  # an OTLP receiver the tracing variants export to (bench/otlp_sink.py)
        sink = Server(Target("otlp-sink", ("-m", "bench.otlp_sink")), logs)
        servers.append(sink)
    for name, by_kind in service_targets(o, sa_url, own_urls, sink.addr if sink else None):
        targets[name] = {kind: Server(target, logs) for kind, target in by_kind.items()}
        servers.extend(targets[name].values())
    await asyncio.gather(*(s.wait_ready() for s in servers))
    return targets


async def _run_in(
    options: Options, dsn: str, sa_url: str, own_urls: dict[str, str], servers: list[Server]
) -> dict[str, Any]:
    from academic_years_service.app import DEFINITION as AY_DEF
    from progress_service.app import DEFINITION as PROGRESS_DEF

    o = options
    started = time.perf_counter()
    for definition in (PROGRESS_DEF, AY_DEF):
        await asyncio.to_thread(
            upgrade, sa_url, definition.migrations_dir, definition.version_table
        )
    sources = {name: source for name, source, _env in o.variants if source}
    for name, url in own_urls.items():
        await asyncio.to_thread(migrate_with, sources[name], url)
    every = [dsn, *(_dsn(url) for url in own_urls.values())]  # the same data in each
    for db in every:
        await data.seed_academic_years(db, 2, o.ay_years, o.ay_with_refs, 5, 3)
        await data.seed_progress(db, 0, o.list_users, o.rows_per_user)
    small_rows = await data.count_rows(dsn, "user_progress")
    bench = Bench(o, await start_targets(o, dsn, sa_url, own_urls, servers), dsn)
    ids = Identities()
    print(f"list on {small_rows} rows", flush=True)
    await bench.case("progress.list@10k", "progress", list_calls(ids, o.list_users))
    # The big table, where a case selected reads it (the service-only ones on its database).
    shared = ("progress.list@1M", "progress.upsert")
    growing = every if any(map(bench.selected, shared)) else every[:1]
    if not o.cases or any(case.startswith("progress.") for case in o.cases):
        for db in growing:
            await data.seed_progress(db, o.list_users, o.big_users, o.rows_per_user)
    big_rows = await data.count_rows(dsn, "user_progress")
    print(f"list on {big_rows} rows", flush=True)
    await bench.case("progress.list@1M", "progress", list_calls(ids, o.list_users))
    # The upsert with a request id on every call runs beside the one without, round by round,
    # on the services (the baseline has no request ids): their ratio is the ids' cost.
    services = tuple(name for name in bench.targets if name != "baseline")
    await bench.side_by_side(
        "progress",
        [
            ("progress.upsert", upsert_calls(ids, o.upsert_users, o.upsert_items), ()),
            (
                "progress.upsert+request-id",
                upsert_calls(ids, o.upsert_users, o.upsert_items, request_ids=True),
                services,
            ),
        ],
    )
    ay_ids = Identities(org_of=lambda _user: data.ay_org_id(0), permissions=AY_PERMISSIONS)
    await bench.case("ay.list-name-filter", "ay", ay_list_calls(ay_ids))
    await bench.case("ay.get-associations", "ay", ay_get_calls(ay_ids, o.ay_with_refs))
    walks = await keyset_cases(bench, dsn)
    await skip_count_cases(bench, dsn)
    plans = await explain_cases(dsn, walks, bench.selected)
    for name, texts in plans.items():
        print(f"\nplans of {name}:\n" + "\n\n".join(texts), flush=True)
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
        "walks": walks,
        "plans": plans,
    }


# The keyset cases and the global-access ones read what only this build answers (page_token,
# skip_count, a global caller's list): they run on the service alone.
SERVICE_ONLY = ("service",)
# The calls that count every row of the 1M-year table run this fraction of the others' number.
WHOLE_TABLE_SHARE = 20


async def keyset_cases(bench: Bench, dsn: str) -> dict[str, Any]:
    """One caller with `deep_rows` rows: its first page, its last page by page_token and by
    page number, each under load; and the two walks from first page to last, timed."""
    o = bench.options
    names = ("page.first@deep", "page.last-token@deep", "page.last-offset@deep")
    if not any(bench.selected(name) for name in names):
        return {}
    await data.seed_progress(dsn, data.DEEP_USER, data.DEEP_USER + 1, o.deep_rows)
    ids = Identities()
    server = bench.targets["service"]["progress"]
    walks = await walk_both_ways(server.addr, ids, o.deep_limit)
    print(
        f"walk of {walks['pages']} pages of {o.deep_limit}: by token {walks['token_seconds']} s"
        f" (last page {walks['token_last_ms']} ms), by page {walks['page_seconds']} s"
        f" (last page {walks['page_last_ms']} ms)",
        flush=True,
    )
    last = walks["pages"] - 1
    await bench.case(names[0], "progress", deep_page(ids, o.deep_limit), SERVICE_ONLY)
    token = deep_page(ids, o.deep_limit, page_token=walks["last_token"])
    await bench.case(names[1], "progress", token, SERVICE_ONLY)
    await bench.case(names[2], "progress", deep_page(ids, o.deep_limit, page=last), SERVICE_ONLY)
    return walks


async def walk_both_ways(addr: str, ids: Identities, limit: int) -> dict[str, Any]:
    """Every page of the deep caller's list, one caller, by next_page_token and by page."""
    metadata = ids.of(data.DEEP_USER)
    async with aio.insecure_channel(addr) as channel:
        stub = progress_pb2_grpc.UserProgressServiceStub(channel)

        async def page(**paging: Any) -> tuple[Any, float]:
            request = progress_pb2.ListUserProgressRequest(
                progress_type="sign_learned", limit=limit, skip_count=True, **paging
            )
            began = time.perf_counter()
            response = await stub.ListUserProgress(request, metadata=metadata)
            return response, (time.perf_counter() - began) * 1000

        began, token, pages = time.perf_counter(), "", 0
        while True:
            response, token_last_ms = await page(page_token=token)
            pages += 1
            if not response.next_page_token:
                break
            token = response.next_page_token
        last_token = token  # the one the last page was read with
        token_seconds = time.perf_counter() - began
        began = time.perf_counter()
        for number in range(pages):
            _response, page_last_ms = await page(page=number)
        page_seconds = time.perf_counter() - began
    return {
        "limit": limit,
        "pages": pages,
        "last_token": last_token,
        "token_seconds": round(token_seconds, 2),
        "token_last_ms": round(token_last_ms, 2),
        "page_seconds": round(page_seconds, 2),
        "page_last_ms": round(page_last_ms, 2),
    }


async def skip_count_cases(bench: Bench, dsn: str) -> None:
    """A global-access caller's Count and List over every organization's years (ay_years in
    each of ay_organizations), and List with skip_count; and the progress list@1M again with
    skip_count."""
    o = bench.options
    names = ("ay.count@global", "ay.list@global", "ay.list-skip@global", "progress.list-skip@1M")
    if not any(bench.selected(name) for name in names):
        return
    await data.seed_more_years(dsn, 2, o.ay_organizations, o.ay_years)
    years = await data.count_rows(dsn, "academic_years")
    print(f"global-access calls on {years} academic years", flush=True)
    everyone = Identities(permissions=AY_PERMISSIONS, global_access=True)
    # A count of every organization's years reads the whole table: a second or so a call.
    counting = global_years(everyone, "CountAcademicYears")
    await bench.case(names[0], "ay", counting, SERVICE_ONLY, share=WHOLE_TABLE_SHARE)
    listing = global_years(everyone, "ListAcademicYears", limit=10)
    await bench.case(names[1], "ay", listing, SERVICE_ONLY, share=WHOLE_TABLE_SHARE)
    skipping = global_years(everyone, "ListAcademicYears", limit=10, skip_count=True)
    await bench.case(names[2], "ay", skipping, SERVICE_ONLY)
    ids = Identities()
    await bench.case(names[3], "progress", list_skip_calls(ids, o.list_users), SERVICE_ONLY)


def _variant(text: str) -> tuple[str, Path | None, dict[str, str]]:
    """`name[@source_dir][:KEY=VALUE,...]`: another service build or setting to compare; `{sink}`
    in a value is the address of an OTLP receiver the run starts (bench/otlp_sink.py)."""
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
        help="extra service target: name[@source_dir][:KEY=VALUE,...]; {sink} in a value is the "
        "address of an OTLP trace receiver the run starts",
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
            "ay_organizations": 5,
            "deep_rows": 1000,
            "deep_limit": 100,
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
            "ay_organizations": 100,  # 1,000,000 years
            "deep_rows": 100_000,
            "deep_limit": 100,
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
    with contextlib.ExitStack() as stack:
        sa_url = stack.enter_context(scratch_database(server, prefix="bench"))
        own_urls = {
            name: stack.enter_context(scratch_database(server, prefix=f"bench_{name}"))
            for name, source, _env in options.variants
            if source is not None
        }
        try:
            import uvloop
        except ImportError:
            result = asyncio.run(run(options, sa_url, own_urls))
        else:
            result = uvloop.run(run(options, sa_url, own_urls))
    print_table(result["summary"], result["targets"])
    path = options.out / "results.json"
    path.write_text(json.dumps(result, indent=2, default=str) + "\n")
    print(f"\nwrote {path}")
    return 0 if not any(r["errors"] for r in result["summary"]) else 1
