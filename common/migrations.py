"""Alembic, driven from code: one migrations folder and one version table per service."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from alembic import command, context
from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy import MetaData, Select, column, func, select, table
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

from common.db.engine import Database, sqlalchemy_url


def alembic_config(database_url: str, migrations_dir: Path, version_table: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(migrations_dir))
    config.attributes["database_url"] = sqlalchemy_url(database_url) if database_url else ""
    config.attributes["version_table"] = version_table
    return config


def upgrade(database_url: str, migrations_dir: Path, version_table: str) -> None:
    """Bring the database to the newest revision (blocking; call outside an event loop)."""
    command.upgrade(alembic_config(database_url, migrations_dir, version_table), "head")


async def pending_revision(db: Database, migrations_dir: Path, version_table: str) -> str | None:
    """The head revision when the database is behind it, else None (read on the pool)."""
    config = alembic_config("", migrations_dir, version_table)
    head = ScriptDirectory.from_config(config).get_current_head()
    versions: Select[Any] = select(column("version_num")).select_from(table(version_table))
    async with db.unit_of_work(None, lambda *_: None) as uow:
        found = await uow.executor.scalar(select(func.to_regclass(version_table).is_not(None)))
        revision = await uow.executor.scalar(versions) if found else None
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
