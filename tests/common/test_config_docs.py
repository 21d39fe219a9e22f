"""One table of settings: load_settings reads exactly it, --help and README print it, and the
operator CLIs refuse what the services would refuse."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from academic_years_service import domain
from common import permissions, token
from common.cli import main as service_main
from common.config import ENVIRONMENT, environment_markdown, load_settings
from tests.support.callers import SECRET, new_uuid

ROOT = Path(__file__).resolve().parents[2]
NAMES = {v.name for v in ENVIRONMENT}
BASE = {"JWT_SECRET": SECRET, "LOG_FORMAT": "json"}


class Reading(dict[str, str]):
    """An environment that remembers every name asked for."""

    def __init__(self, values: dict[str, str], seen: set[str]) -> None:
        super().__init__(values)
        self.seen = seen

    def get(self, key: str, default: Any = None) -> Any:
        self.seen.add(key)
        return super().get(key, default)

    def __getitem__(self, key: str) -> str:
        self.seen.add(key)
        return super().__getitem__(key)

    def __contains__(self, key: object) -> bool:
        self.seen.add(str(key))
        return super().__contains__(key)


def environments(tmp_path: Path) -> Iterator[dict[str, str]]:
    """Settings that walk each branch of load_settings: secret, public key, TLS."""
    yield dict(BASE)
    key = ed25519.Ed25519PrivateKey.generate().public_key()
    pem = tmp_path / "key.pem"
    pem.write_bytes(
        key.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    yield {
        "JWT_PUBLIC_KEY_FILE": str(pem),
        "JWT_ALGORITHM": "EdDSA",
        "PAGE_TOKEN_SECRET": "p" * 32,  # no JWT secret to derive the page-token key from
        "LOG_FORMAT": "json",
    }
    for name in ("cert", "key", "ca"):
        (tmp_path / name).write_text("x")
    yield {
        **BASE,
        "TLS_CERT_FILE": str(tmp_path / "cert"),
        "TLS_KEY_FILE": str(tmp_path / "key"),
        "TLS_CLIENT_CA_FILE": str(tmp_path / "ca"),
    }


def test_the_table_lists_exactly_what_the_services_read(tmp_path: Path) -> None:
    seen: set[str] = set()
    for env in environments(tmp_path):
        load_settings("progress", "127.0.0.1:50051", Reading(env, seen))
    assert not seen - NAMES, f"read but not in common.config.ENVIRONMENT: {seen - NAMES}"
    assert not NAMES - seen, f"listed but never read: {NAMES - seen}"
    assert len(NAMES) == len(ENVIRONMENT), "a variable is listed twice"


# Defaults that are prose, not a value to set.
PROSE_DEFAULTS = {"DATABASE_URL", "JWT_SECRET", "LOG_FORMAT"}


def test_each_documented_default_is_the_one_load_settings_uses() -> None:
    checked = 0
    for variable in ENVIRONMENT:
        value = variable.default.split()[0].strip("`,")
        if variable.name in PROSE_DEFAULTS or value.startswith(("unset", "none")):
            continue
        env = {**BASE, variable.name: value}
        if variable.name == "JWT_ALGORITHM":
            assert value == "HS256"
        assert load_settings("progress", "127.0.0.1:50051", env) == load_settings(
            "progress", "127.0.0.1:50051", BASE
        ), variable.name
        checked += 1
    assert checked >= 9


def test_readme_configuration_table_is_the_generated_one() -> None:
    readme = (ROOT / "README.md").read_text()
    block = re.search(
        r"<!-- environment table: [^\n]*-->\n(.*?)<!-- end of environment table -->",
        readme,
        re.DOTALL,
    )
    assert block, "README.md lost its configuration table markers"
    assert block.group(1) == environment_markdown(), "README's table is stale: run `make docs`"


@pytest.mark.parametrize("module", ["progress", "academic_years"])
def test_service_help_explains_the_commands_and_every_variable(
    module: str, capsys: pytest.CaptureFixture[str]
) -> None:
    definition = __import__(f"{module}_service.app", fromlist=["DEFINITION"]).DEFINITION
    with pytest.raises(SystemExit) as done:
        service_main(definition, ["--help"])
    assert done.value.code == 0
    shown = capsys.readouterr().out
    assert f"python -m {module}_service" in shown
    assert "serve    serve on GRPC_ADDR" in shown and "migrate  apply" in shown
    assert definition.default_addr in shown
    for variable in ENVIRONMENT:
        assert re.search(rf"^  {variable.name} ", shown, re.MULTILINE), variable.name


def test_the_permission_list_is_the_one_the_service_checks() -> None:
    assert {domain.READ, domain.CREATE, domain.UPDATE, domain.DELETE} == set(permissions.KNOWN)


def _mint(monkeypatch: pytest.MonkeyPatch, secret: str, *argv: str) -> int:
    monkeypatch.setenv("JWT_SECRET", secret)
    try:
        return token.main(list(argv))
    except SystemExit as exc:  # argparse refuses an option with exit 2
        return int(exc.code or 0)


def test_token_cli_mints_what_it_is_asked(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    sub, org = new_uuid(), new_uuid()
    code = _mint(monkeypatch, SECRET, "--sub", sub, "--org", org, "--perm", permissions.KNOWN[0])
    assert code == 0
    claims = jwt.decode(capsys.readouterr().out.strip(), SECRET, algorithms=["HS256"])
    assert (claims["sub"], claims["org"], claims["permissions"]) == (
        sub,
        org,
        [permissions.KNOWN[0]],
    )


@pytest.mark.parametrize(
    ("secret", "argv", "says"),
    [
        (SECRET, ["--perm", "READ_ACADEMIC_YEAR"], "not a known permission"),
        (SECRET, ["--custom-perm", "read_academic_years"], "READ_ACADEMIC_YEARS"),
        (SECRET, ["--sub", "alice"], "'alice' is not a UUID"),
        (SECRET, ["--org", "1234"], "'1234' is not a UUID"),
        (SECRET, ["--campus", "north"], "'north' is not a UUID"),
        (SECRET, ["--ttl", "0"], "at least 1 second"),
        ("x" * 31, [], "at least 32 bytes"),
        ("", [], "set JWT_SECRET"),
        (SECRET, ["--alg", "RS256"], "HMAC"),
        (SECRET, ["--private-key-file", "/nonexistent/key.pem"], "--private-key-file"),
    ],
)
def test_token_cli_refuses_what_the_services_would_with_exit_2(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    secret: str,
    argv: list[str],
    says: str,
) -> None:
    assert _mint(monkeypatch, secret, "--org", new_uuid(), *argv) == 2
    captured = capsys.readouterr()
    assert captured.out == "", "no token on a refusal"
    assert says in captured.err
