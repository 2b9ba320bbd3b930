"""The delivery ledger: which events are due, sending them page by page, recording answers.

Events are read from DuckDB a page at a time (keyset pagination on event time and id), so a
million-event day is never held in memory, and no connection is held while requests wait on
the network. Each batch's attempts and outcomes are appended in one transaction as soon as the
batch returns, so a crash loses at most the batches in flight.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path

import polars as pl

from capi_pipeline.delivery.destinations import Destination
from capi_pipeline.delivery.sender import BatchDone, Progress, send_batches, write_dry_run
from capi_pipeline.lib.duck import insert_frame
from capi_pipeline.pinterest.client import ConversionsClient

FINAL_OUTCOMES = ("delivered", "dead_letter", "dry_run")

# Which events a run picks up: those without a final outcome, all of them again (resend), or
# those whose latest outcome is a dead letter (replay after a fix).
SELECTIONS = {
    "due": """NOT EXISTS (
        SELECT 1 FROM delivery.event_status s
        WHERE s.destination = $destination AND s.event_id = e.event_id
          AND s.outcome IN ('delivered', 'dead_letter', 'dry_run'))""",
    "resend": "$destination IS NOT NULL",
    "dead_letters": """EXISTS (
        SELECT 1 FROM delivery.event_status s
        WHERE s.destination = $destination AND s.event_id = e.event_id
          AND s.outcome = 'dead_letter')""",
}

EVENTS_SQL = """
SELECT e.event_id, e.payload, e.event_time, e.partition_date
FROM capi.pinterest_events e
WHERE ($day IS NULL OR e.partition_date = $day) AND e.eligible
  AND coalesce(e.store, '') IN (SELECT unnest($stores))
  AND (e.event_time > $after_time OR (e.event_time = $after_time AND e.event_id > $after_id))
  AND {selection}
ORDER BY e.event_time, e.event_id
LIMIT $page_size
"""

COUNT_SQL = """
SELECT count(*) FROM capi.pinterest_events e
WHERE ($day IS NULL OR e.partition_date = $day) AND e.eligible
  AND coalesce(e.store, '') IN (SELECT unnest($stores)) AND {selection}
"""


SKIPPED_SQL = """
INSERT INTO delivery.event_outcomes
SELECT $destination, e.partition_date, e.event_id, 'skipped', 0, NULL, e.skip_reason, NULL, now()
FROM capi.pinterest_events e
WHERE e.partition_date = $day AND NOT e.eligible
  AND coalesce(e.store, '') IN (SELECT unnest($stores))
  AND NOT EXISTS (
      SELECT 1 FROM delivery.event_status s
      WHERE s.destination = $destination AND s.event_id = e.event_id
        AND s.outcome = 'skipped' AND s.error_message IS NOT DISTINCT FROM e.skip_reason)
"""


def record_skipped(duckdb, plan: DeliveryPlan) -> int:
    """Write a `skipped` outcome, with its reason, for each ineligible event not yet noted.

    The ledger then answers for every event of the day, sent or not. A skip is not final: an
    event that becomes eligible (identity found its email) is sent by a later run.
    """
    with duckdb.get_connection() as conn:
        return conn.execute(SKIPPED_SQL, {"destination": plan.destination.ledger_name,
                                          "day": plan.day, "stores": plan.stores}).fetchone()[0]


@dataclass
class DeliveryTotals:
    """What one destination's run did, for metadata and logs."""

    to_send: int = 0
    requests: int = 0
    outcomes: Counter = field(default_factory=Counter)


@dataclass(frozen=True)
class DeliveryPlan:
    """Which events of which destination a run sends, and how."""

    destination: Destination
    stores: list[str]
    selection: str = "due"
    day: date | None = None
    page_size: int = 20_000
    batch_size: int = 1000
    max_concurrency: int = 4
    calls_per_minute: int = 5000
    timeout_seconds: float = 30.0
    max_attempts: int = 5
    dry_run_dir: Path | None = None


