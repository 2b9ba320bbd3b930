"""The day's events as Pinterest receives them, built in DuckDB: one code path, fast.

The asset and the benchmark both call :func:`build_pinterest_events`. Personal fields are
normalized by the rules of :mod:`capi_pipeline.enrich.normalize`, applied once per distinct
value (and country, for the rules that read it) rather than once per event; DuckDB then
hashes the texts with its built-in ``sha256``, joins them back to the events and writes each
payload as JSON text. Keys without a value are left out (``concat_ws`` skips NULLs), so
Pinterest never sees ``null`` where its schema wants an array.

Steps, each one statement over temporary tables of the connection:

1. ``enrich_keys`` and ``enrich_profiles``: the day's events' visitors and their profiles;
   ``enrich_ids``: the identity columns of the day's events that map to a Pinterest event,
   with their visitor's profile (narrow, for the steps that read only those).
2. ``enrich_norm_<field>``: each hashed field's distinct raw values and their digests (the
   rules run in a worker thread while DuckDB does step 3); ``enrich_regions``: each
   distinct state and country as an ISO region, for LDP.
3. ``enrich_history``: each event's visitor's latest click and stated consent (one window),
   ``enrich_orders``: which report of an order wins, ``enrich_items``: the items of events
   with several as custom_data's contents, ``enrich_first_items`` and ``enrich_urls``: each
   distinct single item and page address, worked out once.
4. ``capi.pinterest_events``: the partition replaced by one streaming INSERT that reads the
   staged rows, joins the above and writes the payload (:data:`ROWS_SQL`).
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import date

import duckdb
import polars as pl

from capi_pipeline.enrich.normalize import RULES, country_code, normalize_distinct, state_code
from capi_pipeline.enrich.payload import CURRENCIES, PayloadConfig
from capi_pipeline.identity.graph import is_junk_email
from capi_pipeline.lib.duck import temporary_setting

# The day's events' visitors and those visitors' profiles, narrow and a day's size: the two
# statements below join them as written (their right side the build side), so the build
# side must not be identity's tables of every day. identity.event_visitors keeps each staged
# row under its own (partition_date, event_key), so the day's rows are those of the day: read
# so, DuckDB skips the other days' row groups instead of probing every day's keys (0.56 s
# against 0.11 s at 29 days of 100,000 events).
KEYS_SQL = """
CREATE OR REPLACE TEMP TABLE enrich_keys AS
SELECT s.rowid AS sid, v.visitor_id
FROM staging.events s
JOIN identity.event_visitors v USING (event_key)
WHERE s.partition_date = $day AND s.duplicate_of IS NULL AND v.partition_date = $day
"""
PROFILES_SQL = """
CREATE OR REPLACE TEMP TABLE enrich_profiles AS
SELECT visitor_id, email, phone, customer_id, first_name, last_name, city, state, zip,
       country, ip, user_agent, web_seen_at
FROM identity.visitor_profiles
WHERE visitor_id IN (SELECT visitor_id FROM enrich_keys)
"""

# The day's events that map to a Pinterest event, with their visitor and profile. Read twice:
# narrow into enrich_ids for the steps that need the identity columns, and whole by ROWS_SQL,
# which joining enrich_ids back to the staged rows would cost more than reading them again.
EVENTS_FROM = """
FROM staging.events s
JOIN (SELECT unnest($sources) AS source_event_name, unnest($names) AS event_name) m
    USING (source_event_name)
