"""Servicer for `progress.v1.UserProgressService`: protobuf ⇄ domain, nothing else."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from google.api import httpbody_pb2
from grpc import aio
from progress.v1 import progress_pb2, progress_pb2_grpc

from common.auth import current_principal
from common.csvstream import body_bytes, csv_bodies
from common.csvstream.watch import Report, watch
from common.idempotency import Once, Stored
from common.protoconv import json_from_value, optional, timestamp, value_from_json
from progress_service.domain import ImportSummary, UserProgress, UserProgressInput
from progress_service.service import UserProgressService

Context = aio.ServicerContext[Any, Any]


def to_proto(record: UserProgress) -> progress_pb2.UserProgress:
    return progress_pb2.UserProgress(
        id=record.id,
        progress_type=record.progress_type,
        item_id=record.item_id,
        value=record.value,
        score=record.score,
        metadata=value_from_json(record.metadata),
        organization_id=record.organization_id,
        campus_id=record.campus_id,
        user_id=record.user_id,
        created_at=timestamp(record.created_at),
        updated_at=timestamp(record.updated_at),
        # None when nothing was cut (nearly always): setting an empty repeated field costs a
        # page of 10 rows ~3.5 us in upb's constructor, for the same message.
        truncated_fields=record.truncated or None,
    )


def input_from_proto(data: progress_pb2.UserProgressInput) -> UserProgressInput:
    return UserProgressInput(
        progress_type=data.progress_type,
        item_id=data.item_id,
        value=optional(data, "value"),
        score=optional(data, "score"),
        metadata=json_from_value(data, "metadata", "data.metadata"),
    )


def summary_to_proto(summary: ImportSummary) -> progress_pb2.ImportCsvSummary:
    return progress_pb2.ImportCsvSummary(
        rows_read=summary.rows_read,
        created=summary.created,
        updated=summary.updated,
        skipped=summary.skipped,
    )


def progress_to_proto(
    report: Report[ImportSummary | Stored], once: Once[ImportSummary, progress_pb2.ImportCsvSummary]
) -> progress_pb2.ImportProgress:
    p = report.progress
    return progress_pb2.ImportProgress(
        phase=progress_pb2.ImportProgress.Phase.Value(f"PHASE_{p.phase.upper()}"),
        bytes_read=p.bytes_read,
        rows_read=p.rows_read,
        rows_staged=p.rows_staged,
        summary=None if report.result is None else once.answer(report.result),
    )


# The names answers are kept under (common.idempotency); an import's two forms share one.
UPSERT = "UpsertUserProgress"
IMPORT = "ImportUserProgressCsv"


def import_once(context: Context) -> Once[ImportSummary, progress_pb2.ImportCsvSummary]:
    metadata = context.invocation_metadata()
    return Once.streamed(IMPORT, metadata, summary_to_proto, progress_pb2.ImportCsvSummary)


class UserProgressServicer(progress_pb2_grpc.UserProgressServiceServicer):
    def __init__(self, service: UserProgressService) -> None:
        self._service = service

    async def UpsertUserProgress(
        self, request: progress_pb2.UpsertUserProgressRequest, context: Context
    ) -> progress_pb2.UserProgress:
        once = Once.unary(UPSERT, request, to_proto, progress_pb2.UserProgress)
        data = input_from_proto(request.data)
        return once.answer(await self._service.upsert(current_principal(), data, once))

    async def ListUserProgress(
        self, request: progress_pb2.ListUserProgressRequest, context: Context
    ) -> progress_pb2.ListUserProgressResponse:
        page = await self._service.list(
            current_principal(),
            request.progress_type,
            optional(request, "item_id"),
            request.limit,
            request.page,
            request.page_token,
            request.skip_count,
        )
        return progress_pb2.ListUserProgressResponse(
            rows=[to_proto(r) for r in page.rows],
            count=page.count,
            next_page_token=page.next_page_token,
        )

    async def DeleteUserProgressByItem(
        self, request: progress_pb2.DeleteUserProgressByItemRequest, context: Context
    ) -> progress_pb2.DeleteUserProgressByItemResponse:
        deleted = await self._service.delete_by_item(
            current_principal(), request.progress_type, request.item_id
        )
        return progress_pb2.DeleteUserProgressByItemResponse(deleted_count=deleted)

    async def ImportUserProgressCsv(
        self, request_iterator: AsyncIterator[httpbody_pb2.HttpBody], context: Context
    ) -> progress_pb2.ImportCsvSummary:
        once = import_once(context)
        summary = await self._service.import_csv(
            current_principal(), body_bytes(request_iterator), once=once
        )
        return once.answer(summary)

    async def ImportUserProgressCsvWithProgress(
        self, request_iterator: AsyncIterator[httpbody_pb2.HttpBody], context: Context
    ) -> AsyncIterator[progress_pb2.ImportProgress]:
        principal, chunks = current_principal(), body_bytes(request_iterator)
        once = import_once(context)
        reports = watch(lambda tracker: self._service.import_csv(principal, chunks, tracker, once))
        async for report in reports:
            yield progress_to_proto(report, once)

    async def ExportUserProgressCsv(
        self, request: progress_pb2.ExportUserProgressCsvRequest, context: Context
    ) -> AsyncIterator[httpbody_pb2.HttpBody]:
        chunks = self._service.export_csv(current_principal(), optional(request, "progress_type"))
        async for body in csv_bodies(chunks):
            yield body
