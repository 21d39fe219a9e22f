"""CPU of one progress list call through the service layer (unit of work, executor, SQL), one
call at a time: the least of 9 rounds of 500 calls, which a shared machine disturbs least.

Usage, this build against another one (an export of an older commit in /tmp/old), taking turns:
  .venv/bin/python -m bench list-cpu postgresql://postgres@127.0.0.1/db
  PYTHONPATH=/tmp/old:gen .venv/bin/python bench/list_cpu.py postgresql://postgres@127.0.0.1/db
(the script by its path, so that the old build's `common` is imported; it needs only `common`
and `progress_service`).
The database must be migrated for the progress service; its rows are added through the service.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time

from common.auth import Principal
from common.db import Database
from progress_service.domain import UserProgressInput
from progress_service.service import UserProgressService

ORG, USER = "11111111-1111-4111-8111-111111111111", "22222222-2222-4222-8222-222222222222"
ROUNDS, CALLS = 9, 500


async def measure(url: str) -> None:
    db = Database(url, pool_size=1)
    service = UserProgressService(db)
    principal = Principal(USER, ORG, None, False, frozenset())
    for item in range(100):
        await service.upsert(principal, UserProgressInput("sign_learned", f"bench-{item}"))
    rounds = []
    for _ in range(ROUNDS):
        started = time.process_time()
        for _ in range(CALLS):
            await service.list(principal, "sign_learned", None, 10, 0)
        rounds.append((time.process_time() - started) / CALLS * 1e6)
    await db.dispose()
    print(f"{min(rounds):.1f} us CPU per list call (least of {ROUNDS} rounds of {CALLS})")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("url", help="a PostgreSQL URL of a database migrated for progress")


def main(args: argparse.Namespace) -> int:
    try:
        import uvloop
    except ImportError:
        asyncio.run(measure(args.url))
    else:
        uvloop.run(measure(args.url))
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    add_arguments(parser)
    sys.exit(main(parser.parse_args()))