LEFT JOIN enrich_keys v ON v.sid = s.rowid
LEFT JOIN enrich_profiles p ON p.visitor_id = v.visitor_id
WHERE s.partition_date = $day AND s.duplicate_of IS NULL
"""

IDENTITY_COLUMNS = """
       s.rowid AS sid, v.visitor_id, s.event_time, m.event_name,
       s.email, p.email AS profile_email, s.phone, p.phone AS profile_phone,
       s.gender, s.date_of_birth, s.customer_id, p.customer_id AS profile_customer_id,
       s.advertising_id,
       coalesce(s.first_name, p.first_name) AS name_first,
       coalesce(s.last_name, p.last_name) AS name_last,
       -- An address is one fact: the event's when it has any part of one, else the profile's,
       -- rather than a city from one and a zip from the other.
       coalesce(s.city, s.state, s.zip, s.country) IS NOT NULL AS own_address,
       CASE WHEN own_address THEN s.city ELSE p.city END AS address_city,
       CASE WHEN own_address THEN s.state ELSE p.state END AS address_state,
       CASE WHEN own_address THEN s.zip ELSE p.zip END AS address_zip,
       CASE WHEN own_address THEN s.country ELSE p.country END AS address_country,
       -- The country each value is read in: a phone in its own record's country, first; an
       -- address in the address's country.
       coalesce(s.country, p.country) AS region,
       coalesce(p.country, s.country) AS profile_region,
       coalesce(address_country, s.country, p.country) AS address_region"""

# What the payload reads from the staged row and the profile besides the identity columns.
PAYLOAD_COLUMNS = """
       p.ip AS profile_ip, p.user_agent AS profile_user_agent,
       p.web_seen_at AS profile_web_seen_at,
       s.event_id, s.source_format, s.source_event_name, s.event_type, s.action_source,
       s.store, s.ip, s.user_agent, s.page_url, capi_url_base(s.page_url) AS url_base,
       s.click_id, s.order_id, s.ad_tracking_allowed, s.marketing_allowed,
       s.sale_of_data_allowed, s.value, s.currency, s.search_string, s.num_items, s.is_bot,
       s.is_test,
       len(s.items) AS item_count,
       CASE WHEN $value_source = 'items' AND len(s.items) > 0
            THEN list_sum(list_transform(s.items, lambda x: x.price * x.quantity))
            END AS items_value,
       -- The key of the events with one item into enrich_first_items.
       s.items[1] AS first_item"""

IDS_SQL = f"""
CREATE OR REPLACE TEMP TABLE enrich_ids AS
SELECT {IDENTITY_COLUMNS}
{EVENTS_FROM}
"""

# Each event's visitor's latest click and stated consent up to the event: the day's events
# and the visitor's statements in one stream, ordered by time per visitor, where each event
# takes the last value seen (its peers at the same instant included).
HISTORY_SQL = """
CREATE OR REPLACE TEMP TABLE enrich_history AS
WITH stream AS (
    SELECT sid, visitor_id, event_time, NULL::VARCHAR AS click_id,
           NULL::BOOLEAN AS marketing_allowed, NULL::BOOLEAN AS sale_of_data_allowed
    FROM enrich_ids WHERE visitor_id IS NOT NULL
    UNION ALL
    SELECT NULL::BIGINT, v.visitor_id, s.event_time, s.click_id, s.marketing_allowed,
           s.sale_of_data_allowed
    FROM staging.events s
    JOIN identity.event_visitors v USING (event_key)
    WHERE (s.click_id IS NOT NULL OR s.marketing_allowed IS NOT NULL
           OR s.sale_of_data_allowed IS NOT NULL)
      AND v.visitor_id IN (SELECT visitor_id FROM enrich_ids)
),
latest AS (
    SELECT sid,
           last_value(click_id IGNORE NULLS) OVER w AS profile_click_id,
           last_value(CASE WHEN click_id IS NOT NULL THEN event_time END IGNORE NULLS) OVER w
               AS profile_click_time,
           last_value(marketing_allowed IGNORE NULLS) OVER w AS visitor_marketing_allowed,
           last_value(sale_of_data_allowed IGNORE NULLS) OVER w
               AS visitor_sale_of_data_allowed
    FROM stream
    WINDOW w AS (PARTITION BY visitor_id ORDER BY event_time
                 RANGE BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW)
)
SELECT * FROM latest WHERE sid IS NOT NULL
"""

# An order reported on two days (a pixel before midnight, its webhook after) is still one
# purchase: the report already delivered wins, else the browser's, else the earliest. Which
# reports were delivered is asked of the ledger for those reports' event ids only: as an
# EXISTS per report, DuckDB hashed the event id of every delivered outcome of every day
# (1.9 million at 30 days of 330,000 events; 0.4 to 0.9 s of CPU against 0.12 s).
ORDERS_SQL = """
CREATE OR REPLACE TEMP TABLE enrich_orders AS
WITH day_orders AS (
    SELECT DISTINCT order_id FROM staging.events
    WHERE partition_date = $day AND event_type = 'purchase' AND duplicate_of IS NULL
      AND order_id IS NOT NULL
),
order_reports AS (
    SELECT s.order_id, s.event_id, s.source_format, s.event_time
    FROM staging.events s
    WHERE s.event_type = 'purchase' AND s.duplicate_of IS NULL
      AND s.order_id IN (SELECT order_id FROM day_orders)
),
delivered AS (
    SELECT DISTINCT event_id FROM delivery.event_outcomes
    WHERE outcome = 'delivered' AND event_id IN (SELECT event_id FROM order_reports)
)
SELECT r.order_id,
       arg_min(r.event_id, (d.event_id IS NULL, r.source_format <> 'shopify_pixel',
                            r.event_time)) AS winner_event_id
