"""Unit tests of the common kit: settings, token verification, paging and error mapping."""

from __future__ import annotations

import time
from pathlib import Path

import grpc
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from google.rpc import error_details_pb2, status_pb2

from common.auth import TokenVerifier, bearer_token
from common.config import ConfigError, JwtSettings, load_jwt_settings, load_settings
from common.errors import (
    FieldViolation,
    NotFoundError,
    UnauthenticatedError,
    ValidationError,
    to_grpc_status,
)
from common.pagination import resolve_pagination
from tests.support.callers import SECRET, new_uuid

STRONG = "s" * 32


def _pem_pair(tmp_path: Path, key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> Path:
    public = tmp_path / "public.pem"
    public.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return public


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({}, "no token key"),
        ({"JWT_SECRET": "short"}, "too weak"),
        ({"JWT_SECRET": STRONG, "JWT_PUBLIC_KEY_FILE": "/x"}, "not both"),
        ({"JWT_SECRET": STRONG, "JWT_ALGORITHM": "RS256"}, "HMAC"),
        ({"JWT_PUBLIC_KEY_FILE": "/nonexistent.pem", "JWT_ALGORITHM": "RS256"}, "cannot be read"),
        ({"JWT_PUBLIC_KEY_FILE": "/x", "JWT_ALGORITHM": "HS256"}, "JWT_ALGORITHM"),
    ],
)
def test_bad_key_settings_fail_fast_with_a_clear_message(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_jwt_settings(env)


def test_public_key_must_match_its_algorithm_and_not_be_private(tmp_path: Path) -> None:
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public = _pem_pair(tmp_path, rsa_key)
    assert load_jwt_settings({"JWT_PUBLIC_KEY_FILE": str(public), "JWT_ALGORITHM": "RS256"})
    with pytest.raises(ConfigError, match="ES256"):
        load_jwt_settings({"JWT_PUBLIC_KEY_FILE": str(public), "JWT_ALGORITHM": "ES256"})
    private = tmp_path / "private.pem"
    private.write_bytes(
        rsa_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    with pytest.raises(ConfigError, match="private key"):
        load_jwt_settings({"JWT_PUBLIC_KEY_FILE": str(private), "JWT_ALGORITHM": "RS256"})


def test_settings_defaults_and_validation() -> None:
    settings = load_settings("progress", "127.0.0.1:50051", {"JWT_SECRET": STRONG})
    assert settings.grpc_addr == "127.0.0.1:50051"
    assert settings.database_url is None  # the embedded PostgreSQL, started by the command line
    for url in ("postgresql://u@h/d", "postgres://u@h/d", "postgresql+asyncpg://u@h/d"):
        named = load_settings("progress", "a:1", {"JWT_SECRET": STRONG, "DATABASE_URL": url})
        assert named.database_url == url
    with pytest.raises(ConfigError, match="PostgreSQL URL"):
        load_settings("progress", "a:1", {"JWT_SECRET": STRONG, "DATABASE_URL": "mysql://u@h/d"})
    assert settings.workers == 1 and settings.tls is None and settings.metrics_addr is None
    with pytest.raises(ConfigError, match="WORKERS"):
        load_settings("progress", "a:1", {"JWT_SECRET": STRONG, "WORKERS": "0"})
    with pytest.raises(ConfigError, match="LOG_FORMAT"):
        load_settings("progress", "a:1", {"JWT_SECRET": STRONG, "LOG_FORMAT": "xml"})
    with pytest.raises(ConfigError, match="TLS"):
        load_settings("progress", "a:1", {"JWT_SECRET": STRONG, "TLS_CERT_FILE": "/c"})


def _verifier(**kw: object) -> TokenVerifier:
    return TokenVerifier(JwtSettings("HS256", SECRET.encode(), **kw))  # type: ignore[arg-type]


def _token(**claims: object) -> str:
    base: dict[str, object] = {"sub": new_uuid(), "org": new_uuid(), "exp": time.time() + 60}
    base.update(claims)
    return jwt.encode({k: v for k, v in base.items() if v is not None}, SECRET, algorithm="HS256")


def test_verifier_builds_principal_with_union_of_permissions() -> None:
    user, org, campus = new_uuid(), new_uuid(), new_uuid()
    principal = _verifier().verify(
        _token(sub=user, org=org, campus=campus, permissions=["A", "B"], custom_permissions=["C"])
    )
    assert (principal.user_id, principal.organization_id, principal.campus_id) == (
        user,
        org,
        campus,
    )
    assert principal.permissions == frozenset({"A", "B", "C"})
    assert not principal.global_access


def test_global_access_needs_no_org_but_others_do() -> None:
    assert _verifier().verify(_token(org=None, global_access=True)).organization_id is None
    with pytest.raises(UnauthenticatedError, match="org"):
        _verifier().verify(_token(org=None))


@pytest.mark.parametrize(
    ("claims", "message"),
    [
        ({"exp": time.time() - 3600}, "expired"),
        ({"nbf": time.time() + 3600}, "not yet valid"),
        ({"sub": "not-a-uuid"}, "sub"),
        ({"org": 42}, "org"),
        ({"permissions": "READ_ACADEMIC_YEARS"}, "permissions"),
        ({"global_access": "yes"}, "global_access"),
    ],
)
def test_verifier_rejects_bad_claims(claims: dict[str, object], message: str) -> None:
    with pytest.raises(UnauthenticatedError, match=message):
        _verifier().verify(_token(**claims))


def test_small_clock_skew_is_tolerated() -> None:
    assert _verifier().verify(_token(exp=time.time() - 5))


def test_issuer_and_audience_are_checked_when_configured() -> None:
    verifier = _verifier(issuer="school-auth", audience="school-api")
    assert verifier.verify(_token(iss="school-auth", aud="school-api"))
    for claims in ({"iss": "evil", "aud": "school-api"}, {"iss": "school-auth", "aud": "x"}, {}):
        with pytest.raises(UnauthenticatedError):
            verifier.verify(_token(**claims))


def test_asymmetric_verifier_refuses_hmac_signed_with_the_public_key(tmp_path: Path) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    settings = load_jwt_settings(
        {"JWT_PUBLIC_KEY_FILE": str(_pem_pair(tmp_path, key)), "JWT_ALGORITHM": "ES256"}
    )
    claims = {"sub": new_uuid(), "org": new_uuid(), "exp": time.time() + 60}
    assert TokenVerifier(settings).verify(jwt.encode(claims, key, algorithm="ES256"))
    public_pem = (tmp_path / "public.pem").read_bytes()
    forged = jwt.api_jws.PyJWS()
    forged._algorithms["HS256"].prepare_key = lambda k: k  # let the attacker sign with the PEM
    token = forged.encode(jwt.api_jwt.json.dumps(claims).encode(), public_pem, algorithm="HS256")
    with pytest.raises(UnauthenticatedError):
        TokenVerifier(settings).verify(token)


@pytest.mark.parametrize(
    "metadata",
    [(), (("authorization", "Token abc"),), (("authorization", "Bearer "),), (("x", "Bearer a"),)],
)
def test_bearer_token_requires_the_bearer_scheme(metadata: tuple[tuple[str, str], ...]) -> None:
    with pytest.raises(UnauthenticatedError):
        bearer_token(metadata)


def test_bearer_token_scheme_is_case_insensitive() -> None:
    assert bearer_token((("authorization", "bearer abc.def.ghi"),)) == "abc.def.ghi"


@pytest.mark.parametrize(
    ("limit", "page", "expected"),
    [
        (None, None, (10, 0)),
        (0, 0, (10, 0)),
        (25, 2, (25, 50)),
        (500, 1, (100, 100)),
        (1, 7, (1, 7)),
    ],
)
def test_resolve_pagination(limit: int | None, page: int | None, expected: tuple[int, int]) -> None:
    resolved = resolve_pagination(limit, page)
    assert (resolved.limit, resolved.offset) == expected


def test_resolve_pagination_names_each_negative_field() -> None:
    with pytest.raises(ValidationError) as info:
        resolve_pagination(-1, -1)
    assert [v.field for v in info.value.violations] == ["limit", "page"]


def _details(status: grpc.Status) -> status_pb2.Status:
    [(key, value)] = status.trailing_metadata
    assert key == "grpc-status-details-bin"
    return status_pb2.Status.FromString(value)


def test_validation_error_maps_to_bad_request_and_error_info() -> None:
    error = ValidationError(
        [FieldViolation("data.item_id", "must not be empty"), FieldViolation("limit", "neg")]
    )
    status = to_grpc_status(error, "progress.v1")
    assert status.code == grpc.StatusCode.INVALID_ARGUMENT
    assert status.details == "data.item_id: must not be empty; and 1 more violation"
    info, bad = error_details_pb2.ErrorInfo(), error_details_pb2.BadRequest()
    details = _details(status).details
    assert details[0].Unpack(info) and details[1].Unpack(bad)
    assert (info.reason, info.domain) == ("INVALID_ARGUMENT", "progress.v1")
    assert [v.field for v in bad.field_violations] == ["data.item_id", "limit"]


def test_error_reason_and_metadata_are_carried() -> None:
    error = NotFoundError("gone", reason="THING_NOT_FOUND", metadata={"code": "thingNotFound"})
    status = to_grpc_status(error, "x.v1")
    info = error_details_pb2.ErrorInfo()
    [packed] = _details(status).details
    assert packed.Unpack(info)
    assert status.code == grpc.StatusCode.NOT_FOUND
    assert (info.reason, info.domain, dict(info.metadata)) == (
        "THING_NOT_FOUND",
        "x.v1",
        {"code": "thingNotFound"},
    )


def test_validation_details_stay_small_whatever_the_input_echoes() -> None:
    huge = "h" * 5000
    error = ValidationError([FieldViolation(f"line {i}: {huge}", huge) for i in range(50)])
    status = to_grpc_status(error, "progress.v1")
    [(_, details)] = status.trailing_metadata
    # Base64 on the wire adds a third; the whole trailer must stay under clients' 8 KiB cap.
    assert len(details) * 4 / 3 + len(status.details) < 8 * 1024
    bad = error_details_pb2.BadRequest()
    assert status_pb2.Status.FromString(details).details[1].Unpack(bad)
    assert len(bad.field_violations) == 20
    assert bad.field_violations[0].field.startswith("line 0: hhh")
    assert status.details.endswith("; and 49 more violations")


class _Metadata:
    def __init__(self, *pairs: tuple[str, str]) -> None:
        self._pairs = pairs

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return self._pairs


def test_request_ids_are_the_callers_or_new_and_distinct() -> None:
    from common.accesslog import request_id

    assert request_id(_Metadata(("x-request-id", "req-7"))) == "req-7"  # type: ignore[arg-type]
    generated = {request_id(_Metadata()) for _ in range(1000)}  # type: ignore[arg-type]
    assert len(generated) == 1000 and all(len(i) == 32 for i in generated)
