"""Moving a file through an import or export call in bounded chunks."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import IO, Any

from google.api import httpbody_pb2

from common.csvclient.display import Progress

# Each message carries at most this much of the file, far below the servers' 8 MiB limit, so a
# file of any size streams in constant memory.
CHUNK_BYTES = 64 * 1024
CONTENT_TYPE = "text/csv"


async def file_bodies(
    source: IO[bytes], progress: Progress, chunk_bytes: int = CHUNK_BYTES
) -> AsyncIterator[httpbody_pb2.HttpBody]:
    """The file as HttpBody messages of at most `chunk_bytes`, read only as gRPC sends them."""
    while chunk := source.read(chunk_bytes):
        progress.advance(chunk)
        yield httpbody_pb2.HttpBody(content_type=CONTENT_TYPE, data=chunk)
    progress.note("file sent; waiting for the server to apply it")


async def upload(
    call: Any,
    source: IO[bytes],
    progress: Progress,
    *,
    metadata: Sequence[tuple[str, str]],
    deadline: float | None,
) -> Any:
    """Stream `source` into a client-streaming import; returns its summary message."""
    return await call(file_bodies(source, progress), metadata=metadata, timeout=deadline)


async def download(
    call: Any,
    request: Any,
    sink: IO[bytes],
    progress: Progress,
    *,
    metadata: Sequence[tuple[str, str]],
    deadline: float | None,
) -> None:
    """Write each chunk of a server-streaming export to `sink` as it arrives."""
    async for body in call(request, metadata=metadata, timeout=deadline):
        sink.write(body.data)
        progress.advance(body.data)
    sink.flush()


def size_of(path: Path) -> int | None:
    """The file's size when it is a regular file (a pipe has none)."""
    try:
        info = path.stat()
    except OSError:
        return None
    return info.st_size if os.path.isfile(path) else None