FROM order_reports r
LEFT JOIN delivered d USING (event_id)
GROUP BY r.order_id
"""

# The items of the day's events with several as custom_data's contents, content_ids and
# content_category, worked out once per distinct list of items: a day's carts repeat (the
# same cart viewed, added to and checked out; 34,719 events with several items held 3,534
# distinct lists on a 330,000-event day), and the ordered aggregates below cost per item.
# Each distinct list is numbered, its items flattened to one row each (flat rows let plain
# vectorized expressions do what per-event lambdas over lists did at a quarter of the speed)
# and aggregated back; each event then takes its list's members. Events with one item (most
# product views and adds to cart) take the same members from enrich_first_items.
ITEMS_SQL = """
CREATE OR REPLACE TEMP TABLE enrich_items AS
WITH carts AS (
    SELECT rowid AS sid, items
    FROM staging.events
    WHERE partition_date = $day AND duplicate_of IS NULL AND len(items) > 1
      AND rowid IN (SELECT sid FROM enrich_ids)
),
lists AS (
    SELECT items, row_number() OVER () AS cart_no FROM (SELECT DISTINCT items FROM carts)
),
flat AS (
    SELECT cart_no, unnest(items) AS x, generate_subscripts(items, 1) AS n FROM lists
),
-- A store's carts repeat its catalogue's items: each distinct one is written once, as in
-- enrich_first_items, rather than once per list that carries it.
item_members AS (
    SELECT x, capi_item_member(x) AS member FROM (SELECT DISTINCT x FROM flat)
),
members AS (
    SELECT f.cart_no, f.n, f.x.id AS id, f.x.category AS category,
           row_number() OVER (PARTITION BY f.cart_no, f.x.id ORDER BY f.n) = 1 AS first_of_id,
           m.member
    FROM flat f
    JOIN item_members m ON m.x IS NOT DISTINCT FROM f.x
),
per_list AS (
    SELECT cart_no,
           '[' || string_agg('{' || member || '}', ',' ORDER BY n) || ']' AS contents_json,
           '[' || string_agg(to_json(id)::VARCHAR, ',' ORDER BY n)
                  FILTER (WHERE id IS NOT NULL AND first_of_id) || ']' AS content_ids_json,
           CASE WHEN count(*) = count(category) AND count(DISTINCT category) = 1
                THEN capi_safe_text(any_value(category)) END AS content_category
    FROM members
    GROUP BY cart_no
)
SELECT c.sid, p.contents_json, p.content_ids_json, p.content_category
FROM carts c
JOIN lists l ON l.items IS NOT DISTINCT FROM c.items
JOIN per_list p USING (cart_no)
"""

# The same members for each distinct item of the events with one: a store's product views
# and adds to cart repeat a catalogue's items, so each is written once rather than per event.
FIRST_ITEMS_SQL = """
CREATE OR REPLACE TEMP TABLE enrich_first_items AS
SELECT item,
       '[{' || capi_item_member(item) || '}]' AS contents_json,
       '[' || to_json(item.id)::VARCHAR || ']' AS content_ids_json,
       capi_safe_text(item.category) AS content_category
