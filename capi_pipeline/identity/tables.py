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
