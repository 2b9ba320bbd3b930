"""Delivery: the day's eligible events to Pinterest, with a ledger of every attempt."""


import asyncio
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import polars as pl
from dagster import (
    AssetExecutionContext,
    AssetSpec,
    Failure,
    MaterializeResult,
    MetadataValue,
    multi_asset,
)

from capi_pipeline.delivery.sender import BatchDone, send_batches, write_dry_run
from capi_pipeline.lib.duck import insert_frame
from capi_pipeline.lib.tags import WRITER
from capi_pipeline.partitions import daily_partitions, partition_day
from capi_pipeline.pinterest.client import ConversionsClient, PinterestAuthError
from capi_pipeline.resources import PinterestResource, WarehouseResource

EVENT_OUTCOMES = ["delivery", "event_outcomes"]
REQUESTS = ["delivery", "requests"]
FINAL_OUTCOMES = ("delivered", "dead_letter", "dry_run")

PENDING_SQL = """
SELECT e.event_id, e.payload
FROM capi.pinterest_events e
WHERE e.partition_date = $day AND e.eligible
  AND NOT EXISTS (
      SELECT 1 FROM delivery.event_status s
      WHERE s.destination = $destination AND s.event_id = e.event_id
        AND s.outcome IN (SELECT unnest($final))
  )
ORDER BY e.event_time, e.event_id
"""


@multi_asset(
    specs=[
        AssetSpec(
            EVENT_OUTCOMES,
            deps=[["capi", "pinterest_events"]],
            description=(
                "Append-only ledger of what became of each event sent to Pinterest: delivered, "
                "dead_letter (with Pinterest's message), pending (to retry next run) or "
                "dry_run. The view delivery.event_status holds each event's latest outcome."
            ),
            group_name="delivery",
            kinds={"duckdb"},
        ),
        AssetSpec(
            REQUESTS,
            deps=[["capi", "pinterest_events"]],
            description="Every HTTP request sent to Pinterest: batch, status, latency, error.",
            group_name="delivery",
            kinds={"duckdb"},
        ),
    ],
    partitions_def=daily_partitions,
    op_tags=WRITER,
)
def delivery_ledger(
    context: AssetExecutionContext, duckdb: WarehouseResource, pinterest: PinterestResource
):
    """Send the day's eligible events that have no final outcome yet, and record each answer."""
    day = partition_day(context.partition_key)
    destination = pinterest.destination
    with duckdb.get_connection() as conn:
        pending = conn.execute(
            PENDING_SQL, {"day": day, "destination": destination, "final": list(FINAL_OUTCOMES)}
        ).fetchall()
    events = [(event_id, payload.encode()) for event_id, payload in pending]
    context.log.info(f"partition {day}: {len(events)} events to send to {destination}")

    totals: Counter[str] = Counter()
    requests = 0

    def record(batch: BatchDone) -> None:
        nonlocal requests
        _write_batch(duckdb, destination, day, batch)
        totals.update(outcome.outcome for outcome in batch.outcomes)
        requests += len(batch.attempts)

    started = time.perf_counter()
    if pinterest.dry_run_dir:
        for batch in write_dry_run(Path(pinterest.dry_run_dir), context.partition_key, events,
                                   pinterest.batch_size):
            record(batch)
    elif events:
        try:
            asyncio.run(_send(pinterest, events, record, context.log.info))
        except PinterestAuthError as error:
            raise Failure(
                description=(
                    f"Pinterest refused the credentials ({error}). Set PINTEREST_ACCESS_TOKEN "
                    "to a conversion access token for ad account PINTEREST_AD_ACCOUNT_ID="
                    f"{pinterest.ad_account_id}; no event was marked as failed."
                ),
                allow_retries=False,
            ) from None
    seconds = time.perf_counter() - started

    context.log.info(
        f"partition {day}: {dict(totals)} in {requests} requests, {seconds:.1f}s"
    )
    if totals["pending"]:
        context.log.warning(
            f"{totals['pending']} events are still pending after retries; the next run of "
            f"partition {day} sends them again"
        )
    metadata = {
        "destination": destination,
        "to_send": len(events),
        "delivered": totals["delivered"],
        "dead_lettered": totals["dead_letter"],
        "pending": totals["pending"],
        "dry_run": totals["dry_run"],
        "requests": requests,
        "seconds": round(seconds, 3),
        "events_per_second": round(len(events) / seconds, 1) if seconds > 0 else 0.0,
    }
    yield MaterializeResult(asset_key=EVENT_OUTCOMES, metadata={
        **metadata, "outcomes": MetadataValue.json(dict(totals))})
    yield MaterializeResult(asset_key=REQUESTS, metadata={"requests": requests})


async def _send(pinterest: PinterestResource, events, record, log) -> None:
    async with ConversionsClient(
        pinterest.base_url,
        pinterest.ad_account_id,
        pinterest.access_token,
        test_mode=pinterest.test_mode,
        timeout_seconds=pinterest.timeout_seconds,
        max_attempts=pinterest.max_attempts,
        calls_per_minute=pinterest.calls_per_minute,
        max_concurrency=pinterest.max_concurrency,
    ) as client:
        await send_batches(client, events, pinterest.batch_size, pinterest.max_concurrency,
                           record, log)


def _write_batch(duckdb: WarehouseResource, destination: str, day, batch: BatchDone) -> None:
    """Append one batch to the ledger at once, so a crash loses at most the batch in flight."""
    now = datetime.now(UTC)
    requests = pl.DataFrame(
        [
            {
                "request_id": attempt.request_id,
                "destination": destination,
                "partition_date": day,
                "batch_no": batch.batch_no,
                "attempt": attempt.attempt,
                "events": attempt.events,
                "status_code": attempt.status_code,
                "latency_ms": attempt.latency_ms,
                "error": attempt.error,
                "sent_at": now,
            }
            for attempt in batch.attempts
        ],
        schema={
            "request_id": pl.String, "destination": pl.String, "partition_date": pl.Date,
            "batch_no": pl.Int32, "attempt": pl.Int32, "events": pl.Int32,
            "status_code": pl.Int32, "latency_ms": pl.Float64, "error": pl.String,
            "sent_at": pl.Datetime("us", "UTC"),
        },
        orient="row",
    )
    outcomes = pl.DataFrame(
        [
            {
                "destination": destination,
                "partition_date": day,
                "event_id": outcome.event_id,
                "outcome": outcome.outcome,
                "attempts": outcome.attempts,
                "request_id": outcome.request_id,
                "error_message": outcome.error_message,
                "warning_message": outcome.warning_message,
                "recorded_at": now,
            }
            for outcome in batch.outcomes
        ],
        schema={
            "destination": pl.String, "partition_date": pl.Date, "event_id": pl.String,
            "outcome": pl.String, "attempts": pl.Int32, "request_id": pl.String,
            "error_message": pl.String, "warning_message": pl.String,
            "recorded_at": pl.Datetime("us", "UTC"),
        },
        orient="row",
    )
    with duckdb.get_connection() as conn:
        conn.execute("BEGIN TRANSACTION")
        insert_frame(conn, "delivery.requests", requests)
        insert_frame(conn, "delivery.event_outcomes", outcomes)
        conn.execute("COMMIT")
