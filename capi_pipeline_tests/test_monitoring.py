"""monitoring.match_rate and its checks on a day whose figures are known by construction
(capi_pipeline_tests/monitoring_data.py), each check also on data built to break it."""

from datetime import timedelta

import duckdb
import pytest
from dagster import AssetCheckSeverity, AssetKey, MaterializeResult, asset, materialize

from capi_pipeline.monitoring import checks
from capi_pipeline.monitoring.assets import SCORE_WEIGHTS, match_rate
from capi_pipeline.monitoring.settings import MonitoringSettings
from capi_pipeline.partitions import daily_partitions
from capi_pipeline.resources import PinterestResource, WarehouseResource
from capi_pipeline_tests import monitoring_data as data


def written_by_the_test(key: list[str]):
    """A stand-in for the asset a check judges, whose rows the test wrote itself."""

    @asset(key=key, partitions_def=daily_partitions)
    def stand_in() -> MaterializeResult:
        return MaterializeResult()

    return stand_in


CHECKS = [checks.match_score_above_floor, checks.pinterest_processed_what_was_sent,
          checks.no_raw_personal_data_in_capi_and_monitoring]


def run(path, floor: float = 50.0, extra=()):
    resources = {
        "duckdb": WarehouseResource(database=str(path)),
        "pinterest": PinterestResource(ad_account_id=data.AD_ACCOUNT, access_token="unused"),
        "monitoring": MonitoringSettings(match_score_floor=floor),
    }
    result = materialize([match_rate, *CHECKS, *extra], partition_key=data.DAY.isoformat(),
                         resources=resources, raise_on_error=False)
    return result


def evaluations(result) -> dict:
    return {evaluation.check_name: evaluation
            for evaluation in result.get_asset_check_evaluations()}


def rows(path) -> dict[str, dict]:
    with duckdb.connect(str(path), read_only=True) as conn:
        cursor = conn.execute("SELECT * FROM monitoring.match_rate ORDER BY event_name")
        names = [column[0] for column in cursor.description]
        return {row[2]: dict(zip(names, row, strict=True)) for row in cursor.fetchall()}


@pytest.fixture
def day(tmp_path):
    return data.build(tmp_path / "warehouse.duckdb")


def test_figures_per_event_and_day(day):
    result = run(day)
    assert result.success
    figures = rows(day)
    assert set(figures) == {"checkout", "page_visit", "all"}

    checkout = figures["checkout"]
    assert (checkout["events_seen"], checkout["eligible"], checkout["sent"],
            checkout["processed"], checkout["dead_lettered"], checkout["pending"]) == (
        6, 4, 4, 2, 1, 1)
    assert checkout["destination"] == data.DESTINATION
    assert checkout["skipped_bot"] == 1 and checkout["skipped_test"] == 0
    assert checkout["skipped_by_reason"] == {"bot": 1, "consent": 1}
    # Shares of the four sent checkouts: c1, c2, c4 carry an email; only c4 a customer id.
    assert checkout["em_share"] == pytest.approx(0.75)
    assert checkout["ph_share"] == pytest.approx(0.25)
    assert checkout["external_id_share"] == pytest.approx(0.25)
    assert checkout["click_id_share"] == pytest.approx(0.25)
    assert checkout["ip_ua_share"] == pytest.approx(1.0)
    assert checkout["hashed_maids_share"] == pytest.approx(0.0)
    assert checkout["match_rate"] == pytest.approx(1.0)  # c1 and c2, both with an email
    assert checkout["match_score"] == pytest.approx(
        100 * (0.35 * 0.75 + 0.25 * 0.25 + 0.25 * 1.0 + 0.15 * 0.25))

    page = figures["page_visit"]
    assert (page["events_seen"], page["eligible"], page["sent"], page["processed"]) == (
        5, 2, 2, 2)
    assert page["skipped_by_reason"] == {"no_identifier": 2, "too_old": 1}
    assert page["skipped_no_identifier"] == 2 and page["skipped_too_old"] == 1
    assert page["match_rate"] == pytest.approx(0.5)  # p1 has only IP and user agent
    assert page["match_score"] == pytest.approx(55.0)

    total = figures["all"]
    assert (total["events_seen"], total["eligible"], total["sent"], total["processed"],
            total["dead_lettered"], total["pending"]) == (11, 6, 6, 4, 1, 1)
    assert total["skipped_by_reason"] == {"bot": 1, "consent": 1, "no_identifier": 2,
                                          "too_old": 1}
    assert total["em_share"] == pytest.approx(4 / 6)
    assert total["match_rate"] == pytest.approx(0.75)
    assert total["match_score"] == pytest.approx(
        100 * (0.35 * 4 / 6 + 0.25 * 2 / 6 + 0.25 * 1.0 + 0.15 * 1 / 6))


