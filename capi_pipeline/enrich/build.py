"""The day's events as Pinterest receives them, built in DuckDB: one code path, fast.

The asset and the benchmark both call :func:`build_pinterest_events`. Personal fields are
normalized by the rules of :mod:`capi_pipeline.enrich.normalize`, applied once per distinct
value (and country, for the rules that read it) rather than once per event; DuckDB then
hashes the texts with its built-in ``sha256``, joins them back to the events and writes each
payload as JSON. Keys without a value are left out of the payload (a JSON merge patch onto
``{}`` drops nulls), so Pinterest never sees ``null`` where its schema wants an array.

Steps, each a statement over temporary tables of the connection:

1. ``enrich_day``: the day's events that map to a Pinterest event, with their visitor's
   profile, latest click and latest stated consent (as-of joins on time), and which report
   of an order wins.
2. ``enrich_norm_<field>``: each hashed field's distinct raw values and their digests.
3. ``capi.pinterest_events``: the partition replaced by the assembled rows.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date

import duckdb
import polars as pl

from capi_pipeline.enrich.normalize import RULES, country_code, normalize_distinct, state_code
from capi_pipeline.enrich.payload import CURRENCIES, PayloadConfig
from capi_pipeline.identity.graph import is_junk_email

DAY_SQL = """
CREATE OR REPLACE TEMP TABLE enrich_day AS
WITH mapping AS (
    SELECT unnest($sources) AS source_event_name, unnest($names) AS event_name
),
day AS (
    SELECT s.*, m.event_name, v.visitor_id
    FROM staging.events s
    JOIN mapping m USING (source_event_name)
    LEFT JOIN identity.event_visitors v USING (event_key)
    WHERE s.partition_date = $day AND s.duplicate_of IS NULL
),
visitor_events AS (
    SELECT v.visitor_id, s.event_time, s.click_id, s.marketing_allowed,
           s.sale_of_data_allowed
    FROM staging.events s
    JOIN identity.event_visitors v USING (event_key)
    WHERE v.visitor_id IN (SELECT visitor_id FROM day)
),
clicks AS (
    SELECT visitor_id, event_time AS click_time, click_id
    FROM visitor_events WHERE click_id IS NOT NULL
),
marketing AS (
    SELECT visitor_id, event_time AS stated_at, marketing_allowed
    FROM visitor_events WHERE marketing_allowed IS NOT NULL
),
sale AS (
    SELECT visitor_id, event_time AS stated_at, sale_of_data_allowed
    FROM visitor_events WHERE sale_of_data_allowed IS NOT NULL
),
-- An order reported on two days (a pixel before midnight, its webhook after) is still one
-- purchase: the report already delivered wins, else the browser's, else the earliest.
order_reports AS (
    SELECT s.order_id, s.event_id, s.source_format, s.event_time,
           EXISTS (SELECT 1 FROM delivery.event_outcomes o
                   WHERE o.event_id = s.event_id AND o.outcome = 'delivered') AS delivered
    FROM staging.events s
    WHERE s.event_type = 'purchase' AND s.duplicate_of IS NULL
      AND s.order_id IN (SELECT order_id FROM day WHERE event_type = 'purchase')
),
order_winners AS (
    SELECT order_id,
           arg_min(event_id, (NOT delivered, source_format <> 'shopify_pixel', event_time))
               AS winner_event_id
    FROM order_reports
    GROUP BY order_id
)
SELECT d.*, w.winner_event_id AS order_winner_event_id,
       p.email AS profile_email, p.phone AS profile_phone,
       p.first_name AS profile_first_name, p.last_name AS profile_last_name,
       p.city AS profile_city, p.state AS profile_state, p.zip AS profile_zip,
       p.country AS profile_country, p.customer_id AS profile_customer_id,
       p.ip AS profile_ip, p.user_agent AS profile_user_agent,
       p.web_seen_at AS profile_web_seen_at,
       c.click_id AS profile_click_id, c.click_time AS profile_click_time,
       coalesce(d.marketing_allowed, mk.marketing_allowed) AS consent_marketing,
       coalesce(d.sale_of_data_allowed, sl.sale_of_data_allowed) AS consent_sale,
       coalesce(d.country, p.country) AS region,
       -- An address is one fact: the event's when it has any part of one, else the profile's,
       -- rather than a city from one and a zip from the other.
       coalesce(d.city, d.state, d.zip, d.country) IS NOT NULL AS own_address,
       coalesce(d.first_name, p.first_name) AS name_first,
       coalesce(d.last_name, p.last_name) AS name_last,
       CASE WHEN own_address THEN d.city ELSE p.city END AS address_city,
       CASE WHEN own_address THEN d.state ELSE p.state END AS address_state,
       CASE WHEN own_address THEN d.zip ELSE p.zip END AS address_zip,
       CASE WHEN own_address THEN d.country ELSE p.country END AS address_country
