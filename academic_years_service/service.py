"""Academic-year rules: permissions, validation and one transaction per call."""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator, Sequence
from typing import Any

from academic_years_service import parsing
from academic_years_service.domain import (
    CREATE,
    DELETE,
    MAX_NAME_LENGTH,
    NOT_FOUND_CODE,
    READ,
    UPDATE,
    AcademicYear,
    AcademicYearFilter,
    AcademicYearInput,
    AcademicYearValues,
    FilterRequest,
    ImportSummary,
    Ordering,
    Page,
    Suggestion,
)
from academic_years_service.repository import SORT_COLUMNS, AcademicYearsRepository
from common.auth import Principal
from common.csvstream import (
    CellError,
    CsvColumn,
    CsvLimits,
    CsvReader,
    boolean,
    date,
    stream_csv,
    uuid_text,
)
from common.db import Database, new_id
from common.errors import AlreadyExistsError, FieldViolation, NotFoundError, ValidationError
from common.pagination import DEFAULT_LIMIT, MAX_LIMIT, resolve_pagination
from common.tenancy import assert_authenticated_tenant_user, require_permission
from common.validation import text_violations

MAX_BATCH_IDS = 1000
MAX_IMPORT_HASH_LENGTH = 255  # the column's width
REPORTED_LINES = 20


def _import_hash(value: str) -> str:
    if len(value) > MAX_IMPORT_HASH_LENGTH:
        raise CellError(f"must be at most {MAX_IMPORT_HASH_LENGTH} characters")
    return value


def _csv_name(value: str) -> str:
    if len(value) > MAX_NAME_LENGTH:
        raise CellError(f"must be at most {MAX_NAME_LENGTH} characters")
    return value


CSV_COLUMNS = (
    CsvColumn("id", uuid_text),
    CsvColumn("name", _csv_name),
    CsvColumn("start_date", date),
    CsvColumn("end_date", date),
    CsvColumn("current", boolean),
    CsvColumn("importHash", _import_hash),
)
EXPORT_HEADER = ("id", "name", "start_date", "end_date")


def not_found() -> NotFoundError:
    """The one answer for a missing and an out-of-scope year alike."""
    return NotFoundError(
        f"{NOT_FOUND_CODE}: no such academic year",
        reason="ACADEMIC_YEARS_NOT_FOUND",
        metadata={"code": NOT_FOUND_CODE},
    )


def authorize(principal: Principal, permission: str) -> None:
    assert_authenticated_tenant_user(principal)
    require_permission(principal, permission)


def validate_input(data: AcademicYearInput, prefix: str = "data.") -> AcademicYearValues:
    """The input as it will be written, or a ValidationError naming every bad field."""
    violations: list[FieldViolation] = []
    year_id = None if data.id is None else parsing.uuid(data.id, f"{prefix}id", violations)
    start = parsing.date_or_none(data.start_date, f"{prefix}start_date", violations)
    end = parsing.date_or_none(data.end_date, f"{prefix}end_date", violations)
    violations += text_violations(data.name, f"{prefix}name", MAX_NAME_LENGTH)
    organization_id = None
    if data.organization_id is not None:
        organization_id = parsing.uuid(data.organization_id, f"{prefix}organizationId", violations)
    if violations:
        raise ValidationError(violations)
    given = {
        name
        for name in ("name", "start_date", "end_date", "current")
        if getattr(data, name) is not None
    }
    return AcademicYearValues(
        id=year_id,
        name=data.name,
        start_date=start,
        end_date=end,
        current=data.current,
        organization_id=organization_id,
        fields=frozenset(given),
    )


def validate_ordering(field: str, sort: str, violations: list[FieldViolation]) -> Ordering:
    """A whitelisted field (default createdAt) and direction (desc by default, asc with a field)."""
    if field and field not in SORT_COLUMNS:
        violations.append(FieldViolation("field", f"must be one of {', '.join(SORT_COLUMNS)}"))
        field = ""
    direction = sort.strip().lower()
    if direction not in ("", "asc", "desc"):
        violations.append(FieldViolation("sort", "must be asc or desc"))
    if direction not in ("asc", "desc"):
        direction = "asc" if field else "desc"
    return Ordering(field or "createdAt", direction == "desc")


def parse_filter(request: FilterRequest) -> tuple[AcademicYearFilter, Ordering]:
    """The filter and order of List, Count and Export, or one error naming every bad field."""
    violations: list[FieldViolation] = []
    f = parsing.filter_from(request, violations)
    ordering = validate_ordering(request.field, request.sort, violations)
    if violations:
        raise ValidationError(violations)
    return f, ordering


def _id(value: str, field: str) -> str:
    violations: list[FieldViolation] = []
    clean = parsing.uuid(value, field, violations)
    if violations or clean is None:
        raise ValidationError(violations)
    return clean


async def check_ids(repository: AcademicYearsRepository, staging: Any) -> None:
    """Ids given in the file must be unique in it and new to the table."""
    repeats, total = await repository.repeated_ids(staging, REPORTED_LINES)
    if total:
        raise ValidationError(
            [FieldViolation(f"line {a}: id", f"repeats the id of line {b}") for a, b in repeats],
            total=total,
        )
    taken = await repository.taken_ids(staging, REPORTED_LINES)
    if taken:
        raise AlreadyExistsError(
            f"line {taken[0]}: an academic year with this id exists already",
            reason="ACADEMIC_YEAR_ID_TAKEN",
            metadata={"lines": ",".join(str(line) for line in taken)},
        )


