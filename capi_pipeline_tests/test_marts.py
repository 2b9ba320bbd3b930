"""The dbt marts, built by their Dagster assets over the day of monitoring_data.py, whose rows
are known by construction; the dbt tests arrive as passing asset checks."""

from datetime import timedelta

import duckdb
import pytest
from dagster import materialize

from capi_pipeline import definitions
from capi_pipeline.marts.assets import dbt_marts
from capi_pipeline.monitoring.assets import match_rate
from capi_pipeline.resources import PinterestResource, WarehouseResource
from capi_pipeline_tests import monitoring_data as data


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    path = data.build(tmp_path_factory.mktemp("marts") / "warehouse.duckdb")
    with duckdb.connect(str(path)) as conn:
        # v_p0 had a Pinterest event two days before, so it is not new on the day.
        data.insert_event(conn, "p0-earlier", "page_visit", False, "too_old", False, False,
                          False, False, True, day=data.DAY - timedelta(days=2),
                          visitor="v_p0")
    resources = {
        "duckdb": WarehouseResource(database=str(path)),
        "pinterest": PinterestResource(ad_account_id=data.AD_ACCOUNT, access_token="unused"),
        "dbt": definitions.defs.resources["dbt"],
    }
    assert materialize([match_rate], partition_key=data.DAY.isoformat(),
                       resources=resources).success
    result = materialize([dbt_marts], resources=resources, raise_on_error=False)
    return path, result


def query(path, sql: str, *params) -> list[tuple]:
    with duckdb.connect(str(path), read_only=True) as conn:
        return conn.execute(sql, list(params)).fetchall()


def test_every_model_is_built_with_its_tests_passing(built):
    path, result = built
    assert result.success
    materialized = {event.asset_key.to_user_string()
                    for event in result.get_asset_materialization_events()}
    assert materialized == {"marts/match_rate_daily", "marts/match_rate_by_event",
                            "marts/delivery_daily_summary", "marts/dead_letters_by_reason",
                            "marts/visitor_counts"}
    evaluations = result.get_asset_check_evaluations()
    assert len(evaluations) >= 10 and all(evaluation.passed for evaluation in evaluations)


def test_row_counts(built):
    path, _ = built
    counts = {model: query(path, f"SELECT count(*) FROM marts.{model}")[0][0] for model in (
        "match_rate_daily", "match_rate_by_event", "delivery_daily_summary",
        "dead_letters_by_reason", "visitor_counts")}
    assert counts == {"match_rate_daily": 1, "match_rate_by_event": 2,
                      "delivery_daily_summary": 1, "dead_letters_by_reason": 1,
                      "visitor_counts": 2}


def test_figures(built):
    path, _ = built
    assert query(path, "SELECT event_name, skipped, sent, processed_share FROM "
                       "marts.match_rate_by_event ORDER BY event_name") == [
        ("checkout", 2, 4, 0.5), ("page_visit", 3, 2, 1.0)]
    assert query(path, "SELECT events, delivered, dead_lettered, pending, skipped, "
                       "delivered_share, requests, failed_requests FROM "
                       "marts.delivery_daily_summary") == [(11, 4, 1, 1, 5, 4 / 6, 2, 1)]
    assert query(path, "SELECT error_message, events FROM marts.dead_letters_by_reason") == [
        ("Event time is too old", 1)]
    # Six visitors had events, five an eligible one; all but v_p0 (an event two days before)
    # had their first Pinterest event that day.
    assert query(path, "SELECT visitors, visitors_with_eligible_events, new_visitors FROM "
                       "marts.visitor_counts WHERE day = ?", data.DAY) == [(6, 5, 5)]
