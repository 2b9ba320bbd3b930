"""Delivery: the day's eligible events to Pinterest, with a ledger of every attempt."""


import time
from collections import Counter
from pathlib import Path

from dagster import (
    AssetExecutionContext,
    AssetSpec,
    Failure,
    MaterializeResult,
    MetadataValue,
    multi_asset,
)

from capi_pipeline.delivery.destinations import (
    Destination,
    DestinationsError,
    route,
    stores_for,
)
from capi_pipeline.delivery.ledger import (
    DeliveryPlan,
    DeliveryTotals,
    deliver,
    partition_stores,
)
from capi_pipeline.lib.tags import NETWORK
from capi_pipeline.partitions import backfill_policy, daily_partitions, over_days, partition_days
from capi_pipeline.pinterest.client import PinterestAuthError
from capi_pipeline.resources import PinterestResource, WarehouseResource

EVENT_OUTCOMES = ["delivery", "event_outcomes"]
REQUESTS = ["delivery", "requests"]
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
    op_tags=NETWORK,
    backfill_policy=backfill_policy,
)
def delivery_ledger(
    context: AssetExecutionContext, duckdb: WarehouseResource, pinterest: PinterestResource
):
    """Send each destination the day's eligible events that have no final outcome yet.

    A run over several days sends them oldest first and stops at the first day that leaves
    events pending; what was sent stays recorded, so the rerun sends only the rest.
    """
    destinations = destinations_or_fail(pinterest)
    per_day = {day: _deliver_day(context, duckdb, pinterest, destinations, day)
               for day in partition_days(context)}
    metadata = over_days(per_day)
    if len(per_day) > 1:
        metadata["requests"] = sum(day["requests"] for day in per_day.values())
        metadata["delivered"] = sum(day["delivered"] for day in per_day.values())
    yield MaterializeResult(asset_key=EVENT_OUTCOMES, metadata=metadata)
    yield MaterializeResult(asset_key=REQUESTS, metadata={"requests": metadata["requests"]})


def _deliver_day(context: AssetExecutionContext, duckdb: WarehouseResource,
                 pinterest: PinterestResource, destinations: list[Destination], day) -> dict:
    with duckdb.get_connection() as conn:
        stores = partition_stores(conn, day)

    metadata: dict[str, object] = {}
    summary: dict[str, dict] = {}
    started = time.perf_counter()
    for destination in destinations:
        plan = plan_for(pinterest, destination, stores_for(destination, stores, destinations),
                        selection="resend" if pinterest.resend else "due", day=day,
                        dry_run_partition=day.isoformat())
        context.log.info(f"partition {day}: sending to {destination.ledger_name}"
                         + (" (resending everything)" if pinterest.resend else ""))
        # The day's skips are recorded in the transaction of the run's last ledger write.
        totals = deliver_or_fail(context, duckdb, plan, record_skips=True)
        skipped = totals.skipped_recorded
        summary[destination.ledger_name] = {"to_send": totals.to_send,
                                            "requests": totals.requests, **totals.outcomes,
                                            "skipped_recorded": skipped}
    seconds = time.perf_counter() - started

    unrouted = [store for store in stores if route(store, destinations) is None]
    if unrouted:
        context.log.warning(
            f"{len(unrouted)} stores have no destination and were not sent: {unrouted[:10]}; "
            "add them, or a '*' destination, to the destinations file"
        )
    outcomes: Counter[str] = Counter()
    for figures in summary.values():
        outcomes.update({key: value for key, value in figures.items()
                         if key not in ("to_send", "requests", "skipped_recorded")})
    to_send = sum(figures["to_send"] for figures in summary.values())
    metadata.update({
        "destinations": len(destinations),
        "to_send": to_send,
        "delivered": outcomes["delivered"],
        "dead_lettered": outcomes["dead_letter"],
        "pending": outcomes["pending"],
        "dry_run": outcomes["dry_run"],
        "skipped_recorded": sum(f["skipped_recorded"] for f in summary.values()),
        "requests": sum(figures["requests"] for figures in summary.values()),
        "unrouted_stores": len(unrouted),
        "seconds": round(seconds, 3),
        "events_per_second": round(to_send / seconds, 1) if seconds > 0 else 0.0,
        "by_destination": MetadataValue.json(summary),
    })
    context.log.info(f"partition {day}: {summary} in {seconds:.1f}s")
    if outcomes["pending"]:
        # Recorded, so nothing is lost; failing makes the schedule's run retries and alerts
        # see it instead of a green run that sent nothing.
        raise Failure(
            description=(
                f"{outcomes['pending']} events are still pending after retries (Pinterest or "
                f"the network kept failing; see delivery.requests). Nothing is lost: the next "
                f"run of partition {day} sends them again."
            ),
            metadata=metadata,
        )
    return metadata


def plan_for(
    pinterest: PinterestResource, destination: Destination, stores: list[str], selection: str,
    day=None, dry_run_partition: str = "all",
) -> DeliveryPlan:
    """A delivery plan with the resource's sending settings."""
    return DeliveryPlan(
        destination=destination,
        stores=stores,
        selection=selection,
        day=day,
        page_size=pinterest.page_size,
        batch_size=pinterest.batch_size,
        max_concurrency=pinterest.max_concurrency,
        calls_per_minute=pinterest.calls_per_minute,
        timeout_seconds=pinterest.timeout_seconds,
        max_attempts=pinterest.max_attempts,
        dry_run_dir=(Path(pinterest.dry_run_dir) / destination.name.replace(":", "_")
                     / dry_run_partition) if pinterest.dry_run_dir else None,
    )


def destinations_or_fail(pinterest: PinterestResource) -> list[Destination]:
    """The resource's destinations, or a run failure that says what to fix."""
    try:
        return pinterest.destinations()
    except DestinationsError as error:
        raise Failure(description=str(error), allow_retries=False) from None


def deliver_or_fail(context, duckdb: WarehouseResource, plan: DeliveryPlan,
                    record_skips: bool = False) -> DeliveryTotals:
    """Deliver a plan; a refusal of credentials or address fails the run naming the setting."""
    try:
        return deliver(duckdb, plan, context.log.info, record_skips=record_skips)
    except DestinationsError as error:
        raise Failure(description=str(error), allow_retries=False) from None
    except PinterestAuthError as error:
        destination = plan.destination
        account = ("PINTEREST_AD_ACCOUNT_ID" if destination.token_env == "PINTEREST_ACCESS_TOKEN"
                   else f"ad_account_id of destination {destination.name!r}")
        if error.status_code == 401:
            fix = f"Set {destination.token_env} to a valid conversion access token"
        elif error.status_code == 403:
            fix = (f"Check {account}={destination.ad_account_id}: the token's user must own "
                   "that ad account or hold a Business Access role on it")
        else:
            fix = (f"Check PINTEREST_API_BASE_URL={destination.base_url}: it should be the "
                   "API's root, such as https://api.pinterest.com, without /v5")
        raise Failure(
            description=(
                f"{destination.ledger_name}: Pinterest refused the request ({error}). {fix}. "
                "No event was marked as failed; the next run sends them."
            ),
            allow_retries=False,
        ) from None
