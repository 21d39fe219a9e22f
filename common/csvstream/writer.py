"""Streaming CSV export: rows in, UTF-8 chunks of about `CHUNK_BYTES` out."""

from __future__ import annotations

import csv
import io
from collections.abc import AsyncIterable, AsyncIterator, Sequence
from typing import Any

from sqlalchemy import ColumnElement, Integer, String, case, literal
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.functions import FunctionElement

from common.csvstream.progress import RateLog

CHUNK_BYTES = 64 * 1024
CONTENT_TYPE = "text/csv; charset=utf-8"
# A spreadsheet may run a cell starting with one of these as a formula.
FORMULA_TRIGGERS = ("=", "+", "-", "@", "\t", "\r")


def escape_formula(value: str) -> str:
    return "'" + value if value.startswith(FORMULA_TRIGGERS) else value


class first_code_point(FunctionElement[int]):  # named like the SQL functions it stands for
    """The code point of a text's first character: integers compare without collation rules."""

    type = Integer()
    inherit_cache = True


@compiles(first_code_point, "postgresql")
def _ascii(element: first_code_point, compiler: SQLCompiler, **kw: Any) -> str:
    return f"ascii({compiler.process(element.clauses, **kw)})"


@compiles(first_code_point)
def _unicode(element: first_code_point, compiler: SQLCompiler, **kw: Any) -> str:
    return f"unicode({compiler.process(element.clauses, **kw)})"


def formula_safe(column: ColumnElement[Any]) -> ColumnElement[str]:
    """The same rule in SQL, so text leaves the database already escaped."""
    triggers = [ord(c) for c in FORMULA_TRIGGERS]
    return case(
        (first_code_point(column).in_(triggers), literal("'", String) + column),
        else_=column,
    )


def header_line(header: Sequence[str], terminator: str = "\r\n") -> bytes:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator=terminator).writerow(header)
    return buffer.getvalue().encode()


async def encode_rows(
    header: Sequence[str],
    batches: AsyncIterable[Sequence[Sequence[Any]]],
    *,
    label: str,
    chunk_bytes: int = CHUNK_BYTES,
) -> AsyncIterator[bytes]:
    """CSV text of `batches` (cells already escaped; None written empty) in chunks.
    Records end with CRLF, which also makes the writer quote any field holding a CR."""
    rate, rows = RateLog(label, "export"), 0
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")
    writer.writerow(header)
    async for batch in batches:
        writer.writerows(batch)
        rows += len(batch)
        rate.tick(rows)
        if buffer.tell() >= chunk_bytes:
            yield buffer.getvalue().encode()
            buffer.seek(0)
            buffer.truncate()
    if buffer.tell():
        yield buffer.getvalue().encode()
    rate.done(rows)


async def rechunk(
    pieces: AsyncIterable[bytes], *, label: str, chunk_bytes: int = CHUNK_BYTES
) -> AsyncIterator[bytes]:
    """Joins small pieces of CSV text into chunks of about `chunk_bytes`, counting lines."""
    rate, lines, held, size = RateLog(label, "export"), 0, list[bytes](), 0
    async for piece in pieces:
        held.append(piece)
        size += len(piece)
        if size >= chunk_bytes:
            data = b"".join(held)
            held.clear()
            size = 0
            lines += data.count(b"\n")
            rate.tick(lines)
            yield data
    if held:
        data = b"".join(held)
        lines += data.count(b"\n")
        yield data
    rate.done(lines)
