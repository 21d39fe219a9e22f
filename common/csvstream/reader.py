"""Streaming CSV import: byte chunks in, typed rows out, every violation collected by line."""

from __future__ import annotations

import codecs
import csv
import io
import logging
from collections.abc import AsyncIterable, AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

from common.config import Limits
from common.csvstream.cells import CellError, CellParser, text
from common.csvstream.progress import RateLog
from common.errors import MAX_VIOLATIONS, FieldViolation, ResourceExhaustedError, ValidationError
from common.validation import NUL, NUL_MESSAGE

log = logging.getLogger("csv")

BATCH_ROWS = 5000


@dataclass(frozen=True, slots=True)
class CsvColumn:
    """A column an import accepts; `required` columns must be in the header."""

    name: str
    parse: CellParser = text
    required: bool = False
    nullable: bool = True


def _line_field(line: int, column: str | None = None) -> str:
    return f"line {line}: {column}" if column else f"line {line}"


def record_boundary(text: str) -> int:
    """Length of the longest prefix of `text` that ends a record: a newline outside quotes.

    In RFC 4180 every quote inside a quoted field is doubled, so a newline is outside quotes
    exactly when the number of quotes before it is even."""
    end = text.rfind("\n")
    if end < 0:
        return 0
    quotes = text.count('"', 0, end)
    while quotes % 2:
        previous = text.rfind("\n", 0, end)
        if previous < 0:
            return 0
        quotes -= text.count('"', previous, end)
        end = previous
    return end + 1


