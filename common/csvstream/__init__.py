"""The streaming CSV kit both services use for bulk import and export."""

from common.csvstream.cells import (
    CellError,
    boolean,
    bounded_json,
    bounded_text,
    date,
    int32,
    json_text,
    text,
    uuid_text,
)
from common.csvstream.export import stream_csv
from common.csvstream.httpbody import body_bytes, csv_bodies
from common.csvstream.reader import CsvColumn, CsvReader
from common.csvstream.writer import (
    CHUNK_BYTES,
    CONTENT_TYPE,
    escape_formula,
    formula_safe,
    header_line,
    rechunk,
)

__all__ = [
    "CHUNK_BYTES",
    "CONTENT_TYPE",
    "CellError",
    "CsvColumn",
    "CsvReader",
    "body_bytes",
    "boolean",
    "bounded_json",
    "bounded_text",
    "csv_bodies",
    "date",
    "escape_formula",
    "formula_safe",
    "header_line",
    "int32",
    "json_text",
    "rechunk",
    "stream_csv",
    "text",
    "uuid_text",
]
