"""Mint a bearer token for operators and local use: `python -m common.token --sub … --org …`."""

from __future__ import annotations

import argparse
import os
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import jwt

from common import permissions
from common.config import MIN_HMAC_SECRET_BYTES, ConfigError, load_jwt_settings


def mint(
    key: str | bytes,
    *,
    sub: str,
    org: str | None = None,
    campus: str | None = None,
    global_access: bool = False,
    permissions: list[str] | None = None,
    custom_permissions: list[str] | None = None,
    ttl_seconds: int = 3600,
    algorithm: str = "HS256",
    issuer: str | None = None,
    audience: str | None = None,
    extra: dict[str, Any] | None = None,
) -> str:
    now = int(time.time())
    claims: dict[str, Any] = {"sub": sub, "iat": now, "exp": now + ttl_seconds}
    if org:
        claims["org"] = org
    if campus:
        claims["campus"] = campus
    if global_access:
        claims["global_access"] = True
    claims["permissions"] = list(permissions or [])
    if custom_permissions:
        claims["custom_permissions"] = list(custom_permissions)
    if issuer:
        claims["iss"] = issuer
    if audience:
        claims["aud"] = audience
    claims.update(extra or {})
    return jwt.encode(claims, key, algorithm=algorithm)


def _uuid(value: str) -> str:
    try:
        return str(uuid.UUID(value))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a UUID") from None


def _permission(value: str) -> str:
    if value not in permissions.KNOWN:
        raise argparse.ArgumentTypeError(
            f"{value!r} is not a known permission; known: {', '.join(permissions.KNOWN)}"
        )
    return value


def _positive(value: str) -> int:
    seconds = int(value)
    if seconds < 1:
        raise argparse.ArgumentTypeError("must be at least 1 second")
    return seconds


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m common.token",
        description=__doc__,
        epilog="Permissions: " + ", ".join(permissions.KNOWN) + ". HS256 signs with "
        f"JWT_SECRET (at least {MIN_HMAC_SECRET_BYTES} bytes, as the services require); "
        "JWT_ISSUER and JWT_AUDIENCE are copied into the token when set. Exit 2 on a bad "
        "option or key.",
    )
    p.add_argument("--sub", type=_uuid, help="user id (UUID); a new one when omitted")
    p.add_argument("--org", type=_uuid, help="organization id (UUID)")
    p.add_argument("--campus", type=_uuid, help="campus id (UUID)")
    p.add_argument("--global", dest="global_access", action="store_true", help="global access")
    p.add_argument(
        "--perm", type=_permission, action="append", default=[], help="role permission (repeatable)"
    )
    p.add_argument(
        "--custom-perm", type=_permission, action="append", default=[], help="user's own permission"
    )
    p.add_argument("--ttl", type=_positive, default=3600, help="seconds until expiry")
    p.add_argument("--private-key-file", help="PEM private key (with --alg RS256/ES256/EdDSA)")
    p.add_argument("--alg", default=None, help="signing algorithm (default HS256 or JWT_ALGORITHM)")
    return p


def _signing_key(args: argparse.Namespace) -> tuple[str | bytes, str]:
    """The key and algorithm, refused by the same rules the services apply to their key."""
    if args.private_key_file:
        try:
            return Path(args.private_key_file).read_bytes(), (
                args.alg or os.environ.get("JWT_ALGORITHM") or "RS256"
            )
        except OSError as exc:
            raise ConfigError(
                f"--private-key-file {args.private_key_file}: {exc.strerror}"
            ) from None
    secret = os.environ.get("JWT_SECRET", "")
    if not secret:
        raise ConfigError("set JWT_SECRET (or pass --private-key-file)")
    algorithm = args.alg or "HS256"
    load_jwt_settings({"JWT_SECRET": secret, "JWT_ALGORITHM": algorithm})
    return secret, algorithm


def main(argv: list[str] | None = None) -> int:
    p = parser()
    args = p.parse_args(argv)
    try:
        key, algorithm = _signing_key(args)
    except ConfigError as exc:
        print(f"{p.prog}: {exc}", file=sys.stderr)
        return 2
    if not args.org and not args.global_access:
        print(
            "warning: no --org and no --global; the services will refuse this token",
            file=sys.stderr,
        )
    print(
        mint(
            key,
            sub=args.sub or str(uuid.uuid4()),
            org=args.org,
            campus=args.campus,
            global_access=args.global_access,
            permissions=args.perm,
            custom_permissions=args.custom_perm,
            ttl_seconds=args.ttl,
            algorithm=algorithm,
            issuer=os.environ.get("JWT_ISSUER") or None,
            audience=os.environ.get("JWT_AUDIENCE") or None,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
