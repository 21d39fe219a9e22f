"""`WORKERS=N`: N server processes sharing one port through SO_REUSEPORT."""

from __future__ import annotations

import multiprocessing
import os
import signal
from types import FrameType

from common.config import Settings
from common.logs import setup_logging
from common.server import ServiceDefinition, run_loop, serve


def _worker(definition: ServiceDefinition, settings: Settings) -> None:
    setup_logging(settings.log_format)
    run_loop(serve(definition, settings), settings)


def run_workers(definition: ServiceDefinition, settings: Settings) -> int:
    """Start the workers, forward SIGTERM/SIGINT to them, and wait for all to exit."""
    ctx = multiprocessing.get_context("spawn")
    procs = [
        ctx.Process(target=_worker, args=(definition, settings), name=f"{definition.name}-{i}")
        for i in range(settings.workers)
    ]
    for proc in procs:
        proc.start()

    def forward(signum: int, _frame: FrameType | None) -> None:
        for proc in procs:
            if proc.is_alive() and proc.pid is not None:
                os.kill(proc.pid, signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    for proc in procs:
        proc.join()
    codes = [proc.exitcode or 0 for proc in procs]
    return max(codes) if codes else 0
