"""Deterministic demo landing files shaped like the real upstream captures.

The generator writes what our collector would have stored for a few UTC days
of traffic on two storefronts:

* ``pixel/YYYY-MM-DD/events-000.ndjson.gz``: Shopify Web Pixels events inside
  the collector envelope (``received_at``, ``ip``, ``user_agent``, ``body``).
* ``segment/YYYY-MM-DD/events-000.ndjson``: Segment analytics.js calls of a
  second storefront, single messages or ``{"batch": [...], "sentAt": ...}``.
* ``webhooks/YYYY-MM-DD/orders-000.ndjson``: Shopify ``orders/create`` bodies
  inside the collector envelope.

Key names and nesting follow ``shared/data/upstream/shopify_pixel_valmi``; the
values are invented from one ``random.Random(seed)`` stream, so a seed always
gives byte-identical files. All network identities use documentation ranges
(RFC 5737 / RFC 3849) and all email domains are ``example.*``.

Each day is generated in visitor-start order and written through a small
time-ordered buffer, so memory is bounded by the sessions still in flight,
not by the size of the day.
"""

from __future__ import annotations

import argparse
import base64
import gzip
import heapq
import random
import unicodedata
from dataclasses import dataclass
from datetime import date, timedelta
from functools import lru_cache
from pathlib import Path
from typing import Any
from urllib.parse import quote_plus

import orjson
import phonenumbers
from phonenumbers import PhoneNumberFormat, PhoneNumberType

# --------------------------------------------------------------------------
# Tunable shares. Each is a probability unless the name says otherwise.
# --------------------------------------------------------------------------

SEGMENT_STORE_SHARE = 0.25  # sessions on the Segment storefront
BOT_SHARE = 0.03  # crawler sessions (page views only)
RETURNING_SHARE = 0.15  # sessions by a visitor first seen on an earlier day
EPIK_SHARE = 0.07  # human sessions landing from a Pinterest ad click
EPIK_BUY_SHARE = 0.20  # of ad-click sessions that end in a purchase
EPIK_NEXT_DAY_SHARE = 0.5  # of those purchases that happen the next day
# Base funnel draws. Ad clicks and returning abandoners add purchases on top,
# so the overall shares land near 30% cart / 8-9% checkout / 5% buy.
CART_SHARE = 0.30  # add to cart (includes the deeper stages)
CHECKOUT_SHARE = 0.065  # start checkout (includes buyers)
BUY_SHARE = 0.03  # complete the purchase
ABANDON_RETURN_SHARE = 0.3  # abandoned-before-email checkouts that buy later
PIXEL_LOST_SHARE = 0.10  # purchases whose checkout_completed never fired
WEBHOOK_FOR_PIXEL_SHARE = 0.80  # pixel purchases that also get a webhook
TEST_ORDER_SHARE = 0.03  # webhook orders with "test": true
STRING_BODY_SHARE = 0.10  # pixel envelopes storing the raw body as a string
DUPLICATE_SHARE = 0.004  # pixel / Segment lines resent verbatim
WEBHOOK_RETRY_SHARE = 0.03  # webhook lines delivered twice
LATE_DELIVERY_SHARE = 0.01  # events queued on the device for hours
CLOCK_SKEW_SHARE = 0.05  # sessions whose device clock is off by minutes
IPV6_SHARE = 0.06
FORWARDED_IP_SHARE = 0.03  # envelope ip holding an X-Forwarded-For list
MESSY_EMAIL_SHARE = 0.15  # emails typed with odd case / spaces
PLACEHOLDER_SHARE = 0.05  # "undefined" / "" written where a value belongs
PHONE_GIVEN_SHARE = 0.55  # buyers who type a phone number
SEGMENT_PRICE_STRING_SHARE = 0.10  # Segment prices sent as text
SEGMENT_EPOCH_MS_SHARE = 0.04  # Segment timestamps sent as epoch ms
SEGMENT_BATCH_SHARE = 0.15  # Segment sessions sent through the batch API
PAGE_VIEWED_EMPTY_DATA_SHARE = 0.2  # page_viewed with "data": {} not absent
POOL_CAP = 200_000  # count: remembered visitors per store, bounds memory over days
PHONE_VARIED_DIGITS = 4  # count: trailing digits changed on the example numbers

BAD_LINE_KINDS = ("truncated", "invalid_utf8", "json_array", "blank")

KINDS = ("pixel", "segment", "webhook")
_LAYOUT = {
    "pixel": ("pixel", "events-000.ndjson.gz", True),
    "segment": ("segment", "events-000.ndjson", False),
    "webhook": ("webhooks", "orders-000.ndjson", False),
}

SHOP_HOST = "demo-store.example.com"
SHOP_NAME = "Demo Store"
SHOP_DOMAIN = "demo-store.myshopify.com"
SEGMENT_HOST = "store-two.example.net"
SEGMENT_NAME = "Store Two"
CURRENCY = "USD"
STORE_OFFSET_MS = -5 * 3_600_000
STORE_OFFSET_TEXT = "-05:00"
FREE_SHIPPING_CENTS = 10_000
DOMESTIC_SHIPPING_CENTS = 795
INTERNATIONAL_SHIPPING_CENTS = 1_495

_DAY_MS = 86_400_000
_EPOCH = date(1970, 1, 1)
_B62 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"

# Traffic by UTC hour for a US-centred store (quiet in the US night).
_HOUR_WEIGHTS = (9, 8, 7, 6, 5, 4, 3, 2, 2, 2, 3, 4, 5, 6, 7, 8, 9, 9, 9, 9, 10, 10, 10, 10)

# (title, product type, vendor, price in cents)
_PRODUCTS = (
    ("Waxed Canvas Tote", "Bags", "Harbor & Pine", 4900),
    ("Roll-Top Backpack", "Bags", "Harbor & Pine", 12900),
    ("Leather Card Wallet", "Bags", "Copperleaf", 3900),
    ("Weekender Duffel", "Bags", "Harbor & Pine", 18900),
    ("Packable Sling Bag", "Bags", "Trailhead Co.", 3400),
    ("Stoneware Mug Set", "Kitchen", "Northfield Goods", 4200),
    ("Pour-Over Coffee Kit", "Kitchen", "Northfield Goods", 6800),
    ('Cast Iron Skillet 10"', "Kitchen", "Northfield Goods", 5900),
    ("Olive Wood Spoon Set", "Kitchen", "Copperleaf", 2400),
    ("Enamel Dutch Oven", "Kitchen", "Northfield Goods", 21900),
    ("Linen Tea Towels (Set of 3)", "Kitchen", "Demo Store", 1900),
    ("Glass Storage Jars", "Kitchen", "Demo Store", 3600),
    ('Chef\'s Knife 8"', "Kitchen", "Copperleaf", 14900),
    ("Café Espresso Cups (Set of 2)", "Kitchen", "Northfield Goods", 3100),
    ("Bamboo Cutting Board", "Kitchen", "Demo Store", 3900),
    ("Wool Throw Blanket", "Home Decor", "Harbor & Pine", 9800),
    ("Linen Cushion Cover", "Home Decor", "Demo Store", 2900),
    ("Ceramic Table Lamp", "Home Decor", "Copperleaf", 13500),
    ("Hand-Poured Soy Candle", "Home Decor", "Demo Store", 2200),
    ("Woven Storage Basket", "Home Decor", "Harbor & Pine", 4500),
    ("Oak Picture Frame", "Home Decor", "Copperleaf", 2700),
    ("Jute Area Rug 5x7", "Home Decor", "Harbor & Pine", 24900),
    ("Terracotta Planter", "Home Decor", "Demo Store", 3200),
    ("Wall Clock – Walnut", "Home Decor", "Copperleaf", 11900),
    ("Insulated Water Bottle", "Outdoor", "Trailhead Co.", 2800),
    ("Camp Enamel Plate Set", "Outdoor", "Trailhead Co.", 3800),
    ("Trail Hammock", "Outdoor", "Trailhead Co.", 7900),
    ("LED Camp Lantern", "Outdoor", "Trailhead Co.", 4400),
    ("Picnic Blanket", "Outdoor", "Harbor & Pine", 6400),
    ("Merino Hiking Socks", "Apparel", "Trailhead Co.", 2100),
    ("Down Puffer Vest", "Apparel", "Trailhead Co.", 15900),
    ("Organic Cotton Tee", "Apparel", "Demo Store", 2600),
    ("Rain Shell Jacket", "Apparel", "Trailhead Co.", 19900),
    ("Knit Beanie", "Apparel", "Harbor & Pine", 2400),
    ("Canvas Work Apron", "Apparel", "Copperleaf", 5200),
    ("Dot Grid Notebook", "Stationery", "Demo Store", 1900),
    ("Brass Fountain Pen", "Stationery", "Copperleaf", 8900),
    ("Desk Organizer Tray", "Stationery", "Demo Store", 3500),
    ("Linen Photo Album", "Stationery", "Copperleaf", 4600),
    ("Gift Card", "Gift Cards", "Demo Store", 5000),
)
_OPTIONS = {"Apparel": ("S", "M", "L"), "Bags": ("Olive", "Black")}
_SEARCH_TERMS = (
    "tote", "mug", "blanket", "candle", "backpack", "café", "socks", "lamp",
    "gift card", "skillet", "linen", "camp", "jacket", "notebook", "rug",
)