FROM (
    SELECT DISTINCT items[1] AS item FROM staging.events
    WHERE partition_date = $day AND duplicate_of IS NULL AND len(items) = 1
      AND rowid IN (SELECT sid FROM enrich_ids)
)
"""

# Each distinct page address of the day (query and fragment cut) and what is sent of it: a
# store's events share a few thousand pages, and the checks are string scans.
URLS_SQL = """
CREATE OR REPLACE TEMP TABLE enrich_urls AS
SELECT url_base, capi_page_url(url_base) AS url_sent
FROM (
    SELECT DISTINCT capi_url_base(page_url) AS url_base FROM staging.events
    WHERE partition_date = $day AND duplicate_of IS NULL AND page_url IS NOT NULL
      AND rowid IN (SELECT sid FROM enrich_ids)
)
"""

# Where each hashed field's values come from, in enrich_ids' columns. Lists are merged in
# this order (the event's own value first, then the profile's); a name and an address are
# one fact each, taken from the event when it has one, else from the profile.
FIELD_SOURCES: dict[str, tuple[str, ...]] = {
    "em": ("email", "profile_email"),
    "ph": ("phone", "profile_phone"),
    "ge": ("gender",),
    "db": ("date_of_birth",),
    "ln": ("name_last",),
    "fn": ("name_first",),
    "ct": ("address_city",),
    "st": ("address_state",),
    "zp": ("address_zip",),
    "country": ("address_country",),
    "external_id": ("customer_id", "profile_customer_id"),
    "hashed_maids": ("advertising_id",),
}

# The country column each source is read in, for the rules that read one (default: region).
REGION_OF: dict[str, str] = {
    "profile_phone": "profile_region",
    "address_state": "address_region",
    "address_zip": "address_region",
}

# Free text that reaches Pinterest unhashed must not carry a person: anything shaped like an
# email address or a phone number drops the field.
EMAIL_SHAPED = r"[^\s@/?&=]+(@|%40)[^\s@/?&=]+\.[A-Za-z]{2,}"
PHONE_SHAPED = r"(\+|%2B)?(\d[\s().-]*){7,}"
# Pinterest's click ids are base64url text; anything else in an `epik` is not one.
CLICK_ID = r"^[A-Za-z0-9_\-=.~]+$"

MACROS = [
    # The distinct non-null values of a list, in their first order; NULL when none is left.
    """CREATE OR REPLACE TEMP MACRO capi_ids(l) AS (
        CASE WHEN len(list_filter(l, lambda x: x IS NOT NULL)) > 0
        THEN list_filter(l, lambda x, i: x IS NOT NULL AND list_position(l, x) = i) END)""",
    # Cheap tests first: the regular expressions only run on text with an @ or seven digits.
    f"""CREATE OR REPLACE TEMP MACRO capi_safe_text(t) AS (
        CASE WHEN t IS NULL THEN NULL
             WHEN (contains(t, '@') OR contains(t, '%40'))
                  AND regexp_matches(t, '{EMAIL_SHAPED}') THEN NULL
             WHEN length(t) - length(translate(t, '0123456789', '')) >= 7
                  AND regexp_matches(t, '{PHONE_SHAPED}') THEN NULL
             ELSE t END)""",
    # Decimal text as Pinterest reads value strings: no exponent, no trailing zeros.
    """CREATE OR REPLACE TEMP MACRO capi_decimal(d) AS (
        CASE WHEN d IS NULL THEN NULL
             WHEN contains(CAST(d AS VARCHAR), '.')
             THEN rtrim(rtrim(CAST(d AS VARCHAR), '0'), '.')
             ELSE CAST(d AS VARCHAR) END)""",
    # The page's address without query or fragment, where forms and links leak contacts;
    # paths hold long digit runs (shop and order ids), so only the email shape is checked.
    """CREATE OR REPLACE TEMP MACRO capi_url_base(u) AS (
        split_part(split_part(u, '#', 1), '?', 1))""",
    # Takes the address already cut by capi_url_base: a macro repeats its argument wherever
    # it is used, and cutting it once per use was a tenth of the payload's cost.
    f"""CREATE OR REPLACE TEMP MACRO capi_page_url(b) AS (
        CASE WHEN b IS NULL THEN NULL
             WHEN NOT (starts_with(b, 'https://') OR starts_with(b, 'http://')) THEN NULL
             WHEN split_part(split_part(b, '://', 2), '/', 1) = '' THEN NULL
             WHEN contains(b, ' ') OR contains(b, chr(9)) THEN NULL
             WHEN (contains(b, '@') OR contains(b, '%40'))
                  AND regexp_matches(b, '{EMAIL_SHAPED}') THEN NULL
             ELSE b END)""",
    f"""CREATE OR REPLACE TEMP MACRO capi_click_id(c) AS (
        CASE WHEN length(c) BETWEEN 6 AND 1024 AND regexp_matches(c, '{CLICK_ID}')
             THEN c END)""",
    # JSON members, NULL when the value is: concat_ws then leaves the member out. Digests are
    # hex and need no escaping; text goes through to_json, which escapes it.
    """CREATE OR REPLACE TEMP MACRO capi_j_hashes(k, l) AS (
        CASE WHEN l IS NOT NULL THEN concat('"', k, '":["', l, '"]') END)""",
    """CREATE OR REPLACE TEMP MACRO capi_j_text(k, v) AS (
        CASE WHEN v IS NOT NULL THEN concat('"', k, '":', to_json(v)) END)""",
    """CREATE OR REPLACE TEMP MACRO capi_j_raw(k, v) AS (
        CASE WHEN v IS NOT NULL THEN concat('"', k, '":', v) END)""",
    # One item of custom_data.contents, its members without the braces; NULL when empty.
    """CREATE OR REPLACE TEMP MACRO capi_item_member(x) AS (nullif(concat_ws(',',
        capi_j_text('id', x.id),
        capi_j_text('item_price', capi_decimal(x.price)),
        capi_j_raw('quantity', x.quantity::VARCHAR),
        capi_j_text('item_name', capi_safe_text(x.name)),
        capi_j_text('item_category', capi_safe_text(x.category)),
        capi_j_text('item_brand', capi_safe_text(x.brand))), ''))""",
]

OUTPUT_COLUMNS = """
    partition_date, event_id, event_name, action_source, event_time, source_event_type,
    source_event_name, store, visitor_id, eligible, skip_reason, has_em, has_ph,
    has_external_id, has_click_id, has_ip_ua, has_hashed_maids, click_id_from_profile,
    opt_out, ldp, dropped_fields, value, currency, payload"""

# The rows of capi.pinterest_events, in OUTPUT_COLUMNS order.
ROWS_SQL = """
WITH day_events AS (
    SELECT {identity}, {payload}
    {events}
),
base AS (
    SELECT d.*,
           {digests},
           r.ldp_region, cur.code AS currency_code, h.profile_click_id, h.profile_click_time,
           coalesce(d.marketing_allowed, h.visitor_marketing_allowed) AS consent_marketing,
           coalesce(d.sale_of_data_allowed, h.visitor_sale_of_data_allowed) AS consent_sale,
           w.winner_event_id AS order_winner_event_id, u.url_sent,
           CASE WHEN d.item_count = 1 THEN fi.contents_json
                ELSE it.contents_json END AS contents_json,
           CASE WHEN d.item_count = 1 THEN fi.content_ids_json
                ELSE it.content_ids_json END AS content_ids_json,
           CASE WHEN d.item_count = 1 THEN fi.content_category
                ELSE it.content_category END AS content_category
    FROM day_events d
    {joins}
    LEFT JOIN enrich_regions r
        ON r.state IS NOT DISTINCT FROM d.address_state
       AND r.region IS NOT DISTINCT FROM d.address_region
    LEFT JOIN enrich_history h ON h.sid = d.sid
    LEFT JOIN enrich_currencies cur ON cur.code = upper(d.currency)
    LEFT JOIN enrich_items it ON it.sid = d.sid
    LEFT JOIN enrich_first_items fi ON fi.item IS NOT DISTINCT FROM d.first_item
    LEFT JOIN enrich_urls u ON u.url_base = d.url_base
    LEFT JOIN enrich_orders w ON d.event_type = 'purchase' AND w.order_id = d.order_id
),
derived AS (
    SELECT *,
        {lists},
        CASE WHEN ip IS NOT NULL AND user_agent IS NOT NULL THEN ip
             WHEN profile_ip IS NOT NULL AND profile_user_agent IS NOT NULL
             THEN profile_ip ELSE ip END AS ip_sent,
        CASE WHEN ip IS NOT NULL AND user_agent IS NOT NULL THEN user_agent
             WHEN profile_ip IS NOT NULL AND profile_user_agent IS NOT NULL
             THEN profile_user_agent ELSE user_agent END AS ua_sent,
        capi_click_id(click_id) AS own_click,
        CASE WHEN event_time - profile_click_time <= $attribution
             THEN capi_click_id(profile_click_id) END AS carried_click,
        -- An order keyed in by staff has no browser; one whose buyer browsed the store that
        -- day was a web purchase the webhook could not see.
        CASE WHEN action_source = 'offline' AND source_format = 'shopify_webhook'
                  AND profile_web_seen_at BETWEEN event_time - INTERVAL 1 DAY
                                              AND event_time + INTERVAL 1 DAY
             THEN 'web' ELSE action_source END AS action_source_sent,
        currency_code AS currency_sent,
        CASE WHEN $value_source = 'items' AND item_count > 0 THEN items_value
             ELSE value END AS value_sent,
        capi_safe_text(search_string) AS search_sent,
        coalesce(consent_sale IS FALSE AND ldp_region, false) AS ldp
    FROM base
),
decided AS (
    SELECT *,
        coalesce(own_click, carried_click) AS click_sent,
        (action_source_sent IN ('app_ios', 'app_android') AND ad_tracking_allowed IS FALSE)
        OR ($consent_policy = 'opt_out' AND consent_marketing IS FALSE)
        OR (consent_sale IS FALSE AND NOT ldp) AS opt_out,
        CASE
            WHEN is_bot THEN 'bot'
            WHEN is_test AND event_type = 'purchase' THEN 'test_order'
            WHEN is_test THEN 'test_traffic'
            WHEN order_winner_event_id IS NOT NULL AND order_winner_event_id <> event_id
                THEN 'duplicate_order'
            WHEN $consent_policy = 'skip' AND consent_marketing IS FALSE THEN 'no_consent'
            WHEN event_time < $now - $max_age THEN 'too_old'
            WHEN event_time > $now + $max_skew THEN 'future_time'
            WHEN sent_em IS NULL AND sent_hashed_maids IS NULL
                 AND (ip_sent IS NULL OR ua_sent IS NULL) THEN 'no_identifier'
        END AS skip_reason
    FROM derived
),
assembled AS (
    SELECT *,
        nullif(concat_ws(',',
            capi_j_text('currency', currency_sent),
            capi_j_text('value', capi_decimal(value_sent)),
            capi_j_raw('content_ids', content_ids_json),
            capi_j_raw('contents', contents_json),
            capi_j_raw('num_items', num_items::VARCHAR),
            capi_j_text('order_id', order_id),
            capi_j_text('search_string', search_sent),
            capi_j_text('content_category', content_category),
            CASE WHEN ldp THEN '"opt_out_type":"LDP"' END), '') AS custom_json
    FROM decided
)
SELECT
    $day, event_id, event_name, action_source_sent, epoch_ms(event_time) // 1000, event_type,
    source_event_name, store, visitor_id, skip_reason IS NULL, skip_reason,
    sent_em IS NOT NULL, sent_ph IS NOT NULL, sent_external_id IS NOT NULL,
    click_sent IS NOT NULL, ip_sent IS NOT NULL AND ua_sent IS NOT NULL,
    sent_hashed_maids IS NOT NULL, own_click IS NULL AND carried_click IS NOT NULL,
    opt_out, ldp,
    string_split(nullif(concat_ws(',',
        {dropped},
        CASE WHEN search_string IS NOT NULL AND search_sent IS NULL THEN 'search_string' END,
        CASE WHEN page_url IS NOT NULL AND url_sent IS NULL THEN 'event_source_url' END,
        CASE WHEN click_id IS NOT NULL AND own_click IS NULL THEN 'click_id' END,
        CASE WHEN currency IS NOT NULL AND currency_sent IS NULL THEN 'currency' END
    ), ''), ','),
    value_sent::DECIMAL(18, 2), currency_sent,
    -- One concat over every piece, NULL pieces skipped: each optional member carries its own
    -- comma, so the payload's 600 bytes are copied once rather than once per nesting level.
    concat('{{"event_name":"', event_name, '","action_source":"', action_source_sent,
           '","event_time":', epoch_ms(event_time) // 1000, ',"event_id":', to_json(event_id),
           CASE WHEN url_sent IS NOT NULL THEN ',"event_source_url":' END, to_json(url_sent),
           CASE WHEN opt_out THEN ',"opt_out":true' END,
           ',"partner_name":' || to_json($partner_name),
           ',"user_data":{{', concat_ws(',',
            {user_data},
            capi_j_text('client_ip_address', ip_sent),
            capi_j_text('client_user_agent', ua_sent),
            capi_j_text('click_id', click_sent)), '}}',
           CASE WHEN custom_json IS NOT NULL THEN ',"custom_data":{{' END, custom_json,
           CASE WHEN custom_json IS NOT NULL THEN '}}' END, '}}')
