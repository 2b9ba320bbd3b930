"""Tests for the demo landing-file generator (``capi_pipeline.demo.generate``)."""

from __future__ import annotations

import gzip
import ipaddress
import re
import time
from collections import Counter
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import orjson
import phonenumbers
import pytest

from capi_pipeline.demo.generate import BAD_LINE_KINDS, generate, main

END = date(2024, 5, 3)
DAYS = 3
VISITORS = 300
SEED = 11
DAY_NAMES = [(END - timedelta(days=DAYS - 1 - i)).isoformat() for i in range(DAYS)]
LAYOUT = {
    "pixel": ("pixel", "events-000.ndjson.gz"),
    "segment": ("segment", "events-000.ndjson"),
    "webhook": ("webhooks", "orders-000.ndjson"),
}

ISO_MS_Z = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
STORE_TIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d-05:00$")
UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
PIXEL_ID = re.compile(r"^sh-[0-9a-f]{8}-[0-9A-F]{4}-[0-9A-F]{4}-[0-9A-F]{4}-[0-9A-F]{12}$")
PRICE_TEXT = re.compile(r"^\d+\.\d\d$")
PIXEL_NAMES = {
    "page_viewed", "product_viewed", "collection_viewed", "search_submitted",
    "product_added_to_cart", "cart_viewed", "checkout_started",
    "checkout_contact_info_submitted", "checkout_address_info_submitted",
    "payment_info_submitted", "checkout_completed",
}
SEGMENT_EVENTS = {
    "Product Viewed", "Product Added", "Checkout Started", "Order Completed",
    "Products Searched", "Product List Viewed",
}
DOC_NETS = [ipaddress.ip_network(n) for n in ("203.0.113.0/24", "198.51.100.0/24",
                                               "2001:db8::/32", "10.0.0.0/8")]
BOT_MARKERS = ("bot", "Googlebot", "HeadlessChrome", "AhrefsBot", "SemrushBot")


def _classify(raw: bytes) -> Any:
    """Return the parsed object of a good line, or the bad-line kind it is."""
    if raw.strip() == b"":
        return "blank"
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return "invalid_utf8"
    try:
        obj = orjson.loads(text)
    except orjson.JSONDecodeError:
        return "truncated"
    if isinstance(obj, list):
        return "json_array"
    assert isinstance(obj, dict), raw[:80]
    return obj


def _read(root: Path, kind: str, day: str) -> list[bytes]:
    folder, name = LAYOUT[kind]
    data = (root / folder / day / name).read_bytes()
    if name.endswith(".gz"):
        data = gzip.decompress(data)
    assert data.endswith(b"\n")
    return data.split(b"\n")[:-1]


def _utc_day(value: Any) -> str:
    if isinstance(value, int):
        return datetime.fromtimestamp(value / 1000, UTC).date().isoformat()
    return datetime.fromisoformat(value.replace("Z", "+00:00")).astimezone(UTC).date().isoformat()


def _prev(day: str) -> str:
    return (date.fromisoformat(day) - timedelta(days=1)).isoformat()


def _segment_messages(obj: dict[str, Any]) -> list[dict[str, Any]]:
    return obj["batch"] if "batch" in obj else [obj]


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("landing")
    began = time.perf_counter()
    summary = generate(root, END, days=DAYS, visitors_per_day=VISITORS, seed=SEED)
    elapsed = time.perf_counter() - began
    files: dict[tuple[str, str], list[bytes]] = {}
    parsed: dict[tuple[str, str], list[Any]] = {}
    for kind in LAYOUT:
        for day in DAY_NAMES:
            raw = _read(root, kind, day)
            files[kind, day] = raw
            parsed[kind, day] = [_classify(line) for line in raw]
    pixel: list[tuple[str, dict[str, Any], dict[str, Any]]] = []
    for day in DAY_NAMES:
        for obj in parsed["pixel", day]:
            if isinstance(obj, dict):
                body = obj["body"]
                pixel.append((day, obj, orjson.loads(body) if isinstance(body, str) else body))
    return {"root": root, "summary": summary, "elapsed": elapsed, "files": files,
            "parsed": parsed, "pixel": pixel}


