"""From a landed message to one typed staging row, per source format.

Each source names the same facts differently: Shopify's pixel nests the buyer under
`data.checkout`, Segment under `traits`, the order webhook in snake_case. The functions here
read each shape into the columns of `staging.events`, and nothing else: hashing and the choice
of what Pinterest sees happen later, in enrich.
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
from decimal import Decimal
from functools import lru_cache
from typing import Any
from urllib.parse import parse_qs, urlsplit

import orjson
from crawleruseragents import is_crawler

from capi_pipeline.enrich.normalize import clean
from capi_pipeline.lib.values import parse_int, parse_money

# Source event names to the pipeline's own event types; enrich maps these to Pinterest's.
PIXEL_EVENT_TYPES = {
    "page_viewed": "page_view",
    "product_viewed": "product_view",
    "collection_viewed": "collection_view",
    "search_submitted": "search",
    "product_added_to_cart": "add_to_cart",
    "product_removed_from_cart": "remove_from_cart",
    "cart_viewed": "cart_view",
    "checkout_started": "checkout_started",
    "checkout_contact_info_submitted": "checkout_step",
    "checkout_address_info_submitted": "checkout_step",
    "checkout_shipping_info_submitted": "checkout_step",
    "payment_info_submitted": "checkout_step",
    "checkout_completed": "purchase",
}
SEGMENT_EVENT_TYPES = {
    "page": "page_view",
    "screen": "page_view",
    "identify": "identify",
    "alias": "alias",
    "group": "other",
    "Product Viewed": "product_view",
    "Product List Viewed": "collection_view",
    "Category Viewed": "collection_view",
    "Products Searched": "search",
    "Product Added": "add_to_cart",
    "Product Removed": "remove_from_cart",
    "Cart Viewed": "cart_view",
    "Checkout Started": "checkout_started",
    "Checkout Step Completed": "checkout_step",
    "Payment Info Entered": "checkout_step",
    "Order Completed": "purchase",
    "Signed Up": "signup",
    "Lead Generated": "lead",
}
WEBHOOK_EVENT_TYPES = {
    "orders/create": "purchase",
    "orders/paid": "purchase",
    "orders/updated": "order_updated",
    "orders/cancelled": "order_cancelled",
}
_ORDER_GID = re.compile(r"^gid://shopify/\w+/(\d+)")


def extract(message: dict[str, Any]) -> dict[str, Any]:
    """The staging columns for one row of raw.events (given as a dict of its columns)."""
    body = message["body"]
    source_format = message["source_format"]
    if source_format == "shopify_pixel":
        row = _pixel(body)
    elif source_format == "segment":
        row = _segment(body)
    else:
        row = _webhook(body, message["source_event_name"])

    row["ip"] = client_ip(message.get("envelope_ip")) or client_ip(row.get("ip"))
    row["user_agent"] = clean(message.get("envelope_user_agent")) or clean(row.get("user_agent"))
    row["click_id"] = row.get("click_id") or click_id_from_url(row.get("page_url"))
    row["is_bot"] = is_bot(row["user_agent"])
    row["is_test"] = bool(row.get("is_test")) or _is_store_preview(row.get("page_url"))
    row["num_items"] = sum(item["quantity"] or 0 for item in row["items"]) or None
    row["event_id"] = clean(message.get("source_event_id")) or content_event_id(message)
    row["store"] = (clean(message.get("envelope_store")) or _host(row.get("page_url"))
                    or _host(row.get("store_url")))
    return row


def _pixel(body: dict) -> dict[str, Any]:
    data = _dict(body.get("data"))
    document = _dict(_dict(body.get("context")).get("document"))
    navigator = _dict(_dict(body.get("context")).get("navigator"))
    name = clean(body.get("name"))
    row: dict[str, Any] = {
        "event_type": PIXEL_EVENT_TYPES.get(name or "", "other"),
        "client_id": clean(body.get("clientId")),
        "page_url": clean(_dict(document.get("location")).get("href")),
        "user_agent": navigator.get("userAgent"),
        "action_source": "web",
        "items": [],
    }
    privacy = _dict(body.get("customerPrivacy")) or _dict(data.get("customerPrivacy"))
    row["marketing_allowed"] = flag(privacy.get("marketingAllowed"))
    row["sale_of_data_allowed"] = flag(privacy.get("saleOfDataAllowed"))

    checkout = _dict(data.get("checkout"))
    if checkout:
        address = _dict(checkout.get("billingAddress")) or _dict(checkout.get("shippingAddress"))
        order = _dict(checkout.get("order"))
        row.update(
            email=clean(checkout.get("email")),
            phone=clean(checkout.get("phone")) or clean(checkout.get("smsMarketingPhone"))
            or clean(address.get("phone")),
            first_name=clean(address.get("firstName")),
            last_name=clean(address.get("lastName")),
            city=clean(address.get("city")),
            state=clean(address.get("provinceCode")) or clean(address.get("province")),
            zip=clean(address.get("zip")),
            country=clean(address.get("countryCode")) or clean(address.get("country")),
            checkout_token=clean(checkout.get("token")),
            cart_token=_checkout_path_token(row["page_url"]),
            order_id=order_id(order.get("id")),
            customer_id=clean(_dict(order.get("customer")).get("id")),
        )
        row["value"], row["currency"] = money(
            checkout.get("subtotalPrice"), clean(checkout.get("currencyCode"))
        )
        row["items"] = [_pixel_line(line) for line in _list(checkout.get("lineItems"))
                        if isinstance(line, dict)]
    elif "productVariant" in data:
        item = _pixel_variant(_dict(data.get("productVariant")), 1)
        row["items"] = [item]
        row["value"], row["currency"] = money(
            _dict(data.get("productVariant")).get("price")
        )
    elif "cartLine" in data:
        line = _dict(data.get("cartLine"))
        row["items"] = [_pixel_variant(_dict(line.get("merchandise")),
                                       quantity_of(line.get("quantity")))]
        row["value"], row["currency"] = money(_dict(line.get("cost")).get("totalAmount"))
    elif "cart" in data:
        cart = _dict(data.get("cart"))
        row["cart_token"] = clean(cart.get("id"))
        row["items"] = [
            _pixel_variant(_dict(line.get("merchandise")), quantity_of(line.get("quantity")))
            for line in _list(cart.get("lines")) if isinstance(line, dict)
        ]
        row["value"], row["currency"] = money(_dict(cart.get("cost")).get("totalAmount"))
    elif "searchResult" in data:
        row["search_string"] = clean(_dict(data.get("searchResult")).get("query"))
    elif "collection" in data:
        collection = _dict(data.get("collection"))
        row["search_string"] = None
        row["items"] = [
            _pixel_variant(_dict(variant), None)
            for variant in _list(collection.get("productVariants"))[:50]
        ]
    return row


def _pixel_line(line: dict) -> dict[str, Any]:
    return _pixel_variant(_dict(line.get("variant")), quantity_of(line.get("quantity")))


def _pixel_variant(variant: dict, quantity: int | None) -> dict[str, Any]:
    product = _dict(variant.get("product"))
    price = money_amount(variant.get("price"))
    return _item(
        id=clean(product.get("id")) or clean(variant.get("id")) or clean(variant.get("sku")),
        name=clean(product.get("title")) or clean(variant.get("title")),
        price=price,
        quantity=quantity,
        brand=clean(product.get("vendor")),
        category=clean(product.get("type")),
    )


def _segment(body: dict) -> dict[str, Any]:
    context = _dict(body.get("context"))
    properties = _dict(body.get("properties"))
    traits = {**_dict(context.get("traits")), **_dict(body.get("traits"))}
    address = _dict(traits.get("address"))
    page = _dict(context.get("page"))
    device = _dict(context.get("device"))
    kind = body.get("type")
    name = clean(body.get("event")) if kind == "track" else kind
    row: dict[str, Any] = {
        "event_type": SEGMENT_EVENT_TYPES.get(name or "", "other"),
        "client_id": clean(body.get("anonymousId")),
        "customer_id": clean(body.get("userId")),
        "email": clean(traits.get("email")) or clean(properties.get("email")),
        "phone": clean(traits.get("phone")) or clean(properties.get("phone")),
        "first_name": clean(traits.get("firstName")) or clean(traits.get("first_name")),
        "last_name": clean(traits.get("lastName")) or clean(traits.get("last_name")),
        "city": clean(address.get("city")),
        "state": clean(address.get("state")),
        "zip": clean(address.get("postalCode")) or clean(address.get("postal_code")),
        "country": clean(address.get("country")),
        "ip": context.get("ip"),
        "user_agent": context.get("userAgent"),
        "page_url": clean(page.get("url")) or clean(properties.get("url")),
        "order_id": order_id(properties.get("order_id")),
        "checkout_token": clean(properties.get("checkout_id")),
        "search_string": clean(properties.get("query")),
        "action_source": _segment_action_source(context),
        "gender": clean(traits.get("gender")),
        "date_of_birth": clean(traits.get("birthday")) or clean(traits.get("dateOfBirth")),
        "advertising_id": clean(device.get("advertisingId")),
        "ad_tracking_allowed": flag(device.get("adTrackingEnabled")),
        "marketing_allowed": _segment_consent(context),
    }
    if kind == "alias":
        row["customer_id"] = row["customer_id"] or clean(body.get("previousId"))

    products = _list(properties.get("products"))
    if not products and (properties.get("product_id") is not None or properties.get("sku")):
        products = [properties]
    row["items"] = [_segment_product(product) for product in products if isinstance(product, dict)]

    currency = clean(properties.get("currency"))
    for key in ("revenue", "subtotal", "value", "total", "price"):
        amount, found_currency = money(properties.get(key), currency)
        if amount is not None:
            row["value"], row["currency"] = amount, found_currency
            break
    else:
        row["value"], row["currency"] = None, money(None, currency)[1]
    return row


def _segment_action_source(context: dict) -> str:
    os_name = (clean(_dict(context.get("os")).get("name")) or "").lower()
    if _dict(context.get("app")) or os_name in {"ios", "ipados", "android"}:
        if os_name in {"ios", "ipados"}:
            return "app_ios"
        if os_name == "android":
            return "app_android"
    return "web"


def _segment_consent(context: dict) -> bool | None:
    """Segment's consent object: the visitor's choice for the advertising category, if any."""
    preferences = _dict(_dict(context.get("consent")).get("categoryPreferences"))
    for category, allowed in preferences.items():
        if isinstance(category, str) and category.lower() in {"advertising", "marketing", "ads"}:
            return flag(allowed)
    return None


def flag(value: object) -> bool | None:
    """A consent or tracking flag: JSON booleans and their common spellings, else unknown."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in {"true", "false", "yes", "no"}:
        return value.strip().lower() in {"true", "yes"}
    return None