# Per country: display name, weight, navigator language lists, tax in basis
# points and its label, (city, province, province code, zip pattern), streets.
_COUNTRIES: dict[str, dict[str, Any]] = {
    "US": {
        "name": "United States", "weight": 70, "tax": (800, "State Tax"),
        "languages": (("en-US", "en"), ("en-US", "es-US", "es", "en")),
        "cities": (
            ("Austin", "Texas", "TX", "787##"), ("Portland", "Oregon", "OR", "972##"),
            ("Columbus", "Ohio", "OH", "432##"), ("Denver", "Colorado", "CO", "802##"),
            ("Raleigh", "North Carolina", "NC", "276##"),
            ("Brooklyn", "New York", "NY", "112##"),
            ("San Diego", "California", "CA", "921##"), ("Chicago", "Illinois", "IL", "606##"),
        ),
        "streets": ("Maple Street", "Oak Avenue", "Cedar Lane", "Sample Road", "Main Street"),
    },
    "GB": {
        "name": "United Kingdom", "weight": 10, "tax": (2000, "VAT"),
        "languages": (("en-GB", "en-US", "en"), ("en-GB", "en")),
        "cities": (
            ("Manchester", "England", "ENG", "M1 #AE"), ("London", "England", "ENG", "E1 #AN"),
            ("Edinburgh", "Scotland", "SCT", "EH1 #QS"), ("Cardiff", "Wales", "WLS", "CF10 #AN"),
        ),
        "streets": ("High Street", "Station Road", "Mill Lane", "Church Road"),
    },
    "CA": {
        "name": "Canada", "weight": 8, "tax": (1300, "HST"),
        "languages": (("en-CA", "en-US", "en"), ("fr-CA", "fr", "en-CA", "en")),
        "cities": (
            ("Toronto", "Ontario", "ON", "M5V #T6"),
            ("Vancouver", "British Columbia", "BC", "V6B #A1"),
            ("Montréal", "Quebec", "QC", "H2X #Y4"), ("Calgary", "Alberta", "AB", "T2P #B3"),
        ),
        "streets": ("King Street West", "Rue Sainte-Catherine", "Granville Street"),
    },
    "DE": {
        "name": "Germany", "weight": 6, "tax": (1900, "MwSt"),
        "languages": (("de-DE", "de", "en-US", "en"), ("de", "en")),
        "cities": (
            ("Berlin", "Berlin", "BE", "101##"), ("München", "Bavaria", "BY", "803##"),
            ("Hamburg", "Hamburg", "HH", "203##"),
            ("Köln", "North Rhine-Westphalia", "NW", "506##"),
        ),
        "streets": ("Hauptstraße", "Bahnhofstraße", "Musterweg", "Gartenstraße"),
    },
    "IN": {
        "name": "India", "weight": 6, "tax": (1800, "IGST"),
        "languages": (("en-IN", "en-GB", "en"), ("hi-IN", "hi", "en-IN", "en")),
        "cities": (
            ("Hyderabad", "Telangana", "TS", "500###"),
            ("Bengaluru", "Karnataka", "KA", "560###"),
            ("Mumbai", "Maharashtra", "MH", "400###"), ("Chennai", "Tamil Nadu", "TN", "600###"),
        ),
        "streets": ("Sample Residency, Test Nagar", "MG Road", "Park Street"),
    },
}
_EN_FIRST = (
    "Jane", "Alex", "Sam", "Jordan", "Taylor", "Morgan", "Chris", "Maria", "Liam", "Olivia",
    "Noah", "Emma", "Ava", "Ethan", "Mia", "Lucas", "Zoe", "Owen", "Chloé", "Riley",
)
_EN_LAST = (
    "Doe", "Example", "Sample", "Tester", "Smith", "Nguyen", "Garcia", "Brown", "Wilson",
    "Martin", "Lee", "Walker", "O'Brien", "Clarke", "Tremblay", "Roy",
)
_NAMES = {
    "US": (_EN_FIRST, _EN_LAST),
    "GB": (_EN_FIRST, _EN_LAST),
    "CA": (_EN_FIRST, _EN_LAST),
    "DE": (
        ("Lukas", "Anna", "Jonas", "Lea", "Felix", "Sophie", "Jürgen", "Mia"),
        ("Müller", "Schmidt", "Schneider", "Fischer", "Weber", "Becker", "Muster"),
    ),
    "IN": (
        ("Aarav", "Priya", "Rohan", "Ananya", "Vikram", "Isha", "Arjun", "Neha"),
        ("Sharma", "Patel", "Reddy", "Iyer", "Gupta", "Rao", "Nair"),
    ),
}
_EMAIL_DOMAINS = ("example.com", "example.net", "example.org")

_DESKTOP_UAS = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/124.0.0.0 Safari/537.36",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/124.0.0.0 Safari/537.36",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) "
    "Version/17.4 Safari/605.1.15",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:125.0) Gecko/20100101 Firefox/125.0",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/124.0.0.0 Safari/537.36 Edg/124.0.0.0",
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/123.0.0.0 Safari/537.36",
)
_MOBILE_UAS = (
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4_1 like Mac OS X) AppleWebKit/605.1.15 "
    "(KHTML, like Gecko) Version/17.4 Mobile/15E148 Safari/604.1",
    "Mozilla/5.0 (Linux; Android 10; K) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/124.0.0.0 Mobile Safari/537.36",
    "Mozilla/5.0 (Linux; Android 14; SM-S918B) AppleWebKit/537.36 (KHTML, like Gecko) "
    "SamsungBrowser/24.0 Chrome/117.0.0.0 Mobile Safari/537.36",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 "
    "(KHTML, like Gecko) CriOS/124.0.6367.88 Mobile/15E148 Safari/604.1",
)
# Ad clicks often open inside the Pinterest app's web view.
_PINTEREST_APP_UAS = (
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 "
    "(KHTML, like Gecko) Mobile/15E148 [Pinterest/iOS]",
    "Mozilla/5.0 (Linux; Android 14; Pixel 8 Build/AP1A.240405.002; wv) AppleWebKit/537.36 "
    "(KHTML, like Gecko) Version/4.0 Chrome/124.0.6367.82 Mobile Safari/537.36 "
    "[Pinterest/Android]",
)
_BOT_UAS = (
    "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
    "Mozilla/5.0 (Linux; Android 6.0.1; Nexus 5X Build/MMB29P) AppleWebKit/537.36 "
    "(KHTML, like Gecko) Chrome/124.0.6367.118 Mobile Safari/537.36 "
    "(compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
    "Mozilla/5.0 (compatible; bingbot/2.0; +http://www.bing.com/bingbot.htm)",
    "Mozilla/5.0 (compatible; AhrefsBot/7.0; +http://ahrefs.com/robot/)",
    "Mozilla/5.0 (compatible; SemrushBot/7~bl; +http://www.semrush.com/bot.html)",
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "HeadlessChrome/124.0.6367.60 Safari/537.36",
)
_LANDING_REFERRERS = (
    "", "", "https://www.google.com/", "https://duckduckgo.com/",
    "https://www.instagram.com/", "https://www.bing.com/",
)
_SEGMENT_LIBRARY_VERSIONS = ("npm:next-1.70.0", "next-1.66.0", "4.1.0")


# --------------------------------------------------------------------------
# Small value helpers
# --------------------------------------------------------------------------


@lru_cache(maxsize=64)
def _day_text(day_no: int) -> str:
    return (_EPOCH + timedelta(days=day_no)).isoformat()


def _iso_ms(ms: int) -> str:
    """Format epoch milliseconds the way browsers do: ``YYYY-MM-DDTHH:MM:SS.mmmZ``."""
    day_no, rem = divmod(ms, _DAY_MS)
    hours, rem = divmod(rem, 3_600_000)
    minutes, rem = divmod(rem, 60_000)
    seconds, milli = divmod(rem, 1000)
    return f"{_day_text(day_no)}T{hours:02d}:{minutes:02d}:{seconds:02d}.{milli:03d}Z"


def _iso_store(ms: int) -> str:
    """Format epoch milliseconds as Shopify Admin does: store-local, seconds, offset."""
    day_no, rem = divmod(ms + STORE_OFFSET_MS, _DAY_MS)
    hours, rem = divmod(rem, 3_600_000)
    minutes, rem = divmod(rem, 60_000)
    seconds = rem // 1000
    return f"{_day_text(day_no)}T{hours:02d}:{minutes:02d}:{seconds:02d}{STORE_OFFSET_TEXT}"


def _amount(cents: int) -> int | float:
    """Return a MoneyV2 amount as JavaScript would serialise it (``10`` not ``10.0``)."""
    return cents // 100 if cents % 100 == 0 else cents / 100


def _money(cents: int) -> dict[str, Any]:
    return {"amount": _amount(cents), "currencyCode": CURRENCY}


def _price_text(cents: int) -> str:
    return f"{cents // 100}.{cents % 100:02d}"


def _money_set(text: str) -> dict[str, Any]:
    money = {"amount": text, "currency_code": CURRENCY}
    return {"shop_money": money, "presentment_money": dict(money)}


def _ascii_slug(text: str) -> str:
    folded = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    out = []
    for ch in folded.lower():
        if ch.isalnum():
            out.append(ch)
        elif out and out[-1] != "-":
            out.append("-")
    return "".join(out).strip("-")


def _ascii_name(text: str) -> str:
    return "".join(ch for ch in _ascii_slug(text) if ch.isalnum())


# --------------------------------------------------------------------------
# Catalogue, people, visitors
# --------------------------------------------------------------------------


@dataclass(slots=True, eq=False)
class _Variant:
    product_id: str
    variant_id: str
    product_title: str
    variant_title: str
    vendor: str
    product_type: str
    handle: str
    sku: str
    cents: int
    grams: int
    pixel: dict[str, Any]  # Web Pixels ProductVariant, shared read-only
    checkout: dict[str, Any]  # the lighter variant object of checkout lineItems


@dataclass(slots=True, eq=False)
class _Person:
    first: str
    last: str
    email: str  # as typed (may be messy)
    phone: phonenumbers.PhoneNumber | None
    country: str
    address1: str
    city: str
    province: str
    province_code: str
    zip: str
    customer_id: int


@dataclass(slots=True, eq=False)
class _Visitor:
    vid: str  # Shopify clientId or Segment anonymousId
    store: str
    country: str
    ua: str
    mobile: bool
    languages: tuple[str, ...]
    bot: bool
    library: str = ""
    person: _Person | None = None
    user_id: str | None = None
    gave_email: bool = False
    returned: bool = False
    last_day: int = -1
    navigator: dict[str, Any] | None = None
    dims: tuple[int, int, int, int, int, int] = (0, 0, 0, 0, 0, 0)


