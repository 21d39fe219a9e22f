"""Academic-year rules: permissions, validation and one transaction per call."""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator, Sequence
from dataclasses import replace
from typing import Any

from academic_years_service import parsing
from academic_years_service.csv import (
    CSV_COLUMNS,
    STAGING,
    AcademicYearsCsvRepository,
)
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
    Reference,
    Suggestion,
)
from academic_years_service.repository import REQUEST_IDS, AcademicYearsRepository
from academic_years_service.statements import EXPORT_CELLS, EXPORT_DEFAULT, SORT_COLUMNS
from common import etags, pagetoken
from common.auth import Principal
from common.config import Limits
from common.csvstream import CsvReader
from common.csvstream.transfer import export_csv, import_csv
from common.csvstream.watch import ImportTracker
from common.db import Database, UnitOfWork, new_id
from common.errors import AlreadyExistsError, FieldViolation, NotFoundError, ValidationError
from common.idempotency import Once, Stored
from common.limits import clip
from common.pagetoken import PageTokens
from common.pagination import DEFAULT_LIMIT, MAX_LIMIT, resolve_pagination
from common.tenancy import TenantScope, require_permission, tenant_scope
from common.validation import text_violations

MAX_BATCH_IDS = 1000
Writing = UnitOfWork[AcademicYearsRepository]
REPORTED_LINES = 20
LISTING = "academic_years.v1.AcademicYearsService/ListAcademicYears"


def not_found() -> NotFoundError:
    """The one answer for a missing and an out-of-scope year alike."""
    return NotFoundError(
        f"{NOT_FOUND_CODE}: no such academic year",
        reason="ACADEMIC_YEARS_NOT_FOUND",
        metadata={"code": NOT_FOUND_CODE},
    )


def authorize(principal: Principal, permission: str) -> TenantScope:
    """The caller's scope, once it holds `permission`."""
    scope = tenant_scope(principal)
    require_permission(principal, permission)
    return scope


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


def export_columns(given: Sequence[str]) -> tuple[str, ...]:
    """The export's columns in the order given (an entry may hold several, comma-separated),
    or the default; an unknown or repeated column is a ValidationError naming its entry."""
    violations: list[FieldViolation] = []
    columns: list[str] = []
    for i, entry in enumerate(given):
        for name in (n.strip() for n in entry.split(",")):
            if not name:
                continue
            if name not in EXPORT_CELLS:
                known = ", ".join(EXPORT_CELLS)
                violations.append(
                    FieldViolation(f"columns[{i}]", f"{name[:20]!r} is not one of {known}")
                )
            elif name in columns:
                violations.append(FieldViolation(f"columns[{i}]", f"repeats {name}"))
            else:
                columns.append(name)
    if violations:
        raise ValidationError(violations)
    return tuple(columns) or EXPORT_DEFAULT


def _id(value: str, field: str) -> str:
    violations: list[FieldViolation] = []
    clean = parsing.uuid(value, field, violations)
    if violations or clean is None:
        raise ValidationError(violations)
    return clean


async def check_ids(repository: AcademicYearsCsvRepository) -> None:
    """Ids given in the file must be unique in it and new to the table."""
    repeats, total = await repository.repeated_ids(REPORTED_LINES)
    if total:
        raise ValidationError(
            [FieldViolation(f"line {a}: id", f"repeats the id of line {b}") for a, b in repeats],
            total=total,
        )
    taken = await repository.taken_ids(REPORTED_LINES)
    if taken:
        raise AlreadyExistsError(
            f"line {taken[0]}: an academic year with this id exists already",
            reason="ACADEMIC_YEAR_ID_TAKEN",
            metadata={"lines": ",".join(str(line) for line in taken)},
        )


def _references(references: list[Reference], max_references: int) -> tuple[list[Reference], bool]:
    """The first `max_references`, names cut to MAX_NAME_LENGTH; whether anything was cut."""
    cut = len(references) > max_references
    kept = []
    for reference in references[:max_references]:
        name, clipped = clip(reference.name, MAX_NAME_LENGTH)
        kept.append(Reference(reference.id, name) if clipped else reference)
        cut = cut or clipped
    return kept, cut