FROM day d
LEFT JOIN identity.visitor_profiles p ON p.visitor_id = d.visitor_id
LEFT JOIN order_winners w ON d.event_type = 'purchase' AND w.order_id = d.order_id
ASOF LEFT JOIN clicks c ON c.visitor_id = d.visitor_id AND d.event_time >= c.click_time
ASOF LEFT JOIN marketing mk ON mk.visitor_id = d.visitor_id AND d.event_time >= mk.stated_at
ASOF LEFT JOIN sale sl ON sl.visitor_id = d.visitor_id AND d.event_time >= sl.stated_at
"""

# Where each hashed field's values come from, in enrich_day's columns. Lists are merged in
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
    f"""CREATE OR REPLACE TEMP MACRO capi_safe_text(t) AS (
        CASE WHEN t IS NOT NULL AND NOT regexp_matches(t, '{EMAIL_SHAPED}')
             AND NOT regexp_matches(t, '{PHONE_SHAPED}') THEN t END)""",
    # Decimal text as Pinterest reads value strings: no exponent, no trailing zeros.
    """CREATE OR REPLACE TEMP MACRO capi_decimal(d) AS (
        CASE WHEN d IS NULL THEN NULL
             WHEN contains(CAST(d AS VARCHAR), '.')
             THEN rtrim(rtrim(CAST(d AS VARCHAR), '0'), '.')
             ELSE CAST(d AS VARCHAR) END)""",
    # The page's address without query or fragment, where forms and links leak contacts;
    # paths hold long digit runs (shop and order ids), so only the email shape is checked.
    f"""CREATE OR REPLACE TEMP MACRO capi_page_url(u) AS (
        CASE WHEN regexp_extract(u, '^(https?://[^/?#\\s]+[^?#\\s]*)', 1) <> ''
             AND NOT regexp_matches(regexp_extract(u, '^(https?://[^/?#\\s]+[^?#\\s]*)', 1),
                                    '{EMAIL_SHAPED}')
             THEN regexp_extract(u, '^(https?://[^/?#\\s]+[^?#\\s]*)', 1) END)""",
    f"""CREATE OR REPLACE TEMP MACRO capi_click_id(c) AS (
        CASE WHEN length(c) BETWEEN 6 AND 1024 AND regexp_matches(c, '{CLICK_ID}')
             THEN c END)""",
]

ROWS_SQL = """
CREATE OR REPLACE TEMP TABLE enrich_rows AS
WITH base AS (
    SELECT d.*,
        {digests},
        r.region_key,
        CASE WHEN d.ip IS NOT NULL AND d.user_agent IS NOT NULL THEN d.ip
             WHEN d.profile_ip IS NOT NULL AND d.profile_user_agent IS NOT NULL
             THEN d.profile_ip ELSE d.ip END AS ip_sent,
        CASE WHEN d.ip IS NOT NULL AND d.user_agent IS NOT NULL THEN d.user_agent
             WHEN d.profile_ip IS NOT NULL AND d.profile_user_agent IS NOT NULL
             THEN d.profile_user_agent ELSE d.user_agent END AS ua_sent,
        coalesce(capi_click_id(d.click_id),
                 CASE WHEN d.event_time - d.profile_click_time <= $attribution
                      THEN capi_click_id(d.profile_click_id) END) AS click_sent,
        capi_click_id(d.click_id) IS NULL AND capi_click_id(d.profile_click_id) IS NOT NULL
            AND d.event_time - d.profile_click_time <= $attribution AS click_from_profile,
        -- An order keyed in by staff has no browser; one whose buyer browsed the store that
        -- day was a web purchase the webhook could not see.
        CASE WHEN d.action_source = 'offline' AND d.source_format = 'shopify_webhook'
                  AND d.profile_web_seen_at BETWEEN d.event_time - INTERVAL 1 DAY
                                                AND d.event_time + INTERVAL 1 DAY
             THEN 'web' ELSE d.action_source END AS action_source_sent,
        upper(d.currency) AS currency_upper,
        CASE WHEN $value_source = 'items' AND len(d.items) > 0
             THEN list_sum(list_transform(d.items, lambda x: x.price * x.quantity))
             ELSE d.value END AS value_sent,
        capi_safe_text(d.search_string) AS search_sent,
        capi_page_url(d.page_url) AS url_sent,
        list_filter(list_transform(coalesce(d.items, []), lambda x: {{
            'id': x.id,
            'item_price': capi_decimal(x.price),
            'quantity': x.quantity,
            'item_name': capi_safe_text(x.name),
            'item_category': capi_safe_text(x.category),
            'item_brand': capi_safe_text(x.brand)}}),
            lambda c: coalesce(c.id, c.item_price, CAST(c.quantity AS VARCHAR), c.item_name,
                               c.item_category, c.item_brand) IS NOT NULL) AS contents_sent,
        list_distinct(list_transform(coalesce(d.items, []), lambda x: x.category))
            AS categories
    FROM enrich_day d
    {joins}
    LEFT JOIN enrich_regions r
        ON r.state IS NOT DISTINCT FROM d.address_state AND r.region IS NOT DISTINCT FROM d.region
),
decided AS (
    SELECT *,
        {lists},
        list_contains($currencies, currency_upper) AS currency_ok,
        coalesce(consent_sale IS FALSE AND (
            list_contains($ldp, region_key)
            OR list_contains($ldp, split_part(region_key, '-', 1))), false) AS ldp
    FROM base
),
flagged AS (
    SELECT *,
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
    FROM decided
)
SELECT *,
    {{
        'currency': CASE WHEN currency_ok THEN currency_upper END,
        'value': capi_decimal(value_sent),
        'content_ids': capi_ids(list_transform(contents_sent, lambda c: c.id)),
        'contents': CASE WHEN len(contents_sent) > 0 THEN list_transform(
            contents_sent, lambda c: json_merge_patch('{{}}', to_json(c))) END,
        'num_items': num_items,
        'order_id': order_id,
        'search_string': search_sent,
        'content_category': CASE WHEN len(categories) = 1 AND len(items) = len(
            list_filter(items, lambda x: x.category IS NOT NULL))
            THEN capi_safe_text(categories[1]) END,
        'opt_out_type': CASE WHEN ldp THEN 'LDP' END
    }} AS custom_struct,
    list_filter([
        {dropped},
        CASE WHEN search_string IS NOT NULL AND search_sent IS NULL THEN 'search_string' END,
        CASE WHEN page_url IS NOT NULL AND url_sent IS NULL THEN 'event_source_url' END,
        CASE WHEN click_id IS NOT NULL AND capi_click_id(click_id) IS NULL
             THEN 'click_id' END,
        CASE WHEN currency IS NOT NULL AND NOT currency_ok THEN 'currency' END
    ], lambda x: x IS NOT NULL) AS dropped_fields
