"""Staging in SQL against the Python reference (extract.py), row for row and column for column."""

import json
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import duckdb
import orjson
import polars as pl
import pytest

from capi_pipeline.demo.generate import generate
from capi_pipeline.ingest.load import sync_landing
from capi_pipeline.lib.duck import ensure_schema
from capi_pipeline.staging.assets import STAGING_SCHEMA, reference_rows
from capi_pipeline.staging.sql import build_staging
from capi_pipeline_tests.fixtures import GOOGLEBOT, MISSING_SHARED, VALMI

NOW = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)


def _load(tmp_path, lines: list[bytes] | None = None, demo: bool = False):
    landing = tmp_path / "landing"
    landing.mkdir()
    if demo:
        generate(landing, date(2026, 12, 2), days=2, visitors_per_day=80, seed=5)
    if lines:
        (landing / "extra.ndjson").write_bytes(b"\n".join(lines) + b"\n")
    conn = duckdb.connect(":memory:")
    ensure_schema(conn)
    sync_landing(conn, landing, NOW, timedelta(minutes=10))
    return conn


def _days(conn) -> list[date]:
    return [row[0] for row in conn.execute(
        "SELECT DISTINCT partition_date FROM raw.events ORDER BY 1").fetchall()]


def _assert_same_as_reference(conn, day) -> pl.DataFrame:
    sql = pl.from_arrow(build_staging(conn, day)).select(list(STAGING_SCHEMA)).sort("event_key")
    reference = pl.DataFrame(reference_rows(conn, day), schema=STAGING_SCHEMA,
                             orient="row").sort("event_key")
    assert sql.height == reference.height
    for column in STAGING_SCHEMA:
        if column == "event_id":
            # events without an id get a content hash; SQL and Python hash different texts
            mask = [not value.startswith("h-") for value in reference[column].to_list()]
            left = [v for v, keep in zip(sql[column].to_list(), mask, strict=True) if keep]
            right = [v for v, keep in zip(reference[column].to_list(), mask, strict=True)
                     if keep]
        else:
            left, right = sql[column].to_list(), reference[column].to_list()
        mismatches = [(key, a, b) for key, a, b in zip(
            reference["event_key"].to_list(), left, right, strict=False) if a != b]
        assert not mismatches, (column, mismatches[:3])
    return sql


def test_sql_staging_equals_the_python_reference_on_demo_days(tmp_path):
    conn = _load(tmp_path, demo=True)
    days = _days(conn)
    assert len(days) >= 2
    frames = [_assert_same_as_reference(conn, day) for day in days]
    frame = pl.concat(frames)
    # the comparison covered what matters: purchases merged, bots, values, items
    assert frame.filter(pl.col("duplicate_of").is_not_null()).height > 0
    assert frame.filter(pl.col("is_bot")).height > 0
    assert frame.filter(pl.col("event_type") == "purchase")["value"].is_not_null().all()
    assert frame.filter(pl.col("num_items") > 1).height > 0


def _webhook(order_id: int, subtotal, currency="EUR", **extra) -> bytes:
    body = {"id": order_id, "order_number": order_id, "line_items": [
        {"product_id": 7, "title": "Tee", "price": subtotal, "quantity": "2"}],
        "processed_at": "2026-12-01T10:00:00+01:00", "subtotal_price": subtotal,
        "currency": currency, "email": " Sam@Example.com ", "browser_ip": "10.0.0.1, 203.0.113.5",
        **extra}
    return orjson.dumps({"received_at": "2026-12-01T09:00:05Z", "topic": "orders/paid",
                         "body": body})


