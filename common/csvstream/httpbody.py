"""`google.api.HttpBody` streams to and from plain byte chunks."""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator

from google.api import httpbody_pb2

from common.csvstream.writer import CONTENT_TYPE


async def body_bytes(messages: AsyncIterable[httpbody_pb2.HttpBody]) -> AsyncIterator[bytes]:
    async for message in messages:
        if message.data:
            yield message.data


async def csv_bodies(chunks: AsyncIterable[bytes]) -> AsyncIterator[httpbody_pb2.HttpBody]:
    async for chunk in chunks:
        yield httpbody_pb2.HttpBody(content_type=CONTENT_TYPE, data=chunk)
