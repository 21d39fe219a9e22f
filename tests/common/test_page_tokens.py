"""Page tokens: bound to the List, the caller, the filter and order; any change is refused alike."""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from common.auth import Principal
from common.config import ConfigError, JwtSettings, Settings, load_settings
from common.errors import ValidationError
from common.pagetoken import PageTokens, binding, derive_key
from common.pagination import resolve_pagination
from common.tenancy import TenantScope

KEY = b"k" * 32
POSITION = ["v", "2026-01-02T03:04:05.123456+00:00", "6d1e0d52-7f3c-4d3e-9a55-4b1f5e2c9b10"]


def scope(user: str = "u1", org: str | None = "o1") -> TenantScope:
    principal = Principal(user, org, None, org is None, frozenset())
    return TenantScope(principal, org)


@dataclasses.dataclass(frozen=True)
class Query:
    name: str | None = None
    since: dt.date | None = None
    field: str = "createdAt"


def refused(tokens: PageTokens, token: str, bound: bytes) -> ValidationError:
    with pytest.raises(ValidationError) as caught:
        tokens.read(token, bound)
    return caught.value


def test_a_token_reads_back_only_for_its_list_caller_filter_and_order() -> None:
    tokens = PageTokens(KEY)
    bound = binding("L", scope(), Query(name="a"))
    token = tokens.issue(bound, POSITION)
    assert tokens.read(token, bound) == POSITION
    others = [
        binding("other list", scope(), Query(name="a")),
        binding("L", scope(user="u2"), Query(name="a")),  # a colleague
        binding("L", scope(org="o2"), Query(name="a")),  # another organization
        binding("L", scope(org=None), Query(name="a")),  # global access
        binding("L", scope(), Query(name="b")),  # another filter
        binding("L", scope(), Query(name="a", since=dt.date(2026, 1, 1))),  # a filter more
        binding("L", scope(), Query(name="a", field="name")),  # another order
    ]
    errors = {str(refused(tokens, token, other)) for other in others}
    assert len(errors) == 1  # one answer, whatever the reason
    [violation] = refused(tokens, token, others[0]).violations
    assert violation.field == "pageToken"


def test_an_altered_token_or_another_key_is_refused() -> None:
    tokens = PageTokens(KEY)
    bound = binding("L", scope(), Query())
    token = tokens.issue(bound, POSITION)
    raw = bytearray(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
    for index in (0, 5, len(raw) // 2, len(raw) - 1):
        changed = bytearray(raw)
        changed[index] ^= 0x01
        altered = base64.urlsafe_b64encode(bytes(changed)).rstrip(b"=").decode()
        refused(tokens, altered, bound)
    for garbage in ("", "x", "!!!!", "A" * 5000, token[:-4], token + "AAAA"):
        refused(tokens, garbage, bound)
    refused(PageTokens(b"j" * 32), token, bound)


def test_the_key_is_the_dedicated_secret_or_derived_from_the_jwt_secret() -> None:
    settings = Settings("s", None, "127.0.0.1:0", JwtSettings("HS256", b"s" * 32))
    derived = derive_key(settings)
    assert derived != b"s" * 32 and len(derived) == 32
    assert derive_key(dataclasses.replace(settings, page_token_secret=KEY)) == KEY
    public = dataclasses.replace(settings, jwt=JwtSettings("RS256", object()))
    with pytest.raises(ValueError, match="PAGE_TOKEN_SECRET"):
        derive_key(public)


def test_page_and_page_token_together_are_refused() -> None:
    with pytest.raises(ValidationError) as caught:
        resolve_pagination(10, 2, "token")
    assert [v.field for v in caught.value.violations] == ["pageToken"]
    assert resolve_pagination(10, 0, "token").token == "token"
    assert resolve_pagination(10, 3).offset == 30


def test_a_public_key_needs_a_page_token_secret(tmp_path: Path) -> None:
    key = ed25519.Ed25519PrivateKey.generate().public_key()
    pem = tmp_path / "key.pem"
    pem.write_bytes(
        key.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    env = {"JWT_PUBLIC_KEY_FILE": str(pem), "JWT_ALGORITHM": "EdDSA"}
    with pytest.raises(ConfigError, match="PAGE_TOKEN_SECRET"):
        load_settings("progress", "127.0.0.1:0", env)
    with pytest.raises(ConfigError, match="too weak"):
        load_settings("progress", "127.0.0.1:0", {**env, "PAGE_TOKEN_SECRET": "short"})
    settings = load_settings("progress", "127.0.0.1:0", {**env, "PAGE_TOKEN_SECRET": "p" * 32})
    assert derive_key(settings) == b"p" * 32
