"""The pipeline on a Postgres-backed Dagster instance, as a deployment past one machine runs it.

A throwaway PostgreSQL server (Debian's postgresql package; `.ci/run` installs it) is started
on loopback, `$DAGSTER_HOME/dagster.yaml` is deploy/dagster.yaml with its storage pointed at
that server (docs/scaling.md), and the real CLI materializes two days of ingest and staging in
one run over their range, on the multiprocess executor. The run history, the
event log and the `capi_duckdb` pool must then live in Postgres, not in SQLite files.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from capi_pipeline.demo.generate import generate
from capi_pipeline_tests.conftest import cli_environment

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
LOCATION = "capi_pipeline.definitions"


def _postgres_bin() -> Path | None:
    for folder in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True):
        if (folder / "initdb").exists() and (folder / "pg_ctl").exists():
            return folder
    found = shutil.which("initdb")
    return Path(found).parent if found else None


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def postgres():
    """A PostgreSQL server on a free loopback port, stopped at the end of the module."""
    binaries = _postgres_bin()
    if binaries is None:
        pytest.skip("PostgreSQL's initdb and pg_ctl are not installed (Debian's postgresql "
                    "package; .ci/run installs it)")
    # Outside pytest's private temporary folder: PostgreSQL refuses to run as root, so as
    # root (CI) the server runs as the package's postgres user, who must reach its folder.
    folder = Path(tempfile.mkdtemp(prefix="capi-postgres-"))
    as_owner: list[str] = []
    if os.geteuid() == 0:
        shutil.chown(folder, "postgres")
        as_owner = ["runuser", "-u", "postgres", "--"]
    data, port = folder / "data", _free_port()
    subprocess.run([*as_owner, str(binaries / "initdb"), "-D", str(data), "-A", "trust",
                    "-U", "capi"], check=True, capture_output=True, timeout=120)
    subprocess.run([*as_owner, str(binaries / "pg_ctl"), "-D", str(data), "-w", "-t", "60",
                    "-l", str(folder / "server.log"),
                    "-o", f"-p {port} -k {folder} -c listen_addresses=127.0.0.1", "start"],
                   check=True, capture_output=True, timeout=120)
    try:
        yield {"host": "127.0.0.1", "port": port, "user": "capi", "db": "postgres"}
    finally:
        subprocess.run([*as_owner, str(binaries / "pg_ctl"), "-D", str(data), "-m", "fast",
                        "-w", "stop"], capture_output=True, timeout=120)
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="module")
def runs(postgres, tmp_path_factory, emulator):
    folder = tmp_path_factory.mktemp("postgres_instance")
    home = folder / "dagster_home"
    home.mkdir()
    # The driver is named: SQLAlchemy 2.1 would otherwise pick psycopg 3, whose server-side
    # parameters Dagster's NOTIFY statements do not take.
    url = (f"postgresql+psycopg2://{postgres['user']}@{postgres['host']}:{postgres['port']}"
           f"/{postgres['db']}")
    storage = f"\nstorage:\n  postgres:\n    postgres_url: {url}\n"
    (home / "dagster.yaml").write_text(
        (ROOT / "deploy" / "dagster.yaml").read_text() + storage)
    last = datetime.now(UTC).date() - timedelta(days=1)
    first = last - timedelta(days=1)
    generate(folder / "landing", last, days=2, visitors_per_day=8, seed=9)
    env = cli_environment(folder, home, emulator.base_url)
    result = subprocess.run(
        [str(BIN / "dagster"), "asset", "materialize", "-m", LOCATION,
         "--select", "key:raw/* or key:staging/*", "--partition-range", f"{first}...{last}"],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)
    return {"result": result, "home": home, "days": {str(first), str(last)}}


def _sql(postgres, query: str) -> list[tuple]:
    import psycopg2

    with psycopg2.connect(host=postgres["host"], port=postgres["port"], user=postgres["user"],
                          dbname=postgres["db"]) as connection, connection.cursor() as cursor:
        cursor.execute(query)
        return cursor.fetchall()


def test_the_run_succeeds(runs):
    result = runs["result"]
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]


def test_run_history_and_event_log_live_in_postgres(runs, postgres):
    statuses = _sql(postgres, "SELECT status FROM runs ORDER BY create_timestamp")
    assert statuses == [("SUCCESS",)]
    materialized = _sql(postgres, """
        SELECT asset_key, partition FROM event_logs
        WHERE dagster_event_type = 'ASSET_MATERIALIZATION' ORDER BY 1, 2""")
    staged = {partition for key, partition in materialized if "staging" in key}
    assert staged == runs["days"]
    assert {partition for key, partition in materialized if "raw" in key} == runs["days"]
    # Nothing went to the SQLite files a default instance keeps under DAGSTER_HOME.
    assert not list(runs["home"].rglob("*.db"))


def test_the_writer_pool_is_kept_in_postgres(runs, postgres):
    pools = dict(_sql(postgres, "SELECT concurrency_key, count(*) FROM concurrency_slots "
                                "GROUP BY concurrency_key"))
    assert pools.get("capi_duckdb") == 1
