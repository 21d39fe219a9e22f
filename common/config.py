"""Typed settings read from the environment once, validated at start-up."""

from __future__ import annotations

import os
import sys
import textwrap
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt

REPO_ROOT = Path(__file__).resolve().parents[1]
LOCAL_DATA_DIR = REPO_ROOT / "var"
MIN_HMAC_SECRET_BYTES = 32
ASYMMETRIC_ALGORITHMS = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"}
)
HMAC_ALGORITHMS = frozenset({"HS256", "HS384", "HS512"})


class ConfigError(Exception):
    """A setting is missing or wrong; the message says which and how to fix it."""


@dataclass(frozen=True, slots=True)
class JwtSettings:
    algorithm: str
    key: Any  # a prepared HMAC secret or public key object, as PyJWT accepts it
    issuer: str | None = None
    audience: str | None = None
    leeway_seconds: int = 30
    # Verified tokens are reused for a short while (TOKEN_CACHE_SIZE=0 turns this off).
    cache_size: int = 1024
    cache_seconds: float = 30.0


@dataclass(frozen=True, slots=True)
class TlsSettings:
    cert_file: Path
    key_file: Path
    client_ca_file: Path | None


@dataclass(frozen=True, slots=True)
class AppRole:
    """The role `migrate` creates and grants, and the services serve as (see common.db.roles)."""

    name: str
    password: str | None = None


# The app role of the embedded default: the socket trusts local roles, so it has no password.
EMBEDDED_APP_ROLE = AppRole("school_app")


@dataclass(frozen=True, slots=True)
class Limits:
    """Bounds on what a caller may store and on what one response carries; `common.limits`
    checks at start-up that the largest response they allow fits the message limit."""

    # A progress value is a short answer (a sign, a zone); 4096 characters is far beyond it.
    progress_value_max_chars: int = 4096
    # Metadata as a google.protobuf.Value: room for hundreds of keys, 1/256 of a message.
    progress_metadata_max_bytes: int = 32 * 1024
    # JSON nesting (a scalar is 0, {"a": 1} is 1): 16 leaves protobuf decoders half their depth.
    progress_metadata_max_depth: int = 16
    # Classes and timetables a GetAcademicYear returns of each (the first ones by name).
    academic_year_max_references: int = 1000
    # The largest CSV upload (RESOURCE_EXHAUSTED beyond), and the longest record: a quoted
    # field may span lines, but not without end.
    csv_max_bytes: int = 1 << 30
    csv_max_record_chars: int = 1 << 20


LIMIT_VARIABLES = {
    "PROGRESS_VALUE_MAX_CHARS": "progress_value_max_chars",
    "PROGRESS_METADATA_MAX_BYTES": "progress_metadata_max_bytes",
    "PROGRESS_METADATA_MAX_DEPTH": "progress_metadata_max_depth",
    "ACADEMIC_YEARS_GET_MAX_REFERENCES": "academic_year_max_references",
    "CSV_MAX_BYTES": "csv_max_bytes",
}


@dataclass(frozen=True, slots=True)
class Settings:
    service: str
    # None: the embedded PostgreSQL in `embedded_data_dir` (common.db.embedded), started on
    # demand by the command line.
    database_url: str | None
    grpc_addr: str
    jwt: JwtSettings
    workers: int = 1
    metrics_addr: str | None = None
    log_format: str = "json"
    tls: TlsSettings | None = None
    grace_seconds: float = 10.0
    # After SIGTERM, how long calls are still served (health already NOT_SERVING) so that
    # load balancers and clients watching health move away first (see common.drain).
    drain_delay_seconds: float = 5.0
    max_message_bytes: int = 8 * 1024 * 1024
    uvloop: bool = True  # UVLOOP=0 keeps the standard asyncio loop
    db_pool_size: int = 10
    # Longest a call waits for a lost database to come back (common.db.outage).
    db_wait_seconds: float = 10.0
    embedded_data_dir: Path = LOCAL_DATA_DIR / "postgres"
    app_role: AppRole | None = None
    # Refuse to serve as a role that row-level security does not apply to (else: a warning).
    require_rls: bool = False
    limits: Limits = Limits()
    # Which of the WORKERS processes this is (0 when there is one); set by common.workers.
    worker_index: int = 0
    # The key page tokens are signed with; None derives it from the JWT secret
    # (common.pagetoken).
    page_token_secret: bytes | None = None
    # How long a write's answer is kept under its request id (common.idempotency).
    request_id_ttl_seconds: int = 86400