def _segment_product(product: dict) -> dict[str, Any]:
    price = money_amount(product.get("price"))
    product_id = product.get("product_id")
    return _item(
        id=clean(product_id if product_id is not None else product.get("sku")),
        name=clean(product.get("name")),
        price=price,
        quantity=quantity_of(product.get("quantity")),
        brand=clean(product.get("brand")),
        category=clean(product.get("category")),
    )


def _webhook(body: dict, topic: str | None) -> dict[str, Any]:
    customer = _dict(body.get("customer"))
    address = (
        _dict(body.get("billing_address"))
        or _dict(body.get("shipping_address"))
        or _dict(customer.get("default_address"))
    )
    details = _dict(body.get("client_details"))
    landing = clean(body.get("landing_site"))
    row: dict[str, Any] = {
        "event_type": WEBHOOK_EVENT_TYPES.get(topic or "", "other"),
        "customer_id": clean(customer.get("id")),
        "email": clean(body.get("email")) or clean(body.get("contact_email"))
        or clean(customer.get("email")),
        "phone": clean(body.get("phone")) or clean(customer.get("phone"))
        or clean(address.get("phone")),
        "first_name": clean(address.get("first_name")) or clean(customer.get("first_name")),
        "last_name": clean(address.get("last_name")) or clean(customer.get("last_name")),
        "city": clean(address.get("city")),
        "state": clean(address.get("province_code")) or clean(address.get("province")),
        "zip": clean(address.get("zip")),
        "country": clean(address.get("country_code")) or clean(address.get("country")),
        "ip": clean(body.get("browser_ip")) or clean(details.get("browser_ip")),
        "user_agent": details.get("user_agent"),
        "page_url": None,
        "store_url": clean(body.get("order_status_url")),
        "click_id": click_id_from_url(landing),
        "order_id": order_id(body.get("id")),
        "checkout_token": clean(body.get("checkout_token")),
        "cart_token": clean(body.get("cart_token")),
        "is_test": body.get("test") is True,
        # An order placed in a browser is a web conversion; one keyed in by staff or
        # imported has no browser behind it and is what Pinterest calls offline.
        "action_source": "web" if (landing or body.get("browser_ip") or details) else "offline",
    }
    currency = clean(body.get("currency"))
    row["value"], row["currency"] = money(body.get("subtotal_price"), currency)
    row["items"] = [
        _item(
            id=clean(line.get("product_id")) or clean(line.get("sku")),
            name=clean(line.get("title")),
            price=money_amount(line.get("price")),
            quantity=quantity_of(line.get("quantity")),
            brand=clean(line.get("vendor")),
            category=None,
        )
        for line in _list(body.get("line_items"))
        if isinstance(line, dict)
    ]
    return row


