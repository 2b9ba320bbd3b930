"""Enrich: the day's events as Pinterest will receive them, hashed, with eligibility."""


from collections import Counter
from datetime import UTC, datetime, timedelta

import orjson
import polars as pl
from dagster import (
    AssetCheckResult,
    AssetExecutionContext,
    AssetKey,
    MaterializeResult,
    MetadataValue,
    asset,
    asset_check,
)

from capi_pipeline.enrich.payload import PINTEREST_EVENTS, EnrichRules, build_event
from capi_pipeline.lib.duck import replace_partition
from capi_pipeline.lib.tags import WRITER
from capi_pipeline.partitions import daily_partitions, partition_day
from capi_pipeline.resources import PipelineSettings, WarehouseResource

PINTEREST_EVENTS_KEY = ["capi", "pinterest_events"]

# The day's distinct events that map to a Pinterest event, with their visitor's profile and the
# latest Pinterest click the visitor made before the event (an as-of join on time).
EVENTS_SQL = """
WITH day AS (
    SELECT s.*, v.visitor_id
    FROM staging.events s
    LEFT JOIN identity.event_visitors v USING (event_key)
    WHERE s.partition_date = $day AND s.duplicate_of IS NULL
      AND s.event_type IN (SELECT unnest($types))
),
clicks AS (
    SELECT v.visitor_id, s.event_time AS click_time, s.click_id
    FROM staging.events s
    JOIN identity.event_visitors v USING (event_key)
    WHERE s.click_id IS NOT NULL
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
       c.click_id AS profile_click_id, c.click_time AS profile_click_time
FROM day d
LEFT JOIN identity.visitor_profiles p ON p.visitor_id = d.visitor_id
LEFT JOIN order_winners w ON d.event_type = 'purchase' AND w.order_id = d.order_id
ASOF LEFT JOIN clicks c ON c.visitor_id = d.visitor_id AND d.event_time >= c.click_time
ORDER BY d.event_time, d.event_id
"""

CAPI_SCHEMA = {
    "partition_date": pl.Date,
    "event_id": pl.String,
    "event_name": pl.String,
    "action_source": pl.String,
    "event_time": pl.Int64,
    "source_event_type": pl.String,
    "store": pl.String,
    "visitor_id": pl.String,
    "eligible": pl.Boolean,
    "skip_reason": pl.String,
    "has_em": pl.Boolean,
    "has_ph": pl.Boolean,
    "has_external_id": pl.Boolean,
    "has_click_id": pl.Boolean,
    "has_ip_ua": pl.Boolean,
    "has_hashed_maids": pl.Boolean,
    "click_id_from_profile": pl.Boolean,
    "value": pl.Decimal(18, 2),
    "currency": pl.String,
    "payload": pl.String,
}


@asset(
    key=PINTEREST_EVENTS_KEY,
    deps=[["staging", "events"], ["identity", "visitor_profiles"]],
    partitions_def=daily_partitions,
    group_name="enrich",
    op_tags=WRITER,
    kinds={"duckdb"},
)
def pinterest_events(
    context: AssetExecutionContext, duckdb: WarehouseResource, settings: PipelineSettings
) -> MaterializeResult:
    """One row per event of the day that maps to a Pinterest conversion: the payload Pinterest
    will receive (SHA-256 hashes, plus the IP, user agent and click id it takes unhashed),
    whether it is eligible, and the reason when it is not. No raw personal data.
    """
    day = partition_day(context.partition_key)
    rules = EnrichRules(
        now=datetime.now(UTC),
        default_region=settings.default_region,
        max_event_age=timedelta(days=settings.max_event_age_days),
        max_future_skew=timedelta(seconds=settings.max_future_skew_seconds),
        attribution_window=timedelta(days=settings.attribution_window_days),
    )
    with duckdb.get_connection() as conn:
        cursor = conn.execute(EVENTS_SQL, {"day": day, "types": sorted(PINTEREST_EVENTS)})
        columns = [column[0] for column in cursor.description]
        rows = [dict(zip(columns, values, strict=True)) for values in cursor.fetchall()]

    records = [_record(day, row, rules) for row in rows]
    frame = pl.DataFrame(records, schema=CAPI_SCHEMA, orient="row")
    with duckdb.get_connection() as conn:
        replace_partition(conn, "capi.pinterest_events", day, frame)

    eligible = int(frame["eligible"].sum())
    reasons = Counter(reason for reason in frame["skip_reason"].to_list() if reason)
    names = Counter(frame.filter(pl.col("eligible"))["event_name"].to_list())
    context.log.info(
        f"partition {day}: {frame.height} Pinterest events, {eligible} eligible, "
        f"skipped {dict(reasons)}"
    )
    return MaterializeResult(
        metadata={
            "dagster/row_count": frame.height,
            "eligible": eligible,
            "skipped": frame.height - eligible,
            "skipped_by_reason": MetadataValue.json(dict(sorted(reasons.items()))),
            "eligible_by_event": MetadataValue.json(dict(sorted(names.items()))),
            "em_share_of_eligible": _share(frame, "has_em"),
            "click_id_share_of_eligible": _share(frame, "has_click_id"),
        }
    )


def _record(day, row: dict, rules: EnrichRules) -> dict:
    event = build_event(row, rules)
    user_data = event.payload["user_data"]
    return {
        "partition_date": day,
        "event_id": event.payload["event_id"],
        "event_name": event.payload["event_name"],
        "action_source": event.payload["action_source"],
        "event_time": event.payload["event_time"],
        "source_event_type": row["event_type"],
        "store": row.get("store"),
        "visitor_id": row.get("visitor_id"),
        "eligible": event.skip_reason is None,
        "skip_reason": event.skip_reason,
        "has_em": "em" in user_data,
        "has_ph": "ph" in user_data,
        "has_external_id": "external_id" in user_data,
        "has_click_id": "click_id" in user_data,
        "has_ip_ua": "client_ip_address" in user_data and "client_user_agent" in user_data,
        "has_hashed_maids": "hashed_maids" in user_data,
        "click_id_from_profile": event.click_id_from_profile,
        "value": row.get("value"),
        "currency": (row.get("currency") or None) and row["currency"].upper(),
        "payload": orjson.dumps(event.payload).decode(),
    }


def _share(frame: pl.DataFrame, column: str) -> float:
    eligible = frame.filter(pl.col("eligible"))
    return round(float(eligible[column].mean()), 4) if eligible.height else 0.0


# Anything in the capi schema that looks like an email address or a phone number is raw
# personal data that escaped hashing.
RAW_PII_SQL = """
SELECT count(*) FROM capi.pinterest_events
WHERE regexp_matches(payload, '[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\\.[A-Za-z]{2,}')
   OR regexp_matches(
        json_extract_string(payload, '$.user_data.ph[0]'), '^\\+?[0-9 ()-]{7,15}$')
"""


@asset_check(asset=AssetKey(PINTEREST_EVENTS_KEY), blocking=True)
def no_raw_personal_data(duckdb: WarehouseResource) -> AssetCheckResult:
    """Blocks delivery when a payload holds an email address or an unhashed phone number."""
    with duckdb.get_connection() as conn:
        leaks = conn.execute(RAW_PII_SQL).fetchone()[0]
    return AssetCheckResult(
        passed=leaks == 0,
        metadata={"payloads_with_raw_personal_data": leaks},
        description=None if leaks == 0 else (
            f"{leaks} payloads in capi.pinterest_events hold an email address or phone number "
            "in clear: a normalization rule is passing raw values through; nothing is sent "
            "until it is fixed."
        ),
    )