def test_money_placeholders_ips_and_test_orders(tmp_path):
    lines = [
        _webhook(1, "$1,299.00", currency="USD"),
        _webhook(2, "1.299,00 EUR"),
        _webhook(3, "undefined"),
        _webhook(4, 12.5, test=True),
        _webhook(5, "-3.00"),
        _webhook(6, {"shop_money": {"amount": "7.10", "currency_code": "GBP"}}),
        orjson.dumps({"received_at": "2026-12-01T09:00:05Z", "ip": "[2001:db8::1]:443",
                      "user_agent": GOOGLEBOT, "body": {
                          "id": "px-1", "name": "page_viewed", "clientId": "null",
                          "timestamp": "2026-12-01T09:00:00Z", "context": {"document": {
                              "location": {"href": "https://Shop.Example.com/password?epik=ab%2Bc"}
                          }}}}),
    ]
    conn = _load(tmp_path, lines)
    (day,) = _days(conn)
    frame = _assert_same_as_reference(conn, day)
    rows = {row["event_id"]: row for row in frame.to_dicts()}
    assert (rows["order-1-paid"]["value"], rows["order-1-paid"]["currency"]) == (
        Decimal("1299.00"), "USD")
    assert (rows["order-2-paid"]["value"], rows["order-2-paid"]["currency"]) == (
        Decimal("1299.00"), "EUR")
    assert (rows["order-3-paid"]["value"], rows["order-3-paid"]["currency"]) == (None, "EUR")
    assert rows["order-4-paid"]["is_test"] and not rows["order-1-paid"]["is_test"]
    assert rows["order-5-paid"]["value"] is None
    assert (rows["order-6-paid"]["value"], rows["order-6-paid"]["currency"]) == (
        Decimal("7.10"), "GBP")
    assert rows["order-1-paid"]["ip"] == "203.0.113.5"
    assert rows["order-1-paid"]["email"] == "Sam@Example.com"
    assert rows["order-1-paid"]["items"][0]["quantity"] == 2
    pixel = rows["px-1"]
    assert (pixel["client_id"], pixel["ip"], pixel["is_bot"], pixel["is_test"]) == (
        None, "2001:db8::1", True, True)
    assert (pixel["store"], pixel["click_id"]) == ("shop.example.com", "ab+c")



def _pixel_event(event_id: str, name: str, data: dict) -> bytes:
    return orjson.dumps({"received_at": "2026-12-01T09:00:05Z", "body": {
        "id": event_id, "name": name, "clientId": f"c-{event_id}",
        "timestamp": "2026-12-01T09:00:00Z", "data": data}})


def _variant(product: str, price) -> dict:
    return {"id": f"v-{product}", "price": price, "title": f"Size of {product}",
            "product": {"id": product, "title": f"The {product}", "vendor": "Acme",
                        "type": "Tees"}}


