"""Moving a file through an import or export call in bounded chunks."""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import IO, Any

import grpc
from google.api import httpbody_pb2

from common.csvclient.display import Progress

# Each message carries at most this much of the file, far below the servers' 8 MiB limit, so a
# file of any size streams in constant memory.
CHUNK_BYTES = 64 * 1024
CONTENT_TYPE = "text/csv"
CORE_WRITE_FAILED = "Internal error from Core"


def _settle(future: asyncio.Future[bytes], data: bytes | None, error: BaseException | None) -> None:
    if future.done():  # the upload was cancelled meanwhile
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(data or b"")


async def read_off_loop(source: IO[bytes], size: int) -> bytes:
    """`source.read(size)` on a daemon thread. A slow pipe then holds up neither the event
    loop (nor with it the server's reports) nor, when interrupted, the command's exit."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[bytes] = loop.create_future()

    def read() -> None:
        data, error = None, None
        try:
            data = source.read(size)
        except BaseException as exc:  # handed to the awaiting task
            error = exc
        with contextlib.suppress(RuntimeError):  # the loop has closed: nobody is waiting
            loop.call_soon_threadsafe(_settle, future, data, error)

    threading.Thread(target=read, name="school-csv read", daemon=True).start()
    return await future


async def file_bodies(
    source: IO[bytes], progress: Progress, chunk_bytes: int = CHUNK_BYTES
) -> AsyncIterator[httpbody_pb2.HttpBody]:
    """The file as HttpBody messages of at most `chunk_bytes`, read only as gRPC sends them."""
    while chunk := await read_off_loop(source, chunk_bytes):
        progress.advance(chunk)
        yield httpbody_pb2.HttpBody(content_type=CONTENT_TYPE, data=chunk)
    progress.note("file sent; waiting for the server to apply it")


async def upload(
    watched: Any,
    plain: Any,
    source: IO[bytes],
    progress: Progress,
    *,
    metadata: Sequence[tuple[str, str]],
    deadline: float | None,
) -> Any:
    """Stream `source` into the import that reports how far the server is (`watched`, a
    `…WithProgress` call), showing each report beside the bytes sent, and return its summary.
    A server from before that import gets the `plain` one, when `source` can be read again."""
    reports, summary = 0, None
    try:
        bodies = file_bodies(source, progress)
        async for report in watched(bodies, metadata=metadata, timeout=deadline):
            reports += 1
            phase = type(report).Phase.Name(report.phase).removeprefix("PHASE_").lower()
            progress.server(phase, report.rows_read, report.rows_staged)
            if report.HasField("summary"):
                summary = report.summary
    except grpc.aio.AioRpcError as exc:
        if reports or not maybe_unimplemented(exc) or not rewind(source):
            raise
        progress.restart("the server does not report its progress; sending the file without it")
        return await plain(file_bodies(source, progress), metadata=metadata, timeout=deadline)
    if summary is None:
        raise RuntimeError("the server ended the import without its summary")
    return summary


def maybe_unimplemented(error: grpc.aio.AioRpcError) -> bool:
    """UNIMPLEMENTED, or the INTERNAL an asyncio client may report instead when the server
    ends a call it is still writing to (grpc/grpc#36066). Either way the server stopped before
    reading the whole file, so it has written none of it: sending it again is safe."""
    code = error.code()
    if code == grpc.StatusCode.UNIMPLEMENTED:
        return True
    return code == grpc.StatusCode.INTERNAL and error.details() == CORE_WRITE_FAILED


def rewind(source: IO[bytes]) -> bool:
    """Back to the start of `source` when it can be read again (a file, not a pipe)."""
    try:
        if not source.seekable():
            return False
        source.seek(0)
    except OSError:
        return False
    return True


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
