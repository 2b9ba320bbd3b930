"""The Dagster code location: every stage's assets and checks over one DuckDB file."""

import sys
from pathlib import Path

from dagster import (
    AssetSelection,
    Definitions,
    define_asset_job,
    in_process_executor,
    load_asset_checks_from_modules,
    multiprocess_executor,
)
from dagster_dbt import DbtCliResource

from capi_pipeline.delivery import assets as delivery
from capi_pipeline.delivery.jobs import replay_dead_letters_job
from capi_pipeline.enrich import assets as enrich
from capi_pipeline.identity import assets as identity
from capi_pipeline.ingest import assets as ingest
from capi_pipeline.lib.tags import WRITER_TAG_KEY
from capi_pipeline.marts import assets as marts
from capi_pipeline.monitoring import assets as monitoring
from capi_pipeline.privacy import assets as privacy
from capi_pipeline.resources import default_resources
from capi_pipeline.staging import assets as staging

STAGES = (ingest, staging, identity, enrich, delivery, monitoring)

# Materializations started by hand (the UI's Materialize button, `dagster asset materialize`)
# run their steps in one process: the stages form a chain, so step processes would add nothing
# but their start-up. DuckDB writers of different runs still take turns: every writer step is
# in the `capi_duckdb` concurrency pool (lib/tags.py), limited to one by deploy/dagster.yaml.
executor = in_process_executor

# The daily job, which the schedule and backfills run, uses Dagster's multiprocess executor,
# with step processes forked from a server that imported the code location once (a fresh
# interpreter takes seconds to import Dagster, DuckDB and polars). Within a run one writer step
# runs at a time; across runs the pool does the same, so a backfill of many days queues for the
# DuckDB files instead of failing on their lock, while delivery steps, which only wait on the
# network, run beside them.
step_processes = multiprocess_executor.configured(
    {
        "max_concurrent": 2,
        "start_method": {"forkserver": {"preload_modules": ["capi_pipeline.definitions"]}},
        "tag_concurrency_limits": [{"key": WRITER_TAG_KEY, "value": "writer", "limit": 1}],
    },
    name="capi_multiprocess",
)

daily_pipeline_job = define_asset_job(
    "daily_pipeline",
    selection=AssetSelection.all(),
    description="Every stage for one UTC day: ingest to delivery, monitoring and the marts.",
    executor_def=step_processes,
)


def _dbt_executable() -> str:
    # The dbt installed beside this interpreter, so `.venv/bin/dagster` works without the
    # virtual environment on PATH; otherwise whatever `dbt` PATH finds.
    beside = Path(sys.executable).with_name("dbt")
    return str(beside) if beside.exists() else "dbt"


defs = Definitions(
    assets=[
        ingest.raw_events,
        staging.staging_events,
        identity.visitor_profiles,
        enrich.pinterest_events,
        delivery.delivery_ledger,
        monitoring.match_rate,
        marts.dbt_marts,
        privacy.retention,
    ],
    asset_checks=load_asset_checks_from_modules(list(STAGES)),
    jobs=[daily_pipeline_job, replay_dead_letters_job],
    resources={
        **default_resources(),
        "dbt": DbtCliResource(project_dir=marts.dbt_project, dbt_executable=_dbt_executable()),
    },
    executor=executor,
)
