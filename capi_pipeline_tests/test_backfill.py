"""A fourteen-day backfill launched the way the UI launches one, run by the Dagster daemon.

The test starts `dagster-webserver` and `dagster-daemon` on the real code location and sends
the webserver the GraphQL mutation the UI's "Materialize" dialog sends for a range of
partitions. The daily assets have the single-run backfill policy, so the daemon launches one
run for the fourteen days of ingest and staging, one for identity, and one for the fourteen
days of enrich, delivery and monitoring, each on Dagster's multiprocess executor. While the
backfill runs, the CLI starts a one-day run of the same assets beside it, as an operator
would: the two share the DuckDB files through the `capi_duckdb` pool of one
(deploy/dagster.yaml). Every run must succeed, no step may meet a locked file, and each
event must reach Pinterest once.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from dagster import DagsterInstance, DagsterRunStatus

from capi_pipeline.demo.generate import generate
from capi_pipeline_tests.conftest import Pipeline, cli_environment

DAYS = int(os.environ.get("CAPI_BACKFILL_DAYS") or 14)
LOCATION = "capi_pipeline.definitions"
ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
TERMINAL = {DagsterRunStatus.SUCCESS, DagsterRunStatus.FAILURE, DagsterRunStatus.CANCELED}
# The daily chain from landing to the match rate; the dbt marts are views and the EQS read
# needs a token, so the backfill leaves them out.
ASSETS = [
    ["raw", "events"], ["raw", "rejected_lines"], ["staging", "events"],
    ["identity", "visitor_profiles"], ["capi", "pinterest_events"],
    ["delivery", "event_outcomes"], ["delivery", "requests"], ["monitoring", "match_rate"],
]
LAUNCH = """
mutation($params: LaunchBackfillParams!) {
  launchPartitionBackfill(backfillParams: $params) {
    __typename
    ... on LaunchBackfillSuccess { backfillId }
    ... on PythonError { message }
    ... on PartitionKeysNotFoundError { message }
  }
}
"""


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _start(command: list[str], env: dict, log: Path) -> subprocess.Popen:
    with log.open("wb") as out:
        return subprocess.Popen(command, env=env, cwd=ROOT, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)


def _stop(process: subprocess.Popen) -> None:
    # The daemon's code server, run workers and their step processes go with it.
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)
    except ProcessLookupError:
        return
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)


def _wait_for_webserver(url: str, process: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        assert process.poll() is None, log.read_text()[-3000:]
        try:
            if httpx.get(f"{url}/server_info", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(1)
    raise AssertionError("dagster-webserver did not answer in 180 s:\n" + log.read_text()[-3000:])


@pytest.fixture(scope="module")
def backfill(tmp_path_factory, emulator):
    emulator.reset()
    folder = tmp_path_factory.mktemp("backfill")
    home = folder / "dagster_home"
    home.mkdir()
    shutil.copyfile(ROOT / "deploy" / "dagster.yaml", home / "dagster.yaml")
    last = datetime.now(UTC).date() - timedelta(days=1)
    days = [str(last - timedelta(days=n)) for n in range(DAYS - 1, -1, -1)]
    generate(folder / "landing", last, days=DAYS, visitors_per_day=8, seed=5)
    env = cli_environment(folder, home, emulator.base_url)
    # The instance's storage is created once before the daemon, the webserver and the CLI
    # all open it.
    subprocess.run([str(BIN / "dagster"), "instance", "migrate"], env=env, cwd=ROOT,
                   check=True, capture_output=True, timeout=180)
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    daemon = _start([str(BIN / "dagster-daemon"), "run", "-m", LOCATION], env,
                    folder / "daemon.log")
    webserver = _start([str(BIN / "dagster-webserver"), "-m", LOCATION, "-h", "127.0.0.1",
                        "-p", str(port)], env, folder / "webserver.log")
    started = time.monotonic()
    try:
        _wait_for_webserver(url, webserver, folder / "webserver.log")
        answer = httpx.post(f"{url}/graphql", timeout=60, json={
            "query": LAUNCH,
            "variables": {"params": {
                "assetSelection": [{"path": key} for key in ASSETS],
                "partitionNames": days,
                "title": "test backfill",
            }},
        }).json()
        launched = answer["data"]["launchPartitionBackfill"]
        assert launched["__typename"] == "LaunchBackfillSuccess", launched
        # An operator's one-day run of the same stages, started beside the backfill.
        beside = subprocess.run(
            [str(BIN / "dagster"), "asset", "materialize", "-m", LOCATION,
             "--select", "key:raw/* or key:staging/*", "--partition", days[-1]],
            env=env, cwd=ROOT, capture_output=True, text=True, timeout=900,
        )
        os.environ["DAGSTER_HOME"], saved = str(home), os.environ.get("DAGSTER_HOME")
        try:
            instance = DagsterInstance.get()
            deadline = time.monotonic() + 900
            while time.monotonic() < deadline:
                status = instance.get_backfill(launched["backfillId"]).status.value
                runs = instance.get_runs()
                if (status not in ("REQUESTED", "CANCELING", "FAILING")
                        and all(run.status in TERMINAL for run in runs)):
                    break
                time.sleep(2)
            seconds = time.monotonic() - started
            runs = instance.get_runs()
            logs = {run.run_id: [entry.message for entry in instance.all_logs(run.run_id)]
                    for run in runs}
        finally:
            if saved is None:
                del os.environ["DAGSTER_HOME"]
            else:
                os.environ["DAGSTER_HOME"] = saved
    finally:
        _stop(webserver)
        _stop(daemon)
    print(f"{DAYS}-day backfill: {len(runs)} runs in {seconds:.0f} s")
    return {"status": status, "runs": runs, "logs": logs, "days": days, "beside": beside,
            "backfill_id": launched["backfillId"], "emulator": emulator,
            "pipeline": Pipeline(folder, emulator.base_url)}


def test_the_backfill_and_the_run_beside_it_succeed(backfill):
    beside = backfill["beside"]
    assert beside.returncode == 0, beside.stdout[-2000:] + beside.stderr[-3000:]
    assert backfill["status"] == "COMPLETED_SUCCESS"
    statuses = {run.run_id: run.status.value for run in backfill["runs"]}
    assert set(statuses.values()) == {"SUCCESS"}, statuses


def test_the_days_run_in_few_runs(backfill):
    # Single-run policy: ingest and staging over the range, identity, then enrich to
    # monitoring over the range, instead of fourteen runs that queue for the files.
    backfill_runs = [run for run in backfill["runs"]
                     if run.tags.get("dagster/backfill") == backfill["backfill_id"]]
    assert 1 <= len(backfill_runs) <= 4
    ranged = [run for run in backfill_runs
              if run.tags.get("dagster/asset_partition_range_start") == backfill["days"][0]]
    assert ranged and all(run.tags["dagster/asset_partition_range_end"] == backfill["days"][-1]
                          for run in ranged)


def test_no_run_met_a_locked_file(backfill):
    locked = [message for messages in backfill["logs"].values() for message in messages
              if "could not set lock" in message.lower() or "is held by" in message]
    assert locked == []


def test_steps_ran_in_their_own_processes(backfill):
    # The multiprocess executor says which process runs each step; the in-process one does not.
    for messages in backfill["logs"].values():
        assert any("Executing steps using multiprocess executor" in m for m in messages)
        assert any("Launching subprocess for" in m for m in messages)


def test_every_day_was_staged_and_each_event_sent_once(backfill):
    pipeline = backfill["pipeline"]
    per_day = dict(pipeline.query(
        "SELECT CAST(partition_date AS VARCHAR), count(*) FROM staging.events GROUP BY ALL"))
    assert sorted(per_day) == backfill["days"] and min(per_day.values()) > 5
    # Pinterest takes events up to seven days old: the older days' events are recorded as
    # skipped (too_old), the rest delivered, and none is refused.
    outcomes = dict(pipeline.query(
        "SELECT e.skip_reason IS NULL, list_distinct(list(s.outcome)) "
        "FROM capi.pinterest_events e JOIN delivery.event_status s USING (event_id) "
        "WHERE e.eligible OR e.skip_reason = 'too_old' GROUP BY ALL"))
    assert outcomes == {True: ["delivered"], False: ["skipped"]}
    delivered = sorted(day for (day,) in pipeline.query(
        "SELECT DISTINCT CAST(partition_date AS VARCHAR) FROM delivery.event_status "
        "WHERE outcome = 'delivered'"))
    # The window ends now, so the oldest day it reaches has fewer of its events inside it as
    # the UTC day goes on: late in the day, the day seven days back has none left.
    assert 6 <= len(delivered) <= 8 and delivered == backfill["days"][-len(delivered):]
    sent = pipeline.query(
        "SELECT count(*), count(DISTINCT event_id) FROM delivery.event_status "
        "WHERE outcome = 'delivered'")[0]
    assert sent[0] == sent[1] > 60
    counts = backfill["emulator"].event_counts()
    assert counts and max(counts.values()) == 1
    assert len(counts) == sent[0]
    rates = pipeline.query(
        "SELECT count(DISTINCT partition_date) FROM monitoring.match_rate")[0][0]
    assert rates == DAYS
