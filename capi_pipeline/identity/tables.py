"""Small helpers for moving arrays between numpy/arrow and DuckDB."""

from __future__ import annotations

import duckdb
import pyarrow as pa


def temp_table(conn: duckdb.DuckDBPyConnection, name: str, table: pa.Table) -> None:
    """A temp table holding an arrow table's rows."""
    conn.register(f"{name}_arrow", table)
    try:
        conn.execute(f"CREATE OR REPLACE TEMP TABLE {name} AS SELECT * FROM {name}_arrow")
    finally:
        conn.unregister(f"{name}_arrow")


def replace_rows(conn: duckdb.DuckDBPyConnection, table: str, rows_sql: str) -> None:
    """Replace some rows of `table` by new versions of them.

    `rows_sql` selects the new rows, whole, with `_row`: the row id of the row each replaces.
    Deleted and appended rather than updated: DuckDB's checkpoint rewrites every row group's
    column that an UPDATE touched, so a few thousand rows updated across a table of millions
    cost a rewrite of whole columns, while a deletion is a mark and the new versions a few
    appended row groups.
    """
    conn.execute(f"CREATE OR REPLACE TEMP TABLE replaced_rows AS {rows_sql}")
    conn.execute(f"DELETE FROM {table} WHERE rowid IN (SELECT _row FROM replaced_rows)")
    conn.execute(f"INSERT INTO {table} BY NAME SELECT * EXCLUDE (_row) FROM replaced_rows")
