"""Schema changes on a table in use: short locks that give up rather than queue traffic behind
them, index builds that never block writes, and steps that a re-run skips once they are done.

Every helper takes the migration's connection in autocommit mode (`online()`), so each statement
is its own transaction and holds its lock only while it runs. A step that fails half way
(a lock it could not get in time, an index build that was interrupted) leaves the schema as it
was or marked for retry, and running the migration again finishes it.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from typing import Any

# How long an ACCESS EXCLUSIVE step waits for its lock before it gives up: while it waits,
# every later reader and writer of the table queues behind it.
LOCK_TIMEOUT = "5s"
LOCK_ATTEMPTS = 5
_LOCK_NOT_AVAILABLE = "55P03"


class MigrationRefused(RuntimeError):
    """The data does not allow the change; the message says what to do."""


@contextlib.contextmanager
def online() -> Iterator[Any]:
    """The migration's connection in autocommit mode (what has run before is committed)."""
    from alembic import op

    with op.get_context().autocommit_block():
        yield op.get_bind()


def scalar(bind: Any, sql: str, **params: Any) -> Any:
    from sqlalchemy import text

    return bind.execute(text(sql), params).scalar()


def _rows(bind: Any, sql: str, **params: Any) -> list[Any]:
    from sqlalchemy import text

    return list(bind.execute(text(sql), params).all())


def _sqlstate(exc: BaseException) -> str | None:
    orig = getattr(exc, "orig", exc)
    return getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)


def brief(bind: Any, sql: str) -> None:
    """One statement that takes a strong lock for an instant: it waits at most LOCK_TIMEOUT
    for the lock and is tried again a few times, so a long transaction on the table makes
    the migration fail (to be run again) instead of stalling the service's traffic."""
    for attempt in range(1, LOCK_ATTEMPTS + 1):
        bind.exec_driver_sql(f"SET lock_timeout = '{LOCK_TIMEOUT}'")
        try:
            bind.exec_driver_sql(sql)
            return
        except Exception as exc:
            if _sqlstate(exc) != _LOCK_NOT_AVAILABLE or attempt == LOCK_ATTEMPTS:
                raise
            time.sleep(attempt)
        finally:
            bind.exec_driver_sql("RESET lock_timeout")


def index_state(bind: Any, name: str) -> str | None:
    """'valid', 'invalid' (a concurrent build that did not finish) or None."""
    valid = scalar(
        bind,
        "SELECT i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
        "WHERE c.relname = :name AND c.relnamespace = current_schema()::regnamespace",
        name=name,
    )
    return None if valid is None else ("valid" if valid else "invalid")


def create_index(
    bind: Any,
    name: str,
    table: str,
    columns: str,
    *,
    unique: bool = False,
    using: str = "btree",
    where: str | None = None,
) -> None:
    """CREATE INDEX CONCURRENTLY: two passes over the table under SHARE UPDATE EXCLUSIVE, which
    reads and writes do not wait for. A build left invalid by an earlier failure is dropped
    and started again."""
    state = index_state(bind, name)
    if state == "valid":
        return
    if state == "invalid":
        bind.exec_driver_sql(f'DROP INDEX CONCURRENTLY IF EXISTS "{name}"')
    predicate = f" WHERE {where}" if where else ""
    bind.exec_driver_sql(
        f'CREATE {"UNIQUE " if unique else ""}INDEX CONCURRENTLY "{name}" '
        f'ON "{table}" USING {using} ({columns}){predicate}'
    )


def index_columns(bind: Any, name: str) -> list[str]:
    """The columns of index `name`, in key order ([] when there is no such index)."""
    rows = _rows(
        bind,
        "SELECT a.attname FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
        "CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, n) "
        "JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum "
        "WHERE c.relname = :name AND c.relnamespace = current_schema()::regnamespace "
        "ORDER BY k.n",
        name=name,
    )
    return [r[0] for r in rows]


def rebuild_index(
    bind: Any,
    name: str,
    table: str,
    columns: list[str],
    *,
    unique: bool = False,
    where: str | None = None,
) -> None:
    """Index `name` on `columns` (in that order) in place of one on other columns, without a
    moment with neither: built concurrently under a new name, the old one dropped
    concurrently, the new one renamed (SHARE UPDATE EXCLUSIVE, an instant)."""
    if index_columns(bind, name) == columns:
        return
    built = f"{name}_new"
    listed = ", ".join(f'"{c}"' for c in columns)
    create_index(bind, built, table, listed, unique=unique, where=where)
    drop_index(bind, name)
    brief(bind, f'ALTER INDEX "{built}" RENAME TO "{name}"')


def drop_index(bind: Any, name: str) -> None:
    """DROP INDEX CONCURRENTLY: waits for the transactions using the index, blocks nobody."""
    bind.exec_driver_sql(f'DROP INDEX CONCURRENTLY IF EXISTS "{name}"')