def _opt(env: Mapping[str, str], name: str) -> str | None:
    value = env.get(name, "").strip()
    return value or None


def _flag(env: Mapping[str, str], name: str, *, default: bool) -> bool:
    value = _opt(env, name)
    if value is None:
        return default
    return value.lower() not in {"0", "false", "no", "off"}


def load_jwt_settings(env: Mapping[str, str]) -> JwtSettings:
    """Exactly one key: an HMAC secret or a public key file with its one algorithm."""
    secret = env.get("JWT_SECRET", "")
    key_file = _opt(env, "JWT_PUBLIC_KEY_FILE")
    algorithm = _opt(env, "JWT_ALGORITHM")
    issuer, audience = _opt(env, "JWT_ISSUER"), _opt(env, "JWT_AUDIENCE")
    leeway = int(env.get("JWT_LEEWAY_SECONDS", "30"))
    if secret and key_file:
        raise ConfigError("set JWT_SECRET or JWT_PUBLIC_KEY_FILE, not both")
    if key_file:
        if algorithm not in ASYMMETRIC_ALGORITHMS:
            raise ConfigError(
                "JWT_PUBLIC_KEY_FILE needs JWT_ALGORITHM, one of "
                + ", ".join(sorted(ASYMMETRIC_ALGORITHMS))
            )
        try:
            pem = Path(key_file).read_bytes()
        except OSError as exc:
            raise ConfigError(f"JWT_PUBLIC_KEY_FILE {key_file!r} cannot be read: {exc}") from exc
        try:
            key = jwt.PyJWS().get_algorithm_by_name(algorithm).prepare_key(pem)
        except Exception as exc:  # PyJWT raises several types for a bad or mismatched key
            raise ConfigError(
                f"JWT_PUBLIC_KEY_FILE is not a {algorithm} public key: {exc}"
            ) from exc
        if hasattr(key, "private_bytes"):
            raise ConfigError("JWT_PUBLIC_KEY_FILE holds a private key; give the public key only")
        return JwtSettings(algorithm, key, issuer, audience, leeway, _cache_size(env))
    if not secret:
        raise ConfigError(
            "no token key: set JWT_SECRET (HS256, at least 32 bytes) or "
            "JWT_PUBLIC_KEY_FILE with JWT_ALGORITHM"
        )
    algorithm = algorithm or "HS256"
    if algorithm not in HMAC_ALGORITHMS:
        raise ConfigError(f"JWT_SECRET goes with an HMAC JWT_ALGORITHM, not {algorithm}")
    if len(secret.encode()) < MIN_HMAC_SECRET_BYTES:
        raise ConfigError(f"JWT_SECRET is too weak: use at least {MIN_HMAC_SECRET_BYTES} bytes")
    return JwtSettings(algorithm, secret.encode(), issuer, audience, leeway, _cache_size(env))


def _cache_size(env: Mapping[str, str]) -> int:
    try:
        size = int(env.get("TOKEN_CACHE_SIZE", "1024"))
    except ValueError as exc:
        raise ConfigError(f"TOKEN_CACHE_SIZE is not a number: {exc}") from exc
    if size < 0:
        raise ConfigError("TOKEN_CACHE_SIZE must not be negative")
    return size


def _tls(env: Mapping[str, str]) -> TlsSettings | None:
    cert, key, ca = (_opt(env, n) for n in ("TLS_CERT_FILE", "TLS_KEY_FILE", "TLS_CLIENT_CA_FILE"))
    if not cert and not key:
        if ca:
            raise ConfigError("TLS_CLIENT_CA_FILE needs TLS_CERT_FILE and TLS_KEY_FILE")
        return None
    if not (cert and key):
        raise ConfigError("TLS needs both TLS_CERT_FILE and TLS_KEY_FILE")
    for name, path in (("TLS_CERT_FILE", cert), ("TLS_KEY_FILE", key), ("TLS_CLIENT_CA_FILE", ca)):
        if path and not Path(path).is_file():
            raise ConfigError(f"{name} {path!r} does not exist")
    return TlsSettings(Path(cert), Path(key), Path(ca) if ca else None)


