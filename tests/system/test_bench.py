"""`python -m bench rpc --quick` end to end: the harness yields a well-formed result (no timing)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from bench.plans import PLANNED
from bench.run import WHOLE_TABLE_SHARE

ROOT = Path(__file__).resolve().parents[2]


def run_bench(server_url: str, *args: str) -> str:
    """`python -m bench ARGS` on `server_url`; what it printed, once it has exited 0."""
    done = subprocess.run(  # noqa: S603  # our own interpreter and module
        [sys.executable, "-m", "bench", *args],
        cwd=ROOT,
        env={**os.environ, "BENCH_DATABASE_URL": server_url},
        capture_output=True,
        text=True,
        timeout=100,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def test_quick_benchmark_writes_a_result_for_every_case_and_target(
    tmp_path: Path, server_url: str
) -> None:
    printed = run_bench(server_url, "rpc", "--quick", "--out", str(tmp_path))
    result = json.loads((tmp_path / "results.json").read_text())
    cases = {"progress.list@10k", "progress.list@1M", "progress.upsert"}
    cases |= {"ay.list-name-filter", "ay.get-associations"}
    pairs = {(row["case"], row["target"]) for row in result["summary"]}
    assert pairs >= {(case, target) for case in cases for target in ("baseline", "service")}
    # Request ids on every upsert, beside the upsert without, on the service only.
    assert ("progress.upsert+request-id", "service") in pairs
    assert ("progress.upsert+request-id", "baseline") not in pairs
    whole_table = {"ay.count@global", "ay.list@global"}
    for run in result["runs"]:
        share = WHOLE_TABLE_SHARE if run["case"] in whole_table else 1
        assert run["requests"] == result["config"]["requests"] // share
        assert run["errors"] == {}
        assert run["rps"] > 0
        assert 0 < run["p50_ms"] <= run["p99_ms"]
    assert result["config"]["big_table_rows"] > result["config"]["small_table_rows"] > 0
    assert {check["target"] for check in result["targets"]} >= {
        "list p50 at 1M / p50 at 10k",
        "progress.upsert+request-id rps / progress.upsert rps",
    }
    assert "rps/base" in printed
    # Each paging and filter case's plans, as EXPLAIN ANALYZE gave them: List with its count
    # is two statements, a page without a count one.
    plans = result["plans"]
    assert set(plans) == set(PLANNED)
    assert len(plans["ay.list-name-filter"]) == 2 and len(plans["page.last-token@deep"]) == 1
    assert all("Execution Time" in plan for texts in plans.values() for plan in texts)


def test_quick_csv_benchmark_imports_and_exports_through_both_paths(
    tmp_path: Path, server_url: str
) -> None:
    """Beside another build (this checkout under another name, as `--variant before@dir`
    names one), each measured and compared in one run."""
    args = ("--rows", "2000", "--rounds", "1", "--export-rounds", "2", "--variant", f"other@{ROOT}")
    printed = run_bench(server_url, "csv", *args)
    for line in ("import via gRPC", "psql \\copy in", "export via gRPC", "psql \\copy out"):
        assert printed.count(line) == 2, printed
    assert "service: 2,000 rows" in printed and "other: 2,000 rows" in printed
    best = [line.split()[0] for line in printed.splitlines() if line.split()[1:2] == ["best"]]
    assert best == ["service", "other"], printed