FROM assembled
"""


@dataclass(frozen=True)
class BuildResult:
    """Counts of one build, for the asset's log and metadata (no values, only counts)."""

    rows: int
    eligible: int
    skipped_by_reason: dict[str, int]
    eligible_by_event: dict[str, int]
    dropped_by_field: dict[str, int]
    not_hashed_on_arrival: dict[str, int]
    em_share: float
    click_id_share: float


def _joins_and_columns() -> tuple[str, str, str, str, str]:
    """The SQL that joins each field's digests, lists them, and names the fields left out."""
    joins, digests, lists, dropped, user_data = [], [], [], [], []
    for field, sources in FIELD_SOURCES.items():
        columns = []
        for n, source in enumerate(sources):
            alias = f"n_{field}_{n}"
            condition = f"{alias}.raw = d.{source}"
            if RULES[field].uses_country:
                condition += (f" AND {alias}.region IS NOT DISTINCT FROM "
                              f"d.{REGION_OF.get(source, 'region')}")
            joins.append(f"LEFT JOIN enrich_norm_{field} {alias} ON {condition}")
            digests.append(f"{alias}.digest AS digest_{field}_{n}")
            columns.append(f"digest_{field}_{n}")
        # The digests joined as JSON array text: the event's own, then the profile's when it
        # differs (concat_ws skips NULLs); NULL when there is none.
        if len(columns) == 1:
            lists.append(f"{columns[0]} AS sent_{field}")
        else:
            first, second = columns
            lists.append(f"nullif(concat_ws('\",\"', {first}, CASE WHEN {second} IS DISTINCT "
                         f"FROM {first} THEN {second} END), '') AS sent_{field}")
        raw_present = " OR ".join(f"{source} IS NOT NULL" for source in sources)
        dropped.append(f"CASE WHEN sent_{field} IS NULL AND ({raw_present}) THEN '{field}' END")
        user_data.append(f"capi_j_hashes('{field}', sent_{field})")
    return (
        "\n    ".join(joins), ",\n        ".join(digests), ",\n        ".join(lists),
        ",\n        ".join(dropped), ",\n            ".join(user_data),
    )