def test_layout_has_one_file_per_kind_and_day(run: dict[str, Any]) -> None:
    root: Path = run["root"]
    on_disk = {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}
    expected = {f"{LAYOUT[k][0]}/{d}/{LAYOUT[k][1]}" for k in LAYOUT for d in DAY_NAMES}
    assert on_disk == expected
    assert run["summary"]["files_written"] == len(expected)
    assert set(run["summary"]["files"]) == expected
    # The pixel file is really gzip, the others plain text.
    assert (root / "pixel" / DAY_NAMES[0] / "events-000.ndjson.gz").read_bytes()[:2] == b"\x1f\x8b"
    assert (root / "segment" / DAY_NAMES[0] / "events-000.ndjson").read_bytes()[:1] == b"{"


def test_summary_line_counts_equal_disk(run: dict[str, Any]) -> None:
    summary = run["summary"]
    bad_types: Counter[str] = Counter()
    for kind in LAYOUT:
        good_total = bad_total = 0
        for day in DAY_NAMES:
            objs = run["parsed"][kind, day]
            good = sum(isinstance(o, dict) for o in objs)
            bad = [o for o in objs if not isinstance(o, dict)]
            rel = f"{LAYOUT[kind][0]}/{day}/{LAYOUT[kind][1]}"
            assert summary["files"][rel] == {"lines": good, "bad_lines": len(bad)}
            # Every file carries one bad line of each kind.
            assert sorted(bad) == sorted(BAD_LINE_KINDS), (rel, bad)
            bad_types.update(bad)
            good_total += good
            bad_total += len(bad)
        assert summary["lines"][kind] == good_total
        assert summary["bad_lines"][kind] == bad_total
    assert summary["bad_lines_by_type"] == dict(bad_types)
    assert summary["lines"]["pixel"] > 3 * summary["lines"]["webhook"] > 0


def test_duplicates_and_late_lines_match_summary(run: dict[str, Any]) -> None:
    summary = run["summary"]
    for kind in LAYOUT:
        good = [r for d in DAY_NAMES for r, o in zip(run["files"][kind, d],
                                                     run["parsed"][kind, d], strict=True)
                if isinstance(o, dict)]
        dups = sum(n - 1 for n in Counter(good).values())
        assert summary["duplicate_lines"][kind] == dups
    assert sum(summary["duplicate_lines"].values()) > 0
    late_pixel = sum(_utc_day(body["timestamp"]) < day for day, _, body in run["pixel"])
    assert summary["late_lines"]["pixel"] == late_pixel > 0
    late_segment = 0
    for day in DAY_NAMES:
        for obj in run["parsed"]["segment", day]:
            if isinstance(obj, dict):
                late_segment += _utc_day(_segment_messages(obj)[0]["timestamp"]) < day
    assert summary["late_lines"]["segment"] == late_segment


