"""One staged event, with what its visitor's profile knows, as the event Pinterest receives.

Everything here speaks Pinterest's field names (`em`, `ph`, `click_id`, ...). The event's own
values come first and the profile only fills what the event lacks; hashed fields are lists, so
an event's email and the profile's other email are both sent. Nothing returned holds a raw
email, phone, name or address: only hashes and the fields Pinterest takes unhashed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from capi_pipeline.enrich.normalize import hash_field
from capi_pipeline.identity.graph import is_junk_email

# The pipeline's event types and the Pinterest events they become. Types not listed here
# (cart views, checkout steps, identify calls...) are never sent under any name. Shopify fires
# page_viewed and product_viewed on a product page, so both reach Pinterest as page_visit with
# their own event ids; making this a per-store setting is the way to send only one.
PINTEREST_EVENTS = {
    "page_view": "page_visit",
    "product_view": "page_visit",
    "collection_view": "view_category",
    "search": "search",
    "add_to_cart": "add_to_cart",
    "purchase": "checkout",
    "signup": "signup",
    "lead": "lead",
}
ADDRESS_FIELDS = {"ct": "city", "st": "state", "zp": "zip", "country": "country"}

# Free text that reaches Pinterest unhashed must not carry a person: anything shaped like an
# email address or a phone number drops the field.
_EMAIL_SHAPED = re.compile(r"[^\s@/?&=]+(?:@|%40)[^\s@/?&=]+\.[A-Za-z]{2,}")
_PHONE_SHAPED = re.compile(r"(?:\+|%2B)?(?:\d[\s().-]*){7,}")
# Pinterest's click ids are base64url text; anything else in an `epik` is not one.
_CLICK_ID = re.compile(r"^[A-Za-z0-9_\-=.~]{6,1024}$")


def safe_text(value: object) -> str | None:
    """Free text for Pinterest, or None when it looks like it holds an email or phone."""
    if value is None:
        return None
    text = str(value)
    if _EMAIL_SHAPED.search(text) or _PHONE_SHAPED.search(text):
        return None
    return text


def page_url(url: str | None) -> str | None:
    """The page's address without query or fragment, where forms and links leak contacts."""
    if not url:
        return None
    try:
        parts = urlsplit(url)
    except ValueError:
        return None
    if parts.scheme not in ("http", "https") or not parts.netloc:
        return None
    # Paths hold long digit runs (shop and order ids), so only the email shape is checked.
    address = urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))
    return None if _EMAIL_SHAPED.search(address) else address


def click_id(value: str | None) -> str | None:
    """A Pinterest click id, or None for a value that cannot be one."""
    return value if value and _CLICK_ID.match(value) else None


@dataclass(frozen=True)
class EnrichRules:
    """What decides eligibility and how values are read, from PipelineSettings."""

    now: datetime
    default_region: str
    max_event_age: timedelta
    max_future_skew: timedelta
    attribution_window: timedelta


@dataclass(frozen=True)
class PinterestEvent:
    """The event as sent, and why it will not be, when it will not."""

    payload: dict[str, Any]
    skip_reason: str | None
    click_id_from_profile: bool


