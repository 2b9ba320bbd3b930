"""Personal data lives in its own owner-only file; the warehouse file holds no raw values."""

from __future__ import annotations

import stat
from datetime import UTC, datetime, timedelta

import duckdb
import pytest

from capi_pipeline.demo.generate import generate
from capi_pipeline.lib.duck import EncryptionUnavailable, personal_path
from capi_pipeline.resources import WarehouseResource

# Values shorter than this (state codes, "m", a first name like "Al") also occur inside
# innocent strings; every longer raw value must be absent from the warehouse file.
MIN_LENGTH = 6


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory, emulator):
    from capi_pipeline_tests.conftest import Pipeline

    emulator.reset()
    day = datetime.now(UTC).date() - timedelta(days=1)
    pipeline = Pipeline(tmp_path_factory.mktemp("personal"), emulator.base_url)
    generate(pipeline.landing, day, days=1, visitors_per_day=200, seed=11)
    result = pipeline.run(str(day))
    assert result.success, [e.message for e in result.all_events if e.is_failure]
    return pipeline


def test_personal_file_is_readable_by_its_owner_only(demo_run):
    personal = personal_path(str(demo_run.database))
    mode = stat.S_IMODE((demo_run.database.parent / personal.split("/")[-1]).stat().st_mode)
    assert mode == 0o600, oct(mode)


def test_warehouse_file_alone_has_no_personal_schemas(demo_run):
    with duckdb.connect(str(demo_run.database), read_only=True) as conn:
        schemas = {row[0] for row in conn.execute(
            "SELECT DISTINCT schema_name FROM duckdb_tables()").fetchall()}
        sent = conn.execute("SELECT count(*) FROM capi.pinterest_events").fetchone()[0]
    assert {"capi", "delivery", "monitoring"} <= schemas
    assert not schemas & {"raw", "staging", "identity"}
    assert sent > 100


def test_no_raw_personal_value_anywhere_in_the_warehouse_file(demo_run):
    # Every email, phone, name, city, zip and customer id staging holds (IP addresses and user
    # agents are sent to Pinterest unhashed, so the payloads carry them by design).
    values = {
        value for row in demo_run.query(
            "SELECT email, phone, first_name, last_name, city, zip, customer_id, order_id "
            "FROM staging.events")
        for value in row[:7] if value and len(value) >= MIN_LENGTH
    }
    assert len(values) > 30 and any("@" in value for value in values)
    with duckdb.connect(str(demo_run.database), read_only=True) as conn:
        conn.execute("CREATE TEMP TABLE probe (v VARCHAR)")
        conn.executemany("INSERT INTO probe VALUES (?)", [[value] for value in values])
        columns = conn.execute(
            "SELECT schema_name, table_name, column_name FROM duckdb_columns() "
            "WHERE database_name = current_database() AND schema_name <> 'temp' "
            "AND data_type IN ('VARCHAR', 'JSON', 'VARCHAR[]')").fetchall()
        assert len(columns) > 20
        found = {}
        for schema, table, column in columns:
            hits = conn.execute(
                f'SELECT any_value(p.v) FROM {schema}."{table}" t, probe p '
                f'WHERE contains(CAST(t."{column}" AS VARCHAR), p.v)').fetchone()[0]
            if hits:
                found[f"{schema}.{table}.{column}"] = hits
    assert not found, f"raw personal values in the warehouse file: {sorted(found)}"


def test_a_file_from_before_the_split_has_its_personal_tables_moved(tmp_path):
    database = tmp_path / "old_layout.duckdb"
    with duckdb.connect(str(database)) as conn:
        conn.execute("CREATE SCHEMA raw")
        conn.execute("CREATE TABLE raw.rejected_lines AS SELECT DATE '2024-03-01' AS "
                     "partition_date, 'f.ndjson' AS source_file, 7 AS line_no, "
                     "'bad_json' AS reason, NULL AS detail, 10 AS byte_length, "
                     "'{\"em' AS first_bytes")
    resource = WarehouseResource(database=str(database))
    with resource.get_connection() as conn:
        moved = conn.execute("SELECT line_no FROM raw.rejected_lines").fetchall()
        where = conn.execute(
            "SELECT database_name FROM duckdb_tables() WHERE table_name = 'rejected_lines'"
        ).fetchall()
    assert moved == [(7,)]
    assert where == [("personal",)]
    with duckdb.connect(str(database), read_only=True) as conn:
        assert conn.execute(
            "SELECT count(*) FROM duckdb_schemas() WHERE schema_name = 'raw'").fetchone()[0] == 0


def test_an_encryption_key_without_httpfs_fails_clearly_and_never_shows_the_key(tmp_path):
    key = "k3y-that-must-not-leak-91"
    resource = WarehouseResource(database=str(tmp_path / "w.duckdb"), encryption_key=key)
    try:
        with resource.get_connection() as conn:
            # Where httpfs is installed the file is encrypted and works like any other.
            conn.execute("CREATE TABLE raw.probe AS SELECT 1 AS x")
            assert conn.execute("SELECT x FROM raw.probe").fetchone() == (1,)
    except EncryptionUnavailable as error:
        assert "httpfs" in str(error)
        assert key not in str(error) and error.__cause__ is None


def test_an_analyst_copy_has_the_warehouse_and_keeps_runs_unblocked(demo_run, tmp_path):
    from capi_pipeline.analyst import copy_warehouse

    target = tmp_path / "mine.duckdb"
    tables = copy_warehouse(demo_run.database, target)
    assert "monitoring.match_rate" in tables and not any(
        name.split(".")[0] in {"raw", "staging", "identity"} for name in tables)
    expected = demo_run.scalar("SELECT count(*) FROM capi.pinterest_events")
    with duckdb.connect(str(target), read_only=True) as session:
        assert session.execute("SELECT count(*) FROM capi.pinterest_events").fetchone()[0] \
            == expected
        # While the analyst's session is open the pipeline can still write its own file.
        with WarehouseResource(database=str(demo_run.database),
                               lock_wait_seconds=0).get_connection() as conn:
            conn.execute("CREATE TABLE IF NOT EXISTS monitoring.probe AS SELECT 1 AS x")


def test_a_session_on_the_warehouse_file_fails_a_writer_with_a_clear_message(tmp_path):
    import subprocess
    import sys

    from capi_pipeline.resources import WarehouseBusy

    database = tmp_path / "busy.duckdb"
    with WarehouseResource(database=str(database)).get_connection():
        pass
    holder = subprocess.Popen(
        [sys.executable, "-c", "import duckdb, sys, time; c = duckdb.connect(sys.argv[1], "
         "read_only=True); print('open', flush=True); time.sleep(20)", str(database)],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "open"
        with pytest.raises(WarehouseBusy) as caught:
            with WarehouseResource(database=str(database), lock_wait_seconds=1).get_connection():
                pass
    finally:
        holder.kill()
        holder.wait()
    message = caught.value.description
    assert message.startswith("DuckDB file busy.duckdb is held by")
    assert f"PID {holder.pid}" in message and "README" in message
    assert str(tmp_path) not in message