def is_not_null(bind: Any, table: str, column: str) -> bool:
    return bool(
        scalar(
            bind,
            "SELECT attnotnull FROM pg_attribute WHERE attrelid = CAST(:table AS regclass) "
            "AND attname = :column",
            table=f'"{table}"',
            column=column,
        )
    )


def set_not_null(bind: Any, table: str, column: str) -> None:
    """NOT NULL without a scan under ACCESS EXCLUSIVE: a CHECK added NOT VALID (an instant's
    lock, no scan; new rows are checked from then on), validated under SHARE UPDATE EXCLUSIVE
    (one scan that reads and writes do not wait for), after which SET NOT NULL trusts the
    check and takes its lock for an instant only; the check is then dropped."""
    if is_not_null(bind, table, column):
        return
    check = f"{table}_{column}_not_null"
    exists = scalar(
        bind,
        "SELECT 1 FROM pg_constraint WHERE conrelid = CAST(:table AS regclass) AND conname = :c",
        table=f'"{table}"',
        c=check,
    )
    if not exists:
        brief(
            bind,
            f'ALTER TABLE "{table}" ADD CONSTRAINT "{check}" '
            f'CHECK ("{column}" IS NOT NULL) NOT VALID',
        )
    bind.exec_driver_sql(f'ALTER TABLE "{table}" VALIDATE CONSTRAINT "{check}"')
    brief(bind, f'ALTER TABLE "{table}" ALTER COLUMN "{column}" SET NOT NULL')
    brief(bind, f'ALTER TABLE "{table}" DROP CONSTRAINT "{check}"')


def primary_key(bind: Any, table: str) -> tuple[str, list[str]] | None:
    """The name and columns (in key order) of `table`'s primary key."""
    rows = _rows(
        bind,
        "SELECT c.conname, a.attname FROM pg_constraint c "
        "CROSS JOIN LATERAL unnest(c.conkey) WITH ORDINALITY AS k(attnum, n) "
        "JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = k.attnum "
        "WHERE c.conrelid = CAST(:table AS regclass) AND c.contype = 'p' ORDER BY k.n",
        table=f'"{table}"',
    )
    if not rows:
        return None
    return rows[0][0], [r[1] for r in rows]


def replace_primary_key(bind: Any, table: str, columns: list[str], index: str) -> None:
    """Makes `columns` the primary key, using the unique index `index` built beforehand
    (`create_index(..., unique=True)`): one ALTER TABLE that holds ACCESS EXCLUSIVE for an
    instant, since the index exists and the columns are NOT NULL already. The constraint
    keeps the table's usual `<table>_pkey` name."""
    current = primary_key(bind, table)
    if current is not None and current[1] == columns:
        return
    drop = f'DROP CONSTRAINT "{current[0]}", ' if current else ""
    brief(
        bind,
        f'ALTER TABLE "{table}" {drop}'
        f'ADD CONSTRAINT "{table}_pkey" PRIMARY KEY USING INDEX "{index}"',
    )


def unique_constraints_on(bind: Any, table: str, columns: list[str]) -> list[str]:
    """Names of UNIQUE constraints of `table` on exactly `columns`."""
    rows = _rows(
        bind,
        "SELECT c.conname, array_agg(a.attname::text ORDER BY k.n) FROM pg_constraint c "
        "CROSS JOIN LATERAL unnest(c.conkey) WITH ORDINALITY AS k(attnum, n) "
        "JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = k.attnum "
        "WHERE c.conrelid = CAST(:table AS regclass) AND c.contype = 'u' GROUP BY c.conname",
        table=f'"{table}"',
    )
    return [name for name, cols in rows if list(cols) == columns]


def drop_constraint(bind: Any, table: str, name: str) -> None:
    brief(bind, f'ALTER TABLE "{table}" DROP CONSTRAINT IF EXISTS "{name}"')


def refuse_nulls(bind: Any, table: str, column: str, advice: str) -> None:
    """Stops the migration, before it changes anything, when `column` holds NULLs."""
    # Identifiers here and below are the migrations' own constants, never input.
    nulls = scalar(bind, f'SELECT count(*) FROM "{table}" WHERE "{column}" IS NULL')  # noqa: S608
    if nulls:
        raise MigrationRefused(
            f'{nulls} row(s) of {table} have no "{column}"; {advice} '
            "Nothing was changed; run the migration again afterwards."
        )


def refuse_duplicates(bind: Any, table: str, columns: list[str], why: str) -> None:
    """Stops a downgrade that would need a key the rows written since no longer satisfy."""
    listed = ", ".join(f'"{c}"' for c in columns)
    where = " AND ".join(f'"{c}" IS NOT NULL' for c in columns)
    sql = (
        f'SELECT count(*) FROM (SELECT 1 FROM "{table}" WHERE {where} '  # noqa: S608
        f"GROUP BY {listed} HAVING count(*) > 1) AS d"
    )
    duplicates = scalar(bind, sql)
    if duplicates:
        raise MigrationRefused(
            f"{duplicates} value(s) of ({listed}) in {table} are held by more than one row; "
            f"{why} Nothing was changed."
        )
