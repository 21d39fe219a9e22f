"""Progress rules: validation, ownership and one transaction per call."""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator

from common.auth import Principal
from common.csvstream import (
    CellError,
    CsvColumn,
    CsvLimits,
    CsvReader,
    int32,
    json_text,
    stream_csv,
)
from common.db import Database
from common.errors import FieldViolation, ValidationError
from common.pagination import resolve_pagination
from common.tenancy import assert_authenticated_tenant_user, require_organization_id
from common.validation import NUL, json_violations, text_violations
from progress_service.domain import (
    PROGRESS_TYPE_VALUES,
    ImportSummary,
    Page,
    UserProgress,
    UserProgressInput,
)
from progress_service.repository import UserProgressRepository

MAX_ITEM_ID_LENGTH = 512


def check_progress_type(value: str, field: str) -> list[FieldViolation]:
    if value not in PROGRESS_TYPE_VALUES:
        return [FieldViolation(field, f"must be one of {', '.join(PROGRESS_TYPE_VALUES)}")]
    return []


def clean_item_id(value: str, field: str, violations: list[FieldViolation]) -> str:
    """Trimmed item id; records a violation when it is empty, too long or holds a NUL."""
    item_id = value.strip()
    if NUL in item_id:
        violations.extend(text_violations(item_id, field))
    elif not item_id:
        violations.append(FieldViolation(field, "must not be empty"))
    elif len(item_id) > MAX_ITEM_ID_LENGTH:
        violations.append(FieldViolation(field, f"must be at most {MAX_ITEM_ID_LENGTH} characters"))
    return item_id


def validate_input(data: UserProgressInput, prefix: str = "data.") -> UserProgressInput:
    """The input as it will be stored, or a ValidationError naming every bad field."""
    violations = check_progress_type(data.progress_type, f"{prefix}progress_type")
    item_id = clean_item_id(data.item_id, f"{prefix}item_id", violations)
    violations += text_violations(data.value, f"{prefix}value")
    violations += json_violations(data.metadata, f"{prefix}metadata")
    if violations:
        raise ValidationError(violations)
    return UserProgressInput(data.progress_type, item_id, data.value, data.score, data.metadata)


def _csv_progress_type(value: str) -> str:
    if violations := check_progress_type(value, ""):
        raise CellError(violations[0].description)
    return value


def _csv_item_id(value: str) -> str:
    violations: list[FieldViolation] = []
    item_id = clean_item_id(value, "", violations)
    if violations:
        raise CellError(violations[0].description)
    return item_id


CSV_COLUMNS = (
    CsvColumn("progress_type", _csv_progress_type, required=True, nullable=False),
    CsvColumn("item_id", _csv_item_id, required=True, nullable=False),
    CsvColumn("value"),
    CsvColumn("score", int32),
    CsvColumn("metadata", json_text),
)
CSV_HEADER = tuple(c.name for c in CSV_COLUMNS)


class UserProgressService:
    def __init__(self, db: Database, csv_limits: CsvLimits | None = None) -> None:
        self._db = db
        self._csv_limits = csv_limits or CsvLimits.from_env()

    async def upsert(self, principal: Principal, data: UserProgressInput) -> UserProgress:
        assert_authenticated_tenant_user(principal)
        clean = validate_input(data)
        async with self._db.driver_transaction(write=True, principal=principal) as conn:
            record, _created = await UserProgressRepository(conn, principal).upsert(clean)
        return record

    async def list(
        self,
        principal: Principal,
        progress_type: str,
        item_id: str | None,
        limit: int,
        page: int,
    ) -> Page:
        assert_authenticated_tenant_user(principal)
        violations = check_progress_type(progress_type, "progress_type")
        if item_id is not None:
            item_id = item_id.strip() or None
            violations += text_violations(item_id, "item_id")
        if violations:
            raise ValidationError(violations)
        paging = resolve_pagination(limit, page)
        async with self._db.driver_transaction(principal=principal) as conn:
            rows, count = await UserProgressRepository(conn, principal).list(
                progress_type, item_id, paging
            )
        return Page(rows, count)

    async def delete_by_item(self, principal: Principal, progress_type: str, item_id: str) -> int:
        assert_authenticated_tenant_user(principal)
        violations = check_progress_type(progress_type, "progress_type")
        clean_id = clean_item_id(item_id, "item_id", violations)
        if violations:
            raise ValidationError(violations)
        async with self._db.driver_transaction(write=True, principal=principal) as conn:
            return await UserProgressRepository(conn, principal).soft_delete(
                progress_type, clean_id
            )

    async def import_csv(self, principal: Principal, chunks: AsyncIterable[bytes]) -> ImportSummary:
        """Upserts every row for the caller, the last row of a (type, item) winning; nothing is
        written unless every row is valid."""
        assert_authenticated_tenant_user(principal)
        require_organization_id(principal)
        reader = CsvReader(
            chunks, CSV_COLUMNS, limits=self._csv_limits, label="user_progress import"
        )
        async with self._db.transaction(write=True, principal=principal) as conn:
            repository = UserProgressRepository(conn, principal)
            staging = await repository.stage_import(reader.rows())
            reader.raise_if_invalid()
            created, updated = await repository.apply_import(staging)
        skipped = reader.rows_read - created - updated
        return ImportSummary(reader.rows_read, created, updated, skipped)

    async def export_csv(
        self, principal: Principal, progress_type: str | None
    ) -> AsyncIterator[bytes]:
        """The caller's rows (of one type, when given) as CSV chunks, oldest first."""
        assert_authenticated_tenant_user(principal)
        if progress_type is not None and (
            violations := check_progress_type(progress_type, "progress_type")
        ):
            raise ValidationError(violations)
        async with self._db.transaction(principal=principal) as conn:
            statement = UserProgressRepository(conn, principal).export_statement(progress_type)
            label = "user_progress export"
            async with stream_csv(conn, statement, CSV_HEADER, label=label) as chunks:
                async for chunk in chunks:
                    yield chunk
