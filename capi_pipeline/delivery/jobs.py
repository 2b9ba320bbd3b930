"""The replay job: send dead letters again after whatever refused them has been fixed."""

from dagster import Config, OpExecutionContext, job, op
from pydantic import Field

from capi_pipeline.delivery.assets import _deliver, _destinations, plan_for
from capi_pipeline.delivery.destinations import stores_for
from capi_pipeline.lib.tags import WRITER
from capi_pipeline.partitions import partition_day
from capi_pipeline.resources import PinterestResource, WarehouseResource


class ReplayConfig(Config):
    """Which dead letters to send again."""

    partition_date: str | None = Field(
        default=None, description="A UTC day (YYYY-MM-DD); every day when omitted."
    )


@op(tags=WRITER)
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
    destinations = _destinations(pinterest)
    with duckdb.get_connection() as conn:
        stores = [row[0] for row in conn.execute(
            "SELECT DISTINCT store FROM capi.pinterest_events WHERE $day IS NULL "
            "OR partition_date = $day", {"day": day}).fetchall()]
    summary = {}
    for destination in destinations:
        plan = plan_for(pinterest, destination, stores_for(destination, stores, destinations),
                        selection="dead_letters", day=day)
        totals = _deliver(context, duckdb, plan)
        summary[destination.ledger_name] = {"replayed": totals.to_send, **totals.outcomes}
    context.log.info(f"replayed dead letters{f' of {day}' if day else ''}: {summary}")


@job(description="Send dead-lettered events again and record their new outcomes.")
def replay_dead_letters_job():
    replay_dead_letters()
