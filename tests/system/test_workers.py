"""`WORKERS=N`: N processes answer on one port; SIGTERM stops them all cleanly."""

from __future__ import annotations

import os
import urllib.request
from pathlib import Path

import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from bench.scratch import free_port
from common import client
from common.metrics import metrics_port_for
from tests.support.processes import start_service

pytestmark = pytest.mark.asyncio


async def served_by(target: str) -> str:
    """Which process answers a fresh connection (a channel of its own, not a shared one)."""
    options = [("grpc.use_local_subchannel_pool", 1)]
    async with client.channel(target, options=options) as channel:
        call = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
        assert (await call).status == health_pb2.HealthCheckResponse.SERVING
        return dict(await call.initial_metadata())["x-served-by"]


def scrape(port: int) -> str:
    url = f"http://127.0.0.1:{port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as response:
        return str(response.read().decode())


async def test_workers_share_one_port_and_stop_together(tmp_path: Path) -> None:
    metrics = free_port()
    service = start_service(
        "progress_service", tmp_path, WORKERS="3", METRICS_ADDR=f"127.0.0.1:{metrics}"
    )
    try:
        seen: set[str] = set()
        for _ in range(60):  # the kernel spreads new connections; a few suffice
            seen.add(await served_by(service.target))
            if len(seen) == 3:
                break
        assert len(seen) >= 2, seen
        pids = {int(s.rsplit("/", 1)[1]) for s in seen}
        assert service.proc.pid not in pids
        for index in range(3):  # one scrape endpoint per worker
            assert "grpc_server_handled_total" in scrape(metrics + index)
    finally:
        code = service.stop()
    assert code == 0
    assert sum(e.get("msg") == "stopped" for e in service.log) == 3
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


async def test_each_worker_gets_its_own_metrics_port() -> None:
    assert metrics_port_for("0.0.0.0:9100", 0) == "0.0.0.0:9100"
    assert metrics_port_for("0.0.0.0:9100", 2) == "0.0.0.0:9102"
    assert metrics_port_for("127.0.0.1:0", 2) == "127.0.0.1:0"