def build_event(row: dict[str, Any], rules: EnrichRules) -> PinterestEvent:
    """The Pinterest event for a staged row joined to its profile (columns `profile_*`)."""
    country = row.get("country") or row.get("profile_country")
    user_data: dict[str, Any] = {}

    emails = [row.get("email"), row.get("profile_email")]
    _add_hashes(user_data, "em", [email for email in emails if not _junk(email)], country, rules)
    _add_hashes(user_data, "ph", [row.get("phone"), row.get("profile_phone")], country, rules)
    for field, column in (("fn", "first_name"), ("ln", "last_name")):
        _add_hashes(user_data, field, [row.get(column) or row.get(f"profile_{column}")],
                    country, rules)
    # An address is one fact: take the event's when it has any part of one, else the profile's,
    # rather than mixing a city from one with a zip from the other.
    prefix = "" if any(row.get(column) for column in ADDRESS_FIELDS.values()) else "profile_"
    for field, column in ADDRESS_FIELDS.items():
        _add_hashes(user_data, field, [row.get(prefix + column)], country, rules)
    customer_id = row.get("customer_id") or row.get("profile_customer_id")
    _add_hashes(user_data, "external_id", [customer_id], country, rules)

    if row.get("ip") and row.get("user_agent"):
        ip, user_agent = row["ip"], row["user_agent"]
    elif row.get("profile_ip") and row.get("profile_user_agent"):
        ip, user_agent = row["profile_ip"], row["profile_user_agent"]
    else:
        ip, user_agent = row.get("ip"), row.get("user_agent")
    if ip:
        user_data["client_ip_address"] = ip
    if user_agent:
        user_data["client_user_agent"] = user_agent

    clicked, from_profile = click_id(row.get("click_id")), False
    event_time: datetime = row["event_time"]
    if not clicked and click_id(row.get("profile_click_id")):
        clicked_at = row.get("profile_click_time")
        if clicked_at is not None and event_time - clicked_at <= rules.attribution_window:
            clicked, from_profile = row["profile_click_id"], True
    if clicked:
        user_data["click_id"] = clicked

    payload: dict[str, Any] = {
        "event_name": PINTEREST_EVENTS[row["event_type"]],
        "action_source": row["action_source"],
        "event_time": int(event_time.timestamp()),
        "event_id": row["event_id"],
        "user_data": user_data,
    }
    source_url = page_url(row.get("page_url"))
    if source_url:
        payload["event_source_url"] = source_url
    custom_data = _custom_data(row)
    if custom_data:
        payload["custom_data"] = custom_data
    return PinterestEvent(payload, _skip_reason(row, user_data, rules), from_profile)


def _junk(email: str | None) -> bool:
    """Placeholder addresses (test@test.com...) match nobody; sending them only adds noise."""
    if email is None:
        return False
    return is_junk_email(email.strip().lower(), frozenset())


def _add_hashes(
    user_data: dict[str, Any], field: str, values: list[Any], country: str | None,
    rules: EnrichRules,
) -> None:
    hashes: list[str] = []
    for value in values:
        if value is None:
            continue
        digest = hash_field(field, value, country=country, default_region=rules.default_region)
        if digest and digest not in hashes:
            hashes.append(digest)
    if hashes:
        user_data[field] = hashes


def _skip_reason(row: dict[str, Any], user_data: dict[str, Any], rules: EnrichRules) -> str | None:
    if row["is_bot"]:
        return "bot"
    if row["is_test"]:
        return "test_order" if row["event_type"] == "purchase" else "test_traffic"
    winner = row.get("order_winner_event_id")
    if winner is not None and winner != row["event_id"]:
        return "duplicate_order"
    if row["event_time"] < rules.now - rules.max_event_age:
        return "too_old"
    if row["event_time"] > rules.now + rules.max_future_skew:
        return "future_time"
    has_ip_ua = "client_ip_address" in user_data and "client_user_agent" in user_data
    if not (user_data.get("em") or user_data.get("hashed_maids") or has_ip_ua):
        return "no_identifier"
    return None


def _custom_data(row: dict[str, Any]) -> dict[str, Any]:
    custom: dict[str, Any] = {}
    if row.get("currency"):
        custom["currency"] = row["currency"].upper()
    if row.get("value") is not None:
        custom["value"] = decimal_string(row["value"])
    items = row.get("items") or []
    content_ids = [item["id"] for item in items if item.get("id")]
    if content_ids:
        custom["content_ids"] = list(dict.fromkeys(content_ids))
    contents = [_content(item) for item in items]
    contents = [content for content in contents if content]
    if contents:
        custom["contents"] = contents
    if row.get("num_items"):
        custom["num_items"] = int(row["num_items"])
    if row.get("order_id"):
        custom["order_id"] = str(row["order_id"])
    search = safe_text(row.get("search_string"))
    if search:
        custom["search_string"] = search
    return custom


def _content(item: dict[str, Any]) -> dict[str, Any]:
    content: dict[str, Any] = {}
    if item.get("id"):
        content["id"] = str(item["id"])
    if item.get("price") is not None:
        content["item_price"] = decimal_string(item["price"])
    if item.get("quantity") is not None:
        content["quantity"] = int(item["quantity"])
    for key, column in (("item_name", "name"), ("item_category", "category"),
                        ("item_brand", "brand")):
        text = safe_text(item.get(column))
        if text:
            content[key] = text
    return content


def decimal_string(value: Decimal | float | int) -> str:
    """A decimal as Pinterest reads value strings: plain digits, no exponent, no trailing 0s."""
    text = format(Decimal(str(value)).normalize(), "f")
    return "0" if text in {"-0", ""} else text