def _page_token_secret(env: Mapping[str, str], jwt_settings: JwtSettings) -> bytes | None:
    """PAGE_TOKEN_SECRET; required when there is no JWT secret to derive the key from, since a
    key of one process's own would make every other replica refuse its tokens."""
    secret = env.get("PAGE_TOKEN_SECRET", "")
    if secret:
        if len(secret.encode()) < MIN_HMAC_SECRET_BYTES:
            raise ConfigError(
                f"PAGE_TOKEN_SECRET is too weak: use at least {MIN_HMAC_SECRET_BYTES} bytes"
            )
        return secret.encode()
    if not isinstance(jwt_settings.key, bytes):
        raise ConfigError(
            "JWT_PUBLIC_KEY_FILE needs PAGE_TOKEN_SECRET (at least "
            f"{MIN_HMAC_SECRET_BYTES} bytes, the same on every replica) to sign page tokens"
        )
    return None


def embedded_data_dir(env: Mapping[str, str]) -> Path:
    """Where the embedded PostgreSQL keeps its data (EMBEDDED_PGDATA, default var/postgres)."""
    return Path(_opt(env, "EMBEDDED_PGDATA") or LOCAL_DATA_DIR / "postgres")


def app_role(env: Mapping[str, str]) -> AppRole | None:
    """DATABASE_APP_ROLE with its password (DATABASE_APP_PASSWORD, or a file holding it,
    DATABASE_APP_PASSWORD_FILE, for secrets mounted as files)."""
    name = _opt(env, "DATABASE_APP_ROLE")
    password = _opt(env, "DATABASE_APP_PASSWORD")
    password_file = _opt(env, "DATABASE_APP_PASSWORD_FILE")
    if password_file:
        try:
            password = Path(password_file).read_text().strip()
        except OSError as exc:
            raise ConfigError(f"DATABASE_APP_PASSWORD_FILE cannot be read: {exc}") from exc
    if password and not name:
        raise ConfigError("DATABASE_APP_PASSWORD is set but DATABASE_APP_ROLE is not")
    return AppRole(name, password) if name else None


def load_limits(env: Mapping[str, str]) -> Limits:
    """Each limit from its variable when set: a whole number, at least 1."""
    values: dict[str, int] = {}
    for variable, name in LIMIT_VARIABLES.items():
        raw = env.get(variable, "").strip()
        if not raw:
            continue
        try:
            values[name] = int(raw)
        except ValueError:
            raise ConfigError(f"{variable} must be a whole number, not {raw!r}") from None
        if values[name] < 1:
            raise ConfigError(f"{variable} must be at least 1")
    return Limits(**values)


def load_settings(
    service: str, default_addr: str, env: Mapping[str, str] | None = None
) -> Settings:
    env = os.environ if env is None else env
    log_format = _opt(env, "LOG_FORMAT") or ("console" if sys.stderr.isatty() else "json")
    if log_format not in {"json", "console"}:
        raise ConfigError("LOG_FORMAT is json or console")
    try:
        workers = int(env.get("WORKERS", "1"))
        grace = float(env.get("SHUTDOWN_GRACE_SECONDS", "10"))
        drain_delay = float(env.get("DRAIN_DELAY_SECONDS", "5"))
        pool_size = int(env.get("DB_POOL_SIZE", "10"))
        db_wait = float(env.get("DB_WAIT_SECONDS", "10"))
        request_id_ttl = int(env.get("REQUEST_ID_TTL_SECONDS", "86400"))
    except ValueError as exc:
        raise ConfigError(f"a numeric setting is not a number: {exc}") from exc
    if workers < 1:
        raise ConfigError("WORKERS must be at least 1")
    if pool_size < 1:
        raise ConfigError("DB_POOL_SIZE must be at least 1")
    if request_id_ttl < 1:
        raise ConfigError("REQUEST_ID_TTL_SECONDS must be at least 1")
    for name, seconds in (
        ("SHUTDOWN_GRACE_SECONDS", grace),
        ("DRAIN_DELAY_SECONDS", drain_delay),
        ("DB_WAIT_SECONDS", db_wait),
    ):
        if not 0 <= seconds < float("inf"):
            raise ConfigError(f"{name} must be a number of seconds, 0 or more")
    database_url = _opt(env, "DATABASE_URL")
    if database_url is not None:
        from common.db.engine import asyncpg_dsn

        asyncpg_dsn(database_url)  # refuses what is not a PostgreSQL URL, naming it
    jwt_settings = load_jwt_settings(env)
    return Settings(
        service=service,
        database_url=database_url,
        embedded_data_dir=embedded_data_dir(env),
        app_role=app_role(env),
        require_rls=_flag(env, "REQUIRE_RLS", default=False),
        grpc_addr=_opt(env, "GRPC_ADDR") or default_addr,
        jwt=jwt_settings,
        page_token_secret=_page_token_secret(env, jwt_settings),
        workers=workers,
        metrics_addr=_opt(env, "METRICS_ADDR"),
        log_format=log_format,
        tls=_tls(env),
        grace_seconds=grace,
        drain_delay_seconds=drain_delay,
        db_pool_size=pool_size,
        db_wait_seconds=db_wait,
        request_id_ttl_seconds=request_id_ttl,
        uvloop=_flag(env, "UVLOOP", default=True),
        limits=load_limits(env),
    )


