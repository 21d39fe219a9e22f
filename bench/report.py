"""Medians per case and target, ratios to the baseline, the issue's targets, the table."""

from __future__ import annotations

import statistics
from typing import Any

from bench.load import Record


def _ratio(value: float, base: float) -> float | None:
    return round(value / base, 3) if base else None


def summarise(records: list[Record]) -> list[dict[str, Any]]:
    """Medians over rounds per (case, target), with ratios to the baseline of the same case."""
    groups: dict[tuple[str, str], list[Record]] = {}
    for r in records:
        groups.setdefault((r.case, r.target), []).append(r)
    rows: list[dict[str, Any]] = []
    for (case, target), rs in groups.items():
        rows.append(
            {
                "case": case,
                "target": target,
                "rounds": len(rs),
                "rps": round(statistics.median(r.rps for r in rs), 1),
                "p50_ms": round(statistics.median(r.p50_ms for r in rs), 3),
                "p99_ms": round(statistics.median(r.p99_ms for r in rs), 3),
                "cpu_us_per_req": round(statistics.median(r.server_cpu_us_per_req for r in rs), 1),
                "errors": sum(sum(r.errors.values()) for r in rs),
                "db_connections": max(
                    (r.db_connections for r in rs if r.db_connections is not None), default=None
                ),
            }
        )
    base = {row["case"]: row for row in rows if row["target"] == "baseline"}
    for row in rows:
        b = base.get(row["case"])
        row["rps_vs_baseline"] = round(row["rps"] / b["rps"], 3) if b and b["rps"] else None
        row["p99_vs_baseline"] = (
            round(row["p99_ms"] / b["p99_ms"], 3) if b and b["p99_ms"] else None
        )
    return rows


POOL_SIZE = 10  # the services' DB_POOL_SIZE default, which the benchmark runs with


def check_targets(summary: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The issue's targets for the WORKERS=1 service, each with its measured value."""
    by = {(r["case"], r["target"]): r for r in summary}
    checks = []

    def add(name: str, value: float | None, limit: float, at_least: bool) -> None:
        met = value is not None and (value >= limit if at_least else value <= limit)
        checks.append({"target": name, "value": value, "limit": limit, "met": met})

    def compare(
        name: str,
        over: tuple[str, str],
        under: tuple[str, str],
        key: str,
        limit: float,
        at_least: bool,
    ) -> None:
        """`over`'s `key` / `under`'s (each a (case, target)), when both were measured."""
        a, b = by.get(over), by.get(under)
        if a and b and b[key]:
            add(name, round(a[key] / b[key], 3), limit, at_least)

    for case in ("progress.upsert", "progress.list@1M"):
        row = by.get((case, "service"))
        if row:
            add(f"{case} rps / baseline rps", row["rps_vs_baseline"], 0.8, True)
            add(f"{case} p99 / baseline p99", row["p99_vs_baseline"], 1.5, False)
    compare(
        "progress.upsert+request-id rps / progress.upsert rps",
        ("progress.upsert+request-id", "service"),
        ("progress.upsert", "service"),
        "rps",
        0.85,
        True,
    )
    compare(
        "list p50 at 1M / p50 at 10k",
        ("progress.list@1M", "service"),
        ("progress.list@10k", "service"),
        "p50_ms",
        1.5,
        False,
    )
    connections = [r["db_connections"] for r in summary if r["target"] == "service"]
    if any(c is not None for c in connections):
        most = max(c for c in connections if c is not None)
        add("PostgreSQL connections per service process", most, POOL_SIZE, False)
    for row in summary:
        if row["case"].startswith("ay.") and row["target"] == "service":
            if row["rps_vs_baseline"] is None:  # a case the baseline does not run
                continue
            add(f"{row['case']} rps / baseline rps", row["rps_vs_baseline"], 0.8, True)
            add(f"{row['case']} p99 / baseline p99", row["p99_vs_baseline"], 1.5, False)
    compare(
        "ay.list-name-filter rps / before rps",
        ("ay.list-name-filter", "service"),
        ("ay.list-name-filter", "before"),
        "rps",
        5,
        True,
    )
    compare(
        "last page by page_token p50 / first page p50",
        ("page.last-token@deep", "service"),
        ("page.first@deep", "service"),
        "p50_ms",
        1.5,
        False,
    )
    return checks


def print_table(summary: list[dict[str, Any]], checks: list[dict[str, Any]]) -> None:
    head = f"{'case':<26} {'target':<18} {'rps':>9} {'p50 ms':>8} {'p99 ms':>8}"
    head += f" {'cpu us/req':>10} {'rps/base':>8} {'p99/base':>8} {'errors':>6} {'conns':>5}"
    print("\n" + head + "\n" + "-" * len(head))
    for r in summary:
        print(
            f"{r['case']:<26} {r['target']:<18} {r['rps']:>9.1f} {r['p50_ms']:>8.2f}"
            f" {r['p99_ms']:>8.2f} {r['cpu_us_per_req']:>10.1f} {r['rps_vs_baseline'] or 0:>8.3f}"
            f" {r['p99_vs_baseline'] or 0:>8.3f} {r['errors']:>6}"
            f" {r['db_connections'] if r['db_connections'] is not None else '-':>5}"
        )
    print()
    for c in checks:
        limit = (">= " if " rps" in c["target"] else "<= ") + str(c["limit"])
        print(f"{'met    ' if c['met'] else 'NOT met'}  {c['target']}: {c['value']} ({limit})")
