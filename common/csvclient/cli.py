"""`school-csv import|export {progress|academic-years}`: CSV files through the services.

Exit codes: 0 done; 1 the service rejected the file or filter (INVALID_ARGUMENT with its
violations, ALREADY_EXISTS, RESOURCE_EXHAUSTED, ...); 2 usage (bad option, unreadable file,
no token); 3 the call failed otherwise (UNAVAILABLE, DEADLINE_EXCEEDED, INTERNAL, ...);
4 the token was refused (UNAUTHENTICATED, PERMISSION_DENIED); 130 interrupted."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any, TextIO

import grpc
from google.protobuf import json_format

from common.client import channel
from common.csvclient.display import progress_for
from common.csvclient.status import failure
from common.csvclient.targets import TARGETS, Target
from common.csvclient.transfer import download, size_of, upload

PROG = "school-csv"
OK, REJECTED, USAGE, FAILED, DENIED, INTERRUPTED = 0, 1, 2, 3, 4, 130
REJECTED_CODES = frozenset(
    {
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.ALREADY_EXISTS,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.OUT_OF_RANGE,
    }
)
DENIED_CODES = frozenset({grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED})


class UsageError(Exception):
    """Something the person running the command can fix in the command line."""


def exit_code(code: grpc.StatusCode) -> int:
    if code in REJECTED_CODES:
        return REJECTED
    if code in DENIED_CODES:
        return DENIED
    return FAILED


def _connection_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--addr",
        help="host:port of the service (default 127.0.0.1:50051 progress, "
        "127.0.0.1:50052 academic-years)",
    )
    parser.add_argument("--token", help="bearer token (default: the TOKEN environment variable)")
    parser.add_argument(
        "--timeout", type=float, help="seconds for the whole call (default: the client config's)"
    )
    tls = parser.add_argument_group("TLS (any of these switches TLS on)")
    tls.add_argument("--tls", action="store_true", help="TLS trusting the system's CAs")
    tls.add_argument("--ca-file", help="CA bundle to trust")
    tls.add_argument("--cert", help="client certificate, for mTLS")
    tls.add_argument("--key", help="client key, for mTLS")
    tls.add_argument("--server-name", help="TLS name to verify (default: the host dialled)")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Import and export CSV files through the school services, with progress "
        "on stderr (a bar on a terminal, plain lines otherwise).",
        epilog=(__doc__ or "").split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = p.add_subparsers(dest="command", required=True, metavar="{import,export}")
    imp = commands.add_parser("import", help="upload a CSV file; prints the import summary")
    imp.add_argument("service", choices=sorted(TARGETS))
    imp.add_argument("file", help="the CSV file ('-' reads standard input)")
    imp.add_argument(
        "--request-id",
        help="UUID sent as request-id metadata: running the import again with the same id "
        "answers the first run's summary without importing twice (default: a new id per run)",
    )
    _connection_options(imp)
    exp = commands.add_parser("export", help="download matching rows as CSV")
    exp.add_argument("service", choices=sorted(TARGETS))
    exp.add_argument(
        "--filter",
        default="{}",
        help="the export request as JSON, e.g. '{\"current\": true}' or "
        '\'{"progress_type": "sign_learned"}\'',
    )
    exp.add_argument(
        "--columns",
        help="academic-years only: the CSV's columns, comma-separated, from "
        "id,name,start_date,end_date,current,importHash (default id,name,start_date,end_date; "
        "all six make a file that imports back as it is)",
    )
    exp.add_argument("-o", "--output", help="file to write (default: standard output)")
    _connection_options(exp)
    return p


def _read(path: str | None, what: str) -> bytes | None:
    if not path:
        return None
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise UsageError(f"{what} {path}: {exc.strerror}") from None


def credentials(args: argparse.Namespace) -> grpc.ChannelCredentials | None:
    if not (args.tls or args.ca_file or args.cert or args.key):
        return None
    if bool(args.cert) != bool(args.key):
        raise UsageError("--cert and --key go together")
    return grpc.ssl_channel_credentials(
        _read(args.ca_file, "--ca-file"), _read(args.key, "--key"), _read(args.cert, "--cert")
    )


def call_metadata(args: argparse.Namespace) -> list[tuple[str, str]]:
    token = (args.token or os.environ.get("TOKEN") or "").strip()
    token = token.removeprefix("Bearer ").strip()
    if not token:
        raise UsageError("no token: pass --token or set TOKEN (`python -m common.token` mints one)")
    metadata = [("authorization", f"Bearer {token}")]
    request_id = getattr(args, "request_id", None)
    if request_id is not None:
        try:
            metadata.append(("request-id", str(uuid.UUID(request_id))))
        except ValueError:
            raise UsageError(f"--request-id must be a UUID, not {request_id!r}") from None
    return metadata


def _open(path: str | Path, mode: str) -> IO[bytes]:
    try:
        return open(path, mode)  # closed by the caller once the call ends
    except OSError as exc:
        raise UsageError(f"{path}: {exc.strerror}") from None


def export_request(target: Target, text: str, columns: str | None = None) -> Any:
    """The export's request from --filter JSON, with --columns' names added to it."""
    try:
        request = json_format.Parse(text, target.export_request())
    except json_format.ParseError as exc:
        name = target.export_request.DESCRIPTOR.full_name
        raise UsageError(f"--filter is not a valid {name}: {exc}") from None
    if columns is not None:
        if "columns" not in target.export_request.DESCRIPTOR.fields_by_name:
            raise UsageError(f"--columns is not taken by a {target.name} export")
        request.columns.extend(c.strip() for c in columns.split(",") if c.strip())
    return request


async def run_import(
    args: argparse.Namespace, target: Target, stdin: IO[bytes], out: IO[bytes], err: TextIO
) -> int:
    metadata = call_metadata(args)
    creds = credentials(args)
    if args.file == "-":
        source, total = stdin, None
    else:
        source, total = _open(args.file, "rb"), size_of(Path(args.file))
    progress = progress_for(f"import {target.name}", total, err)
    try:
        async with _channel(args, target, creds) as ch:
            summary = await upload(
                target.watcher(ch),
                target.importer(ch),
                source,
                progress,
                metadata=metadata,
                deadline=args.timeout,
            )
    finally:
        progress.close()
        if source is not stdin:
            source.close()
    fields = " ".join(f"{f.name}={getattr(summary, f.name)}" for f in summary.DESCRIPTOR.fields)
    out.write(f"{fields}\n".encode())
    out.flush()
    return OK


async def run_export(args: argparse.Namespace, target: Target, out: IO[bytes], err: TextIO) -> int:
    metadata = call_metadata(args)
    creds = credentials(args)
    request = export_request(target, args.filter, args.columns)
    final = Path(args.output) if args.output else None
    partial = final.with_name(final.name + ".part") if final else None
    sink = _open(partial, "wb") if partial else out
    progress = progress_for(f"export {target.name}", None, err)
    try:
        async with _channel(args, target, creds) as ch:
            await download(
                target.exporter(ch),
                request,
                sink,
                progress,
                metadata=metadata,
                deadline=args.timeout,
            )
    except BaseException:
        if partial:  # never leave half a file under the name asked for
            sink.close()
            partial.unlink(missing_ok=True)
        raise
    finally:
        progress.close()
    if final and partial:
        sink.close()
        partial.replace(final)
    return OK


def _channel(
    args: argparse.Namespace, target: Target, creds: grpc.ChannelCredentials | None
) -> grpc.aio.Channel:
    options = [("grpc.ssl_target_name_override", args.server_name)] if args.server_name else []
    # Every import carries a request id (--request-id, else a new one): safe to retry.
    return channel(args.addr or target.default_addr, creds, options=options, request_ids=True)


async def run(args: argparse.Namespace, stdin: IO[bytes], out: IO[bytes], err: TextIO) -> int:
    target = TARGETS[args.service]
    try:
        if args.command == "import":
            return await run_import(args, target, stdin, out, err)
        return await run_export(args, target, out, err)
    except grpc.aio.AioRpcError as exc:
        problem = failure(exc)
        action = "import" if args.command == "import" else "export"
        addr = args.addr or target.default_addr
        err.write(
            f"{PROG}: {action} {target.name} at {addr} failed: " + "\n".join(problem.lines()) + "\n"
        )
        err.flush()
        return exit_code(problem.code)


def main(
    argv: Sequence[str] | None = None,
    *,
    stdin: IO[bytes] | None = None,
    stdout: IO[bytes] | None = None,
    stderr: TextIO | None = None,
) -> int:
    err = stderr or sys.stderr
    try:
        args = parser().parse_args(argv)
    except SystemExit as exc:  # argparse has printed the usage already
        return exc.code if isinstance(exc.code, int) else USAGE
    try:
        return asyncio.run(run(args, stdin or sys.stdin.buffer, stdout or sys.stdout.buffer, err))
    except UsageError as exc:
        err.write(f"{PROG}: {exc}\n")
        return USAGE
    except KeyboardInterrupt:
        err.write(f"{PROG}: interrupted\n")
        return INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