@dataclass(slots=True, eq=False)
class _Session:
    visitor: _Visitor
    ip: str
    envelope_ip: str
    skew_ms: int
    landing: str = ""  # path + query of the first page (Shopify landing_site)
    referrer: str = ""
    epik: bool = False


@dataclass(slots=True, eq=False)
class _SegmentCtx:
    """Clock, referrer and queued messages of one Segment session."""

    session: _Session
    t: int
    referrer: str
    msgs: list[tuple[int, dict[str, Any], _Meta]]


class _Meta:
    """Facts about one queued line, used to count what really reaches disk."""

    __slots__ = ("event_day", "name", "order_id", "dup", "string_body", "test", "n_msgs",
                 "epik", "param")

    def __init__(self, event_day: int, name: str, **kw: Any) -> None:
        self.event_day = event_day
        self.name = name
        self.order_id: str | None = kw.get("order_id")
        self.dup: bool = kw.get("dup", False)
        self.string_body: bool = kw.get("string_body", False)
        self.test: bool = kw.get("test", False)
        self.n_msgs: int = kw.get("n_msgs", 1)
        self.epik: bool = kw.get("epik", False)
        self.param: float = kw.get("param", 0.0)

    def as_dup(self) -> _Meta:
        return _Meta(self.event_day, self.name, order_id=self.order_id, dup=True,
                     string_body=self.string_body, test=self.test, n_msgs=self.n_msgs)


class _Lane:
    """One output file: a heap keyed by receive time, flushed behind a watermark."""

    def __init__(self, root: Path, kind: str, day_no: int) -> None:
        folder, name, gz = _LAYOUT[kind]
        self.kind = kind
        self.day_no = day_no
        self.rel = f"{folder}/{_day_text(day_no)}/{name}"
        path = root / self.rel
        path.parent.mkdir(parents=True, exist_ok=True)
        self._raw = open(path, "wb")
        # mtime=0 and no file name keep gzip headers identical between runs.
        self._out = (
            gzip.GzipFile(filename="", mode="wb", fileobj=self._raw, compresslevel=6, mtime=0)
            if gz
            else self._raw
        )
        self.heap: list[tuple[int, int, bytes | None, _Meta]] = []
        self.buf = bytearray()
        self.last_good = b""
        self.good = 0
        self.bad = 0

    def write(self, line: bytes) -> None:
        self.buf += line
        self.buf += b"\n"
        if len(self.buf) > 1 << 18:
            self._out.write(self.buf)
            self.buf.clear()

    def close(self) -> None:
        if self.buf:
            self._out.write(self.buf)
            self.buf.clear()
        if self._out is not self._raw:
            self._out.close()
        self._raw.close()


def _new_counters() -> dict[str, Any]:
    return {
        "lines": dict.fromkeys(KINDS, 0),
        "bad_lines": dict.fromkeys(KINDS, 0),
        "bad_lines_by_type": dict.fromkeys(BAD_LINE_KINDS, 0),
        "duplicate_lines": dict.fromkeys(KINDS, 0),
        "late_lines": dict.fromkeys(KINDS, 0),
        "pixel_events_by_name": {},
        "segment_messages": 0,
        "segment_batches": 0,
        "string_bodies": 0,
        "epik_landings": 0,
    }


