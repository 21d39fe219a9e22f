"""`WORKERS=N`: N server processes sharing one port through SO_REUSEPORT."""

from __future__ import annotations

import dataclasses
import logging
import multiprocessing
import os
import signal
import socket
from collections.abc import Mapping
from multiprocessing.connection import wait
from types import FrameType

from common.config import load_settings
from common.handlers import Context, WrappingInterceptor
from common.logs import setup_logging
from common.server import FORCED_EXIT, STOP_SIGNALS, ServiceDefinition, run_loop, serve

log = logging.getLogger("workers")


def _worker(definition: ServiceDefinition, env: Mapping[str, str], index: int) -> None:
    # Settings are rebuilt here rather than pickled: a loaded public key does not pickle.
    settings = load_settings(definition.name, definition.default_addr, env)
    settings = dataclasses.replace(settings, worker_index=index)
    setup_logging(settings.log_format, service=definition.name)
    served_by = ServedByInterceptor(f"{socket.gethostname()}/{os.getpid()}")
    run_loop(serve(definition, settings, [served_by]), settings)


class ServedByInterceptor(WrappingInterceptor):
    """Names the answering process in an `x-served-by` header, so an operator (and the tests)
    can see which of the workers sharing a port served a call."""

    def __init__(self, served_by: str) -> None:
        super().__init__()
        self._metadata = (("x-served-by", served_by),)

    async def enter(self, context: Context) -> None:
        await context.send_initial_metadata(self._metadata)


def run_workers(definition: ServiceDefinition, env: Mapping[str, str], count: int) -> int:
    """Start `count` workers, forward SIGTERM/SIGINT to them, and wait for all to exit.

    A second signal while they drain kills them at once (exit code 128 + the signal). If one
    worker dies on its own the others are stopped too, so a supervisor sees the failure
    instead of a silently shrunken pool."""
    ctx = multiprocessing.get_context("spawn")
    procs = [
        ctx.Process(target=_worker, args=(definition, dict(env), i), name=f"{definition.name}-{i}")
        for i in range(count)
    ]
    signals: list[int] = []

    def signal_all(signum: int) -> None:
        for proc in procs:
            if proc.is_alive() and proc.pid is not None:
                os.kill(proc.pid, signum)

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        signals.append(signum)
        if len(signals) == 1:
            signal_all(signum)
        elif len(signals) == 2:
            log.warning(FORCED_EXIT, extra={"signal": signal.Signals(signum).name})
            signal_all(signal.SIGKILL)

    for sig in STOP_SIGNALS:
        signal.signal(sig, on_signal)
    for proc in procs:
        proc.start()
    log.info("workers started", extra={"pids": [p.pid for p in procs]})
    first = wait([p.sentinel for p in procs])
    if len(signals) < 2 and any(p.exitcode for p in procs if p.sentinel in first):
        log.error("a worker exited with an error; stopping the others")
        signal_all(signal.SIGTERM)
    for proc in procs:
        proc.join()
    if len(signals) >= 2:
        return 128 + signals[1]
    codes = [abs(proc.exitcode or 0) for proc in procs]
    return max(codes) if codes else 0
