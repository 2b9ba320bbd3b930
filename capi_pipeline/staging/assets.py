"""Staging: one typed, de-duplicated event per row, with bots and test orders flagged."""


from collections import Counter, defaultdict
from datetime import datetime
from typing import Any

import orjson
import polars as pl
from dagster import AssetExecutionContext, MaterializeResult, MetadataValue, asset

from capi_pipeline.lib.tags import WRITER
from capi_pipeline.partitions import (
    backfill_policy,
    daily_partitions,
    over_days,
    partition_days,
)
from capi_pipeline.resources import WarehouseResource
from capi_pipeline.staging.extract import content_event_id, extract
from capi_pipeline.staging.sql import write_staging

ITEM = pl.Struct(
    {
        "id": pl.String,
        "name": pl.String,
        "price": pl.Decimal(18, 2),
        "quantity": pl.Int32,
        "brand": pl.String,
        "category": pl.String,
    }
)
STAGING_SCHEMA: dict[str, pl.DataType] = {
    "partition_date": pl.Date,
    "event_key": pl.String,
    "source_format": pl.String,
    "source_event_name": pl.String,
    "event_type": pl.String,
    "action_source": pl.String,
    "event_time": pl.Datetime("us", "UTC"),
    "received_at": pl.Datetime("us", "UTC"),
    "event_id": pl.String,
    "store": pl.String,
    **{
        name: pl.String
        for name in (
            "client_id", "customer_id", "email", "phone", "first_name", "last_name", "city",
            "state", "zip", "country", "ip", "user_agent", "page_url", "click_id", "order_id",
            "cart_token", "checkout_token", "gender", "date_of_birth", "advertising_id",
        )
    },
    "ad_tracking_allowed": pl.Boolean,
    "marketing_allowed": pl.Boolean,
    "sale_of_data_allowed": pl.Boolean,
    "value": pl.Decimal(18, 2),
    "currency": pl.String,
    "search_string": pl.String,
    "items": pl.List(ITEM),
    "num_items": pl.Int32,
    "is_bot": pl.Boolean,
    "is_test": pl.Boolean,
    "time_flags": pl.List(pl.String),
    "duplicate_of": pl.String,
}
# What a purchase reported twice may learn from its other report: the pixel knows the browser's
# event id, the webhook knows the buyer's IP and contact details.
FILLABLE = (
    "customer_id", "email", "phone", "first_name", "last_name", "city", "state", "zip",
    "country", "ip", "user_agent", "click_id", "checkout_token", "cart_token", "value",
    "currency",
)

@asset(
    key=["staging", "events"],
    deps=[["raw", "events"]],
    partitions_def=daily_partitions,
    group_name="staging",
    op_tags=WRITER,
    kinds={"duckdb"},
    backfill_policy=backfill_policy,
)
def staging_events(context: AssetExecutionContext, duckdb: WarehouseResource) -> MaterializeResult:
    """One typed row per event of the day: who (ids, contact, address, IP, user agent), what
    (event type, order, value, items) and flags (bot, test order, duplicate of an earlier event).

    Computed in DuckDB (staging/sql.py) from the day's raw.events; re-running the day gives the
    same rows. `reference_rows` below is the same logic in Python, kept as the oracle the tests
    compare the SQL with.
    """
    per_day = {day: _stage_day(context, duckdb, day) for day in partition_days(context)}
    return MaterializeResult(metadata=over_days(per_day))


def _stage_day(context: AssetExecutionContext, duckdb: WarehouseResource, day) -> dict:
    with duckdb.get_connection() as conn:
        rows = write_staging(conn, day)
        live, bots, tests = conn.execute(
            "SELECT count(*), count(*) FILTER (WHERE is_bot), count(*) FILTER (WHERE is_test) "
            "FROM staging.events WHERE partition_date = ? AND duplicate_of IS NULL", [day],
        ).fetchone()
        types = Counter(dict(conn.execute(
            "SELECT event_type, count(*) FROM staging.events WHERE partition_date = ? "
            "AND duplicate_of IS NULL GROUP BY ALL", [day]).fetchall()))
    duplicates = rows - live
    context.log.info(
        f"partition {day}: {rows} rows, {live} distinct events, "
        f"{duplicates} duplicates, {bots} from bots, {tests} test"
    )
    return {
        "dagster/row_count": rows,
        "distinct_events": live,
        "duplicates": duplicates,
        "bots": bots,
        "test_events": tests,
        "by_event_type": MetadataValue.json(dict(sorted(types.items()))),
    }