class AcademicYearsService:
    def __init__(self, db: Database, csv_limits: CsvLimits | None = None) -> None:
        self._db = db
        self._csv_limits = csv_limits or CsvLimits.from_env()

    async def create(self, principal: Principal, data: AcademicYearInput) -> AcademicYear:
        authorize(principal, CREATE)
        values = validate_input(data)
        if principal.organization_id is None and values.organization_id is None:
            raise ValidationError.field(
                "data.organizationId", "required for a caller without an organization"
            )
        async with self._db.transaction(write=True, principal=principal) as conn:
            return await AcademicYearsRepository(conn, principal).create(
                values.id or new_id(), values
            )

    async def update(
        self, principal: Principal, year_id: str, data: AcademicYearInput
    ) -> AcademicYear:
        authorize(principal, UPDATE)
        year_id = _id(year_id, "id")
        values = validate_input(data)
        if values.id is not None and values.id != year_id:
            raise ValidationError.field("data.id", "must be omitted or equal id")
        async with self._db.transaction(write=True, principal=principal) as conn:
            year = await AcademicYearsRepository(conn, principal).update(year_id, values)
        if year is None:
            raise not_found()
        return year

    async def delete(self, principal: Principal, year_id: str) -> AcademicYear:
        authorize(principal, DELETE)
        year_id = _id(year_id, "id")
        async with self._db.transaction(write=True, principal=principal) as conn:
            year = await AcademicYearsRepository(conn, principal).soft_delete(year_id)
        if year is None:
            raise not_found()
        return year

    async def delete_many(
        self, principal: Principal, year_ids: Sequence[str], old_body_ids: Sequence[str] = ()
    ) -> int:
        """Soft-deletes `ids` and the old REST body's `data` ids alike."""
        authorize(principal, DELETE)
        if len(year_ids) + len(old_body_ids) > MAX_BATCH_IDS:
            raise ValidationError.field("ids", f"at most {MAX_BATCH_IDS} ids per call")
        violations: list[FieldViolation] = []
        given = [(f"ids[{i}]", v) for i, v in enumerate(year_ids)]
        given += [(f"data[{i}]", v) for i, v in enumerate(old_body_ids)]
        clean = {parsing.uuid(v, field, violations) for field, v in given}
        if violations:
            raise ValidationError(violations)
        async with self._db.transaction(write=True, principal=principal) as conn:
            return await AcademicYearsRepository(conn, principal).soft_delete_many(
                sorted(i for i in clean if i is not None)
            )

    async def get(self, principal: Principal, year_id: str) -> AcademicYear:
        authorize(principal, READ)
        year_id = _id(year_id, "id")
        async with self._db.driver_transaction(principal=principal) as conn:
            year = await AcademicYearsRepository(conn, principal).get(year_id)
        if year is None:
            raise not_found()
        return year

    async def list_page(
        self, principal: Principal, request: FilterRequest, limit: int, page: int
    ) -> Page:
        authorize(principal, READ)
        f, ordering = parse_filter(request)
        paging = resolve_pagination(limit, page)
        async with self._db.driver_transaction(principal=principal) as conn:
            rows, count = await AcademicYearsRepository(conn, principal).page(f, ordering, paging)
        return Page(rows, count)

    async def count(self, principal: Principal, request: FilterRequest) -> int:
        authorize(principal, READ)
        f, _ordering = parse_filter(request)
        async with self._db.driver_transaction(principal=principal) as conn:
            return await AcademicYearsRepository(conn, principal).count(f)

    async def autocomplete(
        self, principal: Principal, query: str, limit: int, offset: int
    ) -> list[Suggestion]:
        authorize(principal, READ)
        violations: list[FieldViolation] = []
        if limit < 0:
            violations.append(FieldViolation("limit", "must not be negative"))
        if offset < 0:
            violations.append(FieldViolation("offset", "must not be negative"))
        violations += text_violations(query, "query", MAX_NAME_LENGTH)
        if violations:
            raise ValidationError(violations)
        query = query.strip()
        query_id = parsing.uuid(query, "query", []) if query else None
        async with self._db.transaction(principal=principal) as conn:
            return await AcademicYearsRepository(conn, principal).autocomplete(
                query, query_id, min(limit or DEFAULT_LIMIT, MAX_LIMIT), offset
            )

    async def import_csv(self, principal: Principal, chunks: AsyncIterable[bytes]) -> ImportSummary:
        """One year per row in the caller's organization, in file order; nothing is written
        unless every row is valid."""
        authorize(principal, CREATE)
        if principal.organization_id is None:
            raise ValidationError.field("org", "an import needs a token with an org claim")
        reader = CsvReader(
            chunks, CSV_COLUMNS, limits=self._csv_limits, label="academic_years import"
        )
        async with self._db.transaction(write=True, principal=principal) as conn:
            repository = AcademicYearsRepository(conn, principal)
            staging = await repository.stage_import(reader.rows())
            reader.raise_if_invalid()
            if reader.present("id"):
                await check_ids(repository, staging)
            created = await repository.apply_import(staging)
        return ImportSummary(reader.rows_read, created, reader.rows_read - created)

    async def export_csv(
        self, principal: Principal, request: FilterRequest
    ) -> AsyncIterator[bytes]:
        """Every matching year (List's filters and order, no paging) as CSV chunks."""
        authorize(principal, READ)
        f, ordering = parse_filter(request)
        async with self._db.transaction(principal=principal) as conn:
            statement = AcademicYearsRepository(conn, principal).export_statement(f, ordering)
            label = "academic_years export"
            async with stream_csv(conn, statement, EXPORT_HEADER, label=label) as chunks:
                async for chunk in chunks:
                    yield chunk