def deliver(duckdb, plan: DeliveryPlan, log: Callable[[str], None]) -> DeliveryTotals:
    """Send every event the plan selects and record each answer in the ledger."""
    totals = DeliveryTotals()
    params = _params(plan)
    with duckdb.get_connection() as conn:
        totals.to_send = conn.execute(
            COUNT_SQL.format(selection=SELECTIONS[plan.selection]),
            {key: params[key] for key in ("day", "stores", "destination")},
        ).fetchone()[0]
    if totals.to_send == 0:
        return totals
    progress = Progress(totals.to_send, log)
    days: dict[str, date] = {}

    def record(batch: BatchDone) -> None:
        write_batch(duckdb, plan.destination.ledger_name, batch, days)
        totals.outcomes.update(outcome.outcome for outcome in batch.outcomes)
        totals.requests += len(batch.attempts)

    if plan.dry_run_dir is not None:
        batch_no = 1
        for page in _pages(duckdb, plan, days):
            for batch in write_dry_run(plan.dry_run_dir, page, plan.batch_size, batch_no):
                record(batch)
                batch_no += 1
        return totals
    asyncio.run(_send_pages(duckdb, plan, record, progress, days))
    log(progress.line())
    return totals


async def _send_pages(
    duckdb, plan: DeliveryPlan, record, progress: Progress, days: dict[str, date]
) -> None:
    destination = plan.destination
    async with ConversionsClient(
        destination.base_url,
        destination.ad_account_id,
        destination.token(),
        test_mode=destination.test_mode,
        timeout_seconds=plan.timeout_seconds,
        max_attempts=plan.max_attempts,
        calls_per_minute=plan.calls_per_minute,
        max_concurrency=plan.max_concurrency,
    ) as client:
        batch_no = 1
        for page in _pages(duckdb, plan, days):
            batch_no += await send_batches(client, page, plan.batch_size, plan.max_concurrency,
                                           record, progress, first_batch_no=batch_no)


def _pages(
    duckdb, plan: DeliveryPlan, days: dict[str, date]
) -> Iterator[list[tuple[str, bytes]]]:
    """Pages of (event id, payload); `days` learns each event's partition for the ledger."""
    params = _params(plan)
    sql = EVENTS_SQL.format(selection=SELECTIONS[plan.selection])
    while True:
        with duckdb.get_connection() as conn:
            rows = conn.execute(sql, params).fetchall()
        if not rows:
            return
        days.clear()
        days.update((event_id, day) for event_id, _, _, day in rows)
        yield [(event_id, payload.encode()) for event_id, payload, _, _ in rows]
        params["after_time"], params["after_id"] = rows[-1][2], rows[-1][0]


def _params(plan: DeliveryPlan) -> dict:
    return {
        "day": plan.day,
        "stores": plan.stores,
        "destination": plan.destination.ledger_name,
        "after_time": -1,
        "after_id": "",
        "page_size": plan.page_size,
    }


REQUEST_SCHEMA = {
    "request_id": pl.String, "destination": pl.String, "partition_date": pl.Date,
    "batch_no": pl.Int32, "attempt": pl.Int32, "events": pl.Int32, "status_code": pl.Int32,
    "latency_ms": pl.Float64, "error": pl.String, "sent_at": pl.Datetime("us", "UTC"),
}
OUTCOME_SCHEMA = {
    "destination": pl.String, "partition_date": pl.Date, "event_id": pl.String,
    "outcome": pl.String, "attempts": pl.Int32, "request_id": pl.String,
    "error_message": pl.String, "warning_message": pl.String,
    "recorded_at": pl.Datetime("us", "UTC"),
}


def write_batch(duckdb, destination: str, batch: BatchDone, days: dict[str, date]) -> None:
    """Append one batch's requests and outcomes to the ledger in one transaction."""
    now = datetime.now(UTC)
    day = days[batch.outcomes[0].event_id] if batch.outcomes else None
    requests = pl.DataFrame(
        [
            (attempt.request_id, destination, day, batch.batch_no, attempt.attempt,
             attempt.events, attempt.status_code, attempt.latency_ms, attempt.error, now)
            for attempt in batch.attempts
        ],
        schema=REQUEST_SCHEMA, orient="row",
    )
    outcomes = pl.DataFrame(
        [
            (destination, days.get(outcome.event_id, day), outcome.event_id,
             outcome.outcome, outcome.attempts, outcome.request_id, outcome.error_message,
             outcome.warning_message, now)
            for outcome in batch.outcomes
        ],
        schema=OUTCOME_SCHEMA, orient="row",
    )
    with duckdb.get_connection() as conn:
        conn.execute("BEGIN TRANSACTION")
        try:
            insert_frame(conn, "delivery.requests", requests)
            insert_frame(conn, "delivery.event_outcomes", outcomes)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
