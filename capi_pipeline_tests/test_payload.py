"""The enrich fast path on hand-made staged rows: each test asserts the payload's values.

Rows go straight into staging.events, identity.event_visitors and identity.visitor_profiles
of a temporary DuckDB file, and `build_pinterest_events` runs on them as the asset runs it;
the end-to-end behaviours of ../shared/cases/README.md are in test_cases.py.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import duckdb
import pytest

from capi_pipeline.enrich.assets import personal_data_problems
from capi_pipeline.enrich.build import build_pinterest_events, request_bodies
from capi_pipeline.enrich.payload import DEFAULT_EVENT_MAP, PayloadConfig, PayloadConfigError
from capi_pipeline.lib.duck import ensure_schema
from capi_pipeline_tests.schema_check import MISSING_CHECKER, BodyChecker

NOW = datetime.now(UTC).replace(microsecond=0)
DAY = (NOW - timedelta(days=1)).date()
NOON = datetime(DAY.year, DAY.month, DAY.day, 12, tzinfo=UTC)
UA = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131"


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def staged(event_id: str, **fields) -> dict:
    row = {
        "partition_date": DAY, "event_key": f"k-{event_id}", "source_format": "shopify_pixel",
        "source_event_name": "page_viewed", "event_type": "page_view", "action_source": "web",
        "event_time": NOON, "event_id": event_id, "store": "shop.example.com",
        "client_id": f"c-{event_id}", "ip": "203.0.113.5", "user_agent": UA,
        "page_url": "https://shop.example.com/", "is_bot": False, "is_test": False,
    }
    row.update(fields)
    return row


class Warehouse:
    def __init__(self, path) -> None:
        self.conn = duckdb.connect(str(path))
        ensure_schema(self.conn)

    def add(self, *rows: dict, visitor: str | None = None, profile: dict | None = None) -> None:
        for row in rows:
            columns = ", ".join(row)
            marks = ", ".join("?" for _ in row)
            self.conn.execute(f"INSERT INTO staging.events ({columns}) VALUES ({marks})",
                              list(row.values()))
            if visitor:
                self.conn.execute(
                    "INSERT INTO identity.event_visitors (event_key, partition_date, visitor_id, "
                    "event_time, node_ids, anchor_node_id) VALUES (?, ?, ?, ?, [], 0)",
                    [row["event_key"], row["partition_date"], visitor, row["event_time"]])
        if visitor and profile is not None:
            fields = {"visitor_id": visitor, "identifiers": 1, "events": len(rows), **profile}
            columns = ", ".join(fields)
            marks = ", ".join("?" for _ in fields)
            self.conn.execute(f"INSERT INTO identity.visitor_profiles ({columns}) "
                              f"VALUES ({marks})", list(fields.values()))

    def build(self, **config):
        threads = self.conn.execute("SELECT current_setting('threads')").fetchall()
        built = build_pinterest_events(self.conn, DAY, PayloadConfig(now=NOW, **config))
        # The INSERT runs on one thread; the connection keeps its own setting.
        assert self.conn.execute("SELECT current_setting('threads')").fetchall() == threads
        rows = self.conn.execute(
            "SELECT event_id, payload::VARCHAR, eligible, skip_reason, dropped_fields "
            "FROM capi.pinterest_events WHERE partition_date = ?", [DAY]).fetchall()
        self.rows = {event_id: {"payload": json.loads(payload), "eligible": eligible,
                                "skip_reason": reason, "dropped": dropped}
                     for event_id, payload, eligible, reason, dropped in rows}
        return built

    def payload(self, event_id: str) -> dict:
        return self.rows[event_id]["payload"]


@pytest.fixture
def warehouse(tmp_path):
    store = Warehouse(tmp_path / "warehouse.duckdb")
    yield store
    store.conn.close()


def test_only_mapped_events_are_sent_and_never_under_their_own_name(warehouse):
    warehouse.add(staged("view"), staged("cart", source_event_name="cart_viewed",
                                         event_type="cart_view"),
                  staged("video", source_format="segment",
                         source_event_name="Video Playback Started", event_type="other"),
                  staged("made-up", source_format="segment", source_event_name="Wishlist Shared",
                         event_type="other"))
    warehouse.build()
    assert sorted(warehouse.rows) == ["video", "view"]
    assert warehouse.payload("video")["event_name"] == "watch_video"
    assert warehouse.payload("view")["event_name"] == "page_visit"


def test_event_map_and_send_events_are_configuration(warehouse):
    warehouse.add(staged("view"), staged("product", source_event_name="product_viewed"),
                  staged("cart", source_event_name="product_added_to_cart",
                         event_type="add_to_cart"))
    event_map = {**DEFAULT_EVENT_MAP, "product_viewed": "custom"}
    del event_map["page_viewed"]
    warehouse.build(event_map=event_map)
    assert {key: row["payload"]["event_name"] for key, row in warehouse.rows.items()} == {
        "product": "custom", "cart": "add_to_cart"}

    class Settings:
        default_region, max_event_age_days, max_future_skew_seconds = "US", 7, 600
        attribution_window_days, consent_policy, ldp_regions = 30, "skip", ["US-CA"]
        partner_name, value_source, hashed_on_arrival, junk_emails = None, "merchandise", [], []
        event_map = {"page_viewed": ""}
        send_events = ["add_to_cart"]

    config = PayloadConfig.from_settings(Settings, NOW)
    assert set(config.event_map.values()) == {"add_to_cart"}
    assert "page_viewed" not in config.event_map
    with pytest.raises(PayloadConfigError, match="purchase"):
        PayloadConfig(now=NOW, event_map={"checkout_completed": "purchase"})


def test_event_time_is_whole_seconds_and_old_or_future_events_are_skipped(warehouse):
    warehouse.add(staged("late-ms", event_time=NOON + timedelta(milliseconds=999)),
                  staged("old", event_time=NOW - timedelta(days=8), partition_date=DAY),
                  staged("ahead", event_time=NOW + timedelta(hours=1)),
                  staged("skew", event_time=NOW + timedelta(minutes=5)))
    warehouse.build()
    assert warehouse.payload("late-ms")["event_time"] == int(NOON.timestamp())
    assert warehouse.rows["old"]["skip_reason"] == "too_old"
    assert warehouse.rows["ahead"]["skip_reason"] == "future_time"
    assert warehouse.rows["skew"]["eligible"]
    warehouse.build(max_event_age=timedelta(days=10))
    assert warehouse.rows["old"]["eligible"]


def test_identifiers_are_merged_event_first_then_profile(warehouse):
    warehouse.add(staged("buy", source_event_name="checkout_completed", event_type="purchase",
                         email="Jane.Doe@Example.com ", customer_id="C-7",
                         phone="07400 123456", country="GB", order_id="55"),
                  visitor="v1",
                  profile={"email": "jane@work.example", "customer_id": "C-7",
                           "phone": "(415) 555-0132", "country": "US"})
    warehouse.build()
    user = warehouse.payload("buy")["user_data"]
    assert user["em"] == [sha("jane.doe@example.com"), sha("jane@work.example")]
    assert user["external_id"] == [sha("C-7")]
    # Each number is read in its own record's country: the event's in Britain, the
    # profile's national number in the profile's United States.
    assert user["ph"] == [sha("447400123456"), sha("14155550132")]
    assert user["country"] == [sha("gb")]
    assert user["client_ip_address"] == "203.0.113.5" and user["client_user_agent"] == UA


def test_an_event_takes_its_visitor_from_its_own_days_identity_row(warehouse):
    # identity.event_visitors is keyed by (partition_date, event_key): enrich reads the day's
    # rows only. A row of another day under the same key (never written by identity) is not
    # the event's, and would otherwise join in a second visitor and a second event.
    warehouse.add(staged("buy", source_event_name="checkout_completed", event_type="purchase",
                         order_id="56"),
                  visitor="v1", profile={"email": "jane@work.example"})
    warehouse.conn.execute(
        "INSERT INTO identity.event_visitors (event_key, partition_date, visitor_id, "
        "event_time, node_ids, anchor_node_id) VALUES ('k-buy', ?, 'v-old', ?, [], 0)",
        [DAY - timedelta(days=2), NOON - timedelta(days=2)])
    warehouse.conn.execute(
        "INSERT INTO identity.visitor_profiles (visitor_id, identifiers, events, email) "
        "VALUES ('v-old', 1, 1, 'old@other.example')")
    built = warehouse.build()
    assert built.rows == 1
    assert warehouse.payload("buy")["user_data"]["em"] == [sha("jane@work.example")]


def test_profile_country_reads_a_national_phone(warehouse):
    warehouse.add(staged("view", phone="020 7946 0958"), visitor="v2",
                  profile={"country": "United Kingdom"})
    warehouse.build(default_region="US")
    assert warehouse.payload("view")["user_data"]["ph"] == [sha("442079460958")]


def test_placeholders_and_junk_are_left_out_and_counted(warehouse):
    warehouse.add(staged("view", email="test@test.com", phone="0000000000", first_name="n/a",
                         city="  ", advertising_id="00000000-0000-0000-0000-000000000000",
                         search_string="call +1 415 555 0100", page_url="javascript:x"))
    warehouse.build()
    payload = warehouse.payload("view")
    assert set(payload["user_data"]) == {"client_ip_address", "client_user_agent"}
    assert sha("") not in json.dumps(payload)
    assert "custom_data" not in payload and "event_source_url" not in payload
    assert set(warehouse.rows["view"]["dropped"]) == {
        "em", "ph", "fn", "ct", "hashed_maids", "search_string", "event_source_url"}


def test_a_field_configured_as_hashed_that_is_not_a_hash_is_dropped(warehouse):
    digest = sha("someone@example.com")
    warehouse.add(staged("a", email=digest.upper()), staged("b", email="someone@example.com"))
    built = warehouse.build(hashed_on_arrival=frozenset({"em"}))
    assert warehouse.payload("a")["user_data"]["em"] == [digest]
    assert "em" not in warehouse.payload("b")["user_data"]
    assert built.not_hashed_on_arrival == {"em": 1}


def test_app_events_carry_hashed_maids_and_the_device_opt_out(warehouse):
    idfa = "6D92078A-8246-4BA4-AE5B-76104861E7DC"
    warehouse.add(staged("ios", source_format="segment", source_event_name="Product Viewed",
                         action_source="app_ios", advertising_id=idfa,
                         ad_tracking_allowed=False, ip=None, user_agent=None, page_url=None),
                  staged("android", source_format="segment", source_event_name="screen",
                         action_source="app_android", advertising_id=idfa.lower(),
                         ad_tracking_allowed=True, ip=None, user_agent=None, page_url=None))
    warehouse.build()
    ios, android = warehouse.payload("ios"), warehouse.payload("android")
    assert ios["user_data"] == {"hashed_maids": [sha(idfa.lower())]}
    assert ios["action_source"] == "app_ios" and ios["opt_out"] is True
    assert android["user_data"]["hashed_maids"] == [sha(idfa.lower())]
    assert "opt_out" not in android
    assert warehouse.rows["ios"]["eligible"]


def test_refused_marketing_is_skipped_or_sent_opted_out_by_policy(warehouse):
    earlier = NOON - timedelta(hours=1)
    warehouse.add(staged("stated", event_time=earlier, marketing_allowed=False),
                  staged("later", email="x@example.com"), visitor="v3", profile={})
    warehouse.add(staged("unstated", email="y@example.com"))
    warehouse.build()
    assert warehouse.rows["stated"]["skip_reason"] == "no_consent"
    # The visitor's refusal an hour earlier still holds for the later event.
    assert warehouse.rows["later"]["skip_reason"] == "no_consent"
    assert warehouse.rows["unstated"]["eligible"]
    assert "opt_out" not in warehouse.payload("unstated")

    warehouse.build(consent_policy="opt_out")
    assert warehouse.rows["later"]["eligible"]
    assert warehouse.payload("later")["opt_out"] is True


def test_sale_refused_in_an_ldp_state_is_flagged_ldp_with_state_and_country(warehouse):
    warehouse.add(staged("ca", email="c@example.com", state="California", country="US",
                         sale_of_data_allowed=False),
                  staged("tx", email="t@example.com", state="TX", country="US",
                         sale_of_data_allowed=False),
                  staged("ok", email="o@example.com", state="CA", country="US",
                         sale_of_data_allowed=True))
    warehouse.build()
    ca = warehouse.payload("ca")
    assert ca["custom_data"]["opt_out_type"] == "LDP" and "opt_out" not in ca
    assert ca["user_data"]["st"] == [sha("ca")] and ca["user_data"]["country"] == [sha("us")]
    tx = warehouse.payload("tx")
    assert tx["opt_out"] is True and "custom_data" not in tx
    assert "opt_out" not in warehouse.payload("ok")
    assert "custom_data" not in warehouse.payload("ok")


def test_partner_name_only_when_configured_and_in_pinterests_form(warehouse):
    warehouse.add(staged("view"))
    warehouse.build()
    assert "partner_name" not in warehouse.payload("view")
    warehouse.build(partner_name="ss-capipipeline")
    assert warehouse.payload("view")["partner_name"] == "ss-capipipeline"
    with pytest.raises(PayloadConfigError, match="ss-<name>"):
        PayloadConfig(now=NOW, partner_name="Capi Pipeline")


def test_custom_data_types_currency_and_value_definition(warehouse):
    items = [{"id": "7", "name": "Mug", "price": "19.50", "quantity": 2, "brand": "Acme",
              "category": "Kitchen"},
             {"id": "B-2", "name": "Cup", "price": "10.00", "quantity": 1, "brand": None,
              "category": "Kitchen"}]
    warehouse.add(staged("buy", source_event_name="checkout_completed", event_type="purchase",
                         email="b@example.com", value="45.00", currency="eur", items=items,
                         num_items=3, order_id="1001"),
                  staged("odd", source_event_name="product_added_to_cart",
                         event_type="add_to_cart", value="5.00", currency="zzz",
                         items=[{"id": "9", "price": "5.00", "quantity": 1}], num_items=1))
    warehouse.build()
    custom = warehouse.payload("buy")["custom_data"]
    assert custom == {
        "currency": "EUR", "value": "45", "content_ids": ["7", "B-2"],
        "contents": [
            {"id": "7", "item_price": "19.5", "quantity": 2, "item_name": "Mug",
             "item_category": "Kitchen", "item_brand": "Acme"},
            {"id": "B-2", "item_price": "10", "quantity": 1, "item_name": "Cup",
             "item_category": "Kitchen"}],
        "num_items": 3, "order_id": "1001", "content_category": "Kitchen",
    }
    odd = warehouse.payload("odd")["custom_data"]
    assert "currency" not in odd and odd["value"] == "5"
    assert "currency" in warehouse.rows["odd"]["dropped"]

    warehouse.build(value_source="items")
    assert warehouse.payload("buy")["custom_data"]["value"] == "49"


def test_carts_sharing_items_each_keep_their_own_order_and_ids(warehouse):
    # The members of multi-item carts are written once per distinct list of items (and per
    # distinct item) and joined back: each cart must still list its own items, in its order,
    # with its repeated ids once; carts with the same list share it, even with NULL fields,
    # and a list differing in one field (NULL against a value) is not taken for another.
    mug = {"id": "7", "name": "Mug", "price": "19.50", "quantity": 1, "brand": None,
           "category": "Kitchen"}
    cup = {"id": "B-2", "name": "Cup", "price": "10.00", "quantity": 1, "brand": "Acme",
           "category": "Table"}
    cart = {"source_event_name": "checkout_completed", "event_type": "purchase",
            "email": "c@example.com"}
    warehouse.add(staged("x", items=[mug, cup], num_items=2, order_id="1", **cart),
                  staged("y", items=[cup, mug, {**mug, "quantity": 3}], num_items=5,
                         order_id="2", **cart),
                  staged("z", items=[mug, {**mug, "name": "a@b.example.com"}], num_items=2,
                         order_id="3", **cart),
                  staged("w", items=[mug, cup], num_items=2, order_id="4", **cart),
                  staged("u", items=[{**mug, "brand": "Acme"}, cup], num_items=2,
                         order_id="5", **cart))
    warehouse.build()
    mug_sent = {"id": "7", "item_price": "19.5", "quantity": 1, "item_name": "Mug",
                "item_category": "Kitchen"}
    cup_sent = {"id": "B-2", "item_price": "10", "quantity": 1, "item_name": "Cup",
                "item_category": "Table", "item_brand": "Acme"}
    custom = {key: warehouse.payload(key)["custom_data"] for key in "xyz"}
    assert custom["x"]["contents"] == [mug_sent, cup_sent]
    assert custom["x"]["content_ids"] == ["7", "B-2"] and "content_category" not in custom["x"]
    assert custom["y"]["contents"] == [cup_sent, mug_sent, {**mug_sent, "quantity": 3}]
    assert custom["y"]["content_ids"] == ["B-2", "7"]
    assert custom["z"]["contents"] == [mug_sent, {k: v for k, v in mug_sent.items()
                                                   if k != "item_name"}]
    assert custom["z"]["content_ids"] == ["7"] and custom["z"]["content_category"] == "Kitchen"
    assert warehouse.payload("w")["custom_data"]["contents"] == [mug_sent, cup_sent]
    assert warehouse.payload("u")["custom_data"]["contents"] == [
        {**mug_sent, "item_brand": "Acme"}, cup_sent]


def test_events_sharing_an_item_or_a_page_each_carry_their_own(warehouse):
    # enrich works out each distinct single item and page once and joins it back: events
    # that share one, differ in one field, or have none must each get exactly their own.
    mug = {"id": "7", "name": "Mug", "price": "19.50", "quantity": 1, "brand": None,
           "category": "Kitchen"}
    cart = {"source_event_name": "product_added_to_cart", "event_type": "add_to_cart",
            "num_items": 1}
    warehouse.add(
        staged("a", items=[mug], page_url="https://shop.example.com/p/7?utm=x", **cart),
        staged("b", items=[mug], page_url="https://shop.example.com/p/7#top", **cart),
        staged("c", items=[{**mug, "quantity": 2}], page_url="https://", **cart),
        staged("d", items=[{**mug, "name": "+1 415 555 0100"}],
               page_url="https://shop.example.com/a b", **cart),
        staged("e", items=[], page_url="https://shop.example.com/p/7"))
    warehouse.build()
    contents = {key: warehouse.payload(key).get("custom_data", {}).get("contents")
                for key in "abcde"}
    mug_sent = {"id": "7", "item_price": "19.5", "quantity": 1, "item_name": "Mug",
                "item_category": "Kitchen"}
    assert contents == {"a": [mug_sent], "b": [mug_sent], "c": [{**mug_sent, "quantity": 2}],
                        "d": [{k: v for k, v in mug_sent.items() if k != "item_name"}],
                        "e": None}
    urls = {key: warehouse.payload(key).get("event_source_url") for key in "abcde"}
    assert urls == {"a": "https://shop.example.com/p/7", "b": "https://shop.example.com/p/7",
                    "c": None, "d": None, "e": "https://shop.example.com/p/7"}
    assert "event_source_url" in warehouse.rows["c"]["dropped"]


def test_an_order_keyed_in_without_a_browser_is_offline_unless_the_buyer_browsed(warehouse):
    webhook = {"source_format": "shopify_webhook", "source_event_name": "orders/create",
               "event_type": "purchase", "action_source": "offline", "ip": None,
               "user_agent": None, "page_url": None}
    warehouse.add(staged("phone-order", email="p@example.com", order_id="1", **webhook))
    warehouse.add(staged("browsed", email="q@example.com", order_id="2", **webhook),
                  visitor="v4", profile={"web_seen_at": NOON - timedelta(minutes=30),
                                         "ip": "203.0.113.9", "user_agent": UA})
    warehouse.build()
    assert warehouse.payload("phone-order")["action_source"] == "offline"
    browsed = warehouse.payload("browsed")
    assert browsed["action_source"] == "web"
    assert browsed["user_data"]["client_ip_address"] == "203.0.113.9"


def test_without_em_maids_or_ip_and_agent_the_event_is_stored_not_eligible(warehouse):
    warehouse.add(staged("ip-only", user_agent=None), staged("both"))
    warehouse.build()
    assert warehouse.rows["ip-only"]["skip_reason"] == "no_identifier"
    assert warehouse.rows["both"]["eligible"]


def test_every_request_body_passes_pinterests_schema(warehouse):
    checker = BodyChecker()
    if checker.module is None:
        pytest.skip(MISSING_CHECKER)
    warehouse.add(
        staged("buy", source_event_name="checkout_completed", event_type="purchase",
               email="b@example.com", phone="+1 415 555 0132", first_name="Zoë",
               last_name="O'Neil", city="San José", state="CA", zip="95112", country="US",
               gender="female", date_of_birth="1990-04-01", customer_id="C-1",
               click_id="dj0yJnU9bGFuZGluZw", value="12.00", currency="usd",
               items=[{"id": 'quote"id', "name": "Mug \\ \"big\"", "price": "12.00",
                       "quantity": 1}], num_items=1, order_id="9",
               page_url="https://shop.example.com/thank_you?e=b@example.com"),
        staged("search", source_event_name="search_submitted", event_type="search",
               search_string="blue mugs", sale_of_data_allowed=False, state="CA",
               country="US"),
        staged("app", source_format="segment", source_event_name="Order Completed",
               event_type="purchase", action_source="app_android", ip=None, user_agent=None,
               advertising_id="38400000-8cf0-11bd-b23e-10b96e40000d"))
    warehouse.build(partner_name="ss-capipipeline")
    bodies = [json.loads(body) for body in request_bodies(warehouse.conn, DAY, batch_size=2)]
    assert [len(body["data"]) for body in bodies] in ([2, 1], [1, 2])
    assert checker.check(bodies) == []
    assert checker.events == 3
    # The checker itself refuses what Pinterest refuses.
    refused = {"data": [{**bodies[0]["data"][0], "event_name": "purchase"}]}
    assert checker.check([refused]) == ["data[0]: event_name 'purchase' is not a Pinterest event"]


def _plant_payload(conn, event_id: str, payload: str) -> None:
    """A row of capi.pinterest_events carrying the payload text given, as if enrich had built it."""
    conn.execute(
        "INSERT INTO capi.pinterest_events (partition_date, event_id, event_name, "
        "action_source, event_time, source_event_type, eligible, has_em, has_ph, "
        "has_external_id, has_click_id, has_ip_ua, has_hashed_maids, "
        "click_id_from_profile, payload) VALUES (?, ?, 'page_visit', 'web', 1, "
        "'page_view', true, true, false, false, false, false, false, false, ?)",
        [DAY, event_id, payload])


def test_check_finds_anything_that_is_neither_a_hash_nor_a_field_sent_unhashed(warehouse):
    warehouse.add(staged("clean", email="c@example.com"))
    warehouse.build()
    assert personal_data_problems(warehouse.conn) == {}

    def plant(event_id: str, payload: dict) -> None:
        _plant_payload(warehouse.conn, event_id, json.dumps(payload))

    base = warehouse.payload("clean")
    plant("raw-email", {**base, "user_data": {"em": ["jane@example.com"]}})
    plant("unknown", {**base, "custom_data": {"category_name": "Kitchen"}})
    plant("phone-text", {**base, "custom_data": {"search_string": "+44 20 7946 0958"}})
    plant("email-url", {**base, "event_source_url": "https://x.example/jane@example.com"})
    problems = personal_data_problems(warehouse.conn)
    assert problems == {
        "a hashed field that is not a lower-case SHA-256": 1,
        "a field Pinterest neither hashes nor takes unhashed": 1,
        "free text shaped like an email address or phone number": 1,
        "an unhashed field shaped like an email address": 1,
    }
    # The asset check of a partitioned run reads that day's payloads only.
    assert personal_data_problems(warehouse.conn, DAY) == problems
    assert personal_data_problems(warehouse.conn, DAY - timedelta(days=1)) == {}

    warehouse.conn.execute("DELETE FROM capi.pinterest_events WHERE event_id <> 'clean'")
    # The other text columns: a partitioned run reads its own day's rows (an old day's were
    # screened by that day's run, before anything of it was sent), every day's when None.
    old_day = DAY - timedelta(days=3)
    _plant_payload(warehouse.conn, "old-store", json.dumps(base))
    _plant_payload(warehouse.conn, "new-store", json.dumps(base))
    warehouse.conn.execute("UPDATE capi.pinterest_events SET partition_date = ?, "
                           "store = 'jane@example.com' WHERE event_id = 'old-store'", [old_day])
    warehouse.conn.execute("UPDATE capi.pinterest_events SET skip_reason = 'x jo%40example.org' "
                           "WHERE event_id = 'new-store'")
    store, reason = ("capi.pinterest_events.store: shaped like an email address",
                     "capi.pinterest_events.skip_reason: shaped like an email address")
    assert personal_data_problems(warehouse.conn) == {store: 1, reason: 1}
    assert personal_data_problems(warehouse.conn, DAY) == {reason: 1}
    assert personal_data_problems(warehouse.conn, old_day) == {store: 1}
    warehouse.conn.execute("DELETE FROM capi.pinterest_events WHERE event_id <> 'clean'")
    warehouse.conn.execute("CREATE TABLE capi.audit (note VARCHAR)")
    warehouse.conn.execute("INSERT INTO capi.audit VALUES ('mail jane@example.com')")
    assert personal_data_problems(warehouse.conn) == {
        "capi.audit.note: shaped like an email address": 1}
    # A table without partition_date is read whole by a partitioned run too.
    assert personal_data_problems(warehouse.conn, DAY) == {
        "capi.audit.note: shaped like an email address": 1}


def test_screened_check_counts_what_walking_every_payload_counts(warehouse):
    # The check walks with json_tree only the payloads a Python screen cannot clear; the
    # counts must be those of walking every payload, whatever the payload holds.
    from capi_pipeline.enrich.assets import (
        FREE_TEXT_PATHS,
        HASHED_PATHS,
        PAYLOAD_LEAKS_SQL,
        SCREEN_GRAMMAR,
        UNHASHED_PATHS,
        _certainly_clean,
        payload_problems,
    )

    def cleared_by_grammar(payload: str) -> bool:
        return warehouse.conn.execute(
            "SELECT NOT contains($t, '@') AND NOT contains($t, '%40') "
            "AND regexp_full_match($t, $g)", {"t": payload, "g": SCREEN_GRAMMAR}
        ).fetchall()[0][0]

    warehouse.add(staged("clean", email="c@example.com", source_event_name="checkout_completed",
                         event_type="purchase", order_id="9", num_items=1, items=[
                             {"id": "7", "name": "Café Cups (Set of 2)", "price": "19.50",
                              "quantity": 1, "brand": 'Acme "Pro"', "category": "Kitchen"}]))
    warehouse.build()
    text = warehouse.conn.execute(
        "SELECT payload::VARCHAR FROM capi.pinterest_events").fetchall()[0][0]
    assert _certainly_clean(text.encode()), "a builder's payload should pass the screen"
    ascii_text = text.replace("Café", "Cafe").replace('Acme \\"Pro\\"', "Acme Pro")
    assert cleared_by_grammar(ascii_text), "an ASCII builder's payload should pass the grammar"
    assert cleared_by_grammar(text), "an accent or an escaped quote should pass the grammar"
    base = json.loads(text)
    digest = base["user_data"]["em"][0]
    user, custom = base["user_data"], base["custom_data"]
    item = custom["contents"][0]
    planted = [
        # A duplicate key: the first, refused, value is hidden from a dict but not from SQL.
        text.replace('{"em":["', '{"em":["NOT-A-DIGEST"],"em":["', 1),
        json.dumps({**base, "user_data": {**user, "em": [digest.upper()]}}),
        json.dumps({**base, "user_data": {**user, "em": [None]}}),
        json.dumps({**base, "user_data": {**user, "em": [[digest]]}}),
        json.dumps({**base, "user_data": {**user, "ph": digest}}),
        json.dumps({**base, "user_data.em": [digest]}),
        json.dumps({**base, "event_id": "jane%40example.com"}),
        json.dumps({**base, "custom_data": {**custom, "value": 19.5,
                                            "search_string": "٠١٢٣٤٥٦٧"}}),
        json.dumps({**base, "custom_data": {**custom, "search_string": '12"34"567'}}),
        json.dumps({**base, "custom_data": {**custom, "search_string": "tel 0207 946 0958"}}),
        json.dumps({**base, "custom_data": {**custom, "contents": [
            {**item, "item_name": 1234567}]}}),
        json.dumps({**base, "custom_data": {**custom, "contents": [{**item, "colour": "red"}]}}),
        json.dumps({**base, "custom_data": {**custom, "contents": [
            {**item, "item_brand": "a\nb"}]}}),
        json.dumps({**base, "custom_data": {**custom, "content_category": "x\u00011234567"}}),
        json.dumps({**base, "custom_data": {**custom, "content_ids": [{"id": "7"}]}}),
        json.dumps({**base, "opt_out": None, "partner_name": "ss-a@b.example.org"}),
        json.dumps({**base, "user_data": {**user, "em": []}, "custom_data": {}}),
        # What the grammar (DuckDB's tier) must not clear: escapes spelling an @ or digits
        # (the text holds a backslash and u0040 or u0030), seven digits, whitespace, a null, a
        # float, an object where a value goes, a bad or duplicate digest, an unknown key.
        ascii_text.replace('"order_id":"', '"search_string":"jane\\u0040x.example.com",'
                           '"order_id":"', 1),
        ascii_text.replace('"order_id":"', '"search_string":"t\\u0030207946095",'
                           '"order_id":"', 1),
        json.dumps({**base, "custom_data": {**custom, "search_string": "tel 0207946095"}}),
        ascii_text.replace('"order_id":"', '"search_string":"call 2079460","order_id":"', 1),
        ascii_text.replace('"order_id":"', '"search_string":"call 207946","order_id":"', 1),
        json.dumps({**base, "custom_data": {**custom, "content_category": "020 7946 0958"}}),
        ascii_text.replace('"event_name":', '"event_name" :', 1),
        ascii_text.replace('{"event_name":"', '{"event_id":null,"event_name":"', 1),
        ascii_text.replace('{"event_name":"', '{"event_time":1.5,"event_name":"', 1),
        ascii_text.replace('{"event_name":"', '{"event_id":{"a":"b"},"event_name":"', 1),
        ascii_text.replace('"em":["', '"em":["0123","', 1),
        ascii_text.replace('"em":["', '"em":["%s"],"em":["' % ("A" * 64), 1),
        ascii_text.replace('"item_name":"', '"item_name":"0207946', 1),
        ascii_text.replace('"item_brand":"', '"colour":"red","item_brand":"', 1),
        ascii_text.replace('"item_brand":"', '"item_brand":"x\\"1234567\\"', 1),
        # Characters the grammar leaves to the Python screen: a line separator, a soft
        # hyphen, an escaped accent, a full-width @.
        ascii_text.replace('"item_name":"', '"item_name":"Café 555-123-4567 ', 1),
        ascii_text.replace('"item_name":"', '"item_name":"\\"020\\" 7946 0958', 1),
        ascii_text.replace('"item_name":"', '"item_name":"x\u2028 1234567', 1),
        ascii_text.replace('"item_name":"', '"item_name":"x\u00ad', 1),
        ascii_text.replace('"item_name":"', '"item_name":"Caf\\u00e9', 1),
        ascii_text.replace('"item_name":"', '"item_name":"jane\uff20example.com ', 1),
    ]
    # Free text the grammar reads as letters: accents, dashes, escaped quotes and backslashes,
    # here around six digits in all (the item's name ends in "Set of 2"). json_tree must
    # write them back as they are: a U+2010 written as an escape would bring four digits of
    # its own, and the walk would find seven in a row.
    letters = [
        ascii_text.replace('"item_name":"', '"item_name":"Size \u2010123 \\"x\\" é–45', 1),
        ascii_text.replace('"item_name":"', '"item_name":"a\\\\\\"1ſ2¡3¬4®5‧\\\\', 1),
    ]
    for payload in letters:
        assert cleared_by_grammar(payload), payload
    planted += letters
    for number, payload in enumerate(planted):
        warehouse.conn.execute("DELETE FROM capi.pinterest_events")
        _plant_payload(warehouse.conn, f"planted-{number}", payload)
        walked = {problem: int(n) for problem, n in warehouse.conn.execute(PAYLOAD_LEAKS_SQL, {
            "hashed": HASHED_PATHS, "unhashed": UNHASHED_PATHS, "free_text": FREE_TEXT_PATHS,
            "day": None}).fetchall()}
        assert payload_problems(warehouse.conn) == walked, payload
        assert payload_problems(warehouse.conn, DAY) == walked, payload
        if walked:
            assert not _certainly_clean(payload.encode()), payload
            assert not cleared_by_grammar(payload), payload


def test_config_refuses_settings_pinterest_would_refuse():
    config = PayloadConfig(now=NOW)
    for change, message in (({"consent_policy": "maybe"}, "consent_policy"),
                            ({"value_source": "total"}, "value_source"),
                            ({"hashed_on_arrival": frozenset({"email"})}, "hashed_on_arrival"),
                            ({"ldp_regions": ("California",)}, "ldp_regions"),
                            ({"default_region": "Atlantis"}, "default_region")):
        with pytest.raises(PayloadConfigError, match=message):
            replace(config, **change)
