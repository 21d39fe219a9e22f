"""TLS and mTLS configured from TLS_CERT_FILE, TLS_KEY_FILE and TLS_CLIENT_CA_FILE."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
import pytest_asyncio
from grpc_health.v1 import health_pb2, health_pb2_grpc

from common import client
from common.config import load_settings
from tests.conftest import Harness, start_harness, stop_harness
from tests.support.callers import SECRET
from tests.support.certs import Authority, Pair

pytestmark = pytest.mark.asyncio


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Pair]:
    folder = tmp_path_factory.mktemp("pki")
    ca, rogue = Authority(folder, "test CA"), Authority(folder, "rogue CA")
    return {
        "ca": ca.pair,
        "server": ca.issue("server", server=True),
        "client": ca.issue("client", server=False),
        "rogue_client": rogue.issue("rogue_client", server=False),
    }


async def tls_server(url: str, env: dict[str, str]) -> Harness:
    from progress_service.app import DEFINITION
    from progress_service.tables import metadata

    settings = load_settings("progress", "127.0.0.1:0", {"JWT_SECRET": SECRET, **env})
    assert settings.tls is not None
    return await start_harness(DEFINITION, url, metadata, tls=settings.tls)


@pytest_asyncio.fixture(scope="module")
async def tls(pg_url: str, pki: dict[str, Pair]) -> AsyncIterator[Harness]:
    env = {"TLS_CERT_FILE": str(pki["server"].cert), "TLS_KEY_FILE": str(pki["server"].key)}
    harness = await tls_server(pg_url, env)
    yield harness
    await stop_harness(harness)


@pytest_asyncio.fixture(scope="module")
async def mtls(pg_url: str, pki: dict[str, Pair]) -> AsyncIterator[Harness]:
    env = {
        "TLS_CERT_FILE": str(pki["server"].cert),
        "TLS_KEY_FILE": str(pki["server"].key),
        "TLS_CLIENT_CA_FILE": str(pki["ca"].cert),
    }
    harness = await tls_server(pg_url, env)
    yield harness
    await stop_harness(harness)


async def check(
    h: Harness, credentials: grpc.ChannelCredentials | None
) -> health_pb2.HealthCheckResponse.ServingStatus.ValueType:
    """One health check; no retries, so a refused handshake surfaces at once."""
    async with client.channel(h.target, credentials, config={}) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        response = await stub.Check(health_pb2.HealthCheckRequest(), timeout=5)
        return response.status


def creds(pki: dict[str, Pair], client_pair: str | None = None) -> grpc.ChannelCredentials:
    pair = pki[client_pair] if client_pair else None
    return grpc.ssl_channel_credentials(
        root_certificates=pki["ca"].cert_pem,
        private_key=pair.key_pem if pair else None,
        certificate_chain=pair.cert_pem if pair else None,
    )


SERVING = health_pb2.HealthCheckResponse.SERVING


async def test_tls_serves_clients_that_trust_the_ca(tls: Harness, pki: dict[str, Pair]) -> None:
    assert await check(tls, creds(pki)) == SERVING


async def test_tls_refuses_plaintext_clients(tls: Harness) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await check(tls, None)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_mtls_accepts_a_client_certificate_signed_by_the_ca(
    mtls: Harness, pki: dict[str, Pair]
) -> None:
    assert await check(mtls, creds(pki, "client")) == SERVING


@pytest.mark.parametrize("client_pair", [None, "rogue_client"])
async def test_mtls_rejects_clients_without_a_ca_signed_certificate(
    mtls: Harness, pki: dict[str, Pair], client_pair: str | None
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await check(mtls, creds(pki, client_pair))
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_a_client_ca_without_a_server_certificate_is_a_config_error(tmp_path: Path) -> None:
    from common.config import ConfigError

    ca = tmp_path / "ca.crt"
    ca.write_text("x")
    with pytest.raises(ConfigError, match="TLS_CLIENT_CA_FILE needs"):
        load_settings(
            "progress", "127.0.0.1:0", {"JWT_SECRET": SECRET, "TLS_CLIENT_CA_FILE": str(ca)}
        )


async def test_the_container_probe_speaks_tls_and_mtls(
    tls: Harness, mtls: Harness, pki: dict[str, Pair]
) -> None:
    from common import healthcheck

    def probe(h: Harness, *args: str) -> int:
        return healthcheck.main(["--addr", h.target, "--ca-file", str(pki["ca"].cert), *args])

    client_pair = ["--cert", str(pki["client"].cert), "--key", str(pki["client"].key)]
    assert await asyncio.to_thread(probe, tls) == 0
    assert await asyncio.to_thread(probe, mtls) == 1  # no client certificate
    assert await asyncio.to_thread(probe, mtls, *client_pair) == 0
