"""`make run`: serve every service on the embedded PostgreSQL default with a local dev secret.

With DATABASE_URL unset it starts the embedded server under var/postgres first and holds it
while the services run (they reuse it); it stops when the last of them has exited."""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SECRET_FILE = ROOT / "var" / "dev-jwt-secret"
SERVICES = [
    ("progress_service", "127.0.0.1:50051", "progress.v1.UserProgressService"),
    ("academic_years_service", "127.0.0.1:50052", "academic_years.v1.AcademicYearsService"),
]


def dev_secret() -> tuple[str, bool]:
    """The JWT_SECRET to use: the environment's, else a generated one kept under var/."""
    if os.environ.get("JWT_SECRET"):
        return os.environ["JWT_SECRET"], False
    SECRET_FILE.parent.mkdir(exist_ok=True)
    if not SECRET_FILE.exists():
        SECRET_FILE.write_text(secrets.token_urlsafe(48))
        SECRET_FILE.chmod(0o600)
    return SECRET_FILE.read_text().strip(), True


def main() -> int:
    secret, generated = dev_secret()
    env = {**os.environ, "JWT_SECRET": secret}
    if not env.get("DATABASE_URL"):
        from common.config import embedded_data_dir
        from common.db import embedded

        started, data_dir = time.monotonic(), embedded_data_dir(env)
        embedded.ensure(data_dir=data_dir)
        print(f"Embedded PostgreSQL in {data_dir} (ready in {time.monotonic() - started:.1f} s)")
    present = [s for s in SERVICES if (ROOT / s[0]).is_dir()]
    procs = [
        subprocess.Popen(  # noqa: S603 - our own interpreter and modules
            [sys.executable, "-m", module, "serve"],
            env={**env, "GRPC_ADDR": env.get(f"{module.upper()}_ADDR", addr)},
            cwd=ROOT,
        )
        for module, addr, _ in present
    ]
    if generated:
        print(
            f"\nUsing a generated development JWT secret (kept in {SECRET_FILE.relative_to(ROOT)})."
        )
    py = ".venv/bin/python"
    curl = "npx buf curl --protocol grpc --http2-prior-knowledge"
    print("\nMint a token and call the services (buf comes with `make install`):\n")
    print(f"  export JWT_SECRET=$(cat {SECRET_FILE.relative_to(ROOT)})")
    print(
        f"  TOKEN=$({py} -m common.token --org $({py} -c 'import uuid; print(uuid.uuid4())') "
        "--perm READ_ACADEMIC_YEARS --perm CREATE_ACADEMIC_YEARS)"
    )
    for _module, addr, service in present:
        print(f"  {curl} http://{addr} --list-methods   # {service}")
    print(
        f'  {curl} -H "authorization: Bearer $TOKEN" -d \'{{"progress_type": "sign_learned"}}\' '
        "http://127.0.0.1:50051/progress.v1.UserProgressService/ListUserProgress"
    )
    print("\nSee README.md for complete examples. Ctrl-C stops both services.\n")

    def stop(_signum: int, _frame: object) -> None:
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    while all(p.poll() is None for p in procs):
        time.sleep(0.5)
    stop(signal.SIGTERM, None)
    codes = [p.wait() for p in procs]
    return max(codes)


if __name__ == "__main__":
    sys.exit(main())