def _item(**fields: Any) -> dict[str, Any]:
    return fields


# Values outside these bounds are collector bugs or attacks, not purchases; they become NULL so
# one absurd line cannot overflow a column and stop the day.
MAX_AMOUNT = Decimal("1e12")
MAX_QUANTITY = 100_000


def money(value: object, currency_hint: str | None = None) -> tuple[Decimal | None, str | None]:
    """An amount and its currency; amounts that are negative or absurdly large become None."""
    amount, currency = parse_money(value, currency_hint)
    if amount is not None and not Decimal(0) <= amount < MAX_AMOUNT:
        amount = None
    return amount, currency


def money_amount(value: object) -> Decimal | None:
    return money(value)[0]


def quantity_of(value: object) -> int:
    """A line's quantity: 1 when it is missing, fractional, negative or absurd."""
    quantity = parse_int(value)
    return quantity if quantity is not None and 0 < quantity <= MAX_QUANTITY else 1


def order_id(value: object) -> str | None:
    """Shopify and Segment order ids as one string form: digits stay digits, gids lose prefix."""
    if isinstance(value, bool):
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    text = clean(value)
    if text is None:
        return None
    match = _ORDER_GID.match(text)
    return match.group(1) if match else text


def client_ip(value: object) -> str | None:
    """The first client address of a forwarded list, without its port; None when there is none.

    Collectors behind proxies record `client, proxy1, proxy2`. Private, loopback, link-local
    and carrier-grade NAT addresses belong to proxies and would mislead Pinterest, so they are
    passed over. Documentation ranges (RFC 5737, RFC 3849) count as client addresses because
    test and demo data use them.
    """
    text = clean(value)
    if text is None:
        return None
    for part in text.split(","):
        address = _parse_ip(part.strip())
        if address is not None and not _is_proxy_address(address):
            return str(address)
    return None


