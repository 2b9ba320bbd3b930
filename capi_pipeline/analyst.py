"""A private copy of the warehouse file for analysts, so their sessions never block a run.

DuckDB lets one process write a file, and a session holding it open, even read-only, keeps the
pipeline's writers out. This command holds the warehouse file for the seconds a copy takes,
then the analyst works on the copy for as long as they like:

    uv run python -m capi_pipeline.analyst copy ~/capi_copy.duckdb
    duckdb -readonly ~/capi_copy.duckdb

The copy holds what the warehouse file holds (hashes, the delivery ledger, aggregates, the
dbt marts), never the personal-data file.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import duckdb
from tenacity import retry, retry_if_exception, stop_after_delay, wait_exponential

LOCK_WAIT_SECONDS = 120


def _is_lock(error: BaseException) -> bool:
    return isinstance(error, duckdb.IOException) and "lock" in str(error).lower()


def copy_warehouse(source: Path, target: Path, wait_seconds: float = LOCK_WAIT_SECONDS) -> dict:
    """Copy the warehouse file to `target` (replaced atomically); returns tables and rows."""
    if not source.exists():
        raise FileNotFoundError(f"no warehouse file at {source}: set CAPI_DUCKDB_PATH")
    if target.resolve() == source.resolve():
        raise ValueError("the copy must not be the warehouse file itself")
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.partial")
    partial.unlink(missing_ok=True)

    @retry(retry=retry_if_exception(_is_lock), stop=stop_after_delay(wait_seconds),
           wait=wait_exponential(multiplier=0.1, max=5), reraise=True)
    def copy() -> dict:
        with duckdb.connect() as conn:
            conn.execute(f"ATTACH '{_quote(source)}' AS source (READ_ONLY)")
            conn.execute(f"ATTACH '{_quote(partial)}' AS target")
            conn.execute("COPY FROM DATABASE source TO target")
            tables = conn.execute(
                "SELECT schema_name, table_name, estimated_size FROM duckdb_tables() "
                "WHERE database_name = 'target' ORDER BY ALL").fetchall()
        return {f"{schema}.{table}": rows for schema, table, rows in tables}

    tables = copy()
    # Renaming leaves a session on the previous copy undisturbed: it keeps its open file.
    os.replace(partial, target)
    return tables


def _quote(path: Path) -> str:
    return str(path).replace("'", "''")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m capi_pipeline.analyst", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    copy = commands.add_parser("copy", help="copy the warehouse file for an analyst session")
    copy.add_argument("target", type=Path, help="where to write the copy")
    copy.add_argument("--warehouse", type=Path,
                      default=Path(os.environ.get("CAPI_DUCKDB_PATH")
                                   or "data/capi_pipeline.duckdb"),
                      help="the warehouse file (default: $CAPI_DUCKDB_PATH)")
    args = parser.parse_args(argv)
    started = time.monotonic()
    try:
        tables = copy_warehouse(args.warehouse, args.target)
    except (FileNotFoundError, ValueError, duckdb.Error) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"copied {len(tables)} tables to {args.target} in "
          f"{time.monotonic() - started:.1f} s; open it with: duckdb -readonly {args.target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
