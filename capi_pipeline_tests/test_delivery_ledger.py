"""The ledger through the real assets: resend, replay, destinations, test mode, dry run, crash."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from datetime import UTC, datetime, timedelta

import pytest
from dagster import AssetSelection

from capi_pipeline.delivery.jobs import replay_dead_letters_job
from capi_pipeline.pinterest.emulator import EmulatorProcess
from capi_pipeline_tests.conftest import AD_ACCOUNT, TOKEN, Pipeline
from capi_pipeline_tests.test_cases import pixel

DAY = datetime.now(UTC).date() - timedelta(days=1)
EARLY = datetime(DAY.year, DAY.month, DAY.day, 0, 30, tzinfo=UTC)
UP_TO_ENRICH = AssetSelection.groups("ingest", "staging", "identity", "enrich")
DELIVERY = AssetSelection.groups("delivery", "monitoring")


def land(pipeline: Pipeline, count: int, stores=("shop-a.example.com",)) -> list[str]:
    """`count` page views with email-less identifiers (IP and UA), spread over the stores."""
    ids = []
    lines = []
    for number in range(count):
        store = stores[number % len(stores)]
        event_id = f"view-{number:05d}"
        ids.append(event_id)
        lines.append(pixel("page_viewed", event_id, f"client-{number}",
                           EARLY + timedelta(seconds=number), f"https://{store}/p/{number}"))
    (pipeline.landing / "events.ndjson").write_text(
        "\n".join(json.dumps(line) for line in lines) + "\n")
    return ids


def ledger_name(pipeline: Pipeline) -> str:
    """The single destination's ledger name: the emulator's host, then the account."""
    return f"127.0.0.1:{AD_ACCOUNT}"


def outcomes(pipeline: Pipeline) -> list[tuple]:
    return pipeline.query(
        "SELECT destination, outcome, count(*) FROM delivery.event_status GROUP BY ALL ORDER BY 1")


def test_resend_sends_everything_again_on_purpose(pipeline, emulator):
    ids = land(pipeline, 5)
    assert pipeline.run(str(DAY)).success
    assert pipeline.run(str(DAY), selection=DELIVERY).success
    assert emulator.stats()["processed_by_event_id"] == {event_id: 1 for event_id in ids}
    assert pipeline.run(str(DAY), selection=DELIVERY, resend=True).success
    assert emulator.stats()["processed_by_event_id"] == {event_id: 2 for event_id in ids}
    assert pipeline.scalar("SELECT count(*) FROM delivery.event_outcomes") == 10


def test_replay_sends_dead_letters_again_after_a_fix(tmp_path):
    # Both emulators stand for one Pinterest, so the ledger gets one name for them.
    named = {"destination_name": "pinterest:store"}
    with EmulatorProcess(token=TOKEN, max_age_days=0.9) as strict:
        pipeline = Pipeline(tmp_path, strict.base_url)
        ids = land(pipeline, 4)
        assert pipeline.run(str(DAY), **named).success
        assert outcomes(pipeline) == [("pinterest:store", "dead_letter", 4)]
        message = pipeline.scalar("SELECT any_value(error_message) FROM delivery.event_status")
        assert message
    with EmulatorProcess(token=TOKEN) as fixed:
        pipeline.base_url = fixed.base_url
        result = replay_dead_letters_job.execute_in_process(
            resources=pipeline.resources(**named),
            run_config={"ops": {"replay_dead_letters": {"config": {
                "partition_date": str(DAY)}}}},
        )
        assert result.success
        assert fixed.stats()["processed_by_event_id"] == {event_id: 1 for event_id in ids}
    assert outcomes(pipeline) == [("pinterest:store", "delivered", 4)]
    # The ledger keeps the history: the dead letters stay, the delivery follows them.
    assert pipeline.scalar("SELECT count(*) FROM delivery.event_outcomes") == 8


def test_destinations_file_routes_each_store_to_its_account(tmp_path, monkeypatch):
    config = tmp_path / "destinations.toml"
    config.write_text(textwrap.dedent("""
        [[destination]]
        name = "store-a"
        ad_account_id = "111"
        token_env = "CAPI_TEST_TOKEN_A"
        stores = ["shop-a.example.com"]

        [[destination]]
        name = "others"
        ad_account_id = "222"
        token_env = "CAPI_TEST_TOKEN_B"
        stores = ["*"]
    """))
    monkeypatch.setenv("CAPI_TEST_TOKEN_A", TOKEN)
    monkeypatch.setenv("CAPI_TEST_TOKEN_B", TOKEN)
    with EmulatorProcess(token=TOKEN, ad_account_ids=("111", "222")) as emulator:
        pipeline = Pipeline(tmp_path / "pipeline", emulator.base_url)
        land(pipeline, 6, stores=("shop-a.example.com", "shop-b.example.com",
                                  "shop-c.example.com"))
        assert pipeline.run(str(DAY), destinations_file=str(config)).success
        assert emulator.stats()["requests_total"] == 2
    assert outcomes(pipeline) == [("others", "delivered", 4), ("store-a", "delivered", 2)]
    rows = pipeline.query(
        "SELECT destination, sent, processed FROM monitoring.match_rate "
        "WHERE event_name = 'all' ORDER BY 1")
    assert rows == [("others", 4, 4), ("store-a", 2, 2)]


def test_missing_destination_token_fails_naming_the_variable(pipeline, tmp_path, monkeypatch):
    config = tmp_path / "destinations.toml"
    config.write_text('[[destination]]\nname = "a"\nad_account_id = "1"\n'
                      'token_env = "CAPI_TEST_UNSET_TOKEN"\nstores = ["*"]\n')
    monkeypatch.delenv("CAPI_TEST_UNSET_TOKEN", raising=False)
    land(pipeline, 2)
    result = pipeline.run(str(DAY), destinations_file=str(config))
    assert not result.success
    failure = next(event for event in result.all_events if event.is_step_failure)
    assert "CAPI_TEST_UNSET_TOKEN" in str(failure.step_failure_data.error)
    assert pipeline.scalar("SELECT count(*) FROM delivery.event_outcomes") == 0


def test_test_mode_has_its_own_ledger_and_pinterest_records_nothing(pipeline, emulator):
    land(pipeline, 3)
    assert pipeline.run(str(DAY), test_mode=True).success
    stats = emulator.stats()
    assert stats["test_events_processed"] == 3 and stats["bodies_recorded"] == 0
    assert outcomes(pipeline) == [(f"{ledger_name(pipeline)}:test", "delivered", 3)]
    # A live run afterwards still sends everything: test sends never count as delivered.
    assert pipeline.run(str(DAY), selection=DELIVERY).success
    assert len(emulator.stats()["processed_by_event_id"]) == 3


def test_dry_run_writes_bodies_and_sends_nothing(pipeline, emulator, tmp_path):
    land(pipeline, 3)
    folder = tmp_path / "dry"
    assert pipeline.run(str(DAY), dry_run_dir=str(folder)).success
    (body_file,) = folder.rglob("batch-*.json")
    assert [event["event_id"] for event in json.loads(body_file.read_text())["data"]] == [
        "view-00000", "view-00001", "view-00002"]
    assert emulator.stats()["requests_total"] == 0


CRASH_RUN = """
import sys
from dagster import AssetSelection
from capi_pipeline_tests.conftest import Pipeline
pipeline = Pipeline(__import__("pathlib").Path(sys.argv[1]), sys.argv[2])
pipeline.run(sys.argv[3], selection=AssetSelection.groups("delivery"), batch_size=10,
             max_concurrency=2)
