"""The physical limit of this stack: the services' RPCs as the same SQL straight through asyncpg.

No auth, no validation, no SQLAlchemy: the caller's ids come from `x-bench-*` metadata that the
load generator sends to every target alike. Run as `python -m bench.baseline --addr … --dsn …`.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import signal
from collections.abc import Callable, Sequence
from typing import Any

import asyncpg
from google.protobuf import json_format, struct_pb2
from grpc import aio
from progress.v1 import progress_pb2, progress_pb2_grpc

from bench.baseline_ay import begin_as
from common.protoconv import timestamp

Context = aio.ServicerContext[Any, Any]
Registrar = Callable[[aio.Server, asyncpg.Pool], None]

_COLUMNS = (
    "user_progress.id, user_progress.progress_type, user_progress.item_id, user_progress.value, "
    'user_progress.score, user_progress.metadata, user_progress."organizationId", '
    'user_progress."campusId", user_progress."userId", user_progress."createdAt", '
    'user_progress."updatedAt"'
)
# The SQL the services compile, written out by hand (tests/system/test_bench.py keeps the two
# the same, so the comparison measures the code path and never a different query).
UPSERT_SQL = (
    "INSERT INTO user_progress (id, progress_type, item_id, value, score, metadata,"
    ' "organizationId", "campusId", "userId", "createdById", "updatedById", "createdAt",'
    ' "updatedAt") VALUES (gen_random_uuid(), $1::enum_user_progress_progress_type,'
    " $2::VARCHAR, $3::VARCHAR, $4::INTEGER, $5::JSONB, $6::UUID, $7::UUID, $8::UUID, $9::UUID,"
    " $10::UUID, $11::TIMESTAMP WITH TIME ZONE, $12::TIMESTAMP WITH TIME ZONE)"
    ' ON CONFLICT ("organizationId", "userId", progress_type, item_id) WHERE "deletedAt" IS NULL'
    " DO UPDATE SET value = excluded.value, score = excluded.score, metadata = excluded.metadata,"
    ' "campusId" = excluded."campusId", "updatedById" = excluded."updatedById",'
    f' "updatedAt" = excluded."updatedAt" RETURNING {_COLUMNS}'
)
_MATCHING = (
    'WHERE user_progress."deletedAt" IS NULL AND user_progress."organizationId" = {org}::UUID'
    ' AND user_progress."userId" = {user}::UUID'
    " AND user_progress.progress_type = {type}::enum_user_progress_progress_type"
)
_READ = _MATCHING.format(org="$1", user="$2", type="$3")
COUNT_SQL = f"SELECT count(*) AS count_1 FROM user_progress {_READ}"
# List loads item_id, value and metadata (as JSON text) only up to the default limits' caps.
_LISTED = (
    "user_progress.id, user_progress.progress_type,"
    " left(user_progress.item_id, 513) AS item_id, left(user_progress.value, 4097) AS value,"
    " user_progress.score, left(CAST(user_progress.metadata AS TEXT), 1310721) AS metadata,"
    ' user_progress."organizationId", user_progress."campusId", user_progress."userId",'
    ' user_progress."createdAt", user_progress."updatedAt"'
)
# The first page (no page_token): keyset paging reads a row more to know whether there is a next.
LIST_SQL = (
    f"SELECT {_LISTED} FROM user_progress {_READ}"
    ' ORDER BY user_progress."createdAt" DESC, user_progress.id DESC LIMIT $4'
)
DELETE_SQL = (
    'UPDATE user_progress SET "updatedById"=$1::UUID, "updatedAt"=$2::TIMESTAMP WITH TIME ZONE,'
    ' "deletedAt"=$2::TIMESTAMP WITH TIME ZONE '
    + _MATCHING.format(org="$3", user="$1", type="$4")
    + " AND user_progress.item_id = $5::VARCHAR"
)


def caller_ids(context: Context) -> tuple[str, str]:
    """(organization id, user id) from the benchmark's plain-text metadata."""
    found = dict(context.invocation_metadata() or ())
    return str(found["x-bench-org"]), str(found["x-bench-user"])


def json_value(raw: str | None) -> struct_pb2.Value | None:
    if raw is None:
        return None
    value = struct_pb2.Value()
    json_format.ParseDict(json.loads(raw), value)
    return value


