"""The DuckDB file's tables, and the one way a daily partition's rows are replaced.

Every table the pipeline writes is declared in `schema.sql` beside this module, so an analyst
reads one file to learn the whole warehouse. Assets call `ensure_schema` before they write; the
statements are idempotent, which lets any asset run first on an empty file.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import date
from pathlib import Path

import duckdb
import polars as pl

SCHEMA_SQL = Path(__file__).with_name("schema.sql")


def ensure_schema(conn: duckdb.DuckDBPyConnection) -> None:
    """Create every schema, table and view the pipeline uses, when missing."""
    conn.execute("SET TimeZone = 'UTC'")
    for statement in _statements(SCHEMA_SQL.read_text()):
        conn.execute(statement)


def _statements(sql: str) -> Iterable[str]:
    # Comments go first: they may hold semicolons of their own.
    code = "\n".join(line for line in sql.splitlines() if not line.strip().startswith("--"))
    for statement in code.split(";"):
        if statement.strip():
            yield statement


def replace_partition(
    conn: duckdb.DuckDBPyConnection,
    table: str,
    partition_date: date,
    frame: pl.DataFrame,
) -> int:
    """Delete a partition's rows and insert the new ones in one transaction.

    Columns are matched by name, so a frame may omit columns that have defaults.
    Returns the number of rows inserted.
    """
    conn.execute("BEGIN TRANSACTION")
    try:
        conn.execute(f"DELETE FROM {table} WHERE partition_date = ?", [partition_date])
        inserted = insert_frame(conn, table, frame)
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return inserted


def insert_frame(conn: duckdb.DuckDBPyConnection, table: str, frame: pl.DataFrame) -> int:
    """Append a polars frame to a table, matching columns by name."""
    if frame.height == 0:
        return 0
    arrow_table = frame.to_arrow()  # noqa: F841 - referenced by name in the SQL below
    columns = ", ".join(f'"{name}"' for name in frame.columns)
    conn.execute(f"INSERT INTO {table} ({columns}) SELECT {columns} FROM arrow_table")
    return frame.height
