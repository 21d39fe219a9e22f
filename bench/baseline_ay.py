"""Baseline academic-years RPCs: the service's SQL for List (name filter + count) and Get."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any

import asyncpg
import grpc
from academic_years.v1 import academic_years_pb2 as pb
from academic_years.v1 import academic_years_pb2_grpc
from grpc import aio

from common import etags
from common.protoconv import timestamp

Context = aio.ServicerContext[Any, Any]

_COLUMNS = (
    "academic_years.id, left(academic_years.name, 501) AS name, academic_years.start_date,"
    " academic_years.end_date,"
    ' academic_years.current, academic_years."organizationId", academic_years."createdById",'
    ' academic_years."updatedById", academic_years."createdAt", academic_years."updatedAt",'
    ' academic_years."deletedAt", academic_years.version'
)
_NAME_SCOPE = (
    'WHERE academic_years."deletedAt" IS NULL AND academic_years."organizationId" = $1::UUID'
    " AND academic_years.name ILIKE $2::VARCHAR ESCAPE '\\'"
)
COUNT_SQL = f"SELECT count(*) AS count_1 FROM academic_years {_NAME_SCOPE}"
# The first page (no page_token): keyset paging reads a row more to know whether there is a next.
PAGE_SQL = (
    f"SELECT {_COLUMNS} FROM academic_years {_NAME_SCOPE}"
    ' ORDER BY academic_years."createdAt" DESC, academic_years.id DESC LIMIT $3'
)
GET_SQL = (
    f"SELECT {_COLUMNS}, organizations.id AS id_1, left(organizations.name, 501) AS name_1"
    " FROM academic_years LEFT OUTER JOIN organizations"
    ' ON organizations.id = academic_years."organizationId"'
    ' WHERE academic_years."deletedAt" IS NULL AND academic_years."organizationId" = $1::UUID'
    " AND academic_years.id = $2::UUID LIMIT 2"
)
REFERENCES_SQL = (
    "SELECT {t}.id, left({t}.name, 501) AS name FROM {t}"
    ' WHERE {t}."academic_yearId" = $1::UUID AND {t}."organizationId" = $2::UUID'
    ' AND {t}."deletedAt" IS NULL ORDER BY {t}.name ASC NULLS LAST, {t}.id LIMIT 1001'
)
CLASSES_SQL = REFERENCES_SQL.format(t="classes")
TIMETABLES_SQL = REFERENCES_SQL.format(t="timetables")


# BEGIN and the row-level security settings, in one message, as the services' unit of work
# sends them (common/db/uow.py): the same SQL, so the baseline pays for the same round trip.
BEGIN_SQL = (
    "BEGIN; SET LOCAL app.organization_id = '{org}'; SET LOCAL app.user_id = '{user}';"
    " SET LOCAL app.global_access = 'off'"
)


async def begin_as(conn: asyncpg.Connection, org: str, user: str) -> None:
    """The caller's transaction; the ids come from the load generator (UUIDs)."""
    await conn.execute(BEGIN_SQL.format(org=org, user=user))


def _date(value: dt.date | None) -> str | None:
    return None if value is None else value.isoformat()


def _str(value: object) -> str | None:
    return None if value is None else str(value)


def year_proto(row: Sequence[Any], **associations: Any) -> pb.AcademicYear:
    return pb.AcademicYear(
        id=str(row[0]),
        name=row[1],
        start_date=_date(row[2]),
        end_date=_date(row[3]),
        current=row[4],
        organization_id=_str(row[5]),
        created_by_id=_str(row[6]),
        updated_by_id=_str(row[7]),
        created_at=timestamp(row[8]),
        updated_at=timestamp(row[9]),
        deleted_at=timestamp(row[10]),
        etag=etags.encode(str(row[5]), str(row[0]), row[11]),
        **associations,
    )


def _like(text: str) -> str:
    return "%" + text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


class AcademicYearsBaseline(academic_years_pb2_grpc.AcademicYearsServiceServicer):
    def __init__(self, pool: asyncpg.Pool, caller: Any) -> None:
        self._pool = pool
        self._caller = caller

    async def ListAcademicYears(
        self, request: pb.ListAcademicYearsRequest, context: Context
    ) -> pb.ListAcademicYearsResponse:
        org, user = self._caller(context)
        limit, pattern = min(request.limit or 10, 100), _like(request.name.strip())
        async with self._pool.acquire() as conn:
            await begin_as(conn, org, user)
            count = await conn.fetchval(COUNT_SQL, org, pattern)
            rows = (await conn.fetch(PAGE_SQL, org, pattern, limit + 1))[:limit]
            await conn.execute("ROLLBACK")
        return pb.ListAcademicYearsResponse(rows=[year_proto(r) for r in rows], count=count)

    async def GetAcademicYear(
        self, request: pb.GetAcademicYearRequest, context: Context
    ) -> pb.AcademicYear:
        org, user = self._caller(context)
        async with self._pool.acquire() as conn:
            await begin_as(conn, org, user)
            row = await conn.fetchrow(GET_SQL, org, request.id)
            if row is None:
                await conn.execute("ROLLBACK")
                await context.abort(grpc.StatusCode.NOT_FOUND, "no such academic year")
            classes = await conn.fetch(CLASSES_SQL, row[0], row[5])
            timetables = await conn.fetch(TIMETABLES_SQL, row[0], row[5])
            await conn.execute("ROLLBACK")
        return year_proto(
            row,
            organization=pb.Reference(id=str(row[12]), name=row[13]),
            classes_academic_year=[pb.Reference(id=str(c[0]), name=c[1]) for c in classes],
            timetables_academic_year=[pb.Reference(id=str(c[0]), name=c[1]) for c in timetables],
        )


def register(server: aio.Server, pool: asyncpg.Pool, caller: Any) -> None:
    # Only the benchmarked RPCs are implemented; the others answer UNIMPLEMENTED.
    servicer = AcademicYearsBaseline(pool, caller)  # type: ignore[abstract]
    academic_years_pb2_grpc.add_AcademicYearsServiceServicer_to_server(servicer, server)
