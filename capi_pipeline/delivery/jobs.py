"""The replay job: send dead letters again after whatever refused them has been fixed."""

from dagster import Config, OpExecutionContext, job, op
from pydantic import Field

from capi_pipeline.delivery.assets import deliver_or_fail, destinations_or_fail, plan_for
from capi_pipeline.delivery.destinations import stores_for
from capi_pipeline.delivery.ledger import partition_stores
from capi_pipeline.lib.tags import NETWORK
from capi_pipeline.partitions import partition_day
from capi_pipeline.resources import PinterestResource, WarehouseResource


class ReplayConfig(Config):
    """Which dead letters to send again."""

    partition_date: str | None = Field(
        default=None, description="A UTC day (YYYY-MM-DD); every day when omitted."
    )


@op(tags=NETWORK)
def replay_dead_letters(
    context: OpExecutionContext,
    config: ReplayConfig,
    duckdb: WarehouseResource,
    pinterest: PinterestResource,
) -> None:
    """Send every event whose latest outcome is a dead letter, with its current payload.

    Re-materialize capi/pinterest_events first when the fix was in the payload; the replay
    sends what that table holds now, and records each new outcome in the ledger.
    """
    day = partition_day(config.partition_date) if config.partition_date else None
    destinations = destinations_or_fail(pinterest)
    with duckdb.get_connection() as conn:
        stores = partition_stores(conn, day)
    summary = {}
    for destination in destinations:
        plan = plan_for(pinterest, destination, stores_for(destination, stores, destinations),
                        selection="dead_letters", day=day)
        totals = deliver_or_fail(context, duckdb, plan)
        summary[destination.ledger_name] = {"replayed": totals.to_send, **totals.outcomes}
    context.log.info(f"replayed dead letters{f' of {day}' if day else ''}: {summary}")


@job(description="Send dead-lettered events again and record their new outcomes.")
def replay_dead_letters_job():
    replay_dead_letters()
