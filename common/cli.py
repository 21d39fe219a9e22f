"""`python -m <service> [serve|migrate]`: the entry point both services share."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from dataclasses import replace
from urllib.parse import urlsplit, urlunsplit

from common.config import (
    EMBEDDED_APP_ROLE,
    ConfigError,
    app_role,
    embedded_data_dir,
    environment_help,
    load_settings,
)
from common.db import Database, embedded
from common.db.roles import grant_app_role
from common.logs import setup_logging
from common.migrations import pending_revision, upgrade
from common.server import ServiceDefinition, run_loop, serve, wait_for_database
from common.tracing import check as check_tracing

log = logging.getLogger("cli")


def _parser(definition: ServiceDefinition) -> argparse.ArgumentParser:
    module = f"{definition.name}_service"
    parser = argparse.ArgumentParser(
        prog=f"python -m {module}",
        description=f"The {definition.name} gRPC service ({', '.join(definition.service_names)}).",
        epilog=f"""commands:
  serve    serve on GRPC_ADDR (default {definition.default_addr}) until SIGTERM or Ctrl-C,
           then drain. On a server named by DATABASE_URL it refuses a database that is
           not migrated; with DATABASE_URL unset it starts (or reuses) the embedded
           PostgreSQL under var/postgres and migrates it first.
  migrate  apply this service's Alembic migrations to DATABASE_URL (or the embedded
           PostgreSQL) and exit.

{environment_help()}""",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "command",
        nargs="?",
        default="serve",
        choices=["serve", "migrate"],
        help="serve (the default) or migrate",
    )
    parser.add_argument("--addr", help="listen address (overrides GRPC_ADDR)")
    parser.add_argument(
        "--database-url", help="PostgreSQL URL (overrides DATABASE_URL; unset = embedded)"
    )
    return parser


def main(definition: ServiceDefinition, argv: list[str] | None = None) -> int:
    args = _parser(definition).parse_args(argv)
    env = dict(os.environ)
    if args.addr:
        env["GRPC_ADDR"] = args.addr
    if args.database_url:
        env["DATABASE_URL"] = args.database_url
    named = env.get("DATABASE_URL") or None
    if args.command == "migrate":
        log_format = env.get("LOG_FORMAT") or ("console" if sys.stderr.isatty() else "json")
        setup_logging(log_format, service=definition.name)
        try:
            serve_url = migrate(definition, env)
        except Exception as exc:
            print(f"{definition.name}: cannot migrate: {_reason(exc)}", file=sys.stderr)
            return 3
        print(f"{definition.name}: database is at the newest revision")
        if serve_url != named:
            print(f"{definition.name}: serve as the app role: {_without_password(serve_url)}")
        return 0
    try:
        settings = load_settings(definition.name, definition.default_addr, env)
        definition.check_limits(settings)
        check_tracing(env)
    except ConfigError as exc:
        print(f"{definition.name}: configuration error: {exc}", file=sys.stderr)
        return 2
    setup_logging(settings.log_format, service=definition.name)
    if named is None:
        # The embedded default is started here, migrated and served as its app role; a
        # named server is migrated by an explicit step.
        url = migrate(definition, env)
        settings = replace(settings, database_url=url)
        env["DATABASE_URL"] = url  # for the workers, when there are several
    else:
        try:
            head = asyncio.run(_pending_revision(definition, named))
        except Exception as exc:
            print(
                f"{definition.name}: cannot read the schema version: {_reason(exc)}",
                file=sys.stderr,
            )
            return 3
        if head is not None:
            print(
                f"{definition.name}: the database is not migrated to {head}; run "
                f"`python -m {definition.name}_service migrate` first",
                file=sys.stderr,
            )
            return 3
    if settings.workers > 1:
        from common.workers import run_workers

        return run_workers(definition, env, settings.workers)
    try:
        run_loop(serve(definition, settings), settings)
    except Exception as exc:
        log.error("failed to serve: %s", exc)
        return 1
    return 0


async def _pending_revision(definition: ServiceDefinition, url: str) -> str | None:
    """Waits while the database is unreachable (a service may start before it), then reads
    its schema version; anything else (no such database, bad password) fails at once."""
    db = Database(url, pool_size=1)
    try:
        await wait_for_database(db)
        return await pending_revision(db, definition.migrations_dir, definition.version_table)
    finally:
        await db.dispose()


def migrate(definition: ServiceDefinition, env: dict[str, str]) -> str:
    """Brings the database (DATABASE_URL, else the embedded one) to the newest revision as
    its owner, then creates or checks the app role and grants it this service's tables;
    returns the URL to serve with (the app role's, on the embedded default)."""
    named = env.get("DATABASE_URL") or None
    role = app_role(env)
    if named is None:
        data_dir = embedded_data_dir(env)
        owner_url = embedded.ensure(data_dir=data_dir)
        role = role or EMBEDDED_APP_ROLE
    else:
        owner_url = named
    upgrade(owner_url, definition.migrations_dir, definition.version_table)
    if role is None:
        return owner_url
    grants, functions = definition.grants(), definition.functions()
    asyncio.run(grant_app_role(owner_url, role.name, role.password, grants, functions))
    if named is None:
        return embedded.url_for(embedded.DATABASE, data_dir=data_dir, user=role.name)
    return owner_url


def _without_password(url: str) -> str:
    parts = urlsplit(url)
    host = parts.netloc.rsplit("@", 1)[-1]
    user = (parts.username or "") + "@" if parts.username else ""
    return urlunsplit(parts._replace(netloc=user + host))


def _reason(exc: BaseException) -> str:
    """One line for an operator: what the database said, not a traceback."""
    cause = exc.__cause__ or exc
    return f"{type(cause).__name__}: {cause}".splitlines()[0]
