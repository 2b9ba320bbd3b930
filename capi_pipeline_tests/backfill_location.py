"""A code location for the backfill test: the real assets, a job over the daily stages.

The job runs on the same multiprocess executor, retries and writer pool as the daily job, but
leaves out the unpartitioned identity and dbt steps and the asset checks: each step process
costs Dagster seconds to start, and fourteen days of them must fit in CI's time.
"""

from dagster import AssetSelection, Definitions, define_asset_job

from capi_pipeline import definitions
from capi_pipeline.schedules import RUN_RETRY_TAGS, STEP_RETRIES, step_processes

backfill_probe = define_asset_job(
    "backfill_probe",
    selection=AssetSelection.groups("ingest", "staging", "enrich", "delivery").without_checks(),
    tags=RUN_RETRY_TAGS,
    op_retry_policy=STEP_RETRIES,
    executor_def=step_processes,
)

defs = Definitions(
    assets=list(definitions.defs.assets),
    jobs=[backfill_probe],
    resources=definitions.defs.resources,
)