def test_score_weights_sum_to_one():
    assert sum(SCORE_WEIGHTS.values()) == pytest.approx(1.0)


def test_skips_in_long_form_and_metadata(day):
    # Another day's skipped event, with an outcome, counts on its own day only.
    with duckdb.connect(str(day)) as conn:
        other = data.DAY - timedelta(days=2)
        data.insert_event(conn, "old-bot", "checkout", False, "bot", True, False, False, False,
                          True, day=other)
        data.insert_outcome(conn, "old-bot", "skipped", day=other)
    result = run(day)
    with duckdb.connect(str(day), read_only=True) as conn:
        long = conn.execute("SELECT event_name, skip_reason, events FROM "
                            "monitoring.skipped_by_reason ORDER BY ALL").fetchall()
    assert long == [("all", "bot", 1), ("all", "consent", 1), ("all", "no_identifier", 2),
                    ("all", "too_old", 1), ("checkout", "bot", 1), ("checkout", "consent", 1),
                    ("page_visit", "no_identifier", 2), ("page_visit", "too_old", 1)]

    materialization = result.asset_materializations_for_node("monitoring__match_rate")[0]
    metadata = {key: value.value for key, value in materialization.metadata.items()}
    assert (metadata["sent"], metadata["processed"], metadata["skipped_consent"]) == (6, 4, 1)
    assert metadata["processed_share"] == pytest.approx(4 / 6, abs=1e-4)
    assert metadata["match_score"] == pytest.approx(59.1667, abs=1e-3)
    table = metadata["by_event"]
    assert "| pinterest:549755813599 | checkout | 6 | 4 | bot 1, consent 1 | 4 | 2 |" in table


def test_rerun_replaces_the_day(day):
    run(day)
    run(day)
    with duckdb.connect(str(day), read_only=True) as conn:
        assert conn.execute("SELECT count(*) FROM monitoring.match_rate").fetchone()[0] == 3
        assert conn.execute("SELECT count(*) FROM monitoring.skipped_by_reason"
                            ).fetchone()[0] == 8


def test_a_run_for_another_account_keeps_the_days_figures_of_this_one(day):
    """A run whose settings name another ad account replaces only that account's rows: the
    day's figures for the account that did send stay, and the run says it kept them."""
    run(day)
    other = "549755813600"
    resources = {
        "duckdb": WarehouseResource(database=str(day)),
        "pinterest": PinterestResource(ad_account_id=other, access_token="unused"),
        "monitoring": MonitoringSettings(match_score_floor=50.0),
    }
    result = materialize([match_rate], partition_key=data.DAY.isoformat(), resources=resources)
    with duckdb.connect(str(day), read_only=True) as conn:
        kept = conn.execute(
            "SELECT event_name, sent, processed FROM monitoring.match_rate "
            "WHERE destination = ? ORDER BY event_name", [data.DESTINATION]).fetchall()
        others = conn.execute(
            "SELECT sum(sent) FROM monitoring.match_rate WHERE destination = ?",
            [f"pinterest:{other}"]).fetchone()[0]
        reasons = conn.execute("SELECT count(*) FROM monitoring.skipped_by_reason "
                               "WHERE destination = ?", [data.DESTINATION]).fetchone()[0]
    assert kept == [("all", 6, 4), ("checkout", 4, 2), ("page_visit", 2, 2)]
    assert reasons == 8
    assert others == 0
    metadata = result.asset_materializations_for_node("monitoring__match_rate")[0].metadata
    assert metadata["kept_destinations"].value == data.DESTINATION
    # The run's headline is its own destination's: the kept one's events are the same events.
    assert (metadata["events_seen"].value, metadata["sent"].value) == (11, 0)


def test_match_score_floor_warns_below_and_passes_above(day):
    low = evaluations(run(day, floor=60.0))["match_score_above_floor"]
    assert not low.passed and low.severity == AssetCheckSeverity.WARN
    first_line = low.description.splitlines()[0]
    assert "59.2" in first_line and "below the floor of 60" in first_line
    assert "CAPI_MATCH_SCORE_FLOOR" in first_line
    assert evaluations(run(day, floor=59.0))["match_score_above_floor"].passed


