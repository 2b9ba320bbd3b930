"""A backfill through the Dagster daemon, with the multiprocess executor.

The runs are launched the way a deployment launches them: `dagster job backfill` queues one run
per day, `dagster-daemon` starts up to four at once, each run forks its steps, and the DuckDB
writers of all runs share the `capi_duckdb` pool of one (deploy/dagster.yaml). The job is the
daily stages from ingest to delivery (backfill_location.py): the same assets, executor and pool
as `daily_pipeline_job`, without the steps whose start-up would not fit CI's time.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from dagster import DagsterInstance, DagsterRunStatus, RunsFilter

from capi_pipeline.demo.generate import generate
from capi_pipeline_tests.conftest import AD_ACCOUNT, TOKEN

# Each step process costs Dagster seconds to start, so CI backfills three days; the 14 days of
# the issue run with CAPI_BACKFILL_DAYS=14 (about ten minutes on 2 cores).
DAYS = int(os.environ.get("CAPI_BACKFILL_DAYS") or 3)
LOCATION = "capi_pipeline_tests.backfill_location"
ROOT = Path(__file__).resolve().parents[1]
TERMINAL = {DagsterRunStatus.SUCCESS, DagsterRunStatus.FAILURE, DagsterRunStatus.CANCELED}


@pytest.fixture(scope="module")
def backfill(tmp_path_factory, emulator):
    emulator.reset()
    folder = tmp_path_factory.mktemp("backfill")
    home = folder / "dagster_home"
    home.mkdir()
    shutil.copyfile(ROOT / "deploy" / "dagster.yaml", home / "dagster.yaml")
    last = datetime.now(UTC).date() - timedelta(days=1)
    days = [str(last - timedelta(days=n)) for n in range(DAYS - 1, -1, -1)]
    generate(folder / "landing", last, days=DAYS, visitors_per_day=12, seed=5)
    env = {
        **os.environ,
        "DAGSTER_HOME": str(home),
        "CAPI_DUCKDB_PATH": str(folder / "warehouse.duckdb"),
        "CAPI_LANDING_DIR": str(folder / "landing"),
        "PINTEREST_API_BASE_URL": emulator.base_url,
        "PINTEREST_AD_ACCOUNT_ID": AD_ACCOUNT,
        "PINTEREST_ACCESS_TOKEN": TOKEN,
    }
    bin_dir = Path(sys.executable).parent
    # The instance's storage is created once before the daemon and the CLI both open it.
    subprocess.run([str(bin_dir / "dagster"), "instance", "migrate"], env=env, cwd=ROOT,
                   check=True, capture_output=True, timeout=120)
    daemon = subprocess.Popen(
        [str(bin_dir / "dagster-daemon"), "run", "-m", LOCATION],
        env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        launched = subprocess.run(
            [str(bin_dir / "dagster"), "job", "backfill", "-m", LOCATION, "-j", "backfill_probe",
             "--partitions", ",".join(days), "--noprompt"],
            env=env, cwd=ROOT, capture_output=True, text=True, timeout=180,
        )
        assert launched.returncode == 0, launched.stdout[-2000:] + launched.stderr[-3000:]
        os.environ["DAGSTER_HOME"], saved = str(home), os.environ.get("DAGSTER_HOME")
        try:
            instance = DagsterInstance.get()
            deadline = time.monotonic() + 120 * DAYS
            while time.monotonic() < deadline:
                runs = instance.get_runs(RunsFilter(job_name="backfill_probe"))
                if len(runs) >= DAYS and all(run.status in TERMINAL for run in runs):
                    break
                time.sleep(2)
            runs = instance.get_runs(RunsFilter(job_name="backfill_probe"))
            logs = {run.run_id: [entry.message for entry in instance.all_logs(run.run_id)]
                    for run in runs}
        finally:
            if saved is None:
                del os.environ["DAGSTER_HOME"]
            else:
                os.environ["DAGSTER_HOME"] = saved
    finally:
        # The daemon's code server, run workers and their step processes go with it.
        os.killpg(daemon.pid, signal.SIGTERM)
        try:
            daemon.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(daemon.pid, signal.SIGKILL)
    from capi_pipeline_tests.conftest import Pipeline

    pipeline = Pipeline(folder, emulator.base_url)
    return {"runs": runs, "logs": logs, "days": days, "pipeline": pipeline,
            "emulator": emulator}


def test_every_day_of_the_backfill_succeeds(backfill):
    runs = backfill["runs"]
    statuses = sorted((run.tags.get("dagster/partition"), run.status.value) for run in runs)
    assert statuses == [(day, "SUCCESS") for day in backfill["days"]]


def test_no_run_met_a_locked_file(backfill):
    locked = [message for messages in backfill["logs"].values() for message in messages
              if "could not set lock" in message.lower() or "is held by" in message]
    assert locked == []


def test_steps_ran_in_their_own_processes(backfill):
    # The multiprocess executor says which process runs each step; the in-process one does not.
    messages = [m for run in backfill["logs"].values() for m in run]
    assert any("Launching subprocess for" in m for m in messages)
    assert any("Executing steps using multiprocess executor" in m for m in messages)


def test_each_day_landed_once_and_was_sent_once(backfill):
    pipeline = backfill["pipeline"]
    per_day = dict(pipeline.query(
        "SELECT CAST(partition_date AS VARCHAR), count(*) FROM raw.events GROUP BY ALL"))
    assert sorted(per_day) == backfill["days"] and min(per_day.values()) > 10
    sent = pipeline.query(
        "SELECT count(*), count(DISTINCT event_id) FROM delivery.event_status "
        "WHERE outcome = 'delivered'")[0]
    assert sent[0] == sent[1] > 50
    counts = backfill["emulator"].event_counts()
    assert counts and max(counts.values()) == 1
    assert len(counts) == sent[0]