"""


def test_sigkill_mid_send_then_rerun_delivers_everything_once(tmp_path):
    with EmulatorProcess(token=TOKEN, latency_ms=150) as slow:
        pipeline = Pipeline(tmp_path, slow.base_url)
        ids = land(pipeline, 400)
        assert pipeline.run(str(DAY), selection=UP_TO_ENRICH).success
        child = subprocess.Popen(
            [sys.executable, "-c", CRASH_RUN, str(tmp_path), slow.base_url, str(DAY)],
            env={**os.environ, "PYTHONPATH": os.getcwd()}, start_new_session=True)
        deadline = time.monotonic() + 120
        while len(slow.stats()["processed_by_event_id"]) < 100:
            assert child.poll() is None, "the sender finished before it could be killed"
            assert time.monotonic() < deadline
            time.sleep(0.05)
        os.killpg(child.pid, signal.SIGKILL)
        child.wait()
        before = slow.stats()["processed_by_event_id"]
        assert 100 <= len(before) < 400

        assert pipeline.run(str(DAY), selection=DELIVERY).success
        counts = slow.stats()["processed_by_event_id"]
    assert set(counts) == set(ids)
    twice = [event_id for event_id, count in counts.items() if count > 1]
    # Only batches in flight at the kill (two requests of ten) can have been sent twice.
    assert len(twice) <= 20 and all(counts[event_id] == 2 for event_id in twice)
    assert outcomes(pipeline) == [(ledger_name(pipeline), "delivered", 400)]


@pytest.fixture
def pipeline(tmp_path, emulator) -> Pipeline:
    emulator.reset()
    return Pipeline(tmp_path / "pipeline", emulator.base_url)


FAULTS = {
    "random_429": {"rate_429": 0.3, "seed": 3},
    "random_503": {"error_rate": 0.3, "seed": 4},
    "dropped_before_processing": {"drop_rate": 0.3, "seed": 5},
    "dropped_after_processing": {"drop_after_rate": 0.3, "seed": 6},
    "rate_limit_per_second": {"rate_limit_per_second": 3},
    "per_event_failures": {"event_fail_rate": 0.2, "seed": 7},
}


@pytest.mark.parametrize("fault", sorted(FAULTS))
def test_each_fault_ends_with_every_event_accounted_for_once(tmp_path, fault):
    with EmulatorProcess(token=TOKEN, **FAULTS[fault]) as faulty:
        pipeline = Pipeline(tmp_path, faulty.base_url)
        ids = land(pipeline, 60)
        assert pipeline.run(str(DAY), batch_size=10, max_concurrency=3,
                            calls_per_minute=100_000).success
        stats = faulty.stats()
    counts = stats["processed_by_event_id"]
    status = dict(pipeline.query(
        "SELECT event_id, outcome FROM delivery.event_status WHERE outcome <> 'skipped'"))
    assert set(status) == set(ids)

    if fault == "per_event_failures":
        failed = {event_id for event_id, outcome in status.items() if outcome == "dead_letter"}
        assert failed and failed.isdisjoint(counts)
        assert {event_id for event_id, outcome in status.items() if outcome == "delivered"} == (
            set(ids) - failed)
        messages = {row[0] for row in pipeline.query(
            "SELECT error_message FROM delivery.event_status WHERE outcome = 'dead_letter'")}
        assert messages == {"Event rejected by emulator fault injection"}
        return

    assert set(status.values()) == {"delivered"} and set(counts) == set(ids)
    statuses = [row[0] for row in pipeline.query("SELECT status_code FROM delivery.requests")]
    if fault == "dropped_after_processing":
        # A response lost in flight is sent again under the same event ids: only those
        # batches' events can be counted twice, which Pinterest de-duplicates.
        resent = sum(1 for count in counts.values() if count == 2)
        assert stats["dropped_after_processing"] >= 1 and statuses.count(None) >= 1
        assert resent == 10 * stats["dropped_after_processing"]
        assert max(counts.values()) == 2
    else:
        assert max(counts.values()) == 1
        expected = {"random_429": 429, "random_503": 503, "rate_limit_per_second": 429,
                    "dropped_before_processing": None}[fault]
        assert expected in statuses and statuses.count(200) == 6


def test_wrong_token_fails_the_run_naming_the_setting_and_marks_nothing(tmp_path, emulator):
    pipeline = Pipeline(tmp_path, emulator.base_url)
    land(pipeline, 3)
    result = pipeline.run(str(DAY), access_token="not-the-token")
    assert not result.success
    failure = next(event for event in result.all_events if event.is_step_failure)
    message = str(failure.step_failure_data.error)
    assert "HTTP 401" in message and "PINTEREST_ACCESS_TOKEN" in message
    assert "not-the-token" not in message
    assert pipeline.scalar(
        "SELECT count(*) FROM delivery.event_outcomes WHERE outcome <> 'skipped'") == 0
    assert pipeline.query("SELECT status_code, events FROM delivery.requests") == [(401, 3)]


def test_skips_are_recorded_unless_the_latest_outcome_is_the_same_skip(tmp_path):
    """record_skipped windows only the day's candidates' history; the rows must be the ones
    the delivery.event_status view gives: a skip is written unless the event's latest outcome
    for this destination is already that skip, with that reason."""
    from capi_pipeline.delivery.destinations import Destination
    from capi_pipeline.delivery.ledger import DeliveryPlan, deliver, record_skipped
    from capi_pipeline.resources import WarehouseResource

    warehouse = WarehouseResource(database=str(tmp_path / "warehouse.duckdb"))
    ours = "pinterest:ours"
    events = {"new": "bot", "same": "bot", "superseded": "bot", "other_reason": "no_consent",
              "elsewhere": "bot", "eligible": None}
    history = [  # (destination, event, outcome, reason, minutes after midnight)
        (ours, "same", "skipped", "bot", 1),
        (ours, "superseded", "skipped", "bot", 1), (ours, "superseded", "pending", None, 2),
        (ours, "other_reason", "skipped", "bot", 1),
        ("pinterest:theirs", "elsewhere", "skipped", "bot", 1),
    ]
    with warehouse.get_connection() as conn:
        for event_id, reason in events.items():
            conn.execute(
                "INSERT INTO capi.pinterest_events (partition_date, event_id, event_name, "
                "action_source, event_time, source_event_type, store, eligible, skip_reason, "
                "has_em, has_ph, has_external_id, has_click_id, has_ip_ua, has_hashed_maids, "
                "click_id_from_profile, payload) VALUES (?, ?, 'page_visit', 'web', 0, "
                "'page_view', 'shop', ?, ?, false, false, false, false, true, false, false, "
                "'{}')", [DAY, event_id, reason is None, reason])
        for destination, event_id, outcome, reason, minute in history:
            conn.execute("INSERT INTO delivery.event_outcomes VALUES (?, ?, ?, ?, 0, NULL, ?, "
                         "NULL, ?)", [destination, DAY, event_id, outcome, reason,
                                      EARLY + timedelta(minutes=minute)])
    destination = Destination(name=ours, base_url="http://127.0.0.1:1", ad_account_id="1",
                              token_env="UNUSED", stores=("*",))
    plan = DeliveryPlan(destination=destination, stores=["shop"], day=DAY)

    assert record_skipped(warehouse, plan) == 4
    with warehouse.get_connection() as conn:
        recorded = conn.execute(
            "SELECT event_id, error_message FROM delivery.event_outcomes WHERE destination = ? "
            "AND recorded_at > ? ORDER BY 1", [ours, EARLY + timedelta(hours=1)]).fetchall()
        latest = conn.execute(
            "SELECT event_id, outcome, error_message FROM delivery.event_status "
            "WHERE destination = ? ORDER BY 1", [ours]).fetchall()
    assert recorded == [("elsewhere", "bot"), ("new", "bot"), ("other_reason", "no_consent"),
                        ("superseded", "bot")]
    assert latest == [(event_id, "skipped", reason) for event_id, reason in sorted(events.items())
                      if reason is not None]
    assert record_skipped(warehouse, plan) == 0

    # A run with nothing to send records the day's skips itself when asked to.
    with warehouse.get_connection() as conn:
        conn.execute("INSERT INTO delivery.event_outcomes VALUES (?, ?, 'eligible', 'delivered', "
                     "1, NULL, NULL, NULL, ?)", [ours, DAY, EARLY])
        conn.execute("INSERT INTO delivery.event_outcomes VALUES (?, ?, 'new', 'pending', 1, "
                     "NULL, NULL, NULL, now())", [ours, DAY])
    totals = deliver(warehouse, plan, lambda line: None, record_skips=True)
    assert (totals.to_send, totals.skipped_recorded) == (0, 1)
    assert deliver(warehouse, plan, lambda line: None).skipped_recorded is None


def test_spool_pages_are_page_size_rows_across_duckdbs_batches():
    """DuckDB streams batches of whatever size; the spool cuts them into pages of exactly
    page_size rows (so the requests are cut the same way whatever DuckDB's batches were),
    every event once and in order, each page with its partition day: one date for a page of
    one day, each event's day otherwise."""
    import pyarrow as pa

    from capi_pipeline.delivery.ledger import _page, cut_pages

    ids = [f"e{n:02d}" for n in range(20)]
    days = [DAY] * 12 + [DAY - timedelta(days=1)] * 8
    table = pa.table({"event_id": ids, "payload": [f'{{"n":{n}}}'.encode() for n in range(20)],
                      "partition_date": days})
    batches = table.to_batches(max_chunksize=9)  # batches of 9, 9 and 2 rows
    pages = [_page(page) for page in cut_pages(batches, 7)]
    assert [len(page) for page, _ in pages] == [7, 7, 6]
    assert [event_id for page, _ in pages for event_id, _ in page] == ids
    assert [payload for page, _ in pages for _, payload in page][13] == b'{"n":13}'
    assert pages[0][1] == DAY
    assert pages[1][1] == {event_id: day for event_id, day in zip(ids[7:14], days[7:14],
                                                                   strict=True)}
    assert pages[2][1] == DAY - timedelta(days=1)
    assert [len(page) for page in cut_pages(batches, 20)] == [20]
    assert list(cut_pages([], 7)) == []


def test_the_first_pages_are_sent_while_the_spool_writes_the_rest(tmp_path, monkeypatch):
    """The spool's thread writes page after page while the sender takes them: here the
    second page is written only once the sender holds the first, which a spool that wrote
    every page before sending the first could never do. The pages are the query's rows in
    order, and their files are gone once read."""
    import threading

    from capi_pipeline.delivery import ledger
    from capi_pipeline.delivery.destinations import Destination
    from capi_pipeline.delivery.ledger import DeliveryPlan, Spool
    from capi_pipeline.resources import WarehouseResource

    warehouse = WarehouseResource(database=str(tmp_path / "warehouse.duckdb"))
    with warehouse.get_connection() as conn:
        conn.execute(
            "INSERT INTO capi.pinterest_events (partition_date, event_id, event_name, "
            "action_source, event_time, source_event_type, store, eligible, has_em, has_ph, "
            "has_external_id, has_click_id, has_ip_ua, has_hashed_maids, "
            "click_id_from_profile, payload) SELECT ?, 'e' || lpad(i::VARCHAR, 3, '0'), "
            "'page_visit', 'web', i, 'page_view', 'shop', true, true, false, false, false, "
            "false, false, false, '{\"n\":' || i || '}' FROM range(25) t(i)", [DAY])
    destination = Destination(name="pinterest:1", base_url="http://127.0.0.1:1",
                              ad_account_id="1", token_env="UNUSED", stores=("*",))
    plan = DeliveryPlan(destination=destination, stores=["shop"], day=DAY, page_size=10)

    first_page_taken = threading.Event()
    written = []
    cut = ledger.cut_pages

    def pages_after_the_first_is_taken(batches, page_size):
        for number, page in enumerate(cut(batches, page_size)):
            if number == 1:
                assert first_page_taken.wait(timeout=30), "the sender waited for every page"
            written.append(page.num_rows)
            yield page

    monkeypatch.setattr(ledger, "cut_pages", pages_after_the_first_is_taken)
    with Spool(warehouse, plan) as spool:
        assert spool.has_events()
        received = []
        for page, days in spool.pages():
            first_page_taken.set()
            received.append([event_id for event_id, _ in page])
            assert days == DAY
        assert spool.count() == 25
    assert written == [10, 10, 5]
    assert [event_id for page in received for event_id in page] == [
        f"e{n:03d}" for n in range(25)]
    assert list(ledger.journal_folder(warehouse).glob("due-*")) == []


def test_skips_found_while_sending_are_those_found_at_the_end(tmp_path, emulator):
    """The spool works out the day's skips while the run sends; the rows written must be
    those the statement finds after the run's outcomes are in, ineligible events sharing
    their id with one sent in this run included: their latest outcome is then this run's, so
    each is skipped again once, whether or not the same skip was noted before."""
    import time as clock

    from capi_pipeline.delivery import ledger
    from capi_pipeline.delivery.destinations import Destination
    from capi_pipeline.delivery.ledger import DeliveryPlan, deliver
    from capi_pipeline.resources import WarehouseResource

    emulator.reset()
    now = int(clock.time()) - 3600
    events = [("sent-1", True, None), ("sent-2", True, None), ("bot-new", False, "bot"),
              ("bot-noted", False, "bot"), ("sent-1", False, "bot"), ("sent-2", False, "bot")]
    noted = [("bot-noted", "bot"), ("sent-1", "bot")]

    def run(folder, early: bool) -> list[tuple]:
        warehouse = WarehouseResource(database=str(folder / "warehouse.duckdb"))
        with warehouse.get_connection() as conn:
            for event_id, eligible, reason in events:
                payload = json.dumps({
                    "event_name": "page_visit", "action_source": "web", "event_time": now,
                    "event_id": event_id, "user_data": {"client_ip_address": "203.0.113.5",
                                                        "client_user_agent": "Mozilla/5.0"}})
                conn.execute(
                    "INSERT INTO capi.pinterest_events (partition_date, event_id, event_name, "
                    "action_source, event_time, source_event_type, store, eligible, "
                    "skip_reason, has_em, has_ph, has_external_id, has_click_id, has_ip_ua, "
                    "has_hashed_maids, click_id_from_profile, payload) VALUES (?, ?, "
                    "'page_visit', 'web', ?, 'page_view', 'shop', ?, ?, false, false, false, "
                    "false, true, false, false, ?)", [DAY, event_id, now, eligible, reason,
                                                      payload])
            for event_id, reason in noted:
                conn.execute("INSERT INTO delivery.event_outcomes VALUES (?, ?, ?, 'skipped', "
                             "0, NULL, ?, NULL, ?)", [ledger_name(None), DAY, event_id, reason,
                                                      EARLY])
        destination = Destination(name=ledger_name(None), base_url=emulator.base_url,
                                  ad_account_id=AD_ACCOUNT, token_env="UNUSED", stores=("*",),
                                  access_token=TOKEN)
        plan = DeliveryPlan(destination=destination, stores=["shop"], day=DAY, page_size=1)
        totals = deliver(warehouse, plan, lambda line: None, record_skips=early)
        if not early:
            totals.skipped_recorded = ledger.record_skipped(warehouse, plan)
        with warehouse.get_connection() as conn:
            rows = conn.execute(
                "SELECT event_id, outcome, error_message FROM delivery.event_outcomes "
                "WHERE recorded_at > ? ORDER BY ALL", [EARLY]).fetchall()
        assert totals.skipped_recorded == sum(1 for row in rows if row[1] == "skipped")
        return rows

    (tmp_path / "early").mkdir()
    (tmp_path / "at_the_end").mkdir()
    found_early = run(tmp_path / "early", early=True)
    assert found_early == run(tmp_path / "at_the_end", early=False)
    assert found_early == [("bot-new", "skipped", "bot"), ("sent-1", "delivered", None),
                           ("sent-1", "skipped", "bot"), ("sent-2", "delivered", None),
                           ("sent-2", "skipped", "bot")]