FROM flagged
"""

INSERT_SQL = """
INSERT INTO capi.pinterest_events (
    partition_date, event_id, event_name, action_source, event_time, source_event_type,
    source_event_name, store, visitor_id, eligible, skip_reason, has_em, has_ph,
    has_external_id, has_click_id, has_ip_ua, has_hashed_maids, click_id_from_profile,
    opt_out, ldp, dropped_fields, value, currency, payload)
SELECT
    $day, event_id, event_name, action_source_sent, epoch_ms(event_time) // 1000, event_type,
    source_event_name, store, visitor_id, skip_reason IS NULL, skip_reason,
    sent_em IS NOT NULL, sent_ph IS NOT NULL, sent_external_id IS NOT NULL,
    click_sent IS NOT NULL, ip_sent IS NOT NULL AND ua_sent IS NOT NULL,
    sent_hashed_maids IS NOT NULL, coalesce(click_from_profile, false) AND click_sent IS NOT NULL,
    opt_out, ldp, dropped_fields, value_sent::DECIMAL(18, 2),
    CASE WHEN currency_ok THEN currency_upper END,
    json_merge_patch('{{}}', to_json({{
        'event_name': event_name,
        'action_source': action_source_sent,
        'event_time': epoch_ms(event_time) // 1000,
        'event_id': event_id,
        'event_source_url': url_sent,
        'opt_out': CASE WHEN opt_out THEN true END,
        'partner_name': $partner_name,
        'user_data': {{
            {user_data},
            'client_ip_address': ip_sent,
            'client_user_agent': ua_sent,
            'click_id': click_sent
        }},
        'custom_data': CASE WHEN json_merge_patch('{{}}', to_json(custom_struct)) <> '{{}}'
                            THEN custom_struct END
    }}))
