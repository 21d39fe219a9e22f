"""A `multipart/form-data` upload as the bytes of its one file part, parsed as it streams.

The old UI posted its CSV as a form (Express + multer); through the gateway that body reaches
an import as HttpBody chunks. The parser keeps at most a boundary's length of bytes between
chunks, so the file part flows into the CSV reader as it arrives, never buffered whole."""

from __future__ import annotations

import re
from collections.abc import AsyncIterable, AsyncIterator

from multipart import MultipartError, MultipartSegment, PushMultipartParser, parse_options_header

from common.errors import FieldViolation, ValidationError

FORM_DATA = "multipart/form-data"
# The field the old UI's form put the file in (multer's `upload.single("file")`); a part with a
# filename is taken whatever its field name, as the seed documents name none.
FILE_FIELD = "file"
# Other parts (a form's text fields) are read and dropped; they stay small.
MAX_FIELD_BYTES = 64 * 1024
MAX_PARTS = 32
# RFC 2046: 1 to 70 characters of this set, not ending in a space.
_BOUNDARY = re.compile(r"[0-9A-Za-z'()+_,\-./:=? ]{0,69}[0-9A-Za-z'()+_,\-./:=?]")
REASON = "MALFORMED_MULTIPART"


def _malformed(description: str, field: str = "body") -> ValidationError:
    """`field` is `body` for the upload, or `content_type` (HttpBody's; the REST header)."""
    return ValidationError([FieldViolation(field, description)], reason=REASON)


def media_type(content_type: str) -> tuple[str, dict[str, str]]:
    """`type/subtype` in lower case and the parameters of a Content-Type value."""
    kind, options = parse_options_header(content_type)
    return kind, options


def boundary_of(content_type: str) -> str:
    """The boundary parameter of a `multipart/form-data` content type, checked."""
    _, options = media_type(content_type)
    boundary = options.get("boundary")
    if not boundary:
        raise _malformed(f"{FORM_DATA} needs a boundary parameter", "content_type")
    if _BOUNDARY.fullmatch(boundary) is None:
        raise _malformed(
            "the multipart boundary must be 1 to 70 characters allowed by RFC 2046",
            "content_type",
        )
    return boundary


def _is_file(segment: MultipartSegment) -> bool:
    return segment.filename is not None or segment.name == FILE_FIELD


async def form_file(chunks: AsyncIterable[bytes], boundary: str) -> AsyncIterator[bytes]:
    """The body of the form's file part, chunk by chunk as `chunks` arrive. The rest of the
    body is read to its closing boundary, so a truncated or malformed form is refused whole."""
    parser = PushMultipartParser(boundary, max_segment_count=MAX_PARTS)
    found = in_file = False
    field_bytes = 0
    try:
        async for chunk in chunks:
            if not chunk:
                continue
            for event in parser.parse(chunk):
                if isinstance(event, MultipartSegment):
                    if _is_file(event):
                        if found:
                            raise _malformed("the form has more than one file part; send one")
                        found = in_file = True
                    field_bytes = 0
                elif event is None:
                    in_file = False
                elif in_file:
                    yield event
                else:
                    field_bytes += len(event)
                    if field_bytes > MAX_FIELD_BYTES:
                        raise _malformed(
                            f"a form field other than the file is over {MAX_FIELD_BYTES} bytes"
                        )
        parser.close()
    except MultipartError as exc:
        raise _malformed(f"malformed {FORM_DATA} body: {exc}") from None
    if not found:
        raise _malformed(f"the form has no file part: send the CSV in a field named {FILE_FIELD!r}")