def test_pixel_items_read_once_per_source_are_each_events_own(tmp_path):
    """A pixel event's items come from whichever source it has (checkout line items, product
    variant, cart line, cart, collection), read once per distinct source and given back to
    every event holding it: each event gets its own source's items, money and cart token."""
    tee = _variant("tee", {"amount": 12.5, "currencyCode": "USD"})
    cap = _variant("cap", "$7.00")
    lines = [
        _pixel_event("a1", "product_viewed", {"productVariant": tee}),
        _pixel_event("a2", "product_viewed", {"productVariant": tee}),
        _pixel_event("b1", "product_viewed", {"productVariant": cap}),
        _pixel_event("c1", "product_added_to_cart", {"cartLine": {
            "quantity": "3", "merchandise": cap,
            "cost": {"totalAmount": {"amount": "21.00", "currencyCode": "USD"}}}}),
        _pixel_event("d1", "cart_viewed", {"cart": {
            "id": "cart-9", "lines": [{"quantity": 2, "merchandise": tee},
                                      {"quantity": 1, "merchandise": cap}],
            "cost": {"totalAmount": {"amount": "32.00", "currencyCode": "USD"}}}}),
        _pixel_event("d2", "cart_viewed", {"cart": {"id": "cart-8", "lines": "none"}}),
        _pixel_event("e1", "collection_viewed", {"collection": {
            "productVariants": [tee, cap, tee]}}),
        _pixel_event("f1", "checkout_completed", {"checkout": {
            "token": "tok-1", "subtotalPrice": {"amount": "19.50", "currencyCode": "USD"},
            "lineItems": [{"quantity": 1, "variant": tee}, {"quantity": "1", "variant": cap}],
            "order": {"id": "gid://shopify/Order/55"}}}),
        _pixel_event("f2", "checkout_started", {"checkout": {"token": "tok-2",
                                                             "lineItems": {"not": "a list"}}}),
        _pixel_event("g1", "search_submitted", {"searchResult": {"query": "tee"}}),
    ]
    conn = _load(tmp_path, lines)
    (day,) = _days(conn)
    rows = {row["event_id"]: row for row in _assert_same_as_reference(conn, day).to_dicts()}

    def items(event_id):
        return [(i["id"], i["price"], i["quantity"]) for i in rows[event_id]["items"]]

    assert items("a1") == items("a2") == [("tee", Decimal("12.50"), 1)]
    assert items("b1") == [("cap", Decimal("7.00"), 1)]
    assert (rows["a1"]["value"], rows["b1"]["value"]) == (Decimal("12.50"), Decimal("7.00"))
    assert items("c1") == [("cap", Decimal("7.00"), 3)] and rows["c1"]["num_items"] == 3
    assert rows["c1"]["value"] == Decimal("21.00")
    assert items("d1") == [("tee", Decimal("12.50"), 2), ("cap", Decimal("7.00"), 1)]
    assert (rows["d1"]["cart_token"], rows["d1"]["value"]) == ("cart-9", Decimal("32.00"))
    assert (items("d2"), rows["d2"]["cart_token"]) == ([], "cart-8")
    assert [i[0] for i in items("e1")] == ["tee", "cap", "tee"]
    assert items("f1") == [("tee", Decimal("12.50"), 1), ("cap", Decimal("7.00"), 1)]
    assert (rows["f1"]["value"], rows["f1"]["order_id"]) == (Decimal("19.50"), "55")
    assert (items("f2"), rows["f2"]["checkout_token"]) == ([], "tok-2")
    assert (items("g1"), rows["g1"]["search_string"]) == ([], "tee")

@pytest.mark.skipif(not VALMI.exists(), reason=MISSING_SHARED)
def test_real_webhooks_and_pixel_capture_stage_like_the_reference(tmp_path):
    lines = (VALMI / "pixel_events.ndjson").read_bytes().splitlines()
    for path in sorted((VALMI / "webhooks").glob("order_*.json")):
        body = json.loads(path.read_text())
        lines.append(orjson.dumps({"received_at": body.get("updated_at"), "body": body}))
    conn = _load(tmp_path, lines)
    days = _days(conn)
    frames = [_assert_same_as_reference(conn, day) for day in days]
    orders = pl.concat(frames).filter(pl.col("source_format") == "shopify_webhook")
    assert orders.height == 3
    assert orders["is_test"].all()
    assert orders["value"].is_not_null().all()


def test_rerunning_a_day_gives_the_same_rows(tmp_path):
    conn = _load(tmp_path, demo=True)
    day = _days(conn)[0]
    first = build_staging(conn, day)
    second = build_staging(conn, day)
    assert first.num_rows > 100
    assert first.equals(second)


def test_capi_clean_in_sql_agrees_with_the_python_clean():
    """The SQL macro takes a shortcut for text that cannot be a placeholder or need trimming;
    on every side of that shortcut it must give what `normalize.clean` gives."""
    from capi_pipeline.enrich.normalize import PLACEHOLDERS, clean
    from capi_pipeline.ingest.fastpath import MACROS

    conn = duckdb.connect(":memory:")
    conn.execute(MACROS)
    values = ["", " ", "a", "ab", "é", "x\u00a0", "\ufeffabc", "ab\u200b", " x ", "\tx\n",
              "unknown-but-long-value", "uk", "n", "Nil ", "[object Object]", "#N/A", "<null>",
              "(null)", "--", "?", None]
    values += [p for p in PLACEHOLDERS] + [p.upper() for p in PLACEHOLDERS]
    values += [f" {p}\u200b" for p in PLACEHOLDERS]
    got = [conn.execute("SELECT capi_clean(?::VARCHAR)", [v]).fetchall()[0][0] for v in values]
    assert got == [clean(v) for v in values]
    assert got[values.index("x\u00a0")] == "x" and got[values.index("uk")] == "uk"
