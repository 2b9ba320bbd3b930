"""The Dagster code location: every stage's assets and checks over one DuckDB file."""

from dagster import Definitions, in_process_executor, load_asset_checks_from_modules
from dagster_dbt import DbtCliResource

from capi_pipeline.delivery import assets as delivery
from capi_pipeline.delivery.jobs import replay_dead_letters_job
from capi_pipeline.enrich import assets as enrich
from capi_pipeline.identity import assets as identity
from capi_pipeline.ingest import assets as ingest
from capi_pipeline.ingest.sensors import landing_sensor
from capi_pipeline.marts import assets as marts
from capi_pipeline.monitoring import assets as monitoring
from capi_pipeline.resources import default_resources
from capi_pipeline.staging import assets as staging

STAGES = (ingest, staging, identity, enrich, delivery, monitoring)

# A run executes its steps in one process. DuckDB takes one writing process per file and the
# stages form a chain, so step processes would add nothing but their start-up (about ten
# seconds of imports each). Runs of different partitions are separate processes; their
# writers wait for the file through WarehouseResource's connection retries.
executor = in_process_executor

defs = Definitions(
    assets=[
        ingest.raw_events,
        staging.staging_events,
        identity.visitor_profiles,
        enrich.pinterest_events,
        delivery.delivery_ledger,
        monitoring.match_rate,
        marts.dbt_marts,
    ],
    asset_checks=load_asset_checks_from_modules(list(STAGES)),
    jobs=[replay_dead_letters_job],
    sensors=[landing_sensor],
    resources={**default_resources(), "dbt": DbtCliResource(project_dir=marts.dbt_project)},
    executor=executor,
)
