"""Pinterest's event quality score: the emulator's conversion_eqs endpoint and the asset that
stores it beside our own coverage."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import duckdb
import httpx
import orjson
import pytest
from dagster import materialize

from capi_pipeline.lib.duck import ensure_schema
from capi_pipeline.monitoring.assets import match_rate
from capi_pipeline.monitoring.eqs import EqsError, fetch_eqs, pinterest_eqs
from capi_pipeline.monitoring.settings import MonitoringSettings
from capi_pipeline.pinterest.emulator import EmulatorThread
from capi_pipeline.resources import PinterestResource, WarehouseResource
from capi_pipeline_tests import monitoring_data as data

TOKEN = "eqs-test-token-91b2"
ACCOUNT = data.AD_ACCOUNT
HASH = "d" * 64


def event(event_id: str, name: str = "checkout", age_seconds: int = 600, **user) -> dict:
    user_data = {"client_ip_address": "203.0.113.9", "client_user_agent": "Mozilla/5.0",
                 **user}
    return {"event_name": name, "action_source": "web", "event_id": event_id,
            "event_time": int(time.time()) - age_seconds, "user_data": user_data,
            "custom_data": {"currency": "USD", "value": "10.00", "order_id": event_id}}


@pytest.fixture(scope="module")
def emulator():
    with EmulatorThread(token=TOKEN, ad_account_ids=(ACCOUNT,)).start() as running:
        yield running


@pytest.fixture
def fed(emulator):
    """Four live events of the last day, one of three days ago, and a test-mode event."""
    emulator.reset()
    url = emulator.events_url(ACCOUNT)
    headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
    live = [event("o1", em=[HASH], click_id="epik1"), event("o2", em=[HASH]), event("o3"),
            event("v1", name="page_visit", em=[HASH], external_id=[HASH]),
            event("old", age_seconds=3 * 86_400, em=[HASH])]
    assert httpx.post(url, content=orjson.dumps({"data": live}), headers=headers).json()[
        "num_events_processed"] == 5
    test_only = orjson.dumps({"data": [event("t1", em=[HASH], click_id="x")]})
    httpx.post(url, content=test_only, headers=headers, params={"test": "true"})
    return emulator


def coverage(scores: list[dict], component: str, name: str) -> float:
    return scores[0]["quality_components"][component][name]["coverage"]


def test_emulator_scores_live_events_of_the_lookback_window(fed):
    day = fetch_eqs(fed.base_url, ACCOUNT, TOKEN, "1d")
    assert [(s["source_platform"], s["ingestion_source"], s["lookback_period"]) for s in day] \
        == [("WEB", "CONVERSIONS_API", "1d")]
    # Three checkouts of the last day: two with an email, one with a click id; the test-mode
    # event and the three-day-old one are not in it.
    assert coverage(day, "hashed_email", "checkout") == pytest.approx(66.67)
    assert coverage(day, "click_id_epik", "checkout") == pytest.approx(33.33)
    assert coverage(day, "ip_address", "checkout") == 100
    assert coverage(day, "advertiser_external_id", "page_visit") == 100
    assert coverage(day, "order_id", "checkout") == 100
    assert coverage(day, "source_url", "checkout") == 0
    # Mean of email 75, IP 100, UA 100, click 25, external id 25 over the day's four events.
    assert day[0]["overall_status"] == "GOOD"

    fortnight = fetch_eqs(fed.base_url, ACCOUNT, TOKEN, "14d")
    assert coverage(fortnight, "hashed_email", "checkout") == 75  # three of four


def test_emulator_refuses_what_pinterest_refuses(fed):
    url = f"{fed.base_url}/v5/ad_accounts/{ACCOUNT}/conversion_eqs"
    auth = {"Authorization": f"Bearer {TOKEN}"}
    assert httpx.get(url, headers=auth).status_code == 400  # lookback_period is required
    assert httpx.get(url, headers=auth, params={"lookback_period": "7d"}).status_code == 400
    assert httpx.get(url, params={"lookback_period": "1d"},
                     headers={"Authorization": "Bearer wrong"}).status_code == 401
    other = f"{fed.base_url}/v5/ad_accounts/123/conversion_eqs"
    assert httpx.get(other, headers=auth, params={"lookback_period": "1d"}).status_code == 403
    mobile = httpx.get(url, headers=auth,
                       params={"lookback_period": "1d", "source_platform": "MOBILE"})
    assert mobile.status_code == 200 and mobile.json() == []
    with pytest.raises(EqsError, match="^Pinterest refused the event quality score token"):
        fetch_eqs(fed.base_url, ACCOUNT, "wrong", "1d")


def run_eqs(path, base_url: str, token: str | None, day: str):
    resources = {
        "duckdb": WarehouseResource(database=str(path)),
        "pinterest": PinterestResource(base_url=base_url, ad_account_id=ACCOUNT,
                                       access_token="unused"),
        "monitoring": MonitoringSettings(eqs_access_token=token),
    }
    return materialize([match_rate, pinterest_eqs], partition_key=day, resources=resources,
                       raise_on_error=False)


def test_asset_stores_pinterests_score_beside_ours(fed, tmp_path):
    yesterday = (datetime.now(UTC) - timedelta(days=1)).date()
    path = tmp_path / "warehouse.duckdb"
    with duckdb.connect(str(path)) as conn:
        ensure_schema(conn)
        data.insert_event(conn, "o1", "checkout", True, None, True, False, False, True, True,
                          day=yesterday)
        conn.execute("INSERT INTO delivery.event_outcomes VALUES (?, ?, 'o1', 'delivered', 1, "
                     "'r', NULL, NULL, now())", [f"127.0.0.1:{ACCOUNT}", yesterday])

    result = run_eqs(path, fed.base_url, TOKEN, yesterday.isoformat())
    assert result.success
    metadata = result.asset_materializations_for_node("monitoring__pinterest_eqs")[0].metadata
    assert metadata["read"].value is True
    with duckdb.connect(str(path), read_only=True) as conn:
        rows = conn.execute("SELECT count(*), count(DISTINCT component) FROM "
                            "monitoring.pinterest_eqs").fetchone()
        compared = conn.execute(
            "SELECT pinterest_coverage, our_coverage FROM monitoring.eqs_comparison "
            "WHERE event_name = 'checkout' AND component = 'hashed_email'").fetchone()
    assert rows == (11 * 2, 11)  # eleven components for checkout and page_visit
    assert compared == (pytest.approx(0.6667), 1.0)

    # Again: the day's rows are replaced, not added to, and a destination this run does not
    # read (one removed from the settings) keeps its scores for the day.
    with duckdb.connect(str(path)) as conn:
        conn.execute("INSERT INTO monitoring.pinterest_eqs SELECT * REPLACE ('eu' AS "
                     "destination) FROM monitoring.pinterest_eqs LIMIT 1")
    assert run_eqs(path, fed.base_url, TOKEN, yesterday.isoformat()).success
    with duckdb.connect(str(path), read_only=True) as conn:
        by_destination = conn.execute("SELECT destination = 'eu', count(*) FROM "
                                      "monitoring.pinterest_eqs GROUP BY 1 ORDER BY 1").fetchall()
    assert by_destination == [(False, 22), (True, 1)]


def test_asset_reads_nothing_without_a_token_or_for_an_old_day(fed, tmp_path):
    path = tmp_path / "warehouse.duckdb"
    yesterday = (datetime.now(UTC) - timedelta(days=1)).date().isoformat()
    for token, day, reason in ((None, yesterday, "no token configured"),
                               (TOKEN, "2025-01-01", "partition too old")):
        result = run_eqs(path, fed.base_url, token, day)
        assert result.success
        metadata = result.asset_materializations_for_node("monitoring__pinterest_eqs")[0]
        assert metadata.metadata["reason"].value == reason
    assert fed.stats()["requests_total"] == 2  # the fixture's live and test sends only


def test_a_refused_token_fails_the_run_saying_what_to_set(fed, tmp_path):
    yesterday = (datetime.now(UTC) - timedelta(days=1)).date().isoformat()
    result = run_eqs(tmp_path / "warehouse.duckdb", fed.base_url, "wrong", yesterday)
    assert not result.success
    failure = next(event for event in result.all_events if event.is_step_failure)
    message = failure.step_failure_data.user_failure_data.description
    assert message.startswith("Pinterest refused the event quality score token")
    assert "PINTEREST_EQS_TOKEN" in message.splitlines()[0] and "wrong" not in message
