"""The behaviours of ../shared/cases/README.md (P1-P12), end to end through every asset.

One landing file holds a small store's day: each case is a few lines in the Segment spec or the
Shopify Web Pixels shape, and each test reads the body the emulator received for its event.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from capi_pipeline_tests.fixtures import GOOGLEBOT

UA = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131 Safari"
DAY = datetime.now(UTC).date() - timedelta(days=1)
NOON = datetime(DAY.year, DAY.month, DAY.day, 12, tzinfo=UTC)
P1_EMAIL = "p1.buyer@example.com"
P4_EMAIL = "p4.buyer@example.org"


def iso(moment: datetime) -> str:
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def segment(kind: str, message_id: str, anonymous_id: str, at: datetime, **fields) -> dict:
    body = {"type": kind, "messageId": message_id, "anonymousId": anonymous_id,
            "timestamp": iso(at), "context": {"ip": "203.0.113.20", "userAgent": UA}}
    for key, value in fields.items():
        if key == "context":
            body["context"].update(value)
        else:
            body[key] = value
    return body


def pixel(name: str, event_id: str, client_id: str, at: datetime, url: str, data=None) -> dict:
    body = {"id": event_id, "name": name, "clientId": client_id, "timestamp": iso(at),
            "context": {"document": {"location": {"href": url}},
                        "navigator": {"userAgent": UA}}}
    if data is not None:
        body["data"] = data
    return {"received_at": iso(at + timedelta(seconds=1)), "ip": "203.0.113.30",
            "user_agent": UA, "body": body}


def checkout(email: str, order_id: str, subtotal: float, total: float, token: str) -> dict:
    money = {"currencyCode": "USD"}
    return {"checkout": {
        "token": token, "currencyCode": "USD", "email": email, "phone": "",
        "subtotalPrice": {**money, "amount": subtotal}, "totalPrice": {**money, "amount": total},
        "order": {"id": order_id},
        "lineItems": [{"quantity": 1, "variant": {"id": "v-1", "price": {**money,
                       "amount": subtotal}, "product": {"id": "p-1", "title": "Mug"}}}],
    }}


def lines() -> list[dict]:
    shop = "https://shop.example.com"
    return [
        # P1: a Segment purchase with numbers where Pinterest wants strings.
        segment("track", "p1-order", "anon-p1", NOON, event="Order Completed",
                context={"traits": {"email": P1_EMAIL}},
                properties={"order_id": 1001, "revenue": 48, "currency": "usd", "products": [
                    {"product_id": 7, "price": 19, "quantity": 2},
                    {"sku": "B-2", "price": 10, "quantity": 1}]}),
        # P2: shipping and tax are not the value.
        pixel("checkout_completed", "p2-checkout", "client-p2", NOON, f"{shop}/thank_you",
              checkout("p2@example.com", "2002", 90, 104.5, "tok-p2")),
        # P3: a Pinterest ad click, then a purchase twenty minutes later on a clean URL.
        pixel("page_viewed", "p3-landing", "client-p3", NOON,
              f"{shop}/?epik=dj0yJnU9bGFuZGluZw"),
        pixel("checkout_completed", "p3-checkout", "client-p3", NOON + timedelta(minutes=20),
              f"{shop}/thank_you", checkout("p3@example.com", "3003", 20, 25, "tok-p3")),
        # P4: a page view without email before the checkout that gives one.
        pixel("page_viewed", "p4-view", "client-p4", NOON - timedelta(hours=2), f"{shop}/"),
        pixel("checkout_completed", "p4-checkout", "client-p4", NOON, f"{shop}/thank_you",
              checkout(P4_EMAIL, "4004", 30, 33, "tok-p4")),
        # P5: a custom field Pinterest does not know.
        pixel("product_viewed", "p5-view", "client-p5", NOON, f"{shop}/products/mug",
              {"productVariant": {"id": "v-5", "price": {"amount": 12, "currencyCode": "USD"},
                                  "product": {"id": "p-5", "title": "Mug"},
                                  "category_name": "Kitchen"}}),
        # P7: the same order from the pixel and from the orders/create webhook.
        {**pixel("checkout_completed", "p7-pixel", "client-p7", NOON, f"{shop}/thank_you",
                 checkout("p7@example.com", "7007", 40, 44, "tok-p7")), "ip": None},
        {"received_at": iso(NOON + timedelta(seconds=5)), "topic": "orders/create",
         "body": {"id": 7007, "order_number": 1007, "email": "p7@example.com",
                  "processed_at": (NOON + timedelta(seconds=3)).isoformat(),
                  "browser_ip": "203.0.113.77", "subtotal_price": "40.00", "currency": "USD",
                  "checkout_token": "tok-p7", "test": False,
                  "line_items": [{"product_id": 1, "price": "40.00", "quantity": 1}]}},
        # P8: a crawler.
        {"received_at": iso(NOON), "ip": "198.51.100.8", "user_agent": GOOGLEBOT,
         "body": pixel("page_viewed", "p8-bot", "client-p8", NOON, f"{shop}/")["body"]},
        # P9: identify only, then a page view from the same browser.
        segment("identify", "p9-identify", "anon-p9", NOON - timedelta(hours=1),
                traits={"email": "p9@example.com"}),
        segment("page", "p9-page", "anon-p9", NOON, context={"page": {"url": f"{shop}/"}}),
        # P11: a forwarded list and an address with a port.
        segment("page", "p11-list", "anon-p11a", NOON,
                context={"ip": "203.0.113.9, 10.0.0.1", "page": {"url": f"{shop}/a"}}),
        segment("page", "p11-port", "anon-p11b", NOON,
                context={"ip": "203.0.113.9:51234", "page": {"url": f"{shop}/b"}}),
        # P12: epoch milliseconds.
        segment("track", "p12-order", "anon-p12", NOON, event="Order Completed",
                timestamp=int(NOON.timestamp() * 1000) + 345,
                properties={"order_id": "1212", "revenue": "12.00", "currency": "USD"}),
    ]


@pytest.fixture(scope="module")
def sent(tmp_path_factory, emulator):
    from capi_pipeline_tests.conftest import Pipeline

    emulator.reset()
    pipeline = Pipeline(tmp_path_factory.mktemp("cases"), emulator.base_url)
    old = DAY - timedelta(days=8)
    folder = pipeline.landing / "mixed"
    folder.mkdir()
    old_view = pixel("page_viewed", "p6-old", "client-p6", datetime(
        old.year, old.month, old.day, 12, tzinfo=UTC), "https://shop.example.com/")
    (folder / "events.ndjson").write_text(
        "\n".join(json.dumps(line) for line in [*lines(), old_view]) + "\n")
    for partition in (old, DAY):
        result = pipeline.run(str(partition))
        assert result.success, [event.message for event in result.all_events if event.is_failure]
    events = {event["event_id"]: event for body in emulator.bodies() for event in body["data"]}
    return {"events": events, "pipeline": pipeline, "stats": emulator.stats()}


def test_p1_segment_purchase_types(sent):
    event = sent["events"]["p1-order"]
    assert event["event_name"] == "checkout"
    assert event["custom_data"] == {
        "currency": "USD", "value": "48", "content_ids": ["7", "B-2"],
        "contents": [{"id": "7", "item_price": "19", "quantity": 2},
                     {"id": "B-2", "item_price": "10", "quantity": 1}],
        "num_items": 3, "order_id": "1001",
    }


def test_p2_value_is_the_merchandise_not_shipping_and_tax(sent):
    assert sent["events"]["p2-checkout"]["custom_data"]["value"] == "90"


def test_p3_click_id_carried_to_the_later_checkout(sent):
    assert sent["events"]["p3-checkout"]["user_data"]["click_id"] == "dj0yJnU9bGFuZGluZw"
    assert sent["events"]["p3-landing"]["user_data"]["click_id"] == "dj0yJnU9bGFuZGluZw"


def test_p4_earlier_page_view_gets_the_email_of_the_checkout(sent):
    import hashlib

    digest = hashlib.sha256(P4_EMAIL.encode()).hexdigest()
    assert sent["events"]["p4-view"]["user_data"]["em"] == [digest]
    assert sent["events"]["p4-checkout"]["user_data"]["em"] == [digest]


def test_p5_unknown_custom_key_is_dropped_and_nothing_refused(sent):
    event = sent["events"]["p5-view"]
    assert "category_name" not in json.dumps(event)
    assert event["custom_data"]["content_ids"] == ["p-5"]
    assert sent["stats"]["requests_by_status"].keys() == {"200"}


def test_p6_eight_days_old_is_skipped_as_too_old(sent):
    assert "p6-old" not in sent["events"]
    assert sent["pipeline"].query(
        "SELECT eligible, skip_reason FROM capi.pinterest_events WHERE event_id = 'p6-old'"
    ) == [(False, "too_old")]


def test_p7_pixel_and_webhook_are_one_checkout_with_the_pixel_id(sent):
    orders = [e for e in sent["events"].values()
              if e.get("custom_data", {}).get("order_id") == "7007"]
    assert [e["event_id"] for e in orders] == ["p7-pixel"]
    # The webhook contributed what the pixel cannot see: the buyer's IP.
    assert orders[0]["user_data"]["client_ip_address"] == "203.0.113.77"


def test_p8_bot_not_sent_and_counted(sent):
    assert "p8-bot" not in sent["events"]
    assert sent["pipeline"].scalar(
        "SELECT skipped_bot FROM monitoring.match_rate "
        "WHERE partition_date = ? AND event_name = 'page_visit'", DAY) == 1


def test_p9_identify_sends_nothing_but_joins_the_profile(sent):
    import hashlib

    assert "p9-identify" not in sent["events"]
    digest = hashlib.sha256(b"p9@example.com").hexdigest()
    assert sent["events"]["p9-page"]["user_data"]["em"] == [digest]


def test_p10_every_identifier_is_sent_together(sent):
    user = sent["events"]["p1-order"]["user_data"]
    assert {"em", "client_ip_address", "client_user_agent"} <= user.keys()
    assert user["client_ip_address"] == "203.0.113.20" and user["client_user_agent"] == UA


def test_p11_client_ip_is_the_first_public_address_without_port(sent):
    assert sent["events"]["p11-list"]["user_data"]["client_ip_address"] == "203.0.113.9"
    assert sent["events"]["p11-port"]["user_data"]["client_ip_address"] == "203.0.113.9"


def test_p12_epoch_milliseconds_become_whole_seconds(sent):
    assert sent["events"]["p12-order"]["event_time"] == int(NOON.timestamp())


@pytest.mark.parametrize("order", ["in_day_order", "later_day_first"])
def test_order_reported_either_side_of_midnight_is_sent_once(tmp_path, emulator, order):
    from capi_pipeline_tests.conftest import Pipeline

    emulator.reset()
    pipeline = Pipeline(tmp_path, emulator.base_url)
    first_day = DAY - timedelta(days=1)
    midnight = datetime(DAY.year, DAY.month, DAY.day, tzinfo=UTC)
    webhook = {"received_at": iso(midnight + timedelta(seconds=12)), "topic": "orders/create",
               "body": {"id": 8008, "order_number": 1008, "email": "p8008@example.com",
                        "processed_at": (midnight + timedelta(seconds=10)).isoformat(),
                        "browser_ip": "203.0.113.80", "subtotal_price": "15.00",
                        "currency": "USD", "line_items": []}}
    purchase = pixel("checkout_completed", "order-8008-pixel", "client-8008",
                     midnight - timedelta(seconds=10), "https://shop.example.com/thank_you",
                     checkout("p8008@example.com", "8008", 15, 16, "tok-8008"))
    (pipeline.landing / "events.ndjson").write_text(
        json.dumps(purchase) + "\n" + json.dumps(webhook) + "\n")

    days = [first_day, DAY] if order == "in_day_order" else [DAY, first_day]
    for partition in days:
        assert pipeline.run(str(partition)).success
    sent_ids = [event["event_id"] for body in emulator.bodies() for event in body["data"]]
    expected = "order-8008-pixel" if order == "in_day_order" else "order-8008-create"
    assert sent_ids == [expected]
    skipped = pipeline.query(
        "SELECT event_id FROM capi.pinterest_events WHERE skip_reason = 'duplicate_order'")
    assert len(skipped) == 1 and skipped[0][0] != expected


def test_free_text_and_urls_never_carry_contacts_to_pinterest():
    import duckdb

    from capi_pipeline.enrich.build import MACROS

    conn = duckdb.connect()
    for macro in MACROS:
        conn.execute(macro)

    def call(macro: str, value: str):
        if macro == "capi_page_url":
            return conn.execute("SELECT capi_page_url(capi_url_base(?))", [value]).fetchone()[0]
        return conn.execute(f"SELECT {macro}(?)", [value]).fetchone()[0]

    assert call("capi_page_url",
                "https://shop.example.com/account?e=a%40b.example&phone=%2B14155550177") == (
        "https://shop.example.com/account")
    assert call("capi_page_url", "https://shop.example.com/u/jane@example.com/orders") is None
    assert call("capi_page_url", "javascript:alert(1)") is None
    assert call("capi_page_url", "https://shop.example.com/68875616470/checkouts/abc/thank_you"
                ) == "https://shop.example.com/68875616470/checkouts/abc/thank_you"
    assert call("capi_safe_text", "call me +1 415 555 0188") is None
    assert call("capi_safe_text", "jane@example.com") is None
    assert call("capi_safe_text", "snowboard liquid") == "snowboard liquid"
    assert call("capi_click_id", "dj0yJnU9bGFuZGluZw") == "dj0yJnU9bGFuZGluZw"
    assert call("capi_click_id", "jane@example.com") is None
    assert call("capi_click_id", "x" * 1025) is None
    assert call("capi_decimal", "48.00") == "48" and call("capi_decimal", "0.50") == "0.5"
    assert call("capi_decimal", "0.00") == "0" and call("capi_decimal", "120") == "120"


def test_a_shared_token_or_kiosk_does_not_weld_strangers(tmp_path, emulator):
    from capi_pipeline_tests.conftest import Pipeline

    emulator.reset()
    pipeline = Pipeline(tmp_path, emulator.base_url)
    shop = "https://shop.example.com"
    lines = [
        pixel("checkout_completed", f"weld-{n}", f"client-weld-{n}",
              NOON + timedelta(minutes=n), f"{shop}/thank_you",
              checkout(f"buyer{n}@example.com", f"90{n:02d}", 10, 11, "same-token"))
        for n in range(30)
    ]
    (pipeline.landing / "events.ndjson").write_text(
        "\n".join(json.dumps(line) for line in lines) + "\n")
    assert pipeline.run(str(DAY)).success
    assert pipeline.scalar("SELECT max(identifiers) FROM identity.visitor_profiles") <= 3
    reasons = pipeline.query("SELECT DISTINCT reason FROM identity.refused_edges")
    assert reasons and all("checkout token" in reason for (reason,) in reasons)
    # Each buyer's checkout carries their own email hash only.
    import hashlib

    for event in (e for body in emulator.bodies() for e in body["data"]):
        number = int(event["event_id"].split("-")[1])
        assert event["user_data"]["em"] == [
            hashlib.sha256(f"buyer{number}@example.com".encode()).hexdigest()]
