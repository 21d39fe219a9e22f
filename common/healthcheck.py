"""Container health probe over the gRPC health protocol: `python -m common.healthcheck`.

Exits 0 when the server answers SERVING, 1 otherwise. The address defaults to GRPC_ADDR (a
wildcard host is probed on loopback); with TLS_CERT_FILE set it connects over TLS, trusting
that certificate (or --ca-file), and with TLS_CLIENT_CA_FILE set it needs --cert/--key."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


def _target(addr: str) -> str:
    host, _, port = addr.rpartition(":")
    if host in {"", "0.0.0.0", "[::]", "::"}:  # noqa: S104 - a listen address, mapped to loopback
        host = "127.0.0.1"
    return f"{host}:{port}"


def _credentials(args: argparse.Namespace) -> grpc.ChannelCredentials | None:
    ca = args.ca_file or os.environ.get("TLS_CERT_FILE")
    if not ca:
        return None
    return grpc.ssl_channel_credentials(_read(ca), _read(args.key), _read(args.cert))


def _read(path: str | None) -> bytes | None:
    return Path(path).read_bytes() if path else None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m common.healthcheck", description=__doc__)
    p.add_argument("--addr", default=os.environ.get("GRPC_ADDR", "127.0.0.1:50051"))
    p.add_argument("--service", default="", help="service name to check; '' = the server")
    p.add_argument("--timeout", type=float, default=3.0)
    p.add_argument("--ca-file", help="CA bundle to trust (default: TLS_CERT_FILE)")
    p.add_argument("--cert", help="client certificate, for mTLS")
    p.add_argument("--key", help="client key, for mTLS")
    p.add_argument("--server-name", help="TLS name to verify (default: the host probed)")
    args = p.parse_args(argv)
    target, credentials = _target(args.addr), _credentials(args)
    options = [("grpc.ssl_target_name_override", args.server_name)] if args.server_name else []
    channel = (
        grpc.secure_channel(target, credentials, options)
        if credentials
        else grpc.insecure_channel(target, options)
    )
    try:
        with channel:
            stub = health_pb2_grpc.HealthStub(channel)
            request = health_pb2.HealthCheckRequest(service=args.service)
            status = stub.Check(request, timeout=args.timeout).status
    except grpc.RpcError as err:
        print(f"{target}: {err.code().name}: {err.details()}", file=sys.stderr)
        return 1
    name = health_pb2.HealthCheckResponse.ServingStatus.Name(status)
    print(f"{target} {args.service or '(server)'}: {name}")
    return 0 if status == health_pb2.HealthCheckResponse.SERVING else 1


if __name__ == "__main__":
    sys.exit(main())
