"""The database kit: one asyncpg pool, one executor, one unit of work (PostgreSQL only)."""

from common.db.engine import Database, asyncpg_dsn, sqlalchemy_url
from common.db.errors import is_unavailable
from common.db.executor import Executor, Record, compile_statement
from common.db.types import JSON_TYPE, UUID_TYPE, UtcDateTime, new_id, utcnow
from common.db.uow import UnitOfWork

__all__ = [
    "JSON_TYPE",
    "UUID_TYPE",
    "Database",
    "Executor",
    "Record",
    "UnitOfWork",
    "UtcDateTime",
    "asyncpg_dsn",
    "compile_statement",
    "is_unavailable",
    "new_id",
    "sqlalchemy_url",
    "utcnow",
]