def test_processed_share_fails_with_refusals_and_passes_without(day, tmp_path):
    failing = evaluations(run(day))["pinterest_processed_what_was_sent"]
    assert not failing.passed and failing.severity == AssetCheckSeverity.ERROR
    assert failing.description.startswith("Pinterest processed 4 of 6 events sent")
    assert "Event time is too old" in failing.description

    all_delivered = [row[:-1] + ("delivered" if row[2] else "skipped",) for row in data.EVENTS]
    clean = data.build(tmp_path / "clean.duckdb", all_delivered)
    assert evaluations(run(clean))["pinterest_processed_what_was_sent"].passed


def test_no_raw_personal_data_passes_on_hashes_and_fails_on_an_email(day):
    assert evaluations(run(day))["no_raw_personal_data_in_capi_and_monitoring"].passed

    with duckdb.connect(str(day)) as conn:
        data.insert_event(conn, "c9", "checkout", False, "bot", False, False, False, False,
                          True, url="https://shop.example.com/thanks?email=sam@example.com")
    leak = evaluations(run(day))["no_raw_personal_data_in_capi_and_monitoring"]
    assert not leak.passed and leak.severity == AssetCheckSeverity.ERROR
    assert leak.description.startswith(
        "Email addresses or phone numbers in clear in capi.pinterest_events (1 rows)")
    assert "sam@example.com" not in leak.description


def test_no_raw_personal_data_finds_a_phone_in_monitoring(day):
    with duckdb.connect(str(day)) as conn:
        ensure = conn.execute  # a table match_rate does not rewrite, so the row stays
        ensure("INSERT INTO monitoring.pinterest_eqs VALUES (?, ?, '1d', 'WEB', "
               "'CONVERSIONS_API', 'FAIR', 'hashed_email', 'checkout', 50, NULL, ?, now())",
               [data.DAY, data.DESTINATION, '[{"reason": "call +14155550123"}]'])
        assert ("monitoring.pinterest_eqs", ["destination", "lookback_period",
                                             "source_platform", "ingestion_source",
                                             "overall_status", "component", "event_name",
                                             "issues"], True) in checks.text_columns(conn)
    leak = evaluations(run(day))["no_raw_personal_data_in_capi_and_monitoring"]
    assert not leak.passed and "monitoring.pinterest_eqs (1 rows)" in leak.description
    assert "+14155550123" not in leak.description


def test_every_eligible_event_has_an_outcome(day):
    def outcome_check():
        resources = {"duckdb": WarehouseResource(database=str(day)),
                     "pinterest": PinterestResource(ad_account_id=data.AD_ACCOUNT,
                                                    access_token="unused")}
        result = materialize([written_by_the_test(checks.EVENT_OUTCOMES),
                              checks.every_eligible_event_has_an_outcome],
                             partition_key=data.DAY.isoformat(), resources=resources,
                             raise_on_error=False)
        return evaluations(result)["every_eligible_event_has_an_outcome"]

    assert outcome_check().passed  # pending is an outcome: the next run sends it
    with duckdb.connect(str(day)) as conn:
        conn.execute("DELETE FROM delivery.event_outcomes WHERE event_id = 'c3'")
        data.insert_event(conn, "c7", "checkout", True, None, True, False, False, False, True)
        data.insert_outcome(conn, "c7", "skipped")
    missing = outcome_check()
    assert not missing.passed and missing.severity == AssetCheckSeverity.ERROR
    assert missing.description.splitlines()[0].startswith(
        "2 eligible events of 2026-12-01 have no delivery outcome (2 for pinterest:")
    assert "materialize delivery/event_outcomes for 2026-12-01 again" in missing.description


def test_event_id_unique_per_destination_and_day(day):
    def unique_check():
        resources = {"duckdb": WarehouseResource(database=str(day)),
                     "pinterest": PinterestResource(ad_account_id=data.AD_ACCOUNT,
                                                    access_token="unused")}
        result = materialize([written_by_the_test(checks.PINTEREST_EVENTS),
                              checks.event_id_unique_per_destination_and_day],
                             partition_key=data.DAY.isoformat(), resources=resources,
                             raise_on_error=False)
        return evaluations(result)["event_id_unique_per_destination_and_day"]

    assert unique_check().passed
    with duckdb.connect(str(day)) as conn:
        # The same id on another day is another partition's business, not a duplicate here.
        data.insert_event(conn, "c1", "checkout", True, None, True, False, False, False, True,
                          day=data.DAY.replace(day=2))
    assert unique_check().passed
    with duckdb.connect(str(day)) as conn:
        data.insert_event(conn, "c2", "page_visit", True, None, True, False, False, False, True)
    duplicate = unique_check()
    assert not duplicate.passed
    assert duplicate.description.startswith("1 event ids occur more than once")
    assert duplicate.metadata["duplicated_event_ids"].value == 1


