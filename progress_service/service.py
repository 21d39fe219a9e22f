"""Progress rules: validation, ownership and one unit of work per call."""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator
from dataclasses import replace
from typing import Any

from common import pagetoken
from common.auth import Principal
from common.config import Limits
from common.csvstream import CsvReader
from common.csvstream.transfer import export_csv, import_csv
from common.csvstream.watch import ImportTracker
from common.db import Database, UnitOfWork
from common.errors import ValidationError
from common.idempotency import Once, Stored
from common.pagetoken import PageTokens
from common.pagination import resolve_pagination
from common.tenancy import tenant_scope
from common.validation import json_problem, text_violations
from progress_service.csv import CSV_HEADER, STAGING, ProgressCsvRepository, csv_columns
from progress_service.domain import ImportSummary, Page, UserProgress, UserProgressInput
from progress_service.limits import TRUNCATABLE, read_caps
from progress_service.repository import REQUEST_IDS, UserProgressRepository
from progress_service.validation import (
    MAX_ITEM_ID_LENGTH,
    check_progress_type,
    clean_item_id,
    validate_input,
)


def as_read(row: UserProgress, limits: Limits) -> UserProgress:
    """`row` as a read answers with it. A row stored before today's limits may pass them:
    its item_id and value are cut to their limits and metadata past its limits left out,
    each named in `truncated`, so that a page of such rows still fits one message; the
    stored row stays whole (the CSV export carries it)."""
    cut = set(row.truncated)
    item_id, value, metadata = row.item_id, row.value, row.metadata
    if len(item_id) > MAX_ITEM_ID_LENGTH:
        item_id = item_id[:MAX_ITEM_ID_LENGTH]
        cut.add("item_id")
    if value is not None and len(value) > limits.progress_value_max_chars:
        value = value[: limits.progress_value_max_chars]
        cut.add("value")
    max_bytes, max_depth = limits.progress_metadata_max_bytes, limits.progress_metadata_max_depth
    if metadata is not None and json_problem(metadata, max_bytes, max_depth):
        metadata = None
        cut.add("metadata")
    if not cut:
        return row
    truncated = tuple(name for name in TRUNCATABLE if name in cut)
    return replace(row, item_id=item_id, value=value, metadata=metadata, truncated=truncated)


LISTING = "progress.v1.UserProgressService/ListUserProgress"


class UserProgressService:
    def __init__(
        self, db: Database, limits: Limits | None = None, tokens: PageTokens | None = None
    ) -> None:
        self._db = db
        self._limits = limits or Limits()
        self._caps = read_caps(self._limits)
        self._csv_columns = csv_columns(self._limits)
        # The app passes the key from the settings; left out (tests, tools), this instance's own.
        self._tokens = tokens or PageTokens.ephemeral()

    async def upsert(
        self,
        principal: Principal,
        data: UserProgressInput,
        once: Once[UserProgress, Any] | None = None,
    ) -> UserProgress | Stored:
        """The caller's row, created or updated; with a request id (`once`) the answer of the
        first call with it, which a retry gets again without writing (common.idempotency)."""
        scope = tenant_scope(principal)
        clean = validate_input(data, self._limits)

        async def work(uow: UnitOfWork[UserProgressRepository]) -> UserProgress:
            record, _created = await uow.repo.upsert(clean)
            return record

        return await REQUEST_IDS.write(self._db, scope, UserProgressRepository, once, work)

    async def list(
        self,
        principal: Principal,
        progress_type: str,
        item_id: str | None,
        limit: int,
        page: int,
        page_token: str = "",
        skip_count: bool = False,
    ) -> Page:
        """A page by number (`page`), or the page after `page_token`, which is only good for
        this caller, type and item; the token of the next page unless this is the last."""
        scope = tenant_scope(principal)
        violations = check_progress_type(progress_type, "progress_type")
        if item_id is not None:
            item_id = item_id.strip() or None
            violations += text_violations(item_id, "item_id")
        if violations:
            raise ValidationError(violations)
        paging = resolve_pagination(limit, page, page_token)
        bound = pagetoken.binding(LISTING, scope, (progress_type, item_id))
        position = self._tokens.read(paging.token, bound) if paging.token else None
        async with self._db.unit_of_work(scope, UserProgressRepository) as uow:
            rows, count, last = await uow.repo.list(
                progress_type, item_id, paging, position, self._caps, counted=not skip_count
            )
        next_token = "" if last is None else self._tokens.issue(bound, last)
        return Page([as_read(row, self._limits) for row in rows], count or 0, next_token)

    async def delete_by_item(self, principal: Principal, progress_type: str, item_id: str) -> int:
        scope = tenant_scope(principal)
        violations = check_progress_type(progress_type, "progress_type")
        clean_id = clean_item_id(item_id, "item_id", violations)
        if violations:
            raise ValidationError(violations)
        async with self._db.unit_of_work(scope, UserProgressRepository) as uow:
            deleted = await uow.repo.soft_delete(progress_type, clean_id)
            await uow.commit()
        return deleted

    async def import_csv(
        self,
        principal: Principal,
        chunks: AsyncIterable[bytes],
        tracker: ImportTracker | None = None,
        once: Once[ImportSummary, Any] | None = None,
    ) -> ImportSummary | Stored:
        """Upserts every row for the caller, the last row of a (type, item) winning; nothing is
        written unless every row is valid. `tracker` follows it for a caller watching. With a
        request id (`once`), a retry gets the first import's summary without a read."""
        scope = tenant_scope(principal)
        scope.writable_organization()
        if once is not None:
            chunks = once.read_through(chunks)
        reader = CsvReader(
            chunks, self._csv_columns, limits=self._limits, label="user_progress import"
        )

        async def apply(repository: ProgressCsvRepository) -> ImportSummary:
            created, updated = await repository.apply_import()
            skipped = reader.rows_read - created - updated
            return ImportSummary(reader.rows_read, created, updated, skipped)

        return await import_csv(
            self._db,
            scope,
            ProgressCsvRepository,
            reader,
            STAGING,
            apply,
            tracker=tracker,
            request_ids=REQUEST_IDS,
            once=once,
        )

    async def export_csv(
        self, principal: Principal, progress_type: str | None
    ) -> AsyncIterator[bytes]:
        """The caller's rows (of one type, when given) as CSV chunks, oldest first."""
        scope = tenant_scope(principal)
        if progress_type is not None and (
            violations := check_progress_type(progress_type, "progress_type")
        ):
            raise ValidationError(violations)
        chunks = export_csv(
            self._db,
            scope,
            ProgressCsvRepository,
            lambda r: r.export(progress_type),
            CSV_HEADER,
            label="user_progress export",
        )
        async for chunk in chunks:
            yield chunk