@dataclass(frozen=True, slots=True)
class Variable:
    """One setting read from the environment, as `--help` and the README describe it."""

    name: str
    meaning: str
    default: str  # as a person reads it; `tests/test_config_docs.py` checks it is the real one


# Every variable load_settings reads, in the order people look for them.
# `--help` of each service and README's configuration table are generated from this list
# (`make docs`); a test fails when either, or load_settings, drifts from it.
ENVIRONMENT: tuple[Variable, ...] = (
    Variable(
        "DATABASE_URL",
        "PostgreSQL URL: `postgresql://…`, `postgres://…` or `postgresql+asyncpg://…`",
        "unset: the embedded PostgreSQL under `var/postgres`, started on demand",
    ),
    Variable(
        "EMBEDDED_PGDATA",
        "data directory of the embedded PostgreSQL (when DATABASE_URL is unset)",
        "unset: `var/postgres` in the project folder",
    ),
    Variable(
        "GRPC_ADDR",
        "listen address",
        "`127.0.0.1:50051` progress, `127.0.0.1:50052` academic years",
    ),
    Variable(
        "JWT_SECRET",
        f"HS256 shared secret, at least {MIN_HMAC_SECRET_BYTES} bytes",
        "none: the service refuses to start without a key",
    ),
    Variable(
        "JWT_PUBLIC_KEY_FILE",
        "PEM public key, instead of JWT_SECRET; needs JWT_ALGORITHM",
        "unset",
    ),
    Variable(
        "JWT_ALGORITHM",
        "the one algorithm accepted (RS256, ES256, EdDSA, … with a public key; HS256/384/512 "
        "with a secret)",
        "HS256 with JWT_SECRET",
    ),
    Variable("JWT_ISSUER", "`iss` every token must carry", "unset: not checked"),
    Variable("JWT_AUDIENCE", "`aud` every token must carry", "unset: not checked"),
    Variable(
        "PAGE_TOKEN_SECRET",
        f"key page tokens are signed with, at least {MIN_HMAC_SECRET_BYTES} bytes, the same on "
        "every replica; needed with JWT_PUBLIC_KEY_FILE",
        "unset: derived from JWT_SECRET",
    ),
    Variable("JWT_LEEWAY_SECONDS", "clock skew allowed on `exp`, `nbf` and `iat`", "30"),
    Variable(
        "TOKEN_CACHE_SIZE",
        "verified tokens kept (30 s at most, never past their exp); 0 turns it off",
        "1024",
    ),
    Variable("WORKERS", "server processes sharing the port (SO_REUSEPORT)", "1"),
    Variable("METRICS_ADDR", "Prometheus endpoint, e.g. `0.0.0.0:9100`", "unset: off"),
    Variable("LOG_FORMAT", "`json` or `console`", "`console` on a terminal, else `json`"),
    Variable(
        "TLS_CERT_FILE", "server certificate (PEM); with TLS_KEY_FILE switches TLS on", "unset"
    ),
    Variable("TLS_KEY_FILE", "server key (PEM)", "unset: plaintext"),
    Variable(
        "TLS_CLIENT_CA_FILE", "CA that client certificates must chain to (mTLS)", "unset: no mTLS"
    ),
    Variable(
        "DRAIN_DELAY_SECONDS",
        "after SIGTERM, how long calls are still served while health says NOT_SERVING, so "
        "load balancers and clients move away first (Kubernetes takes a few seconds to drop "
        "an endpoint); then new calls are refused with UNAVAILABLE",
        "5",
    ),
    Variable(
        "SHUTDOWN_GRACE_SECONDS",
        "how long calls in flight may finish once new ones are refused (after the drain "
        "delay); calls still running then are cut off and their transactions rolled back",
        "10",
    ),
    Variable(
        "DB_POOL_SIZE",
        "most PostgreSQL connections a process opens (one asyncpg pool, opened on demand)",
        "10",
    ),
    Variable(
        "DB_WAIT_SECONDS",
        "longest a call waits for an unreachable PostgreSQL (a restart, a failover) before "
        "it is answered UNAVAILABLE; never more than half the time its deadline leaves; "
        "0 answers at once",
        "10",
    ),
    Variable(
        "REQUEST_ID_TTL_SECONDS",
        "how long a write's answer is kept under its request id (AIP-155) to answer a retry; "
        "keep it longer than any client retries an operation (the CSV deadline is 300 s); "
        "expired answers are purged in small batches every few minutes",
        "86400 (24 h)",
    ),
    Variable("UVLOOP", "`0` runs the standard asyncio loop instead of uvloop", "1"),
    Variable(
        "DATABASE_APP_ROLE",
        "role `migrate` creates (no superuser, no BYPASSRLS) and grants each service's tables "
        "to; serve as it so row-level security applies",
        "unset: none (the embedded default always uses `school_app`)",
    ),
    Variable(
        "DATABASE_APP_PASSWORD",
        "password `migrate` sets for DATABASE_APP_ROLE (or DATABASE_APP_PASSWORD_FILE)",
        "unset: the role's password is left as it is",
    ),
    Variable(
        "DATABASE_APP_PASSWORD_FILE",
        "a file holding DATABASE_APP_PASSWORD (a mounted secret)",
        "unset",
    ),
    Variable(
        "REQUIRE_RLS",
        "`1`: `serve` refuses to start as a role row-level security does not apply to "
        "(superuser, BYPASSRLS, table owner); otherwise it logs a warning",
        "0",
    ),
    Variable(
        "CSV_MAX_BYTES",
        "largest CSV upload, in bytes (`RESOURCE_EXHAUSTED` beyond)",
        "1073741824 (1 GiB)",
    ),
    Variable(
        "PROGRESS_VALUE_MAX_CHARS",
        "longest progress `value` a write or import stores, in characters",
        "4096",
    ),
    Variable(
        "PROGRESS_METADATA_MAX_BYTES",
        "largest progress `metadata`, in bytes encoded as the `google.protobuf.Value` reads "
        "answer with (a number takes 9, a string its UTF-8 length + 2)",
        "32768 (32 KiB)",
    ),
    Variable(
        "PROGRESS_METADATA_MAX_DEPTH",
        "deepest nesting of objects and arrays in progress `metadata` (at most 32)",
        "16",
    ),
    Variable(
        "ACADEMIC_YEARS_GET_MAX_REFERENCES",
        "classes, and timetables, GetAcademicYear returns: the first ones by name",
        "1000",
    ),
)


def environment_markdown() -> str:
    """README's configuration table."""
    rows = ["| variable | meaning | default |", "|---|---|---|"]
    rows += [f"| `{v.name}` | {v.meaning} | {v.default} |" for v in ENVIRONMENT]
    return "\n".join(rows) + "\n"


def environment_help(width: int = 100) -> str:
    """The same table as plain text, for `--help`."""
    indent = " " * 26
    lines = ["environment (a command-line flag overrides its variable):"]
    for v in ENVIRONMENT:
        text = f"{v.meaning} (default: {v.default})".replace("`", "")
        wrapped = textwrap.wrap(text, width - len(indent)) or [""]
        lines.append(f"  {v.name:<23} {wrapped[0]}")
        lines += [indent + line for line in wrapped[1:]]
    return "\n".join(lines)
