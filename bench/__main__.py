"""`python -m bench BENCHMARK [options]`; `python -m bench BENCHMARK --help` lists its options."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from dataclasses import dataclass

from bench import csv_bench, csv_export, list_cpu, run, sqlpath, tenant_settings_cost, tracing_cost


@dataclass(frozen=True)
class Benchmark:
    help: str
    description: str | None
    main: Callable[[argparse.Namespace], int]
    add_arguments: Callable[[argparse.ArgumentParser], None] | None = None


BENCHMARKS = {
    "rpc": Benchmark(
        "both services against a bare asyncpg baseline under the same load (make bench)",
        run.__doc__,
        run.main,
        run.add_arguments,
    ),
    "csv": Benchmark(
        "academic-years CSV import/export through the service against psql \\copy (make bench-csv)",
        csv_bench.__doc__,
        csv_bench.main,
        csv_bench.add_arguments,
    ),
    "csv-export": Benchmark(
        "academic-years CSV export in one process, raw COPY against the service, by batch size",
        csv_export.__doc__,
        csv_export.main,
        csv_export.add_arguments,
    ),
    "sqlpath": Benchmark(
        "CPU per progress list call through each layer, in one process",
        sqlpath.__doc__,
        sqlpath.main,
    ),
    "tenant-settings": Benchmark(
        "cost of naming the tenant (row-level security settings) in each transaction",
        tenant_settings_cost.__doc__,
        tenant_settings_cost.main,
        tenant_settings_cost.add_arguments,
    ),
    "tracing-cost": Benchmark(
        "CPU per call of a server span: none, ours, opentelemetry-instrumentation-grpc's",
        tracing_cost.__doc__,
        tracing_cost.main,
        tracing_cost.add_arguments,
    ),
    "list-cpu": Benchmark(
        "CPU of one progress list call through the service layer (to compare two builds)",
        list_cpu.__doc__,
        list_cpu.main,
        list_cpu.add_arguments,
    ),
}


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    commands = top.add_subparsers(dest="benchmark", required=True, metavar="BENCHMARK")
    for name, bench in BENCHMARKS.items():
        command = commands.add_parser(
            name,
            help=bench.help,
            description=bench.description,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        if bench.add_arguments is not None:
            bench.add_arguments(command)
        command.set_defaults(main=bench.main)
    return top


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    return int(args.main(args))


if __name__ == "__main__":
    sys.exit(main())