def test_checks_attach_to_the_assets_they_judge():
    assert {key.asset_key for check in (checks.every_eligible_event_has_an_outcome,
                                        checks.event_id_unique_per_destination_and_day)
            for key in check.check_keys} == {AssetKey(["delivery", "event_outcomes"]),
                                             AssetKey(["capi", "pinterest_events"])}


def test_day_status_and_top_error_are_the_views_latest_outcomes(tmp_path):
    """Monitoring reads each of the day's events' latest outcome from the events' own history
    with an aggregate; the rows must be those of delivery.event_status, ties on time broken by
    attempts, other destinations and days left out."""
    from datetime import datetime, timedelta

    from capi_pipeline.monitoring.assets import DAY_STATUS_SQL
    from capi_pipeline.monitoring.checks import TOP_ERROR_SQL

    warehouse = WarehouseResource(database=str(tmp_path / "warehouse.duckdb"))
    day, other_day = data.DAY, data.DAY - timedelta(days=1)
    at = datetime(day.year, day.month, day.day, 12)
    ours, theirs = "pinterest:ours", "pinterest:theirs"
    history = [  # destination, event, day, outcome, attempts, message, minutes
        (ours, "later_delivered", day, "dead_letter", 1, "bad", 0),
        (ours, "later_delivered", day, "delivered", 1, None, 5),
        (ours, "more_attempts", day, "pending", 1, "slow", 5),
        (ours, "more_attempts", day, "dead_letter", 2, "refused", 5),
        (ours, "still_dead", day, "dead_letter", 1, "refused", 0),
        (ours, "dead_elsewhere", day, "delivered", 1, None, 0),
        (theirs, "dead_elsewhere", day, "dead_letter", 1, "bad", 9),
        (ours, "yesterday", other_day, "dead_letter", 1, "refused", 0),
    ]
    with warehouse.get_connection() as conn:
        for event_id, event_day in {(row[1], row[2]) for row in history}:
            conn.execute(
                "INSERT INTO capi.pinterest_events (partition_date, event_id, event_name, "
                "action_source, event_time, source_event_type, store, eligible, has_em, "
                "has_ph, has_external_id, has_click_id, has_ip_ua, has_hashed_maids, "
                "click_id_from_profile, payload) VALUES (?, ?, 'checkout', 'web', 0, "
                "'purchase', 'shop', true, true, false, false, false, false, false, false, "
                "'{}')", [event_day, event_id])
        for destination, event_id, event_day, outcome, attempts, message, minutes in history:
            conn.execute("INSERT INTO delivery.event_outcomes VALUES (?, ?, ?, ?, ?, NULL, ?, "
                         "NULL, ?)", [destination, event_day, event_id, outcome, attempts,
                                      message, at + timedelta(minutes=minutes)])
        params = {"day": day, "destination": ours}
        status = sorted(conn.execute(DAY_STATUS_SQL, params).fetchall())
        view = sorted(conn.execute(
            "SELECT event_id, outcome FROM delivery.event_status WHERE destination = $destination "
            "AND event_id IN (SELECT event_id FROM capi.pinterest_events "
            "WHERE partition_date = $day)", params).fetchall())
        top = conn.execute(TOP_ERROR_SQL, params).fetchall()
    assert status == view == [("dead_elsewhere", "delivered"), ("later_delivered", "delivered"),
                              ("more_attempts", "dead_letter"), ("still_dead", "dead_letter")]
    assert top == [("refused", 2)]


def test_personal_text_prefilters_match_the_whole_patterns():
    """The scan tries the email and E.164 patterns only on text holding @ or +; it must flag
    exactly what the two whole patterns flag."""
    texts = ["call +14155550100 now", "x+14155550100", "(415) 555-0100", "415.555.0100",
             "a@b.example.com", "mail a%40b.com", "12345678901", "id 2024-12-0100", "plain",
             "+1 415", None, "jane@x", "+441234567890", '{"em":["ab"],"ip":"1.2.3.4"}']
    conn = duckdb.connect()
    for text in texts:
        whole = conn.execute("SELECT regexp_matches($t, $e) OR regexp_matches($t, $p)", {
            "t": text, "e": checks.EMAIL_PATTERN, "p": checks.PHONE_PATTERN}).fetchall()
        split = conn.execute(f"SELECT {checks._personal_text('$t')}", {
            "t": text, "email": checks.EMAIL_PATTERN, "e164": checks.PHONE_E164,
            "grouped": checks.PHONE_GROUPED}).fetchall()
        assert whole == split, text