def test_pixel_lines_have_the_web_pixels_shape(run: dict[str, Any]) -> None:
    string_bodies = 0
    names: Counter[str] = Counter()
    seen: set[str] = set()
    for day, env, body in run["pixel"]:
        assert list(env) == ["received_at", "ip", "user_agent", "body"]
        assert ISO_MS_Z.match(env["received_at"])
        string_bodies += isinstance(env["body"], str)
        assert {"id", "name", "clientId", "timestamp", "context"} <= set(body)
        assert PIXEL_ID.match(body["id"]), body["id"]
        assert UUID.match(body["clientId"])
        assert ISO_MS_Z.match(body["timestamp"])
        assert _utc_day(body["timestamp"]) in (day, _prev(day))
        assert body["name"] in PIXEL_NAMES
        ctx = body["context"]
        loc = ctx["document"]["location"]
        assert {"href", "host", "pathname", "search", "origin"} <= set(loc)
        assert loc["href"] == loc["origin"] + loc["pathname"] + loc["search"]
        assert set(ctx["document"]) == {"location", "referrer", "characterSet", "title"}
        assert set(ctx["navigator"]) == {"language", "cookieEnabled", "languages", "userAgent"}
        assert ctx["window"]["location"] == loc
        assert ctx["navigator"]["userAgent"] == env["user_agent"]
        received = datetime.fromisoformat(env["received_at"].replace("Z", "+00:00"))
        stamped = datetime.fromisoformat(body["timestamp"].replace("Z", "+00:00"))
        assert timedelta(minutes=-15) < received - stamped < timedelta(hours=15)
        if body["id"] in seen:
            continue
        seen.add(body["id"])
        names[body["name"]] += 1
        data = body.get("data")
        if body["name"] == "page_viewed":
            assert data in (None, {})
        elif body["name"] == "product_viewed":
            pv = data["productVariant"]
            assert {"id", "title", "price", "product", "sku"} <= set(pv)
            assert set(pv["price"]) == {"amount", "currencyCode"}
            assert {"id", "title", "vendor", "type", "url"} <= set(pv["product"])
        elif body["name"] == "collection_viewed":
            assert {"id", "title", "productVariants"} <= set(data["collection"])
        elif body["name"] == "search_submitted":
            assert {"query", "productVariants"} <= set(data["searchResult"])
        elif body["name"] == "product_added_to_cart":
            line = data["cartLine"]
            assert line["cost"]["totalAmount"]["amount"] == pytest.approx(
                line["merchandise"]["price"]["amount"] * line["quantity"])
        elif body["name"].startswith(("checkout", "payment")):
            _check_checkout(body["name"], data["checkout"])
    summary = run["summary"]
    assert dict(names) == summary["pixel_events_by_name"]
    assert summary["string_bodies"] == string_bodies
    assert 0.05 < string_bodies / len(run["pixel"]) < 0.15
    assert names["checkout_completed"] > 0 and names["cart_viewed"] > 0


def _check_checkout(name: str, ck: dict[str, Any]) -> None:
    assert re.match(r"^[0-9a-f]{32}$", ck["token"])
    assert ck["currencyCode"] == "USD"
    subtotal = sum(li["variant"]["price"]["amount"] * li["quantity"] for li in ck["lineItems"])
    assert ck["subtotalPrice"]["amount"] == pytest.approx(subtotal)
    assert ck["totalPrice"]["amount"] > ck["subtotalPrice"]["amount"]
    for li in ck["lineItems"]:
        assert {"id", "title", "quantity", "variant"} <= set(li)
        assert {"id", "title", "vendor", "type"} <= set(li["variant"]["product"])
    if name in ("checkout_contact_info_submitted", "checkout_address_info_submitted"):
        assert ck["email"] == "" and ck["phone"] == ""
        assert ck["order"] == {}
    if name == "checkout_completed":
        assert ck["email"].strip()
        assert re.match(r"^\d+$", ck["order"]["id"])
        assert re.match(r"^\d+$", ck["order"]["customer"]["id"])
        addr = ck["shippingAddress"]
        assert {"firstName", "lastName", "address1", "city", "province", "provinceCode", "zip",
                "country", "countryCode", "phone"} <= set(addr)
        assert ck["totalPrice"]["amount"] == pytest.approx(
            ck["subtotalPrice"]["amount"] + ck["totalTax"]["amount"]
            + ck["shippingLine"]["price"]["amount"])