_JOINS, _DIGESTS, _LISTS, _DROPPED, _USER_DATA = _joins_and_columns()
ROWS_SQL = ROWS_SQL.format(joins=_JOINS, digests=_DIGESTS, lists=_LISTS, dropped=_DROPPED,
                           user_data=_USER_DATA, identity=IDENTITY_COLUMNS,
                           payload=PAYLOAD_COLUMNS, events=EVENTS_FROM)


def _distinct_values(conn: duckdb.DuckDBPyConnection, field: str) -> list[tuple]:
    """Each distinct raw value of a field in the day's events, with its country when the
    field's rule reads one."""
    rule = RULES[field]
    selects = " UNION ALL ".join(
        f"SELECT {source} AS raw, "
        f"{REGION_OF.get(source, 'region') if rule.uses_country else 'NULL::VARCHAR'} AS region "
        f"FROM enrich_ids"
        for source in FIELD_SOURCES[field]
    )
    return conn.execute(
        f"SELECT DISTINCT raw, region FROM ({selects}) WHERE raw IS NOT NULL"
    ).fetchall()


def _normalized(field: str, pairs: list[tuple], config: PayloadConfig) -> pl.DataFrame:
    """Each distinct value's text to hash (None: left out) and whether it is a digest."""
    raws = [raw for raw, _ in pairs]
    all_regions = [region for _, region in pairs]
    regions = all_regions if RULES[field].uses_country else None
    texts, is_digest = normalize_distinct(
        field, raws, regions, config.default_region, field in config.hashed_on_arrival)
    if field == "em":
        texts = [None if text is not None and not digest
                 and is_junk_email(text, config.junk_emails) else text
                 for text, digest in zip(texts, is_digest, strict=True)]
    return pl.DataFrame(
        {"raw": raws, "region": all_regions, "text": texts,
         "is_digest": is_digest},
        schema={"raw": pl.String, "region": pl.String, "text": pl.String,
                "is_digest": pl.Boolean},
    )


