"""Services started the way operators start them: `python -m <service> serve` as a subprocess."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.scratch import free_port
from tests.support.callers import SECRET

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class ServiceProcess:
    module: str
    port: int
    proc: subprocess.Popen[str]
    log: list[dict[str, Any]] = field(default_factory=list)
    ready: threading.Event = field(default_factory=threading.Event)
    ready_after: int = 1  # "serving" lines to wait for: one per worker

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            try:
                entry = json.loads(line)
            except ValueError:
                entry = {"msg": line.rstrip()}
            self.log.append(entry)
            if sum(e.get("msg") == "serving" for e in self.log) >= self.ready_after:
                self.ready.set()
        self.ready.set()  # the process ended: wake the waiter, who checks why

    def wait_ready(self, timeout: float = 60) -> None:
        if not self.ready.wait(timeout) or self.proc.poll() is not None:
            self.stop()
            raise AssertionError(f"{self.module} did not start: {self.log[-20:]}")

    def stop(self, timeout: float = 30) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)


def start_service(module: str, folder: Path, **env: str) -> ServiceProcess:
    """Serve `module` on a free port with its own SQLite file; returns once it is serving."""
    port = free_port()
    workers = int(env.get("WORKERS", "1"))
    full_env = {
        **os.environ,
        "JWT_SECRET": SECRET,
        "GRPC_ADDR": f"127.0.0.1:{port}",
        "DATABASE_URL": f"sqlite+aiosqlite:///{folder / module}.sqlite3",
        "LOG_FORMAT": "json",
        "SHUTDOWN_GRACE_SECONDS": "5",
        **env,
    }
    proc = subprocess.Popen(  # noqa: S603 - our own interpreter and module
        [sys.executable, "-m", module, "serve"],
        cwd=ROOT,
        env=full_env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    service = ServiceProcess(module, port, proc, ready_after=workers)
    threading.Thread(target=service._read, daemon=True).start()
    service.wait_ready()
    return service
