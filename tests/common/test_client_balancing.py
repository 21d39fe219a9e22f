"""Clients spread calls over every replica a name resolves to (docs/scaling.md)."""

from __future__ import annotations

import asyncio

import pytest
from grpc import aio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio  # type: ignore[attr-defined]

from common import client

SERVING, NOT_SERVING = (
    health_pb2.HealthCheckResponse.SERVING,
    health_pb2.HealthCheckResponse.NOT_SERVING,
)


def test_the_service_config_balances_round_robin() -> None:
    assert client.service_config()["loadBalancingConfig"] == [{"round_robin": {}}]


@pytest.mark.asyncio
async def test_one_channel_reaches_every_replica_of_a_target() -> None:
    """Two replicas behind one target (as a DNS name with two addresses would be); each tells
    itself apart by the health it reports. Round robin asks both; pick_first would ask one."""
    servers, ports = [], []
    for status in (SERVING, NOT_SERVING):
        server = aio.server()
        health = health_aio.HealthServicer()
        await health.set("replica", status)
        health_pb2_grpc.add_HealthServicer_to_server(health, server)
        ports.append(server.add_insecure_port("127.0.0.1:0"))
        await server.start()
        servers.append(server)
    channel = client.channel("ipv4:" + ",".join(f"127.0.0.1:{port}" for port in ports))
    try:
        stub = health_pb2_grpc.HealthStub(channel)
        request = health_pb2.HealthCheckRequest(service="replica")
        answers: set[int] = set()
        for _ in range(50):  # both connections come up within a few calls
            answers.add((await stub.Check(request)).status)
            if len(answers) == 2:
                break
            await asyncio.sleep(0.02)
        assert answers == {SERVING, NOT_SERVING}
    finally:
        await channel.close()
        await asyncio.gather(*(s.stop(None) for s in servers))