def progress_proto(row: Sequence[Any]) -> progress_pb2.UserProgress:
    return progress_pb2.UserProgress(
        id=str(row[0]),
        progress_type=row[1],
        item_id=row[2],
        value=row[3],
        score=row[4],
        metadata=json_value(row[5]),
        organization_id=str(row[6]),
        campus_id=None if row[7] is None else str(row[7]),
        user_id=str(row[8]),
        created_at=timestamp(row[9]),
        updated_at=timestamp(row[10]),
    )


class ProgressBaseline(progress_pb2_grpc.UserProgressServiceServicer):
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def UpsertUserProgress(
        self, request: progress_pb2.UpsertUserProgressRequest, context: Context
    ) -> progress_pb2.UserProgress:
        org, user = caller_ids(context)
        data = request.data
        metadata = (
            json.dumps(json_format.MessageToDict(data.metadata))
            if data.HasField("metadata")
            else None
        )
        now = dt.datetime.now(dt.UTC)
        async with self._pool.acquire() as conn:
            await begin_as(conn, org, user)
            row = await conn.fetchrow(
                UPSERT_SQL,
                data.progress_type,
                data.item_id,
                data.value if data.HasField("value") else None,
                data.score if data.HasField("score") else None,
                metadata,
                org,
                None,
                user,
                user,
                user,
                now,
                now,
            )
            await conn.execute("COMMIT")
        return progress_proto(row)

    async def ListUserProgress(
        self, request: progress_pb2.ListUserProgressRequest, context: Context
    ) -> progress_pb2.ListUserProgressResponse:
        org, user = caller_ids(context)
        limit = min(request.limit or 10, 100)
        async with self._pool.acquire() as conn:
            await begin_as(conn, org, user)
            count = await conn.fetchval(COUNT_SQL, org, user, request.progress_type)
            rows = await conn.fetch(LIST_SQL, org, user, request.progress_type, limit + 1)
            rows = rows[:limit]
            await conn.execute("ROLLBACK")
        return progress_pb2.ListUserProgressResponse(
            rows=[progress_proto(r) for r in rows], count=count
        )

    async def DeleteUserProgressByItem(
        self, request: progress_pb2.DeleteUserProgressByItemRequest, context: Context
    ) -> progress_pb2.DeleteUserProgressByItemResponse:
        org, user = caller_ids(context)
        now = dt.datetime.now(dt.UTC)
        async with self._pool.acquire() as conn:
            await begin_as(conn, org, user)
            status = await conn.execute(
                DELETE_SQL, user, now, org, request.progress_type, request.item_id
            )
            await conn.execute("COMMIT")
        return progress_pb2.DeleteUserProgressByItemResponse(deleted_count=int(status.split()[-1]))


def register_progress(server: aio.Server, pool: asyncpg.Pool) -> None:
    # Only the benchmarked RPCs are implemented; the others answer UNIMPLEMENTED.
    servicer = ProgressBaseline(pool)  # type: ignore[abstract]
    progress_pb2_grpc.add_UserProgressServiceServicer_to_server(servicer, server)


def register_academic_years(server: aio.Server, pool: asyncpg.Pool) -> None:
    from bench import baseline_ay

    baseline_ay.register(server, pool, caller_ids)


REGISTRARS: list[Registrar] = [register_progress, register_academic_years]


async def _keep_session(_conn: asyncpg.Connection) -> None:
    return None


async def serve(addr: str, dsn: str, pool_size: int) -> None:
    # No reset query on release: the services' pool sends none either.
    pool = await asyncpg.create_pool(
        dsn, min_size=pool_size, max_size=pool_size, reset=_keep_session
    )
    server = aio.server()
    for register in REGISTRARS:
        register(server, pool)
    server.add_insecure_port(addr)
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop(1.0)
    await pool.close()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.baseline")
    parser.add_argument("--addr", required=True)
    parser.add_argument("--dsn", required=True, help="a plain postgresql:// DSN")
    parser.add_argument("--pool-size", type=int, default=10)
    args = parser.parse_args()
    # The same loop rule as the services (UVLOOP=0 turns it off), so only the code path differs.
    if os.environ.get("UVLOOP", "1") != "0":
        import uvloop

        uvloop.run(serve(args.addr, args.dsn, args.pool_size))
    else:
        asyncio.run(serve(args.addr, args.dsn, args.pool_size))


if __name__ == "__main__":
    main()
