"""Alembic, driven from code: one migrations folder and one version table per service."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from alembic import command, context
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import MetaData
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

from common.db.engine import sqlalchemy_url


def alembic_config(database_url: str, migrations_dir: Path, version_table: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(migrations_dir))
    config.attributes["database_url"] = sqlalchemy_url(database_url) if database_url else ""
    config.attributes["version_table"] = version_table
    return config


def upgrade(database_url: str, migrations_dir: Path, version_table: str) -> None:
    """Bring the database to the newest revision (blocking; call outside an event loop)."""
    command.upgrade(alembic_config(database_url, migrations_dir, version_table), "head")


async def pending_revision(
    database_url: str, migrations_dir: Path, version_table: str
) -> str | None:
    """The head revision when the database is behind it, else None."""
    head = ScriptDirectory.from_config(
        alembic_config(database_url, migrations_dir, version_table)
    ).get_current_head()

    def current(connection: Connection) -> str | None:
        ctx = MigrationContext.configure(connection, opts={"version_table": version_table})
        return ctx.get_current_revision()

    engine = create_async_engine(sqlalchemy_url(database_url), poolclass=NullPool)
    try:
        async with engine.connect() as conn:
            revision = await conn.run_sync(current)
    finally:
        await engine.dispose()
    return None if revision == head else head


def run_env(target_metadata: MetaData | None = None) -> None:
    """The body of each service's `env.py`: run migrations online over the async driver."""
    config = context.config
    url: str = config.attributes["database_url"]
    version_table: str = config.attributes["version_table"]

    def run(connection: Connection) -> None:
        context.configure(
            connection=connection,
            target_metadata=target_metadata,
            version_table=version_table,
        )
        with context.begin_transaction():
            context.run_migrations()

    async def main() -> None:
        engine = create_async_engine(url, poolclass=NullPool)
        try:
            async with engine.connect() as conn:
                await conn.run_sync(run)
                await conn.commit()
        finally:
            await engine.dispose()

    asyncio.run(main())


def table_exists(name: str) -> bool:
    """For idempotent first revisions that adopt tables an existing database already has."""
    from alembic import op
    from sqlalchemy import inspect

    bind: Any = op.get_bind()
    return bool(inspect(bind).has_table(name))
