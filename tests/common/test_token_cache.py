"""The verified-token cache: reuse within its TTL, never past the token's exp, bounded, opt-out."""

from __future__ import annotations

import time
from typing import Any

import jwt
import pytest

from common import auth
from common.auth import TokenVerifier
from common.config import JwtSettings
from common.errors import UnauthenticatedError
from tests.support.callers import SECRET, new_uuid


class CountingJwt:
    """Wraps the verifier's PyJWT object to count real signature checks."""

    def __init__(self, inner: jwt.PyJWT) -> None:
        self.inner = inner
        self.calls = 0

    def decode(self, *args: Any, **kwargs: Any) -> Any:
        self.calls += 1
        return self.inner.decode(*args, **kwargs)


def verifier(**settings: Any) -> tuple[TokenVerifier, CountingJwt]:
    v = TokenVerifier(JwtSettings("HS256", SECRET.encode(), leeway_seconds=0, **settings))
    counter = CountingJwt(v._jwt)
    v._jwt = counter  # type: ignore[assignment]
    return v, counter


def token(ttl: float = 600, **claims: Any) -> str:
    body = {"sub": new_uuid(), "org": new_uuid(), "exp": int(time.time() + ttl), **claims}
    return jwt.encode(body, SECRET, algorithm="HS256")


def at(monkeypatch: pytest.MonkeyPatch, moment: float) -> None:
    monkeypatch.setattr(auth.time, "time", lambda: moment)


def test_a_repeated_token_is_checked_once_and_gives_the_same_principal() -> None:
    v, counter = verifier()
    raw = token()
    assert v.verify(raw) == v.verify(raw)
    assert counter.calls == 1


def pyjwt_clock_at(monkeypatch: pytest.MonkeyPatch, moment: float) -> None:
    """PyJWT reads the clock through `datetime.now`; move it as well."""
    real = jwt.api_jwt.datetime

    class Frozen(real):  # type: ignore[misc, valid-type]
        @classmethod
        def now(cls, tz: Any = None) -> Any:
            return real.fromtimestamp(moment, tz)

    monkeypatch.setattr(jwt.api_jwt, "datetime", Frozen)


def test_a_cached_token_is_refused_after_its_exp(monkeypatch: pytest.MonkeyPatch) -> None:
    v, counter = verifier(cache_seconds=3600)
    raw = token(ttl=5)
    exp = jwt.decode(raw, options={"verify_signature": False})["exp"]
    v.verify(raw)
    at(monkeypatch, exp + 1)
    pyjwt_clock_at(monkeypatch, exp + 1)
    with pytest.raises(UnauthenticatedError, match="expired"):
        v.verify(raw)
    assert counter.calls == 2


def test_the_cache_entry_lives_at_most_cache_seconds(monkeypatch: pytest.MonkeyPatch) -> None:
    v, counter = verifier(cache_seconds=30)
    raw = token()
    now = time.time()
    v.verify(raw)
    at(monkeypatch, now + 29)
    v.verify(raw)
    assert counter.calls == 1
    at(monkeypatch, now + 31)
    v.verify(raw)
    assert counter.calls == 2


def test_a_token_not_yet_valid_is_refused_and_not_cached() -> None:
    v, counter = verifier()
    raw = token(nbf=int(time.time() + 300))
    for _ in range(2):
        with pytest.raises(UnauthenticatedError):
            v.verify(raw)
    assert counter.calls == 2


def test_failures_are_never_cached() -> None:
    v, counter = verifier()
    forged = jwt.encode({"sub": new_uuid(), "exp": time.time() + 60}, "x" * 40, algorithm="HS256")
    for _ in range(2):
        with pytest.raises(UnauthenticatedError):
            v.verify(forged)
    assert counter.calls == 2


def test_the_cache_is_bounded_and_evicts_the_oldest() -> None:
    v, counter = verifier(cache_size=2)
    first, second, third = token(), token(), token()
    for raw in (first, second, third, third, second):
        v.verify(raw)
    assert counter.calls == 3
    v.verify(first)
    assert counter.calls == 4


def test_size_zero_turns_the_cache_off() -> None:
    v, counter = verifier(cache_size=0)
    raw = token()
    v.verify(raw)
    v.verify(raw)
    assert counter.calls == 2
