"""Servicer for `academic_years.v1.AcademicYearsService`: protobuf ⇄ domain, nothing else."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator
from typing import Any

from academic_years.v1 import academic_years_pb2 as pb
from academic_years.v1 import academic_years_pb2_grpc
from google.api import httpbody_pb2
from grpc import aio

from academic_years_service.domain import (
    AcademicYear,
    AcademicYearInput,
    FilterRequest,
    ImportSummary,
    Reference,
)
from academic_years_service.service import AcademicYearsService
from common import etags
from common.auth import current_principal
from common.csvstream import body_bytes, csv_bodies
from common.csvstream.watch import Report, watch
from common.idempotency import Once, Stored
from common.protoconv import optional, timestamp

Context = aio.ServicerContext[Any, Any]


def _date(value: dt.date | None) -> str | None:
    return None if value is None else value.isoformat()


def _reference(ref: Reference) -> pb.Reference:
    return pb.Reference(id=ref.id, name=ref.name)


def to_proto(year: AcademicYear) -> pb.AcademicYear:
    return pb.AcademicYear(
        id=year.id,
        name=year.name,
        start_date=_date(year.start_date),
        end_date=_date(year.end_date),
        current=year.current,
        organization_id=year.organization_id,
        created_by_id=year.created_by_id,
        updated_by_id=year.updated_by_id,
        created_at=timestamp(year.created_at),
        updated_at=timestamp(year.updated_at),
        deleted_at=timestamp(year.deleted_at),
        etag=etags.encode(year.organization_id, year.id, year.version),
        organization=_reference(year.organization) if year.organization else None,
        classes_academic_year=[_reference(r) for r in year.classes],
        timetables_academic_year=[_reference(r) for r in year.timetables],
        truncated_fields=year.truncated or None,  # as progress's to_proto: none set, no cost
    )


def input_from_proto(data: pb.AcademicYearInput) -> AcademicYearInput:
    return AcademicYearInput(
        id=optional(data, "id"),
        name=optional(data, "name"),
        start_date=optional(data, "start_date"),
        end_date=optional(data, "end_date"),
        current=optional(data, "current"),
        organization_id=optional(data, "organization_id"),
    )


def filter_from_proto(request: pb.ListAcademicYearsRequest) -> FilterRequest:
    return FilterRequest(
        id=request.id,
        name=request.name,
        calendar_start=request.calendar_start,
        calendar_end=request.calendar_end,
        start_date_range=tuple(request.start_date_range),
        end_date_range=tuple(request.end_date_range),
        created_at_range=tuple(request.created_at_range),
        active=optional(request, "active"),
        current=optional(request, "current"),
        organization=request.organization,
        field=request.field,
        sort=request.sort,
    )


def summary_to_proto(summary: ImportSummary) -> pb.ImportCsvSummary:
    return pb.ImportCsvSummary(
        rows_read=summary.rows_read, created=summary.created, skipped=summary.skipped
    )


def progress_to_proto(
    report: Report[ImportSummary | Stored], once: Once[ImportSummary, pb.ImportCsvSummary]
) -> pb.ImportProgress:
    p = report.progress
    return pb.ImportProgress(
        phase=pb.ImportProgress.Phase.Value(f"PHASE_{p.phase.upper()}"),
        bytes_read=p.bytes_read,
        rows_read=p.rows_read,
        rows_staged=p.rows_staged,
        summary=None if report.result is None else once.answer(report.result),
    )


def deleted_to_proto(count: int) -> pb.BatchDeleteAcademicYearsResponse:
    return pb.BatchDeleteAcademicYearsResponse(deleted_count=count)


# The names answers are kept under (common.idempotency); an import's two forms share one.
CREATE, UPDATE, DELETE = "CreateAcademicYear", "UpdateAcademicYear", "DeleteAcademicYear"
BATCH_DELETE, IMPORT = "BatchDeleteAcademicYears", "ImportAcademicYearsCsv"


def import_once(context: Context) -> Once[ImportSummary, pb.ImportCsvSummary]:
    metadata = context.invocation_metadata()
    return Once.streamed(IMPORT, metadata, summary_to_proto, pb.ImportCsvSummary)


class AcademicYearsServicer(academic_years_pb2_grpc.AcademicYearsServiceServicer):
    def __init__(self, service: AcademicYearsService) -> None:
        self._service = service

    async def CreateAcademicYear(
        self, request: pb.CreateAcademicYearRequest, context: Context
    ) -> pb.AcademicYear:
        once = Once.unary(CREATE, request, to_proto, pb.AcademicYear)
        data = input_from_proto(request.data)
        return once.answer(await self._service.create(current_principal(), data, once))

    async def UpdateAcademicYear(
        self, request: pb.UpdateAcademicYearRequest, context: Context
    ) -> pb.AcademicYear:
        once = Once.unary(UPDATE, request, to_proto, pb.AcademicYear)
        year = await self._service.update(
            current_principal(), request.id, input_from_proto(request.data), request.etag, once
        )
        return once.answer(year)

    async def DeleteAcademicYear(
        self, request: pb.DeleteAcademicYearRequest, context: Context
    ) -> pb.AcademicYear:
        once = Once.unary(DELETE, request, to_proto, pb.AcademicYear)
        year = await self._service.delete(current_principal(), request.id, request.etag, once)
        return once.answer(year)

    async def BatchDeleteAcademicYears(
        self, request: pb.BatchDeleteAcademicYearsRequest, context: Context
    ) -> pb.BatchDeleteAcademicYearsResponse:
        once = Once.unary(
            BATCH_DELETE, request, deleted_to_proto, pb.BatchDeleteAcademicYearsResponse
        )
        deleted = await self._service.delete_many(
            current_principal(), list(request.ids), list(request.data), once
        )
        return once.answer(deleted)

    async def GetAcademicYear(
        self, request: pb.GetAcademicYearRequest, context: Context
    ) -> pb.AcademicYear:
        return to_proto(await self._service.get(current_principal(), request.id))

    async def ListAcademicYears(
        self, request: pb.ListAcademicYearsRequest, context: Context
    ) -> pb.ListAcademicYearsResponse:
        page = await self._service.list_page(
            current_principal(),
            filter_from_proto(request),
            request.limit,
            request.page,
            request.page_token,
            request.skip_count,
        )
        return pb.ListAcademicYearsResponse(
            rows=[to_proto(r) for r in page.rows],
            count=page.count,
            next_page_token=page.next_page_token,
        )

    async def CountAcademicYears(
        self, request: pb.ListAcademicYearsRequest, context: Context
    ) -> pb.CountAcademicYearsResponse:
        count = await self._service.count(current_principal(), filter_from_proto(request))
        return pb.CountAcademicYearsResponse(count=count)

    async def AutocompleteAcademicYears(
        self, request: pb.AutocompleteAcademicYearsRequest, context: Context
    ) -> pb.AutocompleteAcademicYearsResponse:
        items = await self._service.autocomplete(
            current_principal(), request.query, request.limit, request.offset
        )
        return pb.AutocompleteAcademicYearsResponse(
            items=[pb.AutocompleteItem(id=i.id, label=i.label) for i in items]
        )

    async def ImportAcademicYearsCsv(
        self, request_iterator: AsyncIterator[httpbody_pb2.HttpBody], context: Context
    ) -> pb.ImportCsvSummary:
        once = import_once(context)
        summary = await self._service.import_csv(
            current_principal(), body_bytes(request_iterator), once=once
        )
        return once.answer(summary)

    async def ImportAcademicYearsCsvWithProgress(
        self, request_iterator: AsyncIterator[httpbody_pb2.HttpBody], context: Context
    ) -> AsyncIterator[pb.ImportProgress]:
        principal, chunks = current_principal(), body_bytes(request_iterator)
        once = import_once(context)
        reports = watch(lambda tracker: self._service.import_csv(principal, chunks, tracker, once))
        async for report in reports:
            yield progress_to_proto(report, once)

    async def ExportAcademicYearsCsv(
        self, request: pb.ListAcademicYearsRequest, context: Context
    ) -> AsyncIterator[httpbody_pb2.HttpBody]:
        chunks = self._service.export_csv(
            current_principal(), filter_from_proto(request), tuple(request.columns)
        )
        async for body in csv_bodies(chunks):
            yield body