def test_segment_lines_have_the_spec_shape(run: dict[str, Any]) -> None:
    batches = messages = 0
    formatted_price = epoch_ms = identified = 0
    orders: set[str] = set()
    seen: set[bytes] = set()
    for day in DAY_NAMES:
        for raw, obj in zip(run["files"]["segment", day], run["parsed"]["segment", day],
                            strict=True):
            # Resent lines are byte copies; the summary counts each message once.
            if not isinstance(obj, dict) or raw in seen:
                continue
            seen.add(raw)
            if "batch" in obj:
                batches += 1
                assert set(obj) == {"batch", "sentAt"}
                assert len(obj["batch"]) >= 2
                assert all(m["sentAt"] == obj["sentAt"] for m in obj["batch"])
            for msg in _segment_messages(obj):
                messages += 1
                assert msg["type"] in ("track", "page", "identify")
                assert msg["messageId"].startswith("ajs-")
                assert UUID.match(msg["anonymousId"])
                assert ISO_MS_Z.match(msg["sentAt"]) and ISO_MS_Z.match(msg["receivedAt"])
                if isinstance(msg["timestamp"], int):
                    epoch_ms += 1
                else:
                    assert ISO_MS_Z.match(msg["timestamp"])
                assert _utc_day(msg["timestamp"]) in (day, _prev(day))
                ctx = msg["context"]
                assert ctx["library"]["name"] == "analytics.js"
                assert set(ctx["page"]) == {"url", "path", "referrer", "search", "title"}
                assert {"ip", "userAgent"} <= set(ctx)
                if msg["type"] == "track":
                    assert msg["event"] in SEGMENT_EVENTS
                    props = msg["properties"]
                    prices = [props.get("price"), props.get("total"), props.get("revenue")]
                    prices += [p["price"] for p in props.get("products", [])]
                    formatted_price += sum(isinstance(p, str) for p in prices)
                    if msg["event"] == "Order Completed":
                        assert msg["userId"].startswith("cust_")
                        assert {"order_id", "total", "revenue", "subtotal", "currency",
                                "products"} <= set(props)
                        orders.add(props["order_id"])
                elif msg["type"] == "identify":
                    identified += 1
                    assert {"email", "phone", "firstName", "lastName", "address"} <= set(
                        msg["traits"])
                    assert set(msg["traits"]["address"]) == {"city", "state", "postalCode",
                                                             "country"}
                else:
                    assert "event" not in msg
    summary = run["summary"]
    assert summary["segment_batches"] == batches
    assert summary["segment_messages"] == messages
    assert summary["segment_orders"] == len(orders) > 0
    assert batches > 0 and epoch_ms > 0 and formatted_price > 0 and identified > 0


def test_webhook_lines_have_the_order_shape(run: dict[str, Any]) -> None:
    for day in DAY_NAMES:
        for env in run["parsed"]["webhook", day]:
            if not isinstance(env, dict):
                continue
            assert list(env) == ["received_at", "topic", "shop_domain", "body"]
            assert env["topic"] == "orders/create"
            assert env["shop_domain"] == "demo-store.myshopify.com"
            order = env["body"]
            assert isinstance(order["id"], int) and isinstance(order["test"], bool)
            assert STORE_TIME.match(order["created_at"]) and STORE_TIME.match(
                order["processed_at"])
            assert _utc_day(order["created_at"]) in (day, _prev(day))
            for key in ("subtotal_price", "total_price", "total_tax"):
                assert PRICE_TEXT.match(order[key])
            subtotal = sum(float(li["price"]) * li["quantity"] for li in order["line_items"])
            assert float(order["subtotal_price"]) == pytest.approx(subtotal)
            assert float(order["total_price"]) > float(order["subtotal_price"])
            for li in order["line_items"]:
                assert {"id", "product_id", "variant_id", "sku", "title", "quantity",
                        "price"} <= set(li)
                assert isinstance(li["product_id"], int) and PRICE_TEXT.match(li["price"])
            assert set(order["client_details"]) >= {"user_agent", "accept_language",
                                                    "browser_ip"}
            assert order["browser_ip"] == order["client_details"]["browser_ip"]
            for key in ("billing_address", "shipping_address"):
                assert {"first_name", "last_name", "city", "province", "province_code", "zip",
                        "country", "country_code", "phone"} <= set(order[key])
            assert {"id", "email", "first_name", "last_name", "phone",
                    "default_address"} <= set(order["customer"])
            assert order["cancelled_at"] is None
            assert order["email"] == order["contact_email"] == order["email"].strip()