def _store_digests(conn: duckdb.DuckDBPyConnection, field: str, lookup: pl.DataFrame) -> None:
    """enrich_norm_<field>: each distinct value's digest, hashed by DuckDB."""
    conn.register("enrich_lookup", lookup)
    conn.execute(f"""
        CREATE OR REPLACE TEMP TABLE enrich_norm_{field} AS
        SELECT raw, region,
               CASE WHEN is_digest THEN text WHEN text IS NOT NULL THEN sha256(text) END
                   AS digest
        FROM enrich_lookup
    """)
    conn.unregister("enrich_lookup")


def _ldp_flags(pairs: list[tuple], config: PayloadConfig) -> pl.DataFrame:
    """Whether each distinct (state, country) of the day is a configured LDP region."""
    ldp = set(config.ldp_regions)
    flags = []
    for state, region in pairs:
        country = country_code(region) if region else None
        country = country or country_code(config.default_region)
        code = state_code(state, country) if state else None
        flags.append(country in ldp or (code is not None and f"{country}-{code.upper()}" in ldp))
    return pl.DataFrame(
        {"state": [p[0] for p in pairs], "region": [p[1] for p in pairs], "ldp_region": flags},
        schema={"state": pl.String, "region": pl.String, "ldp_region": pl.Boolean},
    )


def _store_regions(conn: duckdb.DuckDBPyConnection, frame: pl.DataFrame) -> None:
    """enrich_regions (the LDP flags), and the ISO 4217 codes a currency must be one of."""
    conn.register("enrich_region_keys", frame)
    conn.execute("CREATE OR REPLACE TEMP TABLE enrich_regions AS SELECT * FROM enrich_region_keys")
    conn.unregister("enrich_region_keys")
    conn.execute("CREATE OR REPLACE TEMP TABLE enrich_currencies AS SELECT unnest(?) AS code",
                 [list(CURRENCIES)])


def _apply_rules(values: dict[str, list[tuple]], region_pairs: list[tuple],
                 config: PayloadConfig) -> tuple[dict[str, pl.DataFrame], pl.DataFrame]:
    """The normalization table over the day's distinct values: Python only, no connection."""
    return ({field: _normalized(field, pairs, config) for field, pairs in values.items()},
            _ldp_flags(region_pairs, config))


CAPI_TABLE = "capi.pinterest_events"


def _joins_as_written(conn: duckdb.DuckDBPyConnection):
    """Joins in the order the statement writes them, each one's right side the build side.

    DuckDB builds the hash table on the side it estimates smaller, and with a day's filters
    on staging.events that is the wide staged rows: every column of them copied into the table
    and back out. In IDS_SQL and ROWS_SQL the staged rows come first and each joined table is
    narrower and a day's size (enrich_keys, enrich_profiles, the distinct values), never
    identity's tables of every day, so the written order is the cheap one (DuckDB's
    documented way to force it).
    """
    return temporary_setting(conn, "disabled_optimizers", "join_order,build_side_probe_side")


def _one_thread(conn: duckdb.DuckDBPyConnection):
    """The statement inside runs on one DuckDB thread.

    For the INSERT into the file's table: on one thread DuckDB writes the rows to the file as
    it inserts them, so committing and the checkpoint when the connection closes have little
    left to do. On two threads each thread's rows were kept for the checkpoint to compress and
    write: for a 330,000-event day 1.0 to 1.3 s of CPU inserting, then 1.8 to 2.1 s more
    checkpointing (2 to 4 s of the asset's wall time under load), against 1.0 to 1.6 s in all
    on one thread. Same rows, in the same order (insertion order is preserved either way).
    """
    return temporary_setting(conn, "threads", 1)