RAW_QUERY = """
SELECT source_file, line_no, msg_index, source_format, topic, source_event_name,
       source_event_id, event_time, received_at, envelope_ip, envelope_user_agent,
       envelope_store, time_flags, body
FROM raw.events
WHERE partition_date = ?
ORDER BY received_at NULLS LAST, source_file, line_no, msg_index
"""


def reference_rows(conn, day) -> list[dict[str, Any]]:
    """The day's staging rows computed row by row in Python (the oracle for the SQL)."""
    cursor = conn.execute(RAW_QUERY, [day])
    columns = [column[0] for column in cursor.description]
    messages = [dict(zip(columns, values, strict=True)) for values in cursor.fetchall()]
    rows = [_staging_row(day, message) for message in messages]
    mark_duplicates(rows)
    return rows


def _staging_row(day, message: dict[str, Any]) -> dict[str, Any]:
    message = {**message, "body": orjson.loads(message["body"])}
    row = {name: None for name in STAGING_SCHEMA}
    try:
        row.update(extract(message))
    except Exception as error:  # noqa: BLE001 - one odd event must not stop the day
        # The event stays, typed as unreadable so nothing is sent for it, and the error's type
        # (never its text, which may quote the data) is kept in its flags.
        row.update(event_type="unreadable", action_source="web", items=[], is_bot=False,
                   is_test=False,
                   event_id=message["source_event_id"] or content_event_id(message))
        message["time_flags"] = [*(message["time_flags"] or []),
                                 f"extract_error:{type(error).__name__}"]
    row.update(
        partition_date=day,
        event_key=f"{message['source_file']}:{message['line_no']}:{message['msg_index']}",
        source_format=message["source_format"],
        source_event_name=message["source_event_name"],
        event_time=message["event_time"],
        received_at=message["received_at"],
        time_flags=list(message["time_flags"] or []),
        duplicate_of=None,
    )
    return {name: row[name] for name in STAGING_SCHEMA}


def mark_duplicates(rows: list[dict[str, Any]]) -> int:
    """Mark repeats, in arrival order; returns how many rows repeat an earlier one.

    The same event id twice is one event (the first arrival wins). One order reported by
    several sources (pixel, webhook, Segment) is one purchase: the browser's report wins, so
    that Pinterest can pair it with the tag's event, and it takes what it lacks from the others.
    Only reports on the same UTC day are merged here; enrich skips a report of an order that
    another day already holds (reason duplicate_order).
    """
    seen: set[str] = set()
    count = 0
    for row in rows:
        if row["event_id"] in seen:
            row["duplicate_of"] = row["event_id"]
            count += 1
        seen.add(row["event_id"])

    purchases: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        if row["duplicate_of"] is None and row["event_type"] == "purchase" and row["order_id"]:
            purchases[row["order_id"]].append(row)
    for reports in purchases.values():
        if len(reports) < 2:
            continue
        winner = min(reports, key=_report_rank)
        for other in reports:
            if other is winner:
                continue
            other["duplicate_of"] = winner["event_id"]
            count += 1
            for name in FILLABLE:
                if winner[name] is None and other[name] is not None:
                    winner[name] = other[name]
            winner["is_test"] = winner["is_test"] or other["is_test"]
            if not winner["items"] and other["items"]:
                winner["items"], winner["num_items"] = other["items"], other["num_items"]
    return count


def _report_rank(row: dict[str, Any]) -> tuple[int, datetime]:
    return (0 if row["source_format"] == "shopify_pixel" else 1, row["event_time"])
