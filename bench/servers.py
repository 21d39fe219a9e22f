"""Servers under test: subprocesses on free loopback ports, their CPU time read from /proc."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from grpc import aio

from bench.scratch import free_port

REPO_ROOT = Path(__file__).resolve().parents[1]
_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True, slots=True)
class Target:
    """What to start: the bare baseline or a service, with its environment overrides."""

    name: str
    command: tuple[str, ...]
    env: dict[str, str] = field(default_factory=dict)
    source: Path = REPO_ROOT


def _descendants(pid: int) -> list[int]:
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*/children"):
        try:
            children = [int(c) for c in task.read_text().split()]
        except OSError:
            continue
        for child in children:
            found += [child, *_descendants(child)]
    return found


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process and its live descendants (the WORKERS>1 children)."""
    total = 0
    for proc in (pid, *_descendants(pid)):
        try:
            fields = Path(f"/proc/{proc}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / _TICKS


class Server:
    """A started target; `stop` sends SIGTERM and waits."""

    def __init__(self, target: Target, log_dir: Path) -> None:
        self.target = target
        self.port = free_port()
        self.addr = f"127.0.0.1:{self.port}"
        env = {
            **os.environ,
            "GRPC_ADDR": self.addr,
            "PYTHONPATH": os.pathsep.join([str(target.source), str(REPO_ROOT / "gen")]),
            **target.env,
        }
        command = [sys.executable, *target.command]
        if target.command[:2] == ("-m", "bench.baseline"):
            command += ["--addr", self.addr]
        self._log = (log_dir / f"{target.name}.log").open("wb")
        self.process = subprocess.Popen(  # noqa: S603  # our own interpreter and module
            command, cwd=target.source, env=env, stdout=self._log, stderr=subprocess.STDOUT
        )

    async def wait_ready(self, within: float = 60.0) -> None:
        deadline = time.monotonic() + within
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.target.name} exited; see {self._log.name}")
            async with aio.insecure_channel(self.addr) as channel:
                try:
                    await asyncio.wait_for(channel.channel_ready(), 1.0)
                    return
                except TimeoutError:
                    pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.target.name} did not start in {within} s")

    def pids(self) -> list[int]:
        """The server's process and its live descendants (the WORKERS>1 children)."""
        return [self.process.pid, *_descendants(self.process.pid)]

    def cpu_seconds(self) -> float:
        return cpu_seconds(self.process.pid)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()
