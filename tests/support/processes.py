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

from tests.support.callers import SECRET
from tests.support.network import free_port

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


# Settings of the developer's shell that must not reach a service under test.
_CLEARED = ("JWT_", "DATABASE_URL", "EMBEDDED_PGDATA")


def service_env(**env: str) -> dict[str, str]:
    """The environment a service under test starts with: this one's, minus the developer's
    database and key settings, plus `env`. No drain delay unless `env` sets one: no load
    balancer needs time to move away from a service under test, and stops stay quick."""
    base = {k: v for k, v in os.environ.items() if not k.startswith(_CLEARED)}
    defaults = {"JWT_SECRET": SECRET, "LOG_FORMAT": "json", "DRAIN_DELAY_SECONDS": "0"}
    return {**base, **defaults, **env}


def start_service(module: str, folder: Path, **env: str) -> ServiceProcess:
    """Serve `module` on a free port as `python -m <module> serve`; returns once it is serving.

    Without DATABASE_URL in `env` the service takes the zero-setup default, the embedded
    PostgreSQL, with its data directory in `folder` (never the developer's var/postgres):
    services started on one folder share that server, and the last one to stop stops it."""
    service = spawn_service(module, folder, **env)
    service.wait_ready()
    return service


def spawn_service(module: str, folder: Path, **env: str) -> ServiceProcess:
    """`start_service` without the wait: start several, then `wait_ready` each. GRPC_ADDR in
    `env` picks the port (a replica restarted on its predecessor's)."""
    port = free_port()
    workers = int(env.get("WORKERS", "1"))
    defaults = {
        "GRPC_ADDR": f"127.0.0.1:{port}",
        "EMBEDDED_PGDATA": str(folder / "postgres"),
        "SHUTDOWN_GRACE_SECONDS": "5",
    }
    full_env = service_env(**{**defaults, **env})
    proc = subprocess.Popen(  # noqa: S603 - our own interpreter and module
        [sys.executable, "-m", module, "serve"],
        cwd=ROOT,
        env=full_env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    port = int(full_env["GRPC_ADDR"].rsplit(":", 1)[1])
    service = ServiceProcess(module, port, proc, ready_after=workers)
    threading.Thread(target=service._read, daemon=True).start()
    return service
