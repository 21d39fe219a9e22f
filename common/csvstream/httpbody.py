"""`google.api.HttpBody` streams to and from plain byte chunks."""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator

from google.api import httpbody_pb2

from common.csvstream.formdata import FORM_DATA, REASON, boundary_of, form_file, media_type
from common.csvstream.writer import CONTENT_TYPE
from common.errors import FieldViolation, ValidationError


async def _data(
    first: httpbody_pb2.HttpBody, rest: AsyncIterator[httpbody_pb2.HttpBody]
) -> AsyncIterator[bytes]:
    if first.data:
        yield first.data
    async for message in rest:
        if message.data:
            yield message.data


async def body_bytes(messages: AsyncIterable[httpbody_pb2.HttpBody]) -> AsyncIterator[bytes]:
    """The uploaded file's bytes. The first message's content type says how to read the
    stream (a gateway puts the request's Content-Type there): `multipart/form-data` is a form
    whose file part is the file; anything else, or none, is the file itself."""
    stream = aiter(messages)
    first = await anext(stream, None)
    if first is None:
        return
    kind, _ = media_type(first.content_type)
    chunks = _data(first, stream)
    if kind == FORM_DATA:
        chunks = form_file(chunks, boundary_of(first.content_type))
    elif kind.startswith("multipart/"):
        raise ValidationError(
            [FieldViolation("content_type", f"{kind} is not taken: send text/csv or {FORM_DATA}")],
            reason=REASON,
        )
    async for chunk in chunks:
        yield chunk


async def csv_bodies(chunks: AsyncIterable[bytes]) -> AsyncIterator[httpbody_pb2.HttpBody]:
    async for chunk in chunks:
        yield httpbody_pb2.HttpBody(content_type=CONTENT_TYPE, data=chunk)