FROM enrich_rows
ORDER BY event_time, event_id
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
    joins, digests, lists, dropped, user_data = [], [], [], [], []
    for field, sources in FIELD_SOURCES.items():
        columns = []
        for n, source in enumerate(sources):
            alias = f"n_{field}_{n}"
            condition = f"{alias}.raw = d.{source}"
            if RULES[field].uses_country:
                condition += f" AND {alias}.region IS NOT DISTINCT FROM d.region"
            joins.append(f"LEFT JOIN enrich_norm_{field} {alias} ON {condition}")
            digests.append(f"{alias}.digest AS digest_{field}_{n}")
            columns.append(f"digest_{field}_{n}")
        lists.append(f"capi_ids([{', '.join(columns)}]) AS sent_{field}")
        raw_present = " OR ".join(f"{source} IS NOT NULL" for source in sources)
        dropped.append(f"CASE WHEN sent_{field} IS NULL AND ({raw_present}) THEN '{field}' END")
        user_data.append(f"'{field}': sent_{field}")
    return (
        "\n    ".join(joins), ",\n        ".join(digests), ",\n        ".join(lists),
        ",\n        ".join(dropped), ",\n            ".join(user_data),
    )


_JOINS, _DIGESTS, _LISTS, _DROPPED, _USER_DATA = _joins_and_columns()
ROWS_SQL = ROWS_SQL.format(joins=_JOINS, digests=_DIGESTS, lists=_LISTS, dropped=_DROPPED)
INSERT_SQL = INSERT_SQL.format(user_data=_USER_DATA)


def _normalize_field(conn: duckdb.DuckDBPyConnection, field: str, config: PayloadConfig) -> int:
    """Fill enrich_norm_<field> with the digest of each distinct value; returns the values
    a source meant to send hashed that were not hashes."""
    rule = RULES[field]
    region = "region" if rule.uses_country else "NULL::VARCHAR"
    selects = " UNION ALL ".join(
        f"SELECT {source} AS raw, {region} AS region FROM enrich_day"
        for source in FIELD_SOURCES[field]
    )
    pairs = conn.execute(
        f"SELECT DISTINCT raw, region FROM ({selects}) WHERE raw IS NOT NULL"
    ).fetchall()
    raws = [raw for raw, _ in pairs]
    all_regions = [region for _, region in pairs]
    regions = all_regions if rule.uses_country else None
    arrives_hashed = field in config.hashed_on_arrival
    texts, is_digest = normalize_distinct(
        field, raws, regions, config.default_region, arrives_hashed)
    if field == "em":
        texts = [None if text is not None and not digest
                 and is_junk_email(text, config.junk_emails) else text
                 for text, digest in zip(texts, is_digest, strict=True)]
    lookup = pl.DataFrame(  # noqa: F841 - read by name in the SQL below
        {"raw": raws, "region": all_regions, "text": texts,
         "is_digest": is_digest},
        schema={"raw": pl.String, "region": pl.String, "text": pl.String,
                "is_digest": pl.Boolean},
    )
    conn.execute(f"""
        CREATE OR REPLACE TEMP TABLE enrich_norm_{field} AS
        SELECT raw, region,
               CASE WHEN is_digest THEN text WHEN text IS NOT NULL THEN sha256(text) END
                   AS digest
        FROM lookup
    """)
    return sum(1 for text in texts if text is None) if arrives_hashed else 0


