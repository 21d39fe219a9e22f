"""Progress rules: validation, ownership and one unit of work per call."""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator
from dataclasses import replace

from common import pagetoken
from common.auth import Principal
from common.config import Limits
from common.csvstream import CsvReader
from common.csvstream.transfer import export_csv, import_csv
from common.csvstream.watch import ImportTracker
from common.db import Database
from common.errors import ValidationError
from common.pagetoken import PageTokens
from common.pagination import resolve_pagination
from common.tenancy import tenant_scope
from common.validation import json_problem, text_violations
from progress_service.csv import CSV_HEADER, STAGING, ProgressCsvRepository, csv_columns
from progress_service.domain import ImportSummary, Page, UserProgress, UserProgressInput
from progress_service.limits import TRUNCATABLE, read_caps
from progress_service.repository import UserProgressRepository
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

    async def upsert(self, principal: Principal, data: UserProgressInput) -> UserProgress:
        scope = tenant_scope(principal)
        clean = validate_input(data, self._limits)
        async with self._db.unit_of_work(scope, UserProgressRepository) as uow:
            record, _created = await uow.repo.upsert(clean)
            await uow.commit()
        return record

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
    ) -> ImportSummary:
        """Upserts every row for the caller, the last row of a (type, item) winning; nothing is
        written unless every row is valid. `tracker` follows it for a caller watching."""
        scope = tenant_scope(principal)
        scope.writable_organization()
        reader = CsvReader(
            chunks, self._csv_columns, limits=self._limits, label="user_progress import"
        )
        created, updated = await import_csv(
            self._db,
            scope,
            ProgressCsvRepository,
            reader,
            STAGING,
            ProgressCsvRepository.apply_import,
            tracker=tracker,
        )
        skipped = reader.rows_read - created - updated
        return ImportSummary(reader.rows_read, created, updated, skipped)

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