class CsvReader:
    """Reads one CSV upload; `rows()` yields valid rows until the first violation is seen,
    then keeps reading only to count violations; `raise_if_invalid()` reports them."""

    def __init__(
        self,
        chunks: AsyncIterable[bytes],
        columns: Sequence[CsvColumn],
        *,
        limits: Limits,
        label: str,
    ) -> None:
        self._chunks = chunks
        self._columns = tuple(columns)
        self._limits = limits
        self._label = label
        self._line = 0  # physical lines consumed so far
        self._plan: tuple[tuple[int, int, CsvColumn], ...] | None = None
        self._width = 0
        self.header: tuple[str, ...] = ()
        self.bytes_read = 0
        self.rows_read = 0
        self.violations: list[FieldViolation] = []
        self.total_violations = 0

    def present(self, name: str) -> bool:
        return name in self.header

    def _violation(self, line: int, column: str | None, description: str) -> None:
        self.total_violations += 1
        if len(self.violations) < MAX_VIOLATIONS:
            self.violations.append(FieldViolation(_line_field(line, column), description))

    def raise_if_invalid(self) -> None:
        if self.total_violations:
            raise ValidationError(self.violations, total=self.total_violations)

    async def rows(self, batch_rows: int = BATCH_ROWS) -> AsyncIterator[list[tuple[Any, ...]]]:
        """Batches of `(row_index, line, *values)`, values in column order (absent = None)."""
        rate = RateLog(self._label, "read")
        batch: list[tuple[Any, ...]] = []
        async for block in self._blocks():
            parsed = self._parse_block(block)
            rate.tick(self.rows_read)
            if self.total_violations:
                batch.clear()
                continue
            batch.extend(parsed)
            if len(batch) >= batch_rows:
                yield batch
                batch = []
        if self._plan is None:
            raise ValidationError([FieldViolation("line 1", "a header row is required")])
        if batch and not self.total_violations:
            yield batch
        rate.done(self.rows_read)

    async def _blocks(self) -> AsyncIterator[str]:
        """Decoded text in pieces that end on record boundaries."""
        decoder = codecs.getincrementaldecoder("utf-8-sig")("strict")
        pending = ""
        async for chunk in self._chunks:
            self.bytes_read += len(chunk)
            if self.bytes_read > self._limits.csv_max_bytes:
                raise ResourceExhaustedError(
                    f"the CSV is larger than {self._limits.csv_max_bytes} bytes",
                    reason="CSV_TOO_LARGE",
                    metadata={"max_bytes": str(self._limits.csv_max_bytes)},
                )
            pending += self._decode(decoder, chunk, pending)
            cut = record_boundary(pending)
            if cut:
                yield pending[:cut]
                pending = pending[cut:]
            if len(pending) > self._limits.csv_max_record_chars:
                raise self._unclosed_quote(pending)
        pending += self._decode(decoder, b"", pending, final=True)
        if pending:
            yield pending

    def _decode(
        self, decoder: codecs.IncrementalDecoder, chunk: bytes, pending: str, final: bool = False
    ) -> str:
        held = decoder.getstate()[0]
        try:
            return decoder.decode(chunk, final)
        except UnicodeDecodeError as exc:
            before = chunk[: max(exc.start - len(held), 0)]
            line = self._line + pending.count("\n") + before.count(b"\n") + 1
            raise ValidationError(
                [FieldViolation(_line_field(line), "is not valid UTF-8")]
            ) from None

    def _unclosed_quote(self, pending: str) -> ValidationError:
        """The line where quotes stop balancing: a quoted field that never closes."""
        line, quotes = self._line, 0
        for physical in io.StringIO(pending, newline="\n"):
            line += 1
            was_even = quotes % 2 == 0
            quotes += physical.count('"')
            if was_even and quotes % 2:
                break
        limit = self._limits.csv_max_record_chars
        return ValidationError(
            [
                FieldViolation(
                    _line_field(line), f"quoted field not closed within {limit} characters"
                )
            ]
        )

    def _parse_block(self, block: str) -> list[tuple[Any, ...]]:
        reader = csv.reader(io.StringIO(block, newline="\n"), strict=True)
        base, consumed, out = self._line, 0, []
        while True:
            line = base + consumed + 1
            try:
                fields = next(reader)
            except StopIteration:
                break
            except csv.Error as exc:
                consumed = reader.line_num
                self._violation(line, None, f"malformed CSV: {exc}")
                continue
            consumed = reader.line_num
            if not fields:
                continue  # a blank line
            if self._plan is None:
                self._read_header(fields)
                continue
            row = self._parse_row(fields, line)
            if row is not None:
                out.append(row)
        self._line = base + block.count("\n")
        return out

    def _read_header(self, fields: list[str]) -> None:
        names = [f.strip() for f in fields]
        known = {c.name: i for i, c in enumerate(self._columns)}
        unknown = f"unknown column; the columns are {', '.join(known)}"
        errors = [FieldViolation(_line_field(1, n), unknown) for n in names if n not in known]
        seen: set[str] = set()
        for n in names:
            if n in seen:
                errors.append(FieldViolation(_line_field(1, n), "duplicate column"))
            seen.add(n)
        for c in self._columns:
            if c.required and c.name not in seen:
                errors.append(FieldViolation(_line_field(1, c.name), "required column is missing"))
        if errors:
            raise ValidationError(errors[:MAX_VIOLATIONS], total=len(errors))
        self.header = tuple(names)
        self._width = len(names)
        self._plan = tuple((pos, known[n], self._columns[known[n]]) for pos, n in enumerate(names))

    def _parse_row(self, fields: list[str], line: int) -> tuple[Any, ...] | None:
        index = self.rows_read
        self.rows_read += 1
        if len(fields) != self._width:
            self._violation(line, None, f"has {len(fields)} fields, the header has {self._width}")
            return None
        values: list[Any] = [None] * len(self._columns)
        ok = True
        assert self._plan is not None
        for pos, slot, column in self._plan:
            raw = fields[pos]
            if not raw:
                if not column.nullable:
                    self._violation(line, column.name, "must not be empty")
                    ok = False
                continue
            if NUL in raw:  # no column of either service can store it (PostgreSQL text cannot)
                self._violation(line, column.name, NUL_MESSAGE)
                ok = False
                continue
            try:
                values[slot] = column.parse(raw)
            except CellError as exc:
                self._violation(line, column.name, str(exc))
                ok = False
        return (index, line, *values) if ok else None