def build_pinterest_events(
    conn: duckdb.DuckDBPyConnection, day: date, config: PayloadConfig, table: str = CAPI_TABLE
) -> BuildResult:
    """Replace the day's rows of capi.pinterest_events with the events Pinterest receives.

    Args:
        conn: A connection to the pipeline's DuckDB file, schema in place, TimeZone UTC.
        day: The partition (UTC date of the events).
        config: The checked payload settings, with the run's clock.
        table: Where the rows go. Anything but capi.pinterest_events is a temporary table of
            the connection, replaced whole: the benchmark uses one to tell the cost of
            building the bodies from the cost of storing them in the file.

    Returns:
        Counts for the log and the asset's metadata.
    """
    for macro in MACROS:
        conn.execute(macro)
    sources = sorted(config.event_map)
    mapping = {"sources": sources, "names": [config.event_map[s] for s in sources]}
    conn.execute(KEYS_SQL, {"day": day})
    conn.execute(PROFILES_SQL)
    with _joins_as_written(conn):
        conn.execute(IDS_SQL, {"day": day, **mapping})
    # The rules run in Python (libphonenumber above all) in a thread of their own while
    # DuckDB, which lets go of the GIL while it executes, works out the history, orders and
    # items: on two cores the two overlap instead of DuckDB waiting for the rules.
    values = {field: _distinct_values(conn, field) for field in FIELD_SOURCES}
    region_pairs = conn.execute(
        "SELECT DISTINCT address_state AS state, address_region AS region FROM enrich_ids"
    ).fetchall()
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="enrich-rules") as pool:
        rules_applied = pool.submit(_apply_rules, values, region_pairs, config)
        conn.execute(HISTORY_SQL)
        conn.execute(ORDERS_SQL, {"day": day})
        conn.execute(ITEMS_SQL, {"day": day})
        conn.execute(FIRST_ITEMS_SQL, {"day": day})
        conn.execute(URLS_SQL, {"day": day})
        lookups, ldp_flags = rules_applied.result()
    not_hashed = {}
    for field, lookup in lookups.items():
        _store_digests(conn, field, lookup)
        if field in config.hashed_on_arrival:
            count = lookup["text"].null_count()
            if count:
                not_hashed[field] = count
    _store_regions(conn, ldp_flags)

    params = {
        "day": day, "partner_name": config.partner_name,
        "attribution": config.attribution_window, "value_source": config.value_source,
        "consent_policy": config.consent_policy, "now": config.now,
        "max_age": config.max_event_age, "max_skew": config.max_future_skew, **mapping,
    }
    if table != CAPI_TABLE:
        with _joins_as_written(conn):
            conn.execute(f"CREATE OR REPLACE TEMP TABLE {table} AS SELECT * FROM ({ROWS_SQL}) "
                         f"AS rows({OUTPUT_COLUMNS})", params)
        return _result(conn, table, day, not_hashed)

    conn.execute("BEGIN TRANSACTION")
    try:
        conn.execute(f"DELETE FROM {CAPI_TABLE} WHERE partition_date = ?", [day])
        with _joins_as_written(conn), _one_thread(conn):
            conn.execute(f"INSERT INTO {CAPI_TABLE} ({OUTPUT_COLUMNS}) {ROWS_SQL}", params)
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return _result(conn, table, day, not_hashed)


def _result(conn: duckdb.DuckDBPyConnection, table: str, day: date,
            not_hashed: dict[str, int]) -> BuildResult:
    conn.execute(f"""
        CREATE OR REPLACE TEMP TABLE enrich_summary AS
        SELECT eligible, skip_reason, event_name, has_em, has_click_id, dropped_fields
        FROM {table} WHERE partition_date = ?
    """, [day])
    rows, eligible, em_share, click_share = conn.execute("""
        SELECT count(*), count(*) FILTER (WHERE eligible),
               avg(has_em::INT) FILTER (WHERE eligible),
               avg(has_click_id::INT) FILTER (WHERE eligible)
        FROM enrich_summary
    """).fetchone()

    def counts(sql: str) -> dict[str, int]:
        return {key: int(n) for key, n in conn.execute(sql).fetchall()}

    return BuildResult(
        rows=int(rows),
        eligible=int(eligible),
        skipped_by_reason=counts("SELECT skip_reason, count(*) FROM enrich_summary WHERE "
                                 "NOT eligible GROUP BY ALL ORDER BY 1"),
        eligible_by_event=counts("SELECT event_name, count(*) FROM enrich_summary WHERE "
                                 "eligible GROUP BY ALL ORDER BY 1"),
        dropped_by_field=counts("SELECT f, count(*) FROM (SELECT unnest(dropped_fields) AS f "
                                "FROM enrich_summary) GROUP BY ALL ORDER BY 1"),
        not_hashed_on_arrival=not_hashed,
        em_share=round(float(em_share or 0.0), 4),
        click_id_share=round(float(click_share or 0.0), 4),
    )


def request_bodies(
    conn: duckdb.DuckDBPyConnection, day: date, batch_size: int = 1000, table: str = CAPI_TABLE
) -> Iterator[bytes]:
    """The day's eligible payloads as request bodies of up to `batch_size` events each.

    The delivery stage sends the same bytes (the stored payloads, comma-joined in `data`); this
    is the shape the benchmark measures and the schema test checks.
    """
    # Joined here rather than by string_agg over row_number() OVER (): that window numbers
    # the rows on one thread and took longer than reading the payloads.
    cursor = conn.execute(
        f"SELECT payload::VARCHAR FROM {table} WHERE partition_date = $day AND eligible",
        {"day": day})
    while rows := cursor.fetchmany(batch_size):
        yield ('{"data":[' + ",".join([payload for (payload,) in rows]) + "]}").encode()