def test_orders_reconcile_between_pixel_and_webhooks(run: dict[str, Any]) -> None:
    pixel_tokens: dict[str, str] = {}
    for _, _, body in run["pixel"]:
        if body["name"] == "checkout_completed":
            ck = body["data"]["checkout"]
            pixel_tokens[ck["order"]["id"]] = ck["token"]
    hook_tokens: dict[str, str] = {}
    tests: set[str] = set()
    for day in DAY_NAMES:
        for env in run["parsed"]["webhook", day]:
            if isinstance(env, dict):
                oid = str(env["body"]["id"])
                hook_tokens[oid] = env["body"]["checkout_token"]
                if env["body"]["test"]:
                    tests.add(oid)
    shared = pixel_tokens.keys() & hook_tokens.keys()
    summary = run["summary"]
    assert summary["pixel_purchases"] == len(pixel_tokens)
    assert summary["webhook_orders"] == len(hook_tokens)
    assert summary["pixel_and_webhook_orders"] == len(shared)
    assert summary["webhook_only_orders"] == len(hook_tokens.keys() - pixel_tokens.keys()) > 0
    assert summary["pixel_only_orders"] == len(pixel_tokens.keys() - hook_tokens.keys())
    assert summary["test_orders"] == len(tests)
    assert summary["orders"] == len(pixel_tokens.keys() | hook_tokens.keys()) + summary[
        "segment_orders"]
    # Most pixel purchases have a webhook for the same order and checkout.
    assert len(shared) >= 0.6 * len(pixel_tokens)
    assert all(pixel_tokens[o] == hook_tokens[o] for o in shared)


def test_pinterest_click_is_followed_by_a_purchase(run: dict[str, Any]) -> None:
    landings: dict[str, datetime] = {}
    epik_ids: set[str] = set()
    for _, _, body in run["pixel"]:
        search = body["context"]["document"]["location"]["search"]
        if body["name"] == "page_viewed" and "epik=" in search:
            query = parse_qs(search[1:])
            epik = query["epik"][0]
            assert epik.startswith("dj0yJnU9") and 40 <= len(epik) - 8 <= 100
            assert re.match(r"^[A-Za-z0-9_-]+$", epik)
            assert query["utm_source"] == ["pinterest"]
            assert search == f"?epik={epik}&utm_source=pinterest"
            epik_ids.add(body["id"])
            ts = datetime.fromisoformat(body["timestamp"].replace("Z", "+00:00"))
            landings.setdefault(body["clientId"], ts)
    converted = []
    for _, _, body in run["pixel"]:
        if body["name"] == "checkout_completed" and body["clientId"] in landings:
            ts = datetime.fromisoformat(body["timestamp"].replace("Z", "+00:00"))
            href = body["context"]["document"]["location"]["href"]
            if ts > landings[body["clientId"]] and "epik" not in href:
                converted.append(body["clientId"])
    assert converted, "no ad click led to a checkout_completed from the same clientId"
    seg_epik = {m["messageId"] for d in DAY_NAMES for o in run["parsed"]["segment", d]
                if isinstance(o, dict) for m in _segment_messages(o)
                if m["type"] == "page" and "epik=" in m["context"]["page"]["search"]}
    assert seg_epik
    for d in DAY_NAMES:
        for o in run["parsed"]["segment", d]:
            for m in _segment_messages(o) if isinstance(o, dict) else []:
                if m["messageId"] in seg_epik:
                    epik = parse_qs(m["context"]["page"]["search"][1:])["epik"][0]
                    assert m["context"]["page"]["search"] == f"?epik={epik}&utm_source=pinterest"
                    assert m["context"]["campaign"] == {"source": "pinterest"}
    assert run["summary"]["epik_landings"] == len(epik_ids) + len(seg_epik)


def test_realistic_population(run: dict[str, Any]) -> None:
    days_by_client: dict[str, set[str]] = {}
    bots: set[str] = set()
    bot_names: set[str] = set()
    ips: list[str] = []
    countries: set[str] = set()
    phones = messy = 0
    for day, env, body in run["pixel"]:
        days_by_client.setdefault(body["clientId"], set()).add(day)
        ips.append(env["ip"])
        if any(m in env["user_agent"] for m in BOT_MARKERS):
            bots.add(body["clientId"])
            bot_names.add(body["name"])
        if body["name"] == "checkout_completed":
            ck = body["data"]["checkout"]
            addr = ck["shippingAddress"]
            countries.add(addr["countryCode"])
            email = ck["email"]
            assert email.strip().lower().rsplit("@", 1)[1] in (
                "example.com", "example.net", "example.org")
            messy += email != email.strip().lower()
            for raw in (ck["phone"], addr["phone"]):
                if raw and raw != "undefined":
                    num = phonenumbers.parse(raw, addr["countryCode"])
                    assert phonenumbers.is_valid_number(num), raw
                    phones += 1
    assert bots and bot_names == {"page_viewed"}
    assert sum(len(d) > 1 for d in days_by_client.values()) >= 10
    assert len(countries) >= 3 and "US" in countries
    assert phones > 0 and messy > 0
    assert any(":" in ip for ip in ips) and any("," in ip for ip in ips)
    for ip in ips:
        for part in ip.split(","):
            addr = ipaddress.ip_address(part.strip())
            assert any(addr in net for net in DOC_NETS), ip