_PROXY_NETWORKS = tuple(
    ipaddress.ip_network(network)
    for network in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10",
                    "127.0.0.0/8", "169.254.0.0/16", "0.0.0.0/8", "fc00::/7", "fe80::/10",
                    "::1/128", "::/128")
)


def _is_proxy_address(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    if address.is_multicast:
        return True
    return any(address.version == net.version and address in net for net in _PROXY_NETWORKS)


def _parse_ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    if text.startswith("[") and "]" in text:
        text = text[1 : text.index("]")]
    elif text.count(":") == 1:
        text = text.split(":", 1)[0]
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def click_id_from_url(url: str | None) -> str | None:
    """The Pinterest click id a landing URL carries in its `epik` parameter."""
    if not url or "epik=" not in url:
        return None
    try:
        values = parse_qs(urlsplit(url).query).get("epik")
    except ValueError:
        return None
    return clean(values[0]) if values else None


@lru_cache(maxsize=65536)
def is_bot(user_agent: str | None) -> bool:
    """Whether a user agent is a known crawler, from the maintained crawler-user-agents list."""
    return bool(user_agent) and is_crawler(user_agent)


def _is_store_preview(url: str | None) -> bool:
    # Shopify shows /password to everyone while a store is closed: that traffic is the
    # merchant testing, never a shopper.
    return bool(url) and urlsplit(url).path.startswith("/password")


def _host(url: str | None) -> str | None:
    if not url:
        return None
    try:
        return (urlsplit(url).hostname or "").lower() or None
    except ValueError:
        return None


def _checkout_path_token(url: str | None) -> str | None:
    if not url:
        return None
    parts = urlsplit(url).path.split("/")
    if len(parts) > 3 and parts[1] == "checkouts":
        return clean(parts[3]) if parts[2] == "cn" else clean(parts[2])
    return None


def content_event_id(message: dict[str, Any]) -> str:
    """An id for an event that came without one, from its content.

    It stays the same when the file is renamed or compressed, and the same event landed twice
    gets the same id, so it is de-duplicated rather than sent twice.
    """
    canonical = orjson.dumps([message["source_format"], message["body"]],
                             option=orjson.OPT_SORT_KEYS)
    return "h-" + hashlib.sha256(canonical).hexdigest()[:32]


def _dict(value: object) -> dict:
    return value if isinstance(value, dict) else {}


def _list(value: object) -> list:
    return value if isinstance(value, list) else []
