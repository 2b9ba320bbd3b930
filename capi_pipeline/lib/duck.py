"""The DuckDB files' tables, how the pipeline connects to them, and how a partition is replaced.

The pipeline keeps two files. The warehouse file (`CAPI_DUCKDB_PATH`) holds what analysts are
given: hashes, the delivery ledger and aggregates (schemas capi, delivery, monitoring, marts).
The personal-data file beside it holds the raw events, staging and the identity graph (schemas
raw, staging, identity); it is created readable by its owner alone and attached to every
pipeline connection as the catalog `personal`. A search path makes `raw.events` and
`identity.visitor_profiles` resolve into it, so SQL names tables the same way in both files.

Every table is declared in `schema.sql` beside this module, so an analyst reads one file to
learn the whole warehouse. The statements are idempotent, which lets any asset run first on an
empty file.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, suppress
from datetime import date
from pathlib import Path

import duckdb
import polars as pl

SCHEMA_SQL = Path(__file__).with_name("schema.sql")
PERSONAL_CATALOG = "personal"
PERSONAL_SCHEMAS = ("raw", "staging", "identity", "privacy")
PERSONAL_ROW_GROUP_ROWS = 16384


class EncryptionUnavailable(RuntimeError):
    """An encryption key is set, but this DuckDB cannot write encrypted files."""


def personal_path(database: str) -> str:
    """Where the personal-data file lives by default: beside the warehouse file."""
    if database == ":memory:":
        return ":memory:"
    path = Path(database)
    return str(path.with_name(f"{path.stem}.personal{path.suffix or '.duckdb'}"))


def attach_personal(
    conn: duckdb.DuckDBPyConnection,
    path: str,
    *,
    read_only: bool = False,
    encryption_key: str | None = None,
) -> None:
    """Attach the personal-data file as `personal` and put its schemas on the search path.

    A new file is created with permissions 0600, so other accounts on the machine cannot read
    it; an existing one is narrowed to 0600 when it is wider.
    """
    # Row groups smaller than DuckDB's default (122,880 rows): DuckDB gives a thread one row
    # group at a time, so a day of events in default groups is read by one or two threads.
    options = ["READ_ONLY"] if read_only else [f"ROW_GROUP_SIZE {PERSONAL_ROW_GROUP_ROWS}"]
    if encryption_key:
        _load_crypto(conn)
        options.append(f"ENCRYPTION_KEY '{_quote(encryption_key)}'")
    clause = f" ({', '.join(options)})" if options else ""
    if path != ":memory:":
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    previous = os.umask(0o077)
    try:
        conn.execute(f"ATTACH IF NOT EXISTS '{_quote(path)}' AS {PERSONAL_CATALOG}{clause}")
    except duckdb.Error as error:
        if not encryption_key:
            raise
        # The statement carried the key: say what failed without quoting DuckDB's message.
        if "crypto" in str(error).lower() or "httpfs" in str(error).lower():
            raise EncryptionUnavailable(
                "CAPI_PERSONAL_ENCRYPTION_KEY is set, but this DuckDB cannot write encrypted "
                "files: it needs the httpfs extension (INSTALL httpfs; LOAD httpfs). Install "
                "it, or unset the key to keep the file unencrypted (it is still readable by "
                "its owner only)."
            ) from None
        raise EncryptionUnavailable(
            f"could not open the personal-data file {Path(path).name} with the configured "
            f"encryption key ({type(error).__name__}): is the key the one it was written with?"
        ) from None
    finally:
        os.umask(previous)
    if path != ":memory:" and not read_only:
        for file in (Path(path), Path(path + ".wal")):
            if file.exists() and file.stat().st_mode & 0o077:
                file.chmod(0o600)
    if not read_only:
        for schema in PERSONAL_SCHEMAS:
            conn.execute(f"CREATE SCHEMA IF NOT EXISTS {PERSONAL_CATALOG}.{schema}")
    present = {row[0] for row in conn.execute(
        "SELECT schema_name FROM duckdb_schemas() WHERE database_name = ?", [PERSONAL_CATALOG]
    ).fetchall()}
    search = ["main", *(f"{PERSONAL_CATALOG}.{s}" for s in PERSONAL_SCHEMAS if s in present)]
    conn.execute(f"SET search_path = '{','.join(search)}'")


def _load_crypto(conn: duckdb.DuckDBPyConnection) -> None:
    try:
        conn.execute("LOAD httpfs")
    except duckdb.Error:
        pass  # ATTACH below says what is missing


def _quote(path: str) -> str:
    return path.replace("'", "''")


def ensure_schema(conn: duckdb.DuckDBPyConnection) -> None:
    """Create every schema, table and view the pipeline uses, when missing.

    With the personal-data file attached, raw, staging and identity are created in it, and a
    warehouse file from before the split has its personal tables moved there. On a bare
    connection (benchmarks, a single scratch file) everything lives in one file.
    """
    conn.execute("SET TimeZone = 'UTC'")
    attached = conn.execute(
        "SELECT count(*) FROM duckdb_databases() WHERE database_name = ?", [PERSONAL_CATALOG]
    ).fetchone()[0]
    catalog = f"{PERSONAL_CATALOG}." if attached else ""
    if attached:
        _move_personal_tables(conn)
    for schema in PERSONAL_SCHEMAS:
        conn.execute(f"CREATE SCHEMA IF NOT EXISTS {catalog}{schema}")
    for statement in _statements(SCHEMA_SQL.read_text()):
        conn.execute(statement)


def _move_personal_tables(conn: duckdb.DuckDBPyConnection) -> None:
    """Move raw, staging and identity tables out of the warehouse file (an earlier layout)."""
    home = conn.execute("SELECT current_database()").fetchone()[0]
    tables = conn.execute(
        "SELECT schema_name, table_name FROM duckdb_tables() "
        "WHERE database_name = ? AND schema_name IN (SELECT unnest(?))",
        [home, list(PERSONAL_SCHEMAS)],
    ).fetchall()
    for schema, table in tables:
        conn.execute(f"CREATE SCHEMA IF NOT EXISTS {PERSONAL_CATALOG}.{schema}")
        conn.execute(
            f'CREATE TABLE IF NOT EXISTS {PERSONAL_CATALOG}.{schema}."{table}" AS '
            f'SELECT * FROM "{home}".{schema}."{table}"'
        )
        conn.execute(f'DROP TABLE "{home}".{schema}."{table}"')
    for schema in PERSONAL_SCHEMAS:
        conn.execute(f'DROP SCHEMA IF EXISTS "{home}".{schema}')


def _statements(sql: str) -> Iterable[str]:
    # Comments go first: they may hold semicolons of their own.
    code = "\n".join(line for line in sql.splitlines() if not line.strip().startswith("--"))
    for statement in code.split(";"):
        if statement.strip():
            yield statement


@contextmanager
def transaction(conn: duckdb.DuckDBPyConnection) -> Iterator[None]:
    """Run the block in one transaction: committed when it ends, rolled back when it raises.

    DuckDB writes one attached file per transaction, so a block writes the warehouse file or
    the personal-data file, not both.
    """
    conn.execute("BEGIN TRANSACTION")
    try:
        yield
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


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
    with transaction(conn):
        conn.execute(f"DELETE FROM {table} WHERE partition_date = ?", [partition_date])
        return insert_frame(conn, table, frame)


def insert_frame(conn: duckdb.DuckDBPyConnection, table: str, frame: pl.DataFrame) -> int:
    """Append a polars frame to a table, matching columns by name."""
    if frame.height == 0:
        return 0
    arrow_table = frame.to_arrow()  # noqa: F841 - referenced by name in the SQL below
    columns = ", ".join(f'"{name}"' for name in frame.columns)
    conn.execute(f"INSERT INTO {table} ({columns}) SELECT {columns} FROM arrow_table")
    return frame.height


def connect_read_only(
    database: str, personal: str | None = None, encryption_key: str | None = None
) -> duckdb.DuckDBPyConnection:
    """A read-only connection to the warehouse file with the personal-data file attached.

    For the pipeline's own tools and tests; analysts are given the warehouse file alone.
    """
    conn = duckdb.connect(database, read_only=True)
    personal = personal or personal_path(database)
    if personal == ":memory:" or Path(personal).exists():
        attach_personal(conn, personal, read_only=True, encryption_key=encryption_key)
    conn.execute("SET TimeZone = 'UTC'")
    return conn


@contextmanager
def temporary_setting(conn: duckdb.DuckDBPyConnection, name: str,
                      value: int | str) -> Iterator[None]:
    """DuckDB's setting `name` at `value` for the statements inside, and as it was after.

    Settings are the database instance's, shared by every connection to it, so the
    statements that need one set it around themselves only (an empty setting is reset).
    """
    (previous,) = conn.execute(f"SELECT current_setting('{name}')").fetchall()[0]
    conn.execute(f"SET {name} = {_setting_literal(value)}")
    try:
        yield
    except BaseException:
        # After a failed statement inside a transaction, DuckDB refuses every statement until
        # the rollback, the SET too: the statement's own error is the one to see.
        with suppress(duckdb.TransactionException):
            _restore(conn, name, previous)
        raise
    _restore(conn, name, previous)


def _restore(conn: duckdb.DuckDBPyConnection, name: str, previous) -> None:
    conn.execute(f"RESET {name}" if previous in (None, "")
                 else f"SET {name} = {_setting_literal(previous)}")


def _setting_literal(value: int | str) -> str:
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise TypeError(f"a DuckDB setting is a number or text, not {type(value).__name__}")
    return str(value) if isinstance(value, int) else "'" + value.replace("'", "''") + "'"