def test_funnel_shares_are_plausible(run: dict[str, Any]) -> None:
    sessions: dict[tuple[str, str], set[str]] = {}
    for day, env, body in run["pixel"]:
        if any(m in env["user_agent"] for m in BOT_MARKERS):
            continue
        sessions.setdefault((body["clientId"], day), set()).add(body["name"])
    n = len(sessions)
    cart = sum("product_added_to_cart" in s for s in sessions.values()) / n
    checkout = sum("checkout_started" in s for s in sessions.values()) / n
    orders = run["summary"]["shopify_orders"] / n
    assert 0.2 < cart < 0.45, cart
    assert 0.04 < checkout < 0.14, checkout
    assert 0.025 < orders < 0.09, orders


def test_email_first_given_on_a_later_day(run: dict[str, Any]) -> None:
    first_seen: dict[str, str] = {}
    emailless_checkout: dict[str, str] = {}
    later_email = set()
    for day, _, body in run["pixel"]:
        cid = body["clientId"]
        first_seen.setdefault(cid, day)
        if body["name"].startswith("checkout"):
            email = body["data"]["checkout"].get("email", "")
            if not email:
                emailless_checkout.setdefault(cid, day)
            elif cid in emailless_checkout and emailless_checkout[cid] < day:
                later_email.add(cid)
    assert later_email


def test_tiny_run_still_shows_a_converting_ad_click(tmp_path: Path) -> None:
    summary = generate(tmp_path, END, days=1, visitors_per_day=10, seed=1)
    clients: dict[str, set[str]] = {}
    raw = gzip.decompress((tmp_path / "pixel" / END.isoformat() / LAYOUT["pixel"][1]).read_bytes())
    for line in raw.split(b"\n"):
        obj = _classify(line)
        if isinstance(obj, dict):
            body = obj["body"] if isinstance(obj["body"], dict) else orjson.loads(obj["body"])
            tag = "epik" if "epik=" in body["context"]["document"]["location"]["search"] else ""
            clients.setdefault(body["clientId"], set()).update({body["name"], tag})
    assert any({"epik", "checkout_completed"} <= names for names in clients.values())
    assert summary["pixel_and_webhook_orders"] >= 1


def test_same_seed_is_byte_identical(tmp_path: Path) -> None:
    a = generate(tmp_path / "a", END, days=2, visitors_per_day=120, seed=5)
    b = generate(tmp_path / "b", END, days=2, visitors_per_day=120, seed=5)
    c = generate(tmp_path / "c", END, days=2, visitors_per_day=120, seed=6)
    assert c["lines"] != a["lines"]
    assert {k: v for k, v in a.items() if k != "landing_dir"} == {
        k: v for k, v in b.items() if k != "landing_dir"}
    for rel in a["files"]:
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes(), rel
    assert any((tmp_path / "a" / rel).read_bytes() != (tmp_path / "c" / rel).read_bytes()
               for rel in a["files"])


def test_cli_prints_the_summary(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["--landing-dir", str(tmp_path), "--end-date", "2024-02-29", "--days", "1",
                 "--visitors-per-day", "50", "--seed", "3"])
    assert code == 0
    printed = orjson.loads(capsys.readouterr().out)
    assert printed["end_date"] == printed["start_date"] == "2024-02-29"
    assert printed == generate(tmp_path / "again", date(2024, 2, 29), 1, 50, 3) | {
        "landing_dir": str(tmp_path)}
    assert (tmp_path / "webhooks" / "2024-02-29" / "orders-000.ndjson").exists()


def test_generation_is_fast(run: dict[str, Any]) -> None:
    assert run["elapsed"] < 10, run["elapsed"]


def test_rejects_empty_ranges(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        generate(tmp_path, END, days=0)
