"""Token attacks: every forged, stale or malformed token is UNAUTHENTICATED and writes nothing.

Each key set-up runs its own server, on the session's database.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import grpc
import jwt
import pytest
import pytest_asyncio
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from progress.v1 import progress_pb2 as pb
from progress.v1 import progress_pb2_grpc
from sqlalchemy import func, select

from common.auth import MAX_TOKEN_BYTES
from common.config import load_jwt_settings
from common.server import MAX_METADATA_BYTES
from progress_service.tables import user_progress
from tests.conftest import Harness, start_harness, stop_harness
from tests.support.callers import SECRET, Caller, expect_error

pytestmark = [
    pytest.mark.asyncio,
    pytest.mark.filterwarnings("ignore::jwt.warnings.InsecureKeyLengthWarning"),
]

ISSUER, AUDIENCE = "https://issuer.test", "progress"
FAR_FUTURE = 4102444800  # 2100-01-01


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64json(obj: Any) -> str:
    return b64(json.dumps(obj).encode())


def hs_sign(header: dict[str, Any], claims: Any, key: bytes) -> str:
    """Sign by hand, so the attack does not depend on what PyJWT lets us encode."""
    signing_input = f"{b64json(header)}.{b64json(claims)}"
    digest = hmac.new(key, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64(digest)}"


def good_claims(caller: Caller, **changes: Any) -> dict[str, Any]:
    now = int(time.time())
    claims: dict[str, Any] = {
        "sub": caller.sub,
        "org": caller.org,
        "iat": now,
        "exp": now + 600,
        "permissions": [],
    }
    claims.update(changes)
    return {k: v for k, v in claims.items() if v is not ...}


def flip(segment: str) -> str:
    """The segment with one character in its middle changed (never a no-op padding bit)."""
    i = len(segment) // 2
    return segment[:i] + ("A" if segment[i] != "A" else "B") + segment[i + 1 :]


class Keys:
    """An asymmetric key pair written as the operator would configure it."""

    def __init__(self, algorithm: str, directory: Path) -> None:
        self.algorithm = algorithm
        if algorithm == "RS256":
            self.private: Any = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        else:
            self.private = ec.generate_private_key(ec.SECP256R1())
        self.public_pem = self.private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        self.public_file = directory / f"{algorithm}.pub.pem"
        self.public_file.write_bytes(self.public_pem)

    def sign(self, claims: dict[str, Any], headers: dict[str, Any] | None = None) -> str:
        return jwt.encode(claims, self.private, algorithm=self.algorithm, headers=headers)


async def _server(backend_urls: dict[str, str], env: dict[str, str]) -> Harness:
    from progress_service.app import DEFINITION
    from progress_service.tables import metadata

    settings = load_jwt_settings(env)  # the same path JWT_* variables take at start-up
    # A public key leaves no secret to derive the page-token key from.
    page_key = None if isinstance(settings.key, bytes) else b"page-token-key-" * 3
    return await start_harness(
        DEFINITION, backend_urls["postgres"], metadata, jwt=settings, page_token_secret=page_key
    )


@pytest_asyncio.fixture(scope="module")
async def hs_server(backend_urls: dict[str, str]) -> AsyncIterator[Harness]:
    harness = await _server(backend_urls, {"JWT_SECRET": SECRET})
    yield harness
    await stop_harness(harness)


@pytest_asyncio.fixture(scope="module")
async def iss_aud_server(backend_urls: dict[str, str]) -> AsyncIterator[Harness]:
    env = {"JWT_SECRET": SECRET, "JWT_ISSUER": ISSUER, "JWT_AUDIENCE": AUDIENCE}
    harness = await _server(backend_urls, env)
    yield harness
    await stop_harness(harness)


@pytest.fixture(scope="module", params=["RS256", "ES256"])
def keys(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Keys:
    return Keys(request.param, tmp_path_factory.mktemp("keys"))


@pytest_asyncio.fixture(scope="module")
async def pk_server(backend_urls: dict[str, str], keys: Keys) -> AsyncIterator[Harness]:
    env = {"JWT_PUBLIC_KEY_FILE": str(keys.public_file), "JWT_ALGORITHM": keys.algorithm}
    harness = await _server(backend_urls, env)
    yield harness
    await stop_harness(harness)


async def row_count(h: Harness) -> int:
    return int(await h.scalar(select(func.count()).select_from(user_progress)))


async def attempt_write(h: Harness, authorization: str | None) -> None:
    """An upsert with this authorization value must be refused and must write nothing."""
    await h.wipe()
    metadata = () if authorization is None else (("authorization", authorization),)
    request = pb.UpsertUserProgressRequest(
        data=pb.UserProgressInput(progress_type="sign_learned", item_id="attack")
    )
    stub = progress_pb2_grpc.UserProgressServiceStub(h.channel)
    err = await expect_error(
        stub.UpsertUserProgress(request, metadata=metadata), grpc.StatusCode.UNAUTHENTICATED
    )
    assert err.reason == "UNAUTHENTICATED" and err.domain == "progress.v1"
    assert await row_count(h) == 0


async def accepted(h: Harness, token: str) -> None:
    """Positive control: the same server accepts a proper token (so refusals mean something)."""
    await h.wipe()
    stub = progress_pb2_grpc.UserProgressServiceStub(h.channel)
    request = pb.UpsertUserProgressRequest(
        data=pb.UserProgressInput(progress_type="sign_learned", item_id="ok")
    )
    await stub.UpsertUserProgress(request, metadata=(("authorization", f"Bearer {token}"),))
    assert await row_count(h) == 1


HS = {"alg": "HS256", "typ": "JWT"}
OTHER_SECRET = b"another-secret-" + b"y" * 40

# Each builds a bad token for the HS256 server from a caller.
HS_ATTACKS: dict[str, Callable[[Caller], str]] = {
    "alg_none": lambda c: f"{b64json({'alg': 'none', 'typ': 'JWT'})}.{b64json(good_claims(c))}.",
    "alg_none_uppercase": lambda c: f"{b64json({'alg': 'NONE'})}.{b64json(good_claims(c))}.",
    "alg_none_with_signature": lambda c: hs_sign({"alg": "none"}, good_claims(c), SECRET.encode()),
    "wrong_key": lambda c: hs_sign(HS, good_claims(c), OTHER_SECRET),
    "right_key_other_hmac_alg": lambda c: jwt.encode(good_claims(c), SECRET, algorithm="HS512"),
    "expired": lambda c: hs_sign(HS, good_claims(c, exp=int(time.time()) - 3600), SECRET.encode()),
    "expired_just_beyond_leeway": lambda c: hs_sign(
        HS, good_claims(c, exp=int(time.time()) - 90), SECRET.encode()
    ),
    "nbf_in_future": lambda c: hs_sign(
        HS, good_claims(c, nbf=int(time.time()) + 3600), SECRET.encode()
    ),
    "iat_in_future": lambda c: hs_sign(
        HS, good_claims(c, iat=int(time.time()) + 3600), SECRET.encode()
    ),
    "missing_exp": lambda c: hs_sign(HS, good_claims(c, exp=...), SECRET.encode()),
    "missing_sub": lambda c: hs_sign(HS, good_claims(c, sub=...), SECRET.encode()),
    "missing_org_without_global": lambda c: hs_sign(HS, good_claims(c, org=...), SECRET.encode()),
    "exp_a_string": lambda c: hs_sign(HS, good_claims(c, exp=str(FAR_FUTURE)), SECRET.encode()),
    "org_a_number": lambda c: hs_sign(HS, good_claims(c, org=12345), SECRET.encode()),
    "org_not_a_uuid": lambda c: hs_sign(HS, good_claims(c, org="' OR 1=1 --"), SECRET.encode()),
    "org_a_list": lambda c: hs_sign(HS, good_claims(c, org=[c.org]), SECRET.encode()),
    "sub_not_a_uuid": lambda c: hs_sign(HS, good_claims(c, sub="admin"), SECRET.encode()),
    "sub_a_number": lambda c: hs_sign(HS, good_claims(c, sub=1), SECRET.encode()),
    "campus_a_number": lambda c: hs_sign(HS, good_claims(c, campus=7), SECRET.encode()),
    "permissions_a_string": lambda c: hs_sign(
        HS, good_claims(c, permissions="READ_ACADEMIC_YEARS"), SECRET.encode()
    ),
    "permissions_with_a_number": lambda c: hs_sign(
        HS, good_claims(c, permissions=["READ_ACADEMIC_YEARS", 1]), SECRET.encode()
    ),
    "custom_permissions_an_object": lambda c: hs_sign(
        HS, good_claims(c, custom_permissions={"READ": True}), SECRET.encode()
    ),
    "global_access_a_string": lambda c: hs_sign(
        HS, good_claims(c, org=..., global_access="true"), SECRET.encode()
    ),
    "global_access_a_number": lambda c: hs_sign(
        HS, good_claims(c, org=..., global_access=1), SECRET.encode()
    ),
    "payload_not_an_object": lambda c: hs_sign(HS, [good_claims(c)], SECRET.encode()),
    "tampered_payload": lambda c: _tamper_payload(c),
    "tampered_signature": lambda c: _tamper_signature(c),
    "signature_stripped": lambda c: c.token().rsplit(".", 1)[0] + ".",
    "two_segments": lambda c: c.token().rsplit(".", 1)[0],
    "four_segments": lambda c: c.token() + ".AAAA",
    "header_not_json": lambda c: "bm90LWpzb24." + c.token().split(".", 1)[1],
    "garbage": lambda c: "not-a-jwt",
    "jwk_header_names_attacker_key": lambda c: hs_sign(
        {**HS, "jwk": {"kty": "oct", "k": b64(OTHER_SECRET)}}, good_claims(c), OTHER_SECRET
    ),
    "jku_header": lambda c: hs_sign(
        {**HS, "jku": "https://attacker.test/jwks.json"}, good_claims(c), SECRET.encode()
    ),
    "x5u_header": lambda c: hs_sign(
        {**HS, "x5u": "https://attacker.test/cert.pem"}, good_claims(c), SECRET.encode()
    ),
    "x5c_header": lambda c: hs_sign({**HS, "x5c": ["MIIB"]}, good_claims(c), SECRET.encode()),
    "kid_naming_attacker_key": lambda c: hs_sign(
        {**HS, "kid": "attacker"}, good_claims(c), OTHER_SECRET
    ),
    "kid_path_traversal": lambda c: hs_sign(
        {**HS, "kid": "../../../../dev/null"}, good_claims(c), b""
    ),
}


def _tamper_payload(caller: Caller) -> str:
    header, _payload, signature = caller.token().split(".")
    forged = good_claims(caller, org=None, global_access=True)
    return f"{header}.{b64json(forged)}.{signature}"


def _tamper_signature(caller: Caller) -> str:
    header, payload, signature = caller.token().split(".")
    return f"{header}.{payload}.{flip(signature)}"


@pytest.mark.parametrize("attack", sorted(HS_ATTACKS))
async def test_forged_or_malformed_token_is_refused(hs_server: Harness, attack: str) -> None:
    token = HS_ATTACKS[attack](Caller())
    await attempt_write(hs_server, f"Bearer {token}")


@pytest.mark.parametrize(
    "authorization",
    [
        None,
        "",
        "Bearer",
        "Bearer ",
        "Bearer    ",
        "Basic dXNlcjpwYXNz",
        "Token {token}",
        "JWT {token}",
        "{token}",
        "Bearer{token}",
        "Bearer {token} {token}",
        "Bearer " + "A" * (MAX_TOKEN_BYTES + 1),
        "Bearer {token}" + "A" * MAX_TOKEN_BYTES,
        "Bearer " + "A" * (MAX_METADATA_BYTES - 1024),
    ],
    ids=lambda v: "absent" if v is None else repr(v[:24]),
)
async def test_wrong_scheme_empty_or_oversized_is_refused(
    hs_server: Harness, authorization: str | None
) -> None:
    if authorization is not None:
        authorization = authorization.replace("{token}", Caller().token())
    await attempt_write(hs_server, authorization)


async def test_metadata_beyond_the_transport_limit_is_refused_before_anything_runs(
    hs_server: Harness,
) -> None:
    await hs_server.wipe()
    stub = progress_pb2_grpc.UserProgressServiceStub(hs_server.channel)
    request = pb.UpsertUserProgressRequest(
        data=pb.UserProgressInput(progress_type="sign_learned", item_id="attack")
    )
    huge = "Bearer " + Caller().token() + "A" * MAX_METADATA_BYTES
    await expect_error(
        stub.UpsertUserProgress(request, metadata=(("authorization", huge),)),
        grpc.StatusCode.RESOURCE_EXHAUSTED,
    )
    assert await row_count(hs_server) == 0


async def test_controls_proper_tokens_are_accepted(hs_server: Harness) -> None:
    caller = Caller()
    await accepted(hs_server, caller.token())
    # A kid is ignored: the configured key is always the one used.
    await accepted(
        hs_server, hs_sign({**HS, "kid": "whatever"}, good_claims(caller), SECRET.encode())
    )
    await accepted(
        hs_server, hs_sign(HS, good_claims(caller, exp=int(time.time()) - 5), SECRET.encode())
    )


ISS_AUD_ATTACKS = {
    "wrong_issuer": {"iss": "https://evil.test", "aud": AUDIENCE},
    "missing_issuer": {"aud": AUDIENCE},
    "issuer_a_list": {"iss": [ISSUER], "aud": AUDIENCE},
    "wrong_audience": {"iss": ISSUER, "aud": "academic_years"},
    "audience_list_without_ours": {"iss": ISSUER, "aud": ["a", "b"]},
    "missing_audience": {"iss": ISSUER},
}


@pytest.mark.parametrize("attack", sorted(ISS_AUD_ATTACKS))
async def test_wrong_issuer_or_audience_is_refused(iss_aud_server: Harness, attack: str) -> None:
    claims = good_claims(Caller(), **ISS_AUD_ATTACKS[attack])
    await attempt_write(iss_aud_server, f"Bearer {hs_sign(HS, claims, SECRET.encode())}")


async def test_controls_right_issuer_and_audience_are_accepted(iss_aud_server: Harness) -> None:
    caller = Caller()
    for aud in (AUDIENCE, ["other", AUDIENCE]):
        claims = good_claims(caller, iss=ISSUER, aud=aud)
        await accepted(iss_aud_server, hs_sign(HS, claims, SECRET.encode()))


def _pk_attacks(keys: Keys, caller: Caller, tmp: Path) -> dict[str, str]:
    claims = good_claims(caller)
    attacker = Keys(keys.algorithm, tmp)
    attacker_jwk = json.loads(
        jwt.algorithms.get_default_algorithms()[keys.algorithm].to_jwk(  # type: ignore[attr-defined]
            attacker.private.public_key()
        )
    )
    alg = {"alg": keys.algorithm, "typ": "JWT"}
    return {
        # The classic confusion: the public key (which anyone may hold) used as an HMAC secret.
        "hs256_signed_with_public_key_pem": hs_sign(HS, claims, keys.public_pem),
        "hs256_signed_with_public_key_pem_stripped": hs_sign(HS, claims, keys.public_pem.strip()),
        "alg_none": f"{b64json({'alg': 'none'})}.{b64json(claims)}.",
        "wrong_key": attacker.sign(claims),
        "jwk_header_with_attacker_key": attacker.sign(claims, headers={"jwk": attacker_jwk}),
        "kid_with_attacker_key": attacker.sign(claims, headers={"kid": "primary"}),
        "expired": keys.sign(good_claims(caller, exp=int(time.time()) - 3600)),
        "nbf_in_future": keys.sign(good_claims(caller, nbf=int(time.time()) + 3600)),
        "missing_sub": keys.sign(good_claims(caller, sub=...)),
        "tampered_payload": ".".join(
            [
                b64json(alg),
                b64json(good_claims(caller, org=None, global_access=True)),
                keys.sign(claims).split(".")[2],
            ]
        ),
        "tampered_signature": _flip_signature(keys.sign(claims)),
        "secret_hs256_token": jwt.encode(claims, SECRET, algorithm="HS256"),
    }


def _flip_signature(token: str) -> str:
    header, payload, signature = token.split(".")
    return f"{header}.{payload}.{flip(signature)}"


PK_ATTACK_NAMES = [
    "hs256_signed_with_public_key_pem",
    "hs256_signed_with_public_key_pem_stripped",
    "alg_none",
    "wrong_key",
    "jwk_header_with_attacker_key",
    "kid_with_attacker_key",
    "expired",
    "nbf_in_future",
    "missing_sub",
    "tampered_payload",
    "tampered_signature",
    "secret_hs256_token",
]


@pytest.mark.parametrize("attack", PK_ATTACK_NAMES)
async def test_public_key_server_refuses_forgeries(
    pk_server: Harness, keys: Keys, attack: str, tmp_path: Path
) -> None:
    token = _pk_attacks(keys, Caller(), tmp_path)[attack]
    await attempt_write(pk_server, f"Bearer {token}")


async def test_controls_public_key_server_accepts_its_tokens(
    pk_server: Harness, keys: Keys
) -> None:
    caller = Caller()
    await accepted(pk_server, keys.sign(good_claims(caller)))
    await accepted(pk_server, keys.sign(good_claims(caller), headers={"kid": "any-kid"}))
