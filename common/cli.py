"""`python -m <service> [serve|migrate]`: the entry point both services share."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys

from common.config import ConfigError, default_sqlite_url, load_settings
from common.logs import setup_logging
from common.migrations import pending_revision, upgrade
from common.server import ServiceDefinition, run_loop, serve

log = logging.getLogger("cli")


def _parser(definition: ServiceDefinition) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=f"python -m {definition.name}_service")
    parser.add_argument("command", nargs="?", default="serve", choices=["serve", "migrate"])
    parser.add_argument("--addr", help="listen address (overrides GRPC_ADDR)")
    parser.add_argument("--database-url", help="SQLAlchemy URL (overrides DATABASE_URL)")
    return parser


def main(definition: ServiceDefinition, argv: list[str] | None = None) -> int:
    args = _parser(definition).parse_args(argv)
    env = dict(os.environ)
    if args.addr:
        env["GRPC_ADDR"] = args.addr
    if args.database_url:
        env["DATABASE_URL"] = args.database_url
    url = env.get("DATABASE_URL") or default_sqlite_url(definition.name)
    if args.command == "migrate":
        log_format = env.get("LOG_FORMAT") or ("console" if sys.stderr.isatty() else "json")
        setup_logging(log_format, service=definition.name)
        upgrade(url, definition.migrations_dir, definition.version_table)
        print(f"{definition.name}: database is at the newest revision")
        return 0
    try:
        settings = load_settings(definition.name, definition.default_addr, env)
    except ConfigError as exc:
        print(f"{definition.name}: configuration error: {exc}", file=sys.stderr)
        return 2
    setup_logging(settings.log_format, service=definition.name)
    if settings.is_sqlite:
        # The embedded default migrates itself; PostgreSQL is migrated by an explicit step.
        upgrade(settings.database_url, definition.migrations_dir, definition.version_table)
    else:
        try:
            head = asyncio.run(
                pending_revision(
                    settings.database_url, definition.migrations_dir, definition.version_table
                )
            )
        except Exception as exc:
            log.error("cannot read the schema version: %s", exc)
            head = None
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
