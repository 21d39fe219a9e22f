"""A TCP proxy in front of PostgreSQL (or a gRPC server) that a test can turn off and on: a
database outage in milliseconds, without restarting a server (tests/support/pgcluster.py does
the real thing); or a connection whose answers are lost on the way back."""

from __future__ import annotations

import asyncio
import contextlib
from urllib.parse import parse_qs, urlencode, urlsplit, urlunsplit


class TcpProxy:
    """Forwards 127.0.0.1:`port` to `url`'s server (over TCP or its unix socket). `down()`
    acts like a server going away: connections are cut, and new ones are accepted and closed
    at once (counted in `refused`) until `up()`."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        # A unix-socket server (the embedded one: `?host=/dir`) is reached through its socket
        # file; the proxied URL is plain TCP, so that query goes.
        query = parse_qs(parts.query)
        socket_dir = query.pop("host", [None])[0]
        self._url = parts._replace(query=urlencode(query, doseq=True))
        self._socket = f"{socket_dir}/.s.PGSQL.{parts.port or 5432}" if socket_dir else None
        self._upstream = (parts.hostname or "127.0.0.1", parts.port or 5432)
        self._server: asyncio.Server | None = None
        self._open: set[asyncio.StreamWriter] = set()
        self.is_up = True
        # While set, what the server sends back is dropped (a connection that goes on sending
        # but whose answers are lost); cut it (`down`) before letting answers through again.
        self.dropping_answers = False
        self.refused = 0
        self.port = 0

    @property
    def url(self) -> str:
        """`url` through the proxy."""
        netloc = self._url.netloc.rsplit("@", 1)
        host = f"127.0.0.1:{self.port}"
        return urlunsplit(
            self._url._replace(netloc=f"{netloc[0]}@{host}" if len(netloc) > 1 else host)
        )

    async def start(self) -> TcpProxy:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def close(self) -> None:
        self.down()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    def down(self) -> None:
        self.is_up = False
        for writer in list(self._open):
            writer.transport.abort()
        self._open.clear()

    def up(self) -> None:
        self.is_up = True

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if not self.is_up:
            self.refused += 1
            writer.transport.abort()
            return
        try:
            if self._socket is not None:
                up_reader, up_writer = await asyncio.open_unix_connection(self._socket)
            else:
                up_reader, up_writer = await asyncio.open_connection(*self._upstream)
        except OSError:
            writer.transport.abort()
            return
        self._open |= {writer, up_writer}
        try:
            await asyncio.gather(
                self._pipe(reader, up_writer), self._pipe(up_reader, writer, answers=True)
            )
        finally:
            self._open -= {writer, up_writer}
            for end in (writer, up_writer):
                end.transport.abort()

    async def _pipe(
        self, source: asyncio.StreamReader, sink: asyncio.StreamWriter, *, answers: bool = False
    ) -> None:
        with contextlib.suppress(ConnectionError, OSError):
            while data := await source.read(65536):
                if answers and self.dropping_answers:
                    continue
                sink.write(data)
                await sink.drain()
        sink.transport.abort()