def _regions(conn: duckdb.DuckDBPyConnection, config: PayloadConfig) -> None:
    """Each distinct (state, country) of the day as an ISO region (US-CA), for LDP."""
    pairs = conn.execute("""
        SELECT DISTINCT address_state AS state, region FROM enrich_day
    """).fetchall()
    keys = []
    for state, region in pairs:
        country = country_code(region) if region else None
        country = country or country_code(config.default_region)
        code = state_code(state, country) if state else None
        keys.append(f"{country}-{code.upper()}" if code else country)
    frame = pl.DataFrame(  # noqa: F841 - read by name in the SQL below
        {"state": [p[0] for p in pairs], "region": [p[1] for p in pairs], "region_key": keys},
        schema={"state": pl.String, "region": pl.String, "region_key": pl.String},
    )
    conn.execute("CREATE OR REPLACE TEMP TABLE enrich_regions AS SELECT * FROM frame")


def build_pinterest_events(
    conn: duckdb.DuckDBPyConnection, day: date, config: PayloadConfig
) -> BuildResult:
    """Replace the day's rows of capi.pinterest_events with the events Pinterest receives.

    Args:
        conn: A connection to the pipeline's DuckDB file, schema in place, TimeZone UTC.
        day: The partition (UTC date of the events).
        config: The checked payload settings, with the run's clock.

    Returns:
        Counts for the log and the asset's metadata.
    """
    for macro in MACROS:
        conn.execute(macro)
    sources = sorted(config.event_map)
    conn.execute(DAY_SQL, {
        "day": day, "sources": sources, "names": [config.event_map[s] for s in sources],
    })
    not_hashed = {}
    for field in FIELD_SOURCES:
        count = _normalize_field(conn, field, config)
        if count:
            not_hashed[field] = count
    _regions(conn, config)
    conn.execute(ROWS_SQL, {
        "attribution": config.attribution_window, "value_source": config.value_source,
        "currencies": list(CURRENCIES), "ldp": list(config.ldp_regions),
        "consent_policy": config.consent_policy, "now": config.now,
        "max_age": config.max_event_age, "max_skew": config.max_future_skew,
    })

    conn.execute("BEGIN TRANSACTION")
    try:
        conn.execute("DELETE FROM capi.pinterest_events WHERE partition_date = ?", [day])
        conn.execute(INSERT_SQL, {"day": day, "partner_name": config.partner_name})
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return _result(conn, not_hashed)


def _result(conn: duckdb.DuckDBPyConnection, not_hashed: dict[str, int]) -> BuildResult:
    rows, eligible, em_share, click_share = conn.execute("""
        SELECT count(*), count(*) FILTER (WHERE skip_reason IS NULL),
               avg((sent_em IS NOT NULL)::INT) FILTER (WHERE skip_reason IS NULL),
               avg((click_sent IS NOT NULL)::INT) FILTER (WHERE skip_reason IS NULL)
        FROM enrich_rows
    """).fetchone()

    def counts(sql: str) -> dict[str, int]:
        return {key: int(n) for key, n in conn.execute(sql).fetchall()}

    return BuildResult(
        rows=int(rows),
        eligible=int(eligible),
        skipped_by_reason=counts("SELECT skip_reason, count(*) FROM enrich_rows WHERE "
                                 "skip_reason IS NOT NULL GROUP BY ALL ORDER BY 1"),
        eligible_by_event=counts("SELECT event_name, count(*) FROM enrich_rows WHERE "
                                 "skip_reason IS NULL GROUP BY ALL ORDER BY 1"),
        dropped_by_field=counts("SELECT f, count(*) FROM (SELECT unnest(dropped_fields) AS f "
                                "FROM enrich_rows) GROUP BY ALL ORDER BY 1"),
        not_hashed_on_arrival=not_hashed,
        em_share=round(float(em_share or 0.0), 4),
        click_id_share=round(float(click_share or 0.0), 4),
    )


def request_bodies(
    conn: duckdb.DuckDBPyConnection, day: date, batch_size: int = 1000
) -> Iterator[bytes]:
    """The day's eligible payloads as request bodies of up to `batch_size` events each.

    The delivery stage sends the same bytes (it joins the stored payloads the same way); this
    is the shape the benchmark measures and the schema test checks.
    """
    cursor = conn.execute("""
        SELECT '{"data":[' || string_agg(payload::VARCHAR, ',' ORDER BY n) || ']}'
        FROM (SELECT payload, row_number() OVER (ORDER BY event_time, event_id) - 1 AS n
              FROM capi.pinterest_events WHERE partition_date = $day AND eligible)
        GROUP BY n // $size ORDER BY n // $size
    """, {"day": day, "size": batch_size})
    while batch := cursor.fetchmany(100):
        for (body,) in batch:
            yield body.encode()
