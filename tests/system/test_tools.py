"""The operators' path and other ecosystems: buf curl through reflection, a grpc-js client,
and buf lint/breaking, all against services started as `python -m <service> serve`."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.callers import SECRET
from tests.support.processes import ROOT, ServiceProcess, start_service

MODULES = {
    "progress_service": "progress.v1.UserProgressService",
    "academic_years_service": "academic_years.v1.AcademicYearsService",
}

# `npx buf` in the README resolves to this binary; calling it directly saves npx's start-up.
BUF = str(ROOT / "node_modules" / ".bin" / "buf")
CURL = (BUF, "curl", "--protocol", "grpc", "--http2-prior-knowledge")
pytestmark = pytest.mark.skipif(
    shutil.which("node") is None or not Path(BUF).exists(),
    reason="needs Node.js and `make install` (npm install)",
)


@pytest.fixture(scope="module")
def services(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, ServiceProcess]]:
    folder = tmp_path_factory.mktemp("services")
    started: dict[str, ServiceProcess] = {}
    try:
        for module in MODULES:
            started[module] = start_service(module, folder)
        yield started
    finally:
        codes = {module: service.stop() for module, service in started.items()}
    assert codes == dict.fromkeys(codes, 0), codes


def run(*args: str, **env: str) -> str:
    """The command as an operator types it; fails the test with its stderr if it fails."""
    done = subprocess.run(  # noqa: S603 - fixed commands
        args,
        cwd=ROOT,
        env={**os.environ, "JWT_SECRET": SECRET, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, f"{' '.join(args)}\n{done.stderr}"
    return done.stdout


def mint(org: str, *perms: str) -> tuple[str, str]:
    """(token, user id) from the bundled CLI, as the README shows."""
    sub = str(uuid.uuid4())
    flags = [arg for perm in perms for arg in ("--perm", perm)]
    token = run(sys.executable, "-m", "common.token", "--sub", sub, "--org", org, *flags).strip()
    return token, sub


def buf_curl(service: ServiceProcess, path: str = "", *args: str) -> str:
    url = f"http://{service.target}{path}"
    return run(*CURL, *args, url)


def test_buf_curl_lists_services_through_reflection(services: dict[str, ServiceProcess]) -> None:
    for module, name in MODULES.items():
        listed = set(buf_curl(services[module], "", "--list-services").split())
        assert {name, "grpc.health.v1.Health"} <= listed, listed
        methods = buf_curl(services[module], "", "--list-methods").split()
        assert any(m.startswith(f"{name}/") for m in methods), methods


def test_buf_curl_checks_health(services: dict[str, ServiceProcess]) -> None:
    for module, name in MODULES.items():
        body = json.dumps({"service": name})
        out = buf_curl(services[module], "/grpc.health.v1.Health/Check", "-d", body)
        assert json.loads(out) == {"status": "SERVING"}


def test_buf_curl_makes_authenticated_calls(services: dict[str, ServiceProcess]) -> None:
    org = str(uuid.uuid4())
    token, sub = mint(org, "READ_ACADEMIC_YEARS", "CREATE_ACADEMIC_YEARS")
    auth = ("-H", f"authorization: Bearer {token}")
    data = {"data": {"progress_type": "sign_learned", "item_id": "hello", "score": 3}}
    out = buf_curl(
        services["progress_service"],
        "/progress.v1.UserProgressService/UpsertUserProgress",
        *auth,
        "-d",
        json.dumps(data),
    )
    row = json.loads(out)
    assert (row["item_id"], row["score"], row["userId"], row["organizationId"]) == (
        "hello",
        3,
        sub,
        org,
    )
    year = {"data": {"name": "2025/2026", "start_date": "2025-09-01", "end_date": "2026-06-30"}}
    out = buf_curl(
        services["academic_years_service"],
        "/academic_years.v1.AcademicYearsService/CreateAcademicYear",
        *auth,
        "-d",
        json.dumps(year),
    )
    created = json.loads(out)
    assert (created["name"], created["organizationId"], created["createdById"]) == (
        "2025/2026",
        org,
        sub,
    )


def test_buf_curl_without_a_token_is_unauthenticated(services: dict[str, ServiceProcess]) -> None:
    url = f"http://{services['progress_service'].target}"
    body = '{"progress_type": "sign_learned"}'
    done = subprocess.run(  # noqa: S603 - fixed command
        [*CURL, "-d", body, f"{url}/progress.v1.UserProgressService/ListUserProgress"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0
    assert "unauthenticated" in done.stderr


def googleapis_include() -> str:
    import google.api

    return str(Path(next(iter(google.api.__path__))).parent.parent)


def test_node_grpc_js_client_interoperates(services: dict[str, ServiceProcess]) -> None:
    org = str(uuid.uuid4())
    token, sub = mint(org, "READ_ACADEMIC_YEARS", "CREATE_ACADEMIC_YEARS")
    targets = [services[m].target for m in ("progress_service", "academic_years_service")]
    out: dict[str, Any] = json.loads(
        run(
            "node",
            "tests/system/node/interop.js",
            str(ROOT / "protos"),
            googleapis_include(),
            *targets,
            TOKEN=token,
        )
    )
    upsert, listing = out["upsert"], out["list"]
    assert upsert["code"] == 0, upsert
    row = upsert["response"]
    assert (row["item_id"], row["score"], row["user_id"], row["organization_id"]) == (
        "hello",
        3,
        sub,
        org,
    )
    assert row["metadata"]["structValue"]["fields"]["hand"]["stringValue"] == "left"
    assert listing["code"] == 0 and listing["response"]["count"] == 1
    assert [r["id"] for r in listing["response"]["rows"]] == [row["id"]]
    assert out["unauthenticated"]["code"] == 16  # UNAUTHENTICATED
    created, years = out["create"], out["listYears"]
    assert created["code"] == 0, created
    year = created["response"]
    assert (year["name"], year["start_date"], year["organization_id"]) == (
        "2025/2026",
        "2025-09-01",
        org,
    )
    assert years["code"] == 0 and years["response"]["count"] == 1
    assert [r["id"] for r in years["response"]["rows"]] == [year["id"]]


def test_buf_lint_and_breaking_against_main_are_clean() -> None:
    out = run(sys.executable, "scripts/buf_check.py")
    assert "buf lint" in out