def as_read(year: AcademicYear, max_references: int) -> AcademicYear:
    """`year` as a read answers with it. A name stored before the limit (or in another slice's
    table) is cut to MAX_NAME_LENGTH, and an association keeps its first `max_references`
    by name, each named in `truncated`, so that the answer fits one message whatever is
    stored; the rows themselves stay whole."""
    cut: list[str] = []
    name, clipped = clip(year.name, MAX_NAME_LENGTH)
    if clipped:
        cut.append("name")
    organization = year.organization
    if organization is not None:
        org_name, clipped = clip(organization.name, MAX_NAME_LENGTH)
        if clipped:
            organization = Reference(organization.id, org_name)
            cut.append("organization")
    classes, classes_cut = _references(year.classes, max_references)
    timetables, timetables_cut = _references(year.timetables, max_references)
    cut += ["classes_academic_year"] * classes_cut + ["timetables_academic_year"] * timetables_cut
    if not cut:
        return year
    return replace(
        year,
        name=name,
        organization=organization,
        classes=classes,
        timetables=timetables,
        truncated=tuple(cut),
    )


class AcademicYearsService:
    def __init__(
        self, db: Database, limits: Limits | None = None, tokens: PageTokens | None = None
    ) -> None:
        self._db = db
        self._limits = limits or Limits()
        self._max_references = self._limits.academic_year_max_references
        # The app passes the key from the settings; left out (tests, tools), this instance's own.
        self._tokens = tokens or PageTokens.ephemeral()

    def _read(self, year: AcademicYear) -> AcademicYear:
        return as_read(year, self._max_references)

    # Each write takes an optional `once`: its request id, under which the answer of the first
    # call with it is kept, committed with the write, and given again to a retry, which writes
    # nothing (common.idempotency).

    async def create(
        self,
        principal: Principal,
        data: AcademicYearInput,
        once: Once[AcademicYear, Any] | None = None,
    ) -> AcademicYear | Stored:
        scope = authorize(principal, CREATE)
        values = validate_input(data)

        async def work(uow: Writing) -> AcademicYear:
            return self._read(await uow.repo.create(values.id or new_id(), values))

        return await REQUEST_IDS.write(self._db, scope, AcademicYearsRepository, once, work)

    async def update(
        self,
        principal: Principal,
        year_id: str,
        data: AcademicYearInput,
        etag: str = "",
        once: Once[AcademicYear, Any] | None = None,
    ) -> AcademicYear | Stored:
        """Writes the fields `data` has; with an `etag`, only if the year is still as read."""
        scope = authorize(principal, UPDATE)
        year_id = _id(year_id, "id")
        values = validate_input(data)
        if values.id is not None and values.id != year_id:
            raise ValidationError.field("data.id", "must be omitted or equal id")
        expected = etags.parse(etag)

        async def work(uow: Writing) -> AcademicYear:
            return self._found(await uow.repo.update(year_id, values, expected))

        return await REQUEST_IDS.write(self._db, scope, AcademicYearsRepository, once, work)

    async def delete(
        self,
        principal: Principal,
        year_id: str,
        etag: str = "",
        once: Once[AcademicYear, Any] | None = None,
    ) -> AcademicYear | Stored:
        """Soft-deletes the year; with an `etag`, only if it is still as read."""
        scope = authorize(principal, DELETE)
        year_id = _id(year_id, "id")
        expected = etags.parse(etag)

        async def work(uow: Writing) -> AcademicYear:
            return self._found(await uow.repo.soft_delete(year_id, expected))

        return await REQUEST_IDS.write(self._db, scope, AcademicYearsRepository, once, work)

    def _found(self, year: AcademicYear | None) -> AcademicYear:
        """The year as read, or NOT_FOUND (raised inside the unit of work: nothing commits, and a
        retry of a write that did is answered with its stored answer)."""
        if year is None:
            raise not_found()
        return self._read(year)

    async def delete_many(
        self,
        principal: Principal,
        year_ids: Sequence[str],
        old_body_ids: Sequence[str] = (),
        once: Once[int, Any] | None = None,
    ) -> int | Stored:
        """Soft-deletes `ids` and the old REST body's `data` ids alike."""
        scope = authorize(principal, DELETE)
        if len(year_ids) + len(old_body_ids) > MAX_BATCH_IDS:
            raise ValidationError.field("ids", f"at most {MAX_BATCH_IDS} ids per call")
        violations: list[FieldViolation] = []
        given = [(f"ids[{i}]", v) for i, v in enumerate(year_ids)]
        given += [(f"data[{i}]", v) for i, v in enumerate(old_body_ids)]
        clean = {parsing.uuid(v, field, violations) for field, v in given}
        if violations:
            raise ValidationError(violations)
        ordered = sorted(i for i in clean if i is not None)

        async def work(uow: Writing) -> int:
            return await uow.repo.soft_delete_many(ordered)

        return await REQUEST_IDS.write(self._db, scope, AcademicYearsRepository, once, work)

    async def get(self, principal: Principal, year_id: str) -> AcademicYear:
        scope = authorize(principal, READ)
        year_id = _id(year_id, "id")
        async with self._db.unit_of_work(scope, AcademicYearsRepository) as uow:
            year = await uow.repo.get(year_id, self._max_references)
        if year is None:
            raise not_found()
        return self._read(year)

    async def list_page(
        self,
        principal: Principal,
        request: FilterRequest,
        limit: int,
        page: int,
        page_token: str = "",
        skip_count: bool = False,
    ) -> Page:
        """A page by number (`page`), or the page after `page_token`, which is only good for
        this caller, filter and order; the token of the next page unless this is the last."""
        scope = authorize(principal, READ)
        f, ordering = parse_filter(request)
        paging = resolve_pagination(limit, page, page_token)
        bound = pagetoken.binding(LISTING, scope, (f, ordering))
        position = self._tokens.read(paging.token, bound) if paging.token else None
        async with self._db.unit_of_work(scope, AcademicYearsRepository) as uow:
            rows, count, last = await uow.repo.page(
                f, ordering, paging, position, counted=not skip_count
            )
        next_token = "" if last is None else self._tokens.issue(bound, last)
        return Page([self._read(row) for row in rows], count or 0, next_token)

    async def count(self, principal: Principal, request: FilterRequest) -> int:
        scope = authorize(principal, READ)
        f, _ordering = parse_filter(request)
        async with self._db.unit_of_work(scope, AcademicYearsRepository) as uow:
            return await uow.repo.count(f)

    async def autocomplete(
        self, principal: Principal, query: str, limit: int, offset: int
    ) -> list[Suggestion]:
        scope = authorize(principal, READ)
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
        async with self._db.unit_of_work(scope, AcademicYearsRepository) as uow:
            found = await uow.repo.autocomplete(
                query, query_id, min(limit or DEFAULT_LIMIT, MAX_LIMIT), offset
            )
        # A label is the name: cut like one, without a mark (it is a label, not the year).
        return [Suggestion(s.id, clip(s.label, MAX_NAME_LENGTH)[0]) for s in found]

    async def import_csv(
        self,
        principal: Principal,
        chunks: AsyncIterable[bytes],
        tracker: ImportTracker | None = None,
        once: Once[ImportSummary, Any] | None = None,
    ) -> ImportSummary | Stored:
        """One year per row in the caller's organization, in file order; nothing is written
        unless every row is valid. `tracker` follows it for a caller watching. With a request
        id (`once`), a retry gets the first import's summary without a read."""
        scope = authorize(principal, CREATE)
        scope.writable_organization()
        if once is not None:
            chunks = once.read_through(chunks)
        reader = CsvReader(chunks, CSV_COLUMNS, limits=self._limits, label="academic_years import")

        async def check(repository: AcademicYearsCsvRepository) -> None:
            if reader.present("id"):
                await check_ids(repository)

        async def apply(repository: AcademicYearsCsvRepository) -> ImportSummary:
            created = await repository.apply_import()
            return ImportSummary(reader.rows_read, created, reader.rows_read - created)

        return await import_csv(
            self._db,
            scope,
            AcademicYearsCsvRepository,
            reader,
            STAGING,
            apply,
            check=check,
            tracker=tracker,
            request_ids=REQUEST_IDS,
            once=once,
        )

    async def export_csv(
        self, principal: Principal, request: FilterRequest, columns: Sequence[str] = ()
    ) -> AsyncIterator[bytes]:
        """Every matching year (List's filters and order, no paging) as CSV chunks of
        `columns` (default id, name, start_date, end_date)."""
        scope = authorize(principal, READ)
        f, ordering = parse_filter(request)
        header = export_columns(columns)
        chunks = export_csv(
            self._db,
            scope,
            AcademicYearsCsvRepository,
            lambda r: r.export(f, ordering, header),
            header,
            label="academic_years export",
        )
        async for chunk in chunks:
            yield chunk