class _Generator:
    """Holds the random stream, the visitor pools and the open day files of one run."""

    def __init__(self, root: Path, end_date: date, days: int, visitors_per_day: int,
                 seed: int) -> None:
        self.root = root
        self.days = days
        self.visitors_per_day = visitors_per_day
        self.seed = seed
        self.rng = random.Random(seed)
        self.first_day_no = (end_date - _EPOCH).days - (days - 1)
        self.last_day_no = self.first_day_no + days - 1
        self.cur_day_no = self.first_day_no
        self.seq = 0
        self.c = _new_counters()
        self.injected = {
            "messy_emails": 0, "placeholders": 0, "formatted_prices": 0,
            "epoch_ms_timestamps": 0, "ipv6_sessions": 0, "forwarded_ip_sessions": 0,
            "clock_skew_sessions": 0, "late_email_buyers": 0, "epik_next_day_buyers": 0,
            "lines_dropped_after_end": 0,
        }
        self.pixel_orders: set[str] = set()
        self.webhook_orders: set[str] = set()
        self.test_orders: set[str] = set()
        self.segment_orders: set[str] = set()
        self.visitor_ids: set[str] = set()
        self.visitors_by_store = dict.fromkeys(("pixel", "segment"), 0)
        self.bot_visitors = 0
        self.sessions = 0
        self.returning_sessions = 0
        self.returning_visitors = 0
        self.epik_buyers = 0
        self.pools: dict[str, list[_Visitor]] = {"pixel": [], "segment": []}
        self.forced: dict[int, list[tuple[_Visitor, str]]] = {}
        self.carry: dict[str, list[tuple[int, int, bytes | None, _Meta]]] = {
            k: [] for k in KINDS
        }
        self.lanes: dict[str, _Lane] = {}
        self.files: dict[str, dict[str, int]] = {}
        self.used_emails: set[str] = set()
        self.showcase_pending = True
        self.next_order_id = 5_500_000_000_000 + self.rng.randrange(10**9)
        self.next_order_number = 1001
        self.next_segment_order = 100_000 + self.rng.randrange(10**5)
        self._build_catalogue()
        self._phone_bases = {
            region: phonenumbers.example_number_for_type(region, PhoneNumberType.MOBILE)
            for region in _COUNTRIES
        }
        self._country_codes = tuple(_COUNTRIES)
        self._country_weights = tuple(c["weight"] for c in _COUNTRIES.values())

    # ---------------------------------------------------------------- ids

    def _uuid(self) -> str:
        h = f"{self.rng.getrandbits(128):032x}"
        h = h[:12] + "4" + h[13:16] + "89ab"[int(h[16], 16) & 3] + h[17:]
        return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"

    def _pixel_event_id(self) -> str:
        # Shopify prints the first group in lower case and the rest in upper.
        h = f"{self.rng.getrandbits(128):032x}"
        return f"sh-{h[:8]}-{h[8:12].upper()}-{h[12:16].upper()}-{h[16:20].upper()}-" \
               f"{h[20:].upper()}"

    def _hex(self, n: int = 32) -> str:
        return f"{self.rng.getrandbits(n * 4):0{n}x}"

    def _digits(self, base: int, span: int) -> int:
        return base + self.rng.randrange(span)

    def _cart_token(self) -> str:
        ulid = "01H" + "".join(self.rng.choices(_CROCKFORD, k=23))
        return base64.b64encode(f"gcp-us-central1:{ulid}".encode()).decode().rstrip("=")

    def _epik(self) -> str:
        # Real values are base64 of "v=2&u=<id>&p=0&n=<nonce>&t=<time>".
        rng = self.rng
        u = "".join(rng.choices(_B62, k=rng.randint(16, 28)))
        n = "".join(rng.choices(_B62, k=rng.randint(10, 16)))
        t = "AAAAAG" + "".join(rng.choices(_B62, k=rng.randint(4, 8)))
        raw = f"v=2&u={u}&p=0&n={n}&t={t}".encode()
        return base64.urlsafe_b64encode(raw).decode().rstrip("=")

    # ---------------------------------------------------------- catalogue

    def _build_catalogue(self) -> None:
        rng = self.rng
        self.variants: list[_Variant] = []
        self.by_type: dict[str, list[_Variant]] = {}
        for index, (title, ptype, vendor, cents) in enumerate(_PRODUCTS):
            product_id = str(self._digits(8_273_000_000_000, 999_999_999))
            handle = _ascii_slug(title)
            has_sku = rng.random() < 0.8
            for opt in _OPTIONS.get(ptype, ("Default Title",)):
                variant_id = str(self._digits(44_843_000_000_000, 999_999_999))
                code = "" if opt == "Default Title" else "-" + _ascii_name(opt)[:3].upper()
                sku = f"DS-{1001 + index}{code}" if has_sku else ""
                image = {"src": f"//{SHOP_HOST}/cdn/shop/products/{handle}.jpg?v=1704619782"}
                product = {
                    "id": product_id, "title": title, "untranslatedTitle": title,
                    "url": f"/products/{handle}", "vendor": vendor, "type": ptype,
                }
                pixel = {
                    "id": variant_id, "image": image, "price": _money(cents),
                    "product": product, "sku": sku, "title": opt, "untranslatedTitle": opt,
                }
                checkout = {
                    "id": variant_id, "image": image, "price": _money(cents),
                    "product": {
                        "id": product_id, "title": title, "vendor": vendor, "type": ptype,
                        "untranslatedTitle": title, "url": f"/products/{handle}",
                    },
                    "sku": sku,
                }
                v = _Variant(product_id, variant_id, title, opt, vendor, ptype, handle, sku,
                             cents, rng.choice((150, 300, 450, 900, 1800)), pixel, checkout)
                self.variants.append(v)
                self.by_type.setdefault(ptype, []).append(v)
        # One result per product (its first variant), matched on a folded title.
        self.searchable = [
            (_ascii_slug(v.product_title).replace("-", " "), v)
            for v in self.variants
            if v.variant_title in ("Default Title", "S", "Olive")
        ]
        self.collections = [("", "all", "Products", self.variants[::3][:12])]
        for ptype, items in self.by_type.items():
            coll_id = str(self._digits(440_000_000_000, 9_999_999))
            self.collections.append((coll_id, _ascii_slug(ptype), ptype, items[:12]))

    # --------------------------------------------------------------- people

    def _phone(self, region: str) -> phonenumbers.PhoneNumber:
        base = self._phone_bases[region]
        nsn = str(base.national_number)
        keep = nsn[:-PHONE_VARIED_DIGITS]
        for _ in range(5):
            tail = f"{self.rng.randrange(10**PHONE_VARIED_DIGITS):0{PHONE_VARIED_DIGITS}d}"
            cand = phonenumbers.PhoneNumber(
                country_code=base.country_code, national_number=int(keep + tail)
            )
            # Only numbers libphonenumber accepts as valid for the region are used.
            if phonenumbers.is_valid_number_for_region(cand, region):
                return cand
        return base

    def _phone_text(self, num: phonenumbers.PhoneNumber | None) -> str:
        if num is None:
            return ""
        fmt = self.rng.choice(
            (PhoneNumberFormat.NATIONAL, PhoneNumberFormat.INTERNATIONAL, PhoneNumberFormat.E164)
        )
        return phonenumbers.format_number(num, fmt)

    def _email(self, first: str, last: str) -> str:
        rng = self.rng
        f, ln = _ascii_name(first), _ascii_name(last)
        pattern = rng.randrange(5)
        if pattern == 0:
            local = f"{f}.{ln}"
        elif pattern == 1:
            local = f"{f}{ln}{rng.randint(1, 99)}"
        elif pattern == 2:
            local = f"{f[0]}{ln}"
        elif pattern == 3:
            local = f"{f}_{ln}{rng.randint(70, 99)}"
        else:
            local = f"{f}.{ln}+shop"
        email = f"{local}@{rng.choice(_EMAIL_DOMAINS)}"
        while email in self.used_emails:
            # Distinct people must never share an address, or stitching merges them.
            local += str(rng.randint(0, 9))
            email = f"{local}@{email.split('@', 1)[1]}"
        self.used_emails.add(email)
        if rng.random() < MESSY_EMAIL_SHARE:
            self.injected["messy_emails"] += 1
            local_part, domain = email.split("@", 1)
            style = rng.randrange(3)
            if style == 0:
                email = f" {local_part.title()}@{domain.title().replace('.Com', '.COM')} "
            elif style == 1:
                email = email.upper()
            else:
                email = f"{local_part.capitalize()}@{domain} "
        return email

    def _person(self, country: str) -> _Person:
        rng = self.rng
        firsts, lasts = _NAMES[country]
        first, last = rng.choice(firsts), rng.choice(lasts)
        spec = _COUNTRIES[country]
        city, province, code, zpat = rng.choice(spec["cities"])
        street = rng.choice(spec["streets"])
        number = rng.randint(1, 240)
        if country == "DE":
            address1 = f"{street} {number}"
        elif country == "IN":
            address1 = f"{number}, {street}"
        else:
            address1 = f"{number} {street}"
        zip_code = "".join(str(rng.randrange(10)) if ch == "#" else ch for ch in zpat)
        phone = self._phone(country) if rng.random() < PHONE_GIVEN_SHARE else None
        return _Person(first, last, self._email(first, last), phone, country, address1, city,
                       province, code, zip_code, self._digits(7_000_000_000_000, 99_999_999_999))

    def _new_visitor(self, store: str) -> _Visitor:
        rng = self.rng
        bot = rng.random() < BOT_SHARE
        country = rng.choices(self._country_codes, self._country_weights)[0]
        mobile = rng.random() < 0.55
        if bot:
            ua, mobile = rng.choice(_BOT_UAS), False
        else:
            ua = rng.choice(_MOBILE_UAS if mobile else _DESKTOP_UAS)
        langs = rng.choice(_COUNTRIES[country]["languages"])
        v = _Visitor(self._uuid(), store, country, ua, mobile, langs, bot)
        if store == "pixel":
            v.navigator = {
                "language": langs[0], "cookieEnabled": True, "languages": list(langs),
                "userAgent": ua,
            }
            if mobile:
                w, h = rng.choice(((390, 844), (393, 852), (412, 915), (375, 667)))
                v.dims = (h - 180, w, h - 100, w, w, h)
            else:
                sw, sh = rng.choice(((1440, 900), (1920, 1080), (1536, 864), (1280, 800)))
                iw = rng.randint(900, sw)
                v.dims = (sh - rng.randint(120, 220), iw, sh - 25, sw, sw, sh)
        else:
            v.library = rng.choice(_SEGMENT_LIBRARY_VERSIONS)
        self.visitor_ids.add(v.vid)
        self.visitors_by_store[store] += 1
        if bot:
            self.bot_visitors += 1
        return v

    def _session(self, v: _Visitor) -> _Session:
        rng = self.rng
        if rng.random() < IPV6_SHARE:
            self.injected["ipv6_sessions"] += 1
            ip = f"2001:db8:{rng.randrange(0x10000):x}:{rng.randrange(0x10000):x}::" \
                 f"{rng.randrange(1, 0x10000):x}"
        else:
            ip = f"{rng.choice(('203.0.113', '198.51.100'))}.{rng.randint(1, 254)}"
        envelope_ip = ip
        if ":" not in ip and rng.random() < FORWARDED_IP_SHARE:
            self.injected["forwarded_ip_sessions"] += 1
            envelope_ip = f"{ip}, 10.0.{rng.randint(0, 255)}.{rng.randint(1, 254)}"
        skew = 0
        if rng.random() < CLOCK_SKEW_SHARE:
            self.injected["clock_skew_sessions"] += 1
            skew = rng.choice((-1, 1)) * rng.randint(20_000, 600_000)
        return _Session(v, ip, envelope_ip, skew)

    # -------------------------------------------------------------- output

    def _open_day(self, day_no: int) -> None:
        self.cur_day_no = day_no
        day_start = day_no * _DAY_MS
        for kind in KINDS:
            lane = _Lane(self.root, kind, day_no)
            for bad in BAD_LINE_KINDS:
                key = day_start + self.rng.randrange(_DAY_MS)
                self._push(lane, key, None, _Meta(day_no, bad, param=self.rng.uniform(0.2, 0.9)))
            for item in self.carry[kind]:
                heapq.heappush(lane.heap, item)
            self.carry[kind] = []
            self.lanes[kind] = lane

    def _push(self, lane: _Lane, key: int, payload: bytes | None, meta: _Meta) -> None:
        self.seq += 1
        heapq.heappush(lane.heap, (key, self.seq, payload, meta))

    def _route(self, kind: str, event_ms: int, key_ms: int, payload: bytes, meta: _Meta,
               late: bool = False, dup_share: float = 0.0) -> None:
        """Queue a line for the file of its event day (receive day for late deliveries)."""
        file_day = event_ms // _DAY_MS
        if late and key_ms // _DAY_MS > file_day:
            file_day = key_ms // _DAY_MS
        # A slow device clock can date an event before the open file; it still
        # lands in the file being written, like a late arrival.
        file_day = max(file_day, self.cur_day_no)
        copies = [(key_ms, meta)]
        if dup_share and self.rng.random() < dup_share:
            copies.append((key_ms + self.rng.randint(500, 90_000), meta.as_dup()))
        for key, m in copies:
            if file_day == self.cur_day_no:
                self._push(self.lanes[kind], key, payload, m)
            elif file_day == self.cur_day_no + 1 and file_day <= self.last_day_no:
                self.seq += 1
                self.carry[kind].append((key, self.seq, payload, m))
            else:
                self.injected["lines_dropped_after_end"] += 1

    def _flush(self, until_ms: int | None) -> None:
        for lane in self.lanes.values():
            heap = lane.heap
            while heap and (until_ms is None or heap[0][0] < until_ms):
                _, _, payload, meta = heapq.heappop(heap)
                self._write(lane, payload, meta)

    def _bad_line(self, lane: _Lane, meta: _Meta) -> bytes:
        src = lane.last_good or b'{"received_at":"' + _iso_ms(lane.day_no * _DAY_MS).encode() \
            + b'","body":{"id":"sh-00000000-0000-0000-0000-000000000000"}}'
        if meta.name == "truncated":
            # Any proper prefix of a JSON object is invalid JSON; cut on a UTF-8
            # boundary so the line is broken JSON, not also broken text.
            cut = max(1, min(len(src) - 1, int(len(src) * meta.param)))
            while cut > 1 and 0x80 <= src[cut] < 0xC0:
                cut -= 1
            return src[:cut]
        if meta.name == "invalid_utf8":
            # A Latin-1 byte inside a string value, as from a mis-declared shop page.
            marker = b'"title":"'
            pos = src.find(marker)
            pos = src.find(b'":"') + 3 if pos < 0 else pos + len(marker)
            return src[:pos] + b"Caf\xe9 \xff" + src[pos:]
        if meta.name == "json_array":
            return orjson.dumps(["beacon", lane.kind, int(meta.param * 1000)])
        return b""

    def _write(self, lane: _Lane, payload: bytes | None, meta: _Meta) -> None:
        kind = lane.kind
        c = self.c
        stats = self.files.setdefault(lane.rel, {"lines": 0, "bad_lines": 0})
        if payload is None:
            lane.write(self._bad_line(lane, meta))
            lane.bad += 1
            stats["bad_lines"] += 1
            c["bad_lines"][kind] += 1
            c["bad_lines_by_type"][meta.name] += 1
            return
        lane.write(payload)
        lane.last_good = payload
        lane.good += 1
        stats["lines"] += 1
        c["lines"][kind] += 1
        if meta.event_day < lane.day_no:
            c["late_lines"][kind] += 1
        if meta.string_body:
            c["string_bodies"] += 1
        if meta.dup:
            c["duplicate_lines"][kind] += 1
            return
        if meta.epik:
            c["epik_landings"] += 1
        if kind == "pixel":
            names = c["pixel_events_by_name"]
            names[meta.name] = names.get(meta.name, 0) + 1
            if meta.order_id:
                self.pixel_orders.add(meta.order_id)
        elif kind == "segment":
            c["segment_messages"] += meta.n_msgs
            if meta.name == "batch":
                c["segment_batches"] += 1
            if meta.order_id:
                self.segment_orders.add(meta.order_id)
        elif meta.order_id:
            self.webhook_orders.add(meta.order_id)
            if meta.test:
                self.test_orders.add(meta.order_id)

    def _close_day(self) -> None:
        self._flush(None)
        for lane in self.lanes.values():
            self.files.setdefault(lane.rel, {"lines": 0, "bad_lines": 0})
            lane.close()
        self.lanes = {}

    # ------------------------------------------------------------ planning

    def _plan(self) -> int:
        """Draw how deep into the funnel a session goes: 0 browse .. 3 buy."""
        r = self.rng.random()
        if r < BUY_SHARE:
            return 3
        if r < CHECKOUT_SHARE:
            return 2
        if r < CART_SHARE:
            return 1
        return 0

    def _plan_day(self, day_idx: int) -> list[tuple[_Visitor, int, bool, str]]:
        rng = self.rng
        n = self.visitors_per_day
        plans: list[tuple[_Visitor, int, bool, str]] = []
        for v, reason in self.forced.pop(day_idx, [])[:n]:
            plans.append((v, 3, False, reason))
        taken = {id(p[0]) for p in plans}
        n_returning = int(n * RETURNING_SHARE)
        new_today: list[_Visitor] = []
        while len(plans) < n:
            store = "segment" if rng.random() < SEGMENT_STORE_SHARE else "pixel"
            pool = self.pools[store]
            v = None
            if n_returning > 0 and pool:
                cand = pool[rng.randrange(len(pool))]
                if id(cand) not in taken:
                    v = cand
                    n_returning -= 1
            is_new = v is None
            if v is None:
                v = self._new_visitor(store)
                new_today.append(v)
            taken.add(id(v))
            if v.bot:
                plans.append((v, 0, False, ""))
                continue
            epik = rng.random() < EPIK_SHARE
            plan = self._plan()
            reason = ""
            if store == "pixel" and self.showcase_pending and is_new:
                # Guarantee one ad click that converts in-session with a matching
                # webhook, so even tiny demos show the attribution path end to end.
                self.showcase_pending = False
                epik, plan, reason = True, 3, "showcase"
            elif epik and rng.random() < EPIK_BUY_SHARE:
                if rng.random() < EPIK_NEXT_DAY_SHARE and day_idx + 1 < self.days:
                    plan = min(plan, 1)
                    self.forced.setdefault(day_idx + 1, []).append((v, "epik_next_day"))
                else:
                    plan = 3
            plans.append((v, plan, epik, reason))
        rng.shuffle(plans)
        for v in new_today:
            if v.bot:
                continue
            pool = self.pools[v.store]
            if len(pool) < POOL_CAP:
                pool.append(v)
            else:
                pool[rng.randrange(POOL_CAP)] = v
        return plans

    def _start_times(self, day_no: int, n: int) -> list[int]:
        rng = self.rng
        hours = rng.choices(range(24), _HOUR_WEIGHTS, k=n)
        base = day_no * _DAY_MS
        return sorted(base + h * 3_600_000 + rng.randrange(3_600_000) for h in hours)

    # -------------------------------------------------------------- driver

    def run(self) -> dict[str, Any]:
        for day_idx in range(self.days):
            day_no = self.first_day_no + day_idx
            self._open_day(day_no)
            plans = self._plan_day(day_idx)
            starts = self._start_times(day_no, len(plans))
            for (v, plan, epik, reason), start in zip(plans, starts, strict=True):
                self._flush(start)
                self.sessions += 1
                if v.last_day not in (-1, day_idx):
                    self.returning_sessions += 1
                    if not v.returned:
                        v.returned = True
                        self.returning_visitors += 1
                v.last_day = day_idx
                if reason == "epik_next_day":
                    self.injected["epik_next_day_buyers"] += 1
                if reason == "abandoned_return" and not v.gave_email:
                    self.injected["late_email_buyers"] += 1
                if v.store == "pixel":
                    self._pixel_session(v, start, plan, epik, reason, day_idx)
                else:
                    self._segment_session(v, start, plan, epik, reason, day_idx)
            self._close_day()
        return self._summary()

    def _summary(self) -> dict[str, Any]:
        c = self.c
        shop_orders = self.pixel_orders | self.webhook_orders
        return {
            "landing_dir": str(self.root),
            "start_date": _day_text(self.first_day_no),
            "end_date": _day_text(self.last_day_no),
            "days": self.days,
            "seed": self.seed,
            "visitors_per_day": self.visitors_per_day,
            "files_written": len(self.files),
            "files": dict(sorted(self.files.items())),
            "lines": c["lines"],
            "bad_lines": c["bad_lines"],
            "bad_lines_by_type": c["bad_lines_by_type"],
            "duplicate_lines": c["duplicate_lines"],
            "late_lines": c["late_lines"],
            "string_bodies": c["string_bodies"],
            "pixel_events": sum(c["pixel_events_by_name"].values()),
            "pixel_events_by_name": dict(sorted(c["pixel_events_by_name"].items())),
            "segment_messages": c["segment_messages"],
            "segment_batches": c["segment_batches"],
            "visitors": len(self.visitor_ids),
            "visitors_by_store": self.visitors_by_store,
            "visitor_sessions": self.sessions,
            "returning_visitors": self.returning_visitors,
            "returning_sessions": self.returning_sessions,
            "bot_visitors": self.bot_visitors,
            "epik_landings": c["epik_landings"],
            "epik_buyers": self.epik_buyers,
            "orders": len(shop_orders) + len(self.segment_orders),
            "shopify_orders": len(shop_orders),
            "pixel_purchases": len(self.pixel_orders),
            "webhook_orders": len(self.webhook_orders),
            "pixel_and_webhook_orders": len(self.pixel_orders & self.webhook_orders),
            "pixel_only_orders": len(self.pixel_orders - self.webhook_orders),
            "webhook_only_orders": len(self.webhook_orders - self.pixel_orders),
            "test_orders": len(self.test_orders),
            "segment_orders": len(self.segment_orders),
            "injected": self.injected,
        }

    # ------------------------------------------------------- pixel store

    def _loc(self, path: str, search: str) -> dict[str, Any]:
        origin = f"https://{SHOP_HOST}"
        return {
            "href": origin + path + search, "hash": "", "host": SHOP_HOST,
            "hostname": SHOP_HOST, "origin": origin, "pathname": path, "port": "",
            "protocol": "https:", "search": search,
        }

    def _emit_pixel(self, s: _Session, name: str, t: int, page: tuple[str, str, str, str],
                    data: dict[str, Any] | None, order_id: str | None = None,
                    epik: bool = False) -> None:
        rng = self.rng
        v = s.visitor
        path, search, title, referrer = page
        loc = self._loc(path, search)
        ih, iw, oh, ow, sw, sh = v.dims
        scroll = 0 if rng.random() < 0.6 else rng.randint(1, 40) * 50
        event: dict[str, Any] = {"id": self._pixel_event_id(), "name": name}
        if data is not None:
            event["data"] = data
        event["clientId"] = v.vid
        client_ms = t + s.skew_ms
        event["timestamp"] = _iso_ms(client_ms)
        event["context"] = {
            "document": {
                "location": loc, "referrer": referrer, "characterSet": "UTF-8", "title": title,
            },
            "navigator": v.navigator,
            "window": {
                "innerHeight": ih, "innerWidth": iw, "outerHeight": oh, "outerWidth": ow,
                "pageXOffset": 0, "pageYOffset": scroll, "location": loc,
                "origin": loc["origin"], "screen": {"height": sh, "width": sw},
                "screenX": 0, "screenY": 0 if v.mobile else 25, "scrollX": 0, "scrollY": scroll,
            },
        }
        late = rng.random() < LATE_DELIVERY_SHARE
        received = t + (rng.randint(3_600_000, 14 * 3_600_000) if late
                        else rng.randint(150, 900 if rng.random() < 0.8 else 4_000))
        string_body = rng.random() < STRING_BODY_SHARE
        body: Any = orjson.dumps(event).decode() if string_body else event
        envelope = {
            "received_at": _iso_ms(received), "ip": s.envelope_ip, "user_agent": v.ua,
            "body": body,
        }
        meta = _Meta(client_ms // _DAY_MS, name, order_id=order_id, string_body=string_body,
                     epik=epik)
        self._route("pixel", client_ms, received, orjson.dumps(envelope), meta, late=late,
                    dup_share=DUPLICATE_SHARE)

    def _page(self, kind: str, referrer: str, search: str = "",
              item: Any = None) -> tuple[str, str, str, str]:
        if kind == "home":
            return "/", search, SHOP_NAME, referrer
        if kind == "product":
            return f"/products/{item.handle}", search, f"{item.product_title} – {SHOP_NAME}", \
                referrer
        if kind == "collection":
            return f"/collections/{item[1]}", search, f"{item[2]} – {SHOP_NAME}", referrer
        if kind == "search":
            n = len(item[1])
            return "/search", search, \
                f'Search: {n} results found for "{item[0]}" – {SHOP_NAME}', referrer
        return "/cart", "", f"Your Shopping Cart – {SHOP_NAME}", referrer

    def _search_results(self, query: str) -> list[dict[str, Any]]:
        folded = _ascii_slug(query).replace("-", " ")
        sid = self._hex(9)
        out = []
        for title, v in self.searchable:
            if folded in title:
                pv = dict(v.pixel)
                product = dict(pv["product"])
                product["url"] = f"/products/{v.handle}?_pos={len(out) + 1}&_sid={sid}&_ss=r"
                pv["product"] = product
                out.append(pv)
                if len(out) == 12:
                    break
        return out

    def _pixel_session(self, v: _Visitor, start: int, plan: int, epik: bool, reason: str,
                       day_idx: int) -> None:
        rng = self.rng
        s = self._session(v)
        s.epik = epik
        t = start
        origin = f"https://{SHOP_HOST}"
        if epik:
            s.referrer = "https://www.pinterest.com/"
            landing_search = f"?epik={self._epik()}&utm_source=pinterest"
            if v.mobile and rng.random() < 0.5:
                # Ad clicks on phones usually open in Pinterest's in-app browser.
                v.ua = rng.choice(_PINTEREST_APP_UAS)
                v.navigator = dict(v.navigator or {}, userAgent=v.ua)
        else:
            # Crawlers send no referrer.
            s.referrer = "" if v.bot else rng.choice(_LANDING_REFERRERS)
            landing_search = "?utm_source=newsletter&utm_medium=email" \
                if rng.random() < 0.04 else ""
        referrer = s.referrer
        n_steps = rng.randint(2, 12) if v.bot else min(1 + int(rng.expovariate(0.45)), 9)
        cart: list[tuple[_Variant, int]] = []
        focus: _Variant | None = None
        for step in range(n_steps):
            search = landing_search if step == 0 else ""
            if v.bot:
                kind = rng.choice(("home", "product", "product", "collection"))
            elif step == 0:
                kind = "product" if epik else rng.choice(("home", "product", "collection"))
            else:
                kind = rng.choices(("product", "collection", "search", "home"), (6, 2, 1, 1))[0]
            t += 0 if step == 0 else (rng.randint(1_000, 5_000) if v.bot
                                      else rng.randint(4_000, 120_000))
            if kind == "product":
                item: Any = rng.choice(self.variants)
                focus = item
            elif kind == "collection":
                item = rng.choice(self.collections)
            elif kind == "search":
                query = rng.choice(_SEARCH_TERMS)
                item = (query, self._search_results(query))
                search = f"?q={quote_plus(query)}&options%5Bprefix%5D=last"
            else:
                item = None
            page = self._page(kind, referrer, search, item)
            if step == 0:
                s.landing = page[0] + page[1]
            data = {} if rng.random() < PAGE_VIEWED_EMPTY_DATA_SHARE else None
            self._emit_pixel(s, "page_viewed", t, page, data, epik=epik and step == 0)
            referrer = origin + page[0] + page[1]
            if v.bot:
                continue
            t += rng.randint(40, 900)
            if kind == "product":
                self._emit_pixel(s, "product_viewed", t, page, {"productVariant": item.pixel})
            elif kind == "collection":
                coll_id, _, title, items = item
                data = {"collection": {"id": coll_id, "title": title,
                                       "productVariants": [x.pixel for x in items]}}
                self._emit_pixel(s, "collection_viewed", t, page, data)
            elif kind == "search":
                data = {"searchResult": {"query": item[0], "productVariants": item[1]}}
                self._emit_pixel(s, "search_submitted", t, page, data)
        if v.bot or plan == 0:
            return
        # Add to cart happens on a product page; visit one if the session had none.
        for _ in range(1 if rng.random() < 0.7 else rng.randint(2, 3)):
            if focus is None or cart:
                focus = rng.choice(self.variants)
                t += rng.randint(5_000, 60_000)
                page = self._page("product", referrer, "", focus)
                self._emit_pixel(s, "page_viewed", t, page, None)
                t += rng.randint(40, 900)
                self._emit_pixel(s, "product_viewed", t, page, {"productVariant": focus.pixel})
                referrer = origin + page[0]
            qty = 1 if rng.random() < 0.8 else rng.randint(2, 3)
            t += rng.randint(3_000, 40_000)
            page = self._page("product", referrer, "", focus)
            data = {"cartLine": {"cost": {"totalAmount": _money(focus.cents * qty)},
                                 "merchandise": focus.pixel, "quantity": qty}}
            self._emit_pixel(s, "product_added_to_cart", t, page, data)
            cart.append((focus, qty))
        cart_token = self._cart_token()
        t += rng.randint(3_000, 30_000)
        page = self._page("cart", referrer)
        self._emit_pixel(s, "page_viewed", t, page, None)
        t += rng.randint(40, 900)
        total = sum(x.cents * q for x, q in cart)
        data = {"cart": {
            "cost": {"totalAmount": _money(total)}, "id": cart_token,
            "lines": [{"cost": {"totalAmount": _money(x.cents * q)}, "merchandise": x.pixel,
                       "quantity": q} for x, q in cart],
            "totalQuantity": sum(q for _, q in cart),
        }}
        self._emit_pixel(s, "cart_viewed", t, page, data)
        if plan >= 2:
            self._checkout(s, t, plan, cart, cart_token, reason, day_idx)

    def _pixel_address(self, p: _Person, stage: str, phone: str) -> dict[str, Any]:
        if stage == "empty":
            return {}
        if stage == "partial":
            return {"country": p.country, "countryCode": p.country,
                    "province": p.province_code, "provinceCode": p.province_code}
        return {
            "address1": p.address1, "city": p.city, "country": p.country,
            "countryCode": p.country, "firstName": p.first, "lastName": p.last,
            "phone": phone, "province": p.province_code, "provinceCode": p.province_code,
            "zip": p.zip,
        }

    def _totals(self, cart: list[tuple[_Variant, int]], country: str) -> tuple[int, int, int]:
        subtotal = sum(x.cents * q for x, q in cart)
        if country != "US":
            shipping = INTERNATIONAL_SHIPPING_CENTS
        else:
            shipping = 0 if subtotal >= FREE_SHIPPING_CENTS else DOMESTIC_SHIPPING_CENTS
        tax = (subtotal * _COUNTRIES[country]["tax"][0] + 5_000) // 10_000
        return subtotal, shipping, tax

    def _checkout(self, s: _Session, t: int, plan: int, cart: list[tuple[_Variant, int]],
                  cart_token: str, reason: str, day_idx: int) -> None:
        rng = self.rng
        v = s.visitor
        if v.person is None:
            v.person = self._person(v.country)
        p = v.person
        token = self._hex(32)
        subtotal, shipping, tax = self._totals(cart, p.country)
        base = f"/checkouts/cn/{cart_token}"
        stages = ("checkout_started", "checkout_contact_info_submitted",
                  "checkout_address_info_submitted", "payment_info_submitted")
        if plan == 3:
            last_stage = 3
        else:
            last_stage = rng.choices((0, 1, 2, 3), (3, 3, 2, 1))[0]
        buying = plan == 3
        pixel_lost = buying and reason != "showcase" and rng.random() < PIXEL_LOST_SHARE
        order_id = self._next_order() if buying else None
        referrer = f"https://{SHOP_HOST}/"
        line_items = [{"discountAllocations": [], "id": x.variant_id, "quantity": q,
                       "title": x.product_title, "variant": x.checkout} for x, q in cart]
        email_typed = p.email
        # One checkout keeps whatever the buyer typed, so format phones once.
        contact_phone = self._phone_text(p.phone)
        address_phone = self._phone_text(p.phone)
        if not address_phone and rng.random() < PLACEHOLDER_SHARE:
            self.injected["placeholders"] += 1
            address_phone = "undefined"
        for i, name in enumerate((*stages, "checkout_completed")):
            if i > last_stage and not (buying and i == 4):
                break
            if i == 4 and pixel_lost:
                break
            t += rng.randint(2_000, 15_000) if i == 4 else rng.randint(15_000, 120_000)
            with_email = i >= 3
            ck: dict[str, Any] = {"attributes": []}
            ck["billingAddress"] = self._pixel_address(
                p, "full" if i == 4 else ("partial" if i in (1, 2) else "empty"), address_phone)
            ck["token"] = token
            ck["currencyCode"] = CURRENCY
            ck["discountApplications"] = []
            if i >= 1:
                ck["email"] = email_typed if with_email else ""
                ck["phone"] = contact_phone if with_email else ""
            ck["lineItems"] = line_items
            ck["order"] = {"id": order_id, "customer": {"id": str(p.customer_id)}} \
                if i == 4 else {}
            ck["shippingAddress"] = self._pixel_address(
                p, "full" if i >= 3 else ("partial" if i in (1, 2) else "empty"), address_phone)
            ck["subtotalPrice"] = _money(subtotal)
            with_shipping = i >= 2
            ck["shippingLine"] = {"price": _money(shipping) if with_shipping else {}}
            ck["totalTax"] = _money(tax)
            total = subtotal + tax + (shipping if with_shipping else 0)
            ck["totalPrice"] = _money(total)
            ck["transactions"] = [{"amount": _money(total), "gateway": "shopify_payments"}] \
                if i == 4 else []
            suffix = "/thank-you" if i == 4 else ("/processing" if i == 3 else "")
            page = (base + suffix, "", f"Checkout - {SHOP_NAME}", referrer)
            self._emit_pixel(s, name, t, page, {"checkout": ck},
                             order_id=order_id if i == 4 else None)
        if last_stage >= 3:
            v.gave_email = True
        if not buying:
            if not v.gave_email and rng.random() < ABANDON_RETURN_SHARE:
                later = day_idx + rng.randint(1, 2)
                if later < self.days:
                    self.forced.setdefault(later, []).append((v, "abandoned_return"))
            return
        if s.epik or reason == "epik_next_day":
            self.epik_buyers += 1
        if pixel_lost or reason == "showcase" or rng.random() < WEBHOOK_FOR_PIXEL_SHARE:
            test = reason != "showcase" and rng.random() < TEST_ORDER_SHARE
            self._emit_webhook(s, t, order_id or "", token, cart_token, cart,
                               (subtotal, shipping, tax), test)

    def _next_order(self) -> str:
        self.next_order_id += self.rng.randint(20_000, 900_000)
        return str(self.next_order_id)

    # ------------------------------------------------------------ webhooks

    def _admin_address(self, p: _Person, phone: str | None) -> dict[str, Any]:
        spec = _COUNTRIES[p.country]
        addr = {
            "first_name": p.first, "address1": p.address1, "phone": phone, "city": p.city,
            "zip": p.zip, "province": p.province, "country": spec["name"],
            "last_name": p.last, "address2": None, "company": None, "latitude": None,
            "longitude": None, "name": f"{p.first} {p.last}", "country_code": p.country,
            "province_code": p.province_code,
        }
        return addr

    def _emit_webhook(self, s: _Session, completed_ms: int, order_id: str, token: str,
                      cart_token: str, cart: list[tuple[_Variant, int]],
                      totals: tuple[int, int, int], test: bool) -> None:
        rng = self.rng
        v = s.visitor
        p = v.person
        assert p is not None
        subtotal, shipping, tax = totals
        total = subtotal + shipping + tax
        created = completed_ms - rng.randint(1_500, 6_000)
        created -= created % 1000
        received = created + rng.randint(1_000, 30_000)
        number = self.next_order_number
        self.next_order_number += 1
        email = p.email.strip()
        e164 = phonenumbers.format_number(p.phone, PhoneNumberFormat.E164) if p.phone else None
        order_phone: str | None = e164
        if order_phone is None and rng.random() < PLACEHOLDER_SHARE:
            self.injected["placeholders"] += 1
            order_phone = ""
        ship_phone = self._phone_text(p.phone) or None
        lang = v.languages[0]
        sub_t, tax_t, tot_t, ship_t = (_price_text(subtotal), _price_text(tax),
                                       _price_text(total), _price_text(shipping))
        rate, tax_title = _COUNTRIES[p.country]["tax"]
        customer_created = _iso_store(created - rng.randint(0, 90) * _DAY_MS)
        customer = {
            "id": p.customer_id, "email": email, "created_at": customer_created,
            "updated_at": _iso_store(created + 2_000), "first_name": p.first,
            "last_name": p.last, "state": "disabled", "note": None, "verified_email": True,
            "multipass_identifier": None, "tax_exempt": False, "phone": e164,
            "email_marketing_consent": {
                "state": "not_subscribed", "opt_in_level": "single_opt_in",
                "consent_updated_at": None,
            },
            "sms_marketing_consent": None, "tags": "", "currency": CURRENCY,
            "tax_exemptions": [],
            "admin_graphql_api_id": f"gid://shopify/Customer/{p.customer_id}",
            "default_address": {
                "id": p.customer_id + 1_500_000_000_000, "customer_id": p.customer_id,
                "first_name": p.first, "last_name": p.last, "company": None,
                "address1": p.address1, "address2": None, "city": p.city,
                "province": p.province, "country": _COUNTRIES[p.country]["name"],
                "zip": p.zip, "phone": ship_phone, "name": f"{p.first} {p.last}",
                "province_code": p.province_code, "country_code": p.country,
                "country_name": _COUNTRIES[p.country]["name"], "default": True,
            },
        }
        line_items = []
        for x, q in cart:
            li_id = self._digits(13_340_000_000_000, 999_999_999)
            price = _price_text(x.cents)
            line_items.append({
                "id": li_id, "admin_graphql_api_id": f"gid://shopify/LineItem/{li_id}",
                "current_quantity": q, "fulfillable_quantity": q,
                "fulfillment_service": "manual", "fulfillment_status": None,
                "gift_card": x.product_type == "Gift Cards", "grams": x.grams,
                "name": x.product_title if x.variant_title == "Default Title"
                else f"{x.product_title} - {x.variant_title}",
                "price": price, "price_set": _money_set(price), "product_exists": True,
                "product_id": int(x.product_id), "properties": [], "quantity": q,
                "requires_shipping": x.product_type != "Gift Cards", "sku": x.sku,
                "taxable": True, "title": x.product_title, "total_discount": "0.00",
                "total_discount_set": _money_set("0.00"), "variant_id": int(x.variant_id),
                "variant_inventory_management": "shopify",
                "variant_title": None if x.variant_title == "Default Title"
                else x.variant_title,
                "vendor": x.vendor, "tax_lines": [], "duties": [], "discount_allocations": [],
            })
        order_token = self._hex(32)
        reference = self._hex(32)
        body = {
            "id": int(order_id), "admin_graphql_api_id": f"gid://shopify/Order/{order_id}",
            "app_id": 580111, "browser_ip": s.ip, "buyer_accepts_marketing": rng.random() < 0.3,
            "cancel_reason": None, "cancelled_at": None, "cart_token": cart_token,
            "checkout_id": self._digits(34_000_000_000_000, 999_999_999_999),
            "checkout_token": token,
            "client_details": {
                "accept_language": lang, "browser_height": None, "browser_ip": s.ip,
                "browser_width": None, "session_hash": None, "user_agent": v.ua,
            },
            "closed_at": None, "company": None,
            "confirmation_number": "".join(rng.choices("ABCDEFGHJKLMNPQRSTUVWXYZ", k=9)),
            "confirmed": True, "contact_email": email, "created_at": _iso_store(created),
            "currency": CURRENCY, "current_subtotal_price": sub_t,
            "current_subtotal_price_set": _money_set(sub_t), "current_total_discounts": "0.00",
            "current_total_price": tot_t, "current_total_price_set": _money_set(tot_t),
            "current_total_tax": tax_t, "current_total_tax_set": _money_set(tax_t),
            "customer_locale": lang, "device_id": None, "discount_codes": [], "email": email,
            "estimated_taxes": False, "financial_status": "paid", "fulfillment_status": None,
            "landing_site": s.landing, "landing_site_ref": None, "location_id": None,
            "name": f"#{number}", "note": None, "note_attributes": [], "number": number - 1000,
            "order_number": number,
            "order_status_url": f"https://{SHOP_HOST}/68875616470/orders/{order_token}/"
                                f"authenticate?key={self._hex(32)}",
            "payment_gateway_names": ["bogus"] if test else ["shopify_payments"],
            "phone": order_phone, "po_number": None, "presentment_currency": CURRENCY,
            "processed_at": _iso_store(created - 2_000), "reference": reference,
            "referring_site": s.referrer, "source_identifier": reference, "source_name": "web",
            "source_url": None, "subtotal_price": sub_t, "subtotal_price_set": _money_set(sub_t),
            "tags": "", "tax_exempt": False,
            "tax_lines": [{"price": tax_t, "rate": rate / 10_000, "title": tax_title,
                           "price_set": _money_set(tax_t), "channel_liable": False}],
            "taxes_included": False, "test": test, "token": order_token,
            "total_discounts": "0.00", "total_discounts_set": _money_set("0.00"),
            "total_line_items_price": sub_t, "total_line_items_price_set": _money_set(sub_t),
            "total_outstanding": "0.00", "total_price": tot_t,
            "total_price_set": _money_set(tot_t), "total_shipping_price_set": _money_set(ship_t),
            "total_tax": tax_t, "total_tax_set": _money_set(tax_t), "total_tip_received": "0.00",
            "total_weight": sum(x.grams * q for x, q in cart),
            "updated_at": _iso_store(created + 3_000), "user_id": None,
            "billing_address": self._admin_address(p, ship_phone), "customer": customer,
            "discount_applications": [], "fulfillments": [], "line_items": line_items,
            "payment_terms": None, "refunds": [],
            "shipping_address": self._admin_address(p, ship_phone),
            "shipping_lines": [{
                "id": self._digits(4_388_000_000_000, 999_999_999), "carrier_identifier": None,
                "code": "Standard", "discounted_price": ship_t,
                "discounted_price_set": _money_set(ship_t), "phone": None, "price": ship_t,
                "price_set": _money_set(ship_t), "requested_fulfillment_service_id": None,
                "source": "shopify", "title": "Standard", "tax_lines": [],
                "discount_allocations": [],
            }],
        }
        envelope = {"received_at": _iso_ms(received), "topic": "orders/create",
                    "shop_domain": SHOP_DOMAIN, "body": body}
        meta = _Meta(created // _DAY_MS, "orders/create", order_id=order_id, test=test)
        self._route("webhook", created, received, orjson.dumps(envelope), meta,
                    dup_share=WEBHOOK_RETRY_SHARE)

    # ---------------------------------------------------------- Segment store

    def _seg_price(self, cents: int) -> int | float | str:
        if self.rng.random() < SEGMENT_PRICE_STRING_SHARE:
            self.injected["formatted_prices"] += 1
            value = cents / 100
            return f"${value:,.2f}" if self.rng.random() < 0.5 else f"{value:.2f}"
        return _amount(cents)

    def _seg_product(self, x: _Variant, qty: int | None = None) -> dict[str, Any]:
        sku = x.sku or self.rng.choice(("", "undefined"))
        if sku and self.rng.random() < PLACEHOLDER_SHARE / 2:
            sku = "undefined"
        if sku == "undefined":
            self.injected["placeholders"] += 1
        out: dict[str, Any] = {"product_id": x.product_id, "sku": sku, "name": x.product_title,
                               "price": self._seg_price(x.cents)}
        if qty is not None:
            out["quantity"] = qty
        return out

    def _seg_add(self, ctx: _SegmentCtx, mtype: str, page: tuple[str, str, str],
                 event: str | None = None, props: dict[str, Any] | None = None,
                 traits: dict[str, Any] | None = None, order_id: str | None = None,
                 is_epik: bool = False) -> None:
        """Queue one Segment call at ``ctx.t``; times are stamped when it is sent."""
        rng = self.rng
        s = ctx.session
        v = s.visitor
        path, search, title = page
        url = f"https://{SEGMENT_HOST}{path}{search}"
        msg: dict[str, Any] = {"type": mtype, "messageId": "ajs-next-" + self._hex(32),
                               "anonymousId": v.vid}
        if v.user_id:
            msg["userId"] = v.user_id
        context: dict[str, Any] = {
            "ip": s.ip, "userAgent": v.ua,
            "page": {"url": url, "path": path, "referrer": ctx.referrer, "search": search,
                     "title": title},
            "locale": v.languages[0],
        }
        if is_epik:
            context["campaign"] = {"source": "pinterest"}
        if v.user_id and v.person is not None and mtype != "identify":
            email = v.person.email
            if rng.random() < PLACEHOLDER_SHARE:
                self.injected["placeholders"] += 1
                email = rng.choice(("undefined", ""))
            context["traits"] = {"email": email, "phone": self._phone_text(v.person.phone)}
        context["library"] = {"name": "analytics.js", "version": v.library}
        msg["context"] = context
        if event:
            msg["event"] = event
        if mtype == "page":
            props = {"path": path, "referrer": ctx.referrer, "search": search, "title": title,
                     "url": url}
        if props is not None:
            msg["properties"] = props
        if traits is not None:
            msg["traits"] = traits
        ctx.msgs.append((ctx.t, msg, _Meta(0, event or mtype, order_id=order_id,
                                           epik=is_epik)))

    def _segment_session(self, v: _Visitor, start: int, plan: int, epik: bool, reason: str,
                         day_idx: int) -> None:
        rng = self.rng
        s = self._session(v)
        s.epik = epik
        referrer = "https://www.pinterest.com/" if epik else rng.choice(_LANDING_REFERRERS)
        ctx = _SegmentCtx(s, start, referrer, [])
        landing_search = f"?epik={self._epik()}&utm_source=pinterest" if epik else ""
        n_steps = rng.randint(2, 10) if v.bot else min(1 + int(rng.expovariate(0.45)), 9)
        focus: _Variant | None = None
        for step in range(n_steps):
            if step:
                ctx.t += rng.randint(1_000, 5_000) if v.bot else rng.randint(4_000, 120_000)
            search = landing_search if step == 0 else ""
            kind = "product" if (epik and step == 0) else rng.choices(
                ("product", "collection", "search", "home"), (6, 2, 1, 1))[0]
            if v.bot and kind == "search":
                kind = "home"
            coll: Any = None
            query = ""
            if kind == "product":
                focus = rng.choice(self.variants)
                page = (f"/products/{focus.handle}", search,
                        f"{focus.product_title} | {SEGMENT_NAME}")
            elif kind == "collection":
                coll = rng.choice(self.collections)
                page = (f"/collections/{coll[1]}", search, f"{coll[2]} | {SEGMENT_NAME}")
            elif kind == "search":
                query = rng.choice(_SEARCH_TERMS)
                page = ("/search", f"?q={quote_plus(query)}", f"Search | {SEGMENT_NAME}")
            else:
                page = ("/", search, SEGMENT_NAME)
            self._seg_add(ctx, "page", page, is_epik=epik and step == 0)
            if not v.bot:
                ctx.t += rng.randint(30, 600)
                if kind == "product" and focus is not None:
                    props = self._seg_product(focus)
                    props.update(currency=CURRENCY, category=focus.product_type,
                                 brand=focus.vendor)
                    self._seg_add(ctx, "track", page, "Product Viewed", props)
                elif kind == "collection":
                    props = {"list_id": coll[0] or "all", "category": coll[2],
                             "products": [self._seg_product(x) for x in coll[3][:8]]}
                    self._seg_add(ctx, "track", page, "Product List Viewed", props)
                elif kind == "search":
                    self._seg_add(ctx, "track", page, "Products Searched", {"query": query})
            ctx.referrer = f"https://{SEGMENT_HOST}{page[0]}{page[1]}"
        if not v.bot and plan >= 1:
            cart: list[tuple[_Variant, int]] = []
            for _ in range(1 if rng.random() < 0.7 else 2):
                if focus is None or cart:
                    focus = rng.choice(self.variants)
                qty = 1 if rng.random() < 0.8 else 2
                ctx.t += rng.randint(3_000, 40_000)
                page = (f"/products/{focus.handle}", "",
                        f"{focus.product_title} | {SEGMENT_NAME}")
                props = self._seg_product(focus, qty)
                props.update(currency=CURRENCY, category=focus.product_type,
                             brand=focus.vendor, cart_id=self._hex(16))
                self._seg_add(ctx, "track", page, "Product Added", props)
                cart.append((focus, qty))
            if plan >= 2:
                self._segment_checkout(ctx, cart, plan, reason, day_idx)
        self._emit_segment(s, ctx.msgs)

    def _segment_checkout(self, ctx: _SegmentCtx, cart: list[tuple[_Variant, int]], plan: int,
                          reason: str, day_idx: int) -> None:
        rng = self.rng
        s = ctx.session
        v = s.visitor
        if v.person is None:
            v.person = self._person(v.country)
        p = v.person
        subtotal, shipping, tax = self._totals(cart, p.country)
        total = subtotal + shipping + tax
        self.next_segment_order += rng.randint(1, 40)
        order_id = f"ORD-{self.next_segment_order}"
        checkout_id = self._hex(24)
        products = [self._seg_product(x, q) for x, q in cart]
        page = ("/checkout", "", f"Checkout | {SEGMENT_NAME}")
        ctx.t += rng.randint(5_000, 60_000)
        self._seg_add(ctx, "track", page, "Checkout Started", {
            "order_id": order_id, "checkout_id": checkout_id,
            "value": self._seg_price(total), "revenue": _amount(subtotal),
            "currency": CURRENCY, "products": products,
        })
        ctx.referrer = f"https://{SEGMENT_HOST}/cart"
        buying = plan == 3
        if buying or rng.random() < 0.5:
            ctx.t += rng.randint(20_000, 150_000)
            if v.user_id is None:
                v.user_id = "cust_" + "".join(rng.choices(_B62, k=10))
            phone = self._phone_text(p.phone)
            if not phone and rng.random() < PLACEHOLDER_SHARE * 2:
                self.injected["placeholders"] += 1
                phone = "undefined"
            self._seg_add(ctx, "identify", page, traits={
                "email": p.email, "phone": phone, "firstName": p.first, "lastName": p.last,
                "address": {"city": p.city, "state": p.province_code, "postalCode": p.zip,
                            "country": p.country},
            })
            v.gave_email = True
        if not buying:
            if not v.gave_email and rng.random() < ABANDON_RETURN_SHARE:
                later = day_idx + rng.randint(1, 2)
                if later < self.days:
                    self.forced.setdefault(later, []).append((v, "abandoned_return"))
            return
        if s.epik or reason == "epik_next_day":
            self.epik_buyers += 1
        ctx.t += rng.randint(30_000, 150_000)
        ctx.referrer = f"https://{SEGMENT_HOST}/checkout"
        done = ("/checkout/thank-you", "", f"Thank you | {SEGMENT_NAME}")
        self._seg_add(ctx, "track", done, "Order Completed", {
            "checkout_id": checkout_id, "order_id": order_id, "affiliation": SEGMENT_NAME,
            "total": self._seg_price(total), "subtotal": _amount(subtotal),
            "revenue": self._seg_price(subtotal), "shipping": _amount(shipping),
            "tax": _amount(tax), "discount": 0, "currency": CURRENCY, "products": products,
        }, order_id=order_id)

    def _emit_segment(self, s: _Session, msgs: list[tuple[int, dict[str, Any], _Meta]]) -> None:
        rng = self.rng
        batched = rng.random() < SEGMENT_BATCH_SHARE
        i = 0
        while i < len(msgs):
            size = rng.randint(2, 5) if batched else 1
            group = msgs[i:i + size]
            i += size
            if len({(t + s.skew_ms) // _DAY_MS for t, _, _ in group}) > 1:
                # Never batch across midnight, so every line has one event day.
                for item in group:
                    self._emit_segment_group(s, [item], False)
                continue
            late = not batched and rng.random() < LATE_DELIVERY_SHARE
            self._emit_segment_group(s, group, late)

    def _emit_segment_group(self, s: _Session, group: list[tuple[int, dict[str, Any], _Meta]],
                            late: bool) -> None:
        rng = self.rng
        send = group[-1][0] + rng.randint(5, 800)
        if late:
            # The device was offline and flushed its queue hours later.
            send += rng.randint(3_600_000, 14 * 3_600_000)
        received = send + rng.randint(40, 400)
        sent_text = _iso_ms(send + s.skew_ms)
        received_text = _iso_ms(received)
        for t, msg, _ in group:
            client = t + s.skew_ms
            if rng.random() < SEGMENT_EPOCH_MS_SHARE:
                self.injected["epoch_ms_timestamps"] += 1
                stamp: Any = client
            else:
                stamp = _iso_ms(client)
            # Rebuild so the time fields sit before context, as Segment orders them.
            head = {k: msg[k] for k in ("type", "messageId", "anonymousId", "userId") if k in msg}
            head.update(timestamp=stamp, sentAt=sent_text, receivedAt=received_text)
            head.update((k, val) for k, val in msg.items() if k not in head)
            msg.clear()
            msg.update(head)
        first_t, first_msg, first_meta = group[0]
        event_ms = first_t + s.skew_ms
        if len(group) == 1:
            meta = first_meta
            meta.event_day = event_ms // _DAY_MS
            payload = orjson.dumps(first_msg)
        else:
            order_ids = [m.order_id for _, _, m in group if m.order_id]
            meta = _Meta(event_ms // _DAY_MS, "batch",
                         order_id=order_ids[0] if order_ids else None, n_msgs=len(group),
                         epik=any(m.epik for _, _, m in group))
            payload = orjson.dumps({"batch": [m for _, m, _ in group], "sentAt": sent_text})
        self._route("segment", event_ms, received, payload, meta, late=late,
                    dup_share=DUPLICATE_SHARE)


def generate(landing_dir: Path, end_date: date, days: int = 3, visitors_per_day: int = 400,
             seed: int = 7) -> dict:
    """Write demo landing files for ``days`` UTC days ending at ``end_date``.

    Args:
        landing_dir: Root of the landing area; ``pixel/``, ``segment/`` and
            ``webhooks/`` day folders are created below it.
        end_date: Last UTC day to write (inclusive).
        days: Number of consecutive days to write.
        visitors_per_day: Sessions per day across both storefronts.
        seed: Seed of the single random stream every value is drawn from.

    Returns:
        Summary of what was written. Line, bad-line, duplicate, late, event
        and order counts are taken at write time, so they equal what is on
        disk; ``injected`` holds generation-time tallies of the smaller
        oddities (messy emails, placeholders, skewed clocks, ...).

    Raises:
        ValueError: If ``days`` or ``visitors_per_day`` is not positive.
    """
    if days < 1 or visitors_per_day < 1:
        raise ValueError("days and visitors_per_day must be positive")
    return _Generator(Path(landing_dir), end_date, days, visitors_per_day, seed).run()


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; prints the summary as JSON.

    Args:
        argv: Arguments without the program name; ``None`` reads ``sys.argv``.

    Returns:
        Process exit status.
    """
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--landing-dir", type=Path, required=True)
    parser.add_argument("--end-date", type=date.fromisoformat, required=True)
    parser.add_argument("--days", type=int, default=3)
    parser.add_argument("--visitors-per-day", type=int, default=400)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args(argv)
    summary = generate(args.landing_dir, args.end_date, args.days, args.visitors_per_day,
                       args.seed)
    print(orjson.dumps(summary, option=orjson.OPT_INDENT_2).decode())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
