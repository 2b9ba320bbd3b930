"""Identity through the real assets: a click id met on one day reaches the next day's checkout.

Two days of Segment calls land; each day's run materializes every asset for that day, as a
schedule would, and the emulator receives the checkout with the landing page's click id.
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime, timedelta

from capi_pipeline_tests.conftest import Pipeline

UA = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131 Safari"
EPIK = "dj0yJnU9bGFuZGluZyZwPTA"
TODAY = datetime.now(UTC).date()
LANDING_DAY, CHECKOUT_DAY = TODAY - timedelta(days=3), TODAY - timedelta(days=1)


def call(kind: str, message_id: str, at: datetime, **fields) -> dict:
    return {"type": kind, "messageId": message_id, "anonymousId": "anon-7f2c",
            "timestamp": at.isoformat().replace("+00:00", "Z"),
            "context": {"ip": "203.0.113.44", "userAgent": UA}, **fields}


def test_a_click_on_the_landing_page_is_carried_to_a_checkout_two_days_later(
    tmp_path, emulator
):
    emulator.reset()
    pipeline = Pipeline(tmp_path, emulator.base_url)
    landed = datetime(LANDING_DAY.year, LANDING_DAY.month, LANDING_DAY.day, 18, tzinfo=UTC)
    bought = datetime(CHECKOUT_DAY.year, CHECKOUT_DAY.month, CHECKOUT_DAY.day, 9, tzinfo=UTC)
    days = {
        LANDING_DAY: [call("page", "m-land", landed, context={
            "ip": "203.0.113.44", "userAgent": UA,
            "page": {"url": f"https://shop.example.com/?epik={EPIK}"}})],
        CHECKOUT_DAY: [call("track", "m-buy", bought, event="Order Completed",
                            properties={"order_id": "5001", "revenue": 30, "currency": "USD"},
                            context={"ip": "203.0.113.44", "userAgent": UA,
                                     "traits": {"email": "Kim@Example.com"}})],
    }
    for day, lines in days.items():
        folder = pipeline.landing / str(day)
        folder.mkdir()
        (folder / "events.ndjson").write_text("\n".join(json.dumps(line) for line in lines))
        assert pipeline.run(str(day)).success

    visitors = pipeline.query(
        "SELECT visitor_id, email, click_id, click_id_seen_at FROM identity.visitor_profiles")
    assert visitors == [(visitors[0][0], "kim@example.com", EPIK, landed)]
    attributed = pipeline.query(
        "SELECT attributed_click_id, attributed_click_at FROM identity.event_visitors "
        "ORDER BY event_time")
    assert attributed == [(EPIK, landed), (EPIK, landed)]
    runs = pipeline.query("SELECT mode, days_read FROM identity.graph_runs ORDER BY run_at")
    assert runs == [("full", 1), ("incremental", 1)]

    checkouts = [event for body in emulator.bodies() for event in body["data"]
                 if event["event_name"] == "checkout"]
    assert len(checkouts) == 1
    assert checkouts[0]["user_data"]["click_id"] == EPIK
    assert checkouts[0]["user_data"]["em"] == [hashlib.sha256(b"kim@example.com").hexdigest()]
