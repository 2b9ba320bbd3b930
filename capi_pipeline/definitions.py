"""The Dagster code location: every stage's assets and checks over one DuckDB file."""

import sys
from pathlib import Path

from dagster import Definitions, load_asset_checks_from_modules
from dagster_dbt import DbtCliResource

from capi_pipeline.delivery import assets as delivery
from capi_pipeline.delivery.jobs import replay_dead_letters_job
from capi_pipeline.enrich import assets as enrich
from capi_pipeline.identity import assets as identity
from capi_pipeline.ingest import assets as ingest
from capi_pipeline.ingest.sensors import landing_sensor
from capi_pipeline.marts import assets as marts
from capi_pipeline.monitoring import assets as monitoring
from capi_pipeline.monitoring import checks as monitoring_checks
from capi_pipeline.monitoring import eqs
from capi_pipeline.monitoring.settings import monitoring_from_environment
from capi_pipeline.privacy import assets as privacy
from capi_pipeline.resources import default_resources
from capi_pipeline.schedules import (
    daily_pipeline_job,
    daily_schedule,
    freshness_checks,
    freshness_sensor,
    marts_job,
    step_processes,
)
from capi_pipeline.staging import assets as staging

STAGES = (ingest, staging, identity, enrich, delivery, monitoring, monitoring_checks)

# Every run uses Dagster's multiprocess executor (schedules.step_processes): steps forked from
# a server that imported this module once, one DuckDB writer at a time within a run, and the
# `capi_duckdb` pool (lib/tags.py, deploy/dagster.yaml) across runs, while delivery, which only
# waits on the network, runs beside the writers. A backfill launched on the assets is one run
# over its range of days (partitions.backfill_policy).
executor = step_processes


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
        eqs.pinterest_eqs,
        marts.dbt_marts,
        privacy.retention,
    ],
    asset_checks=[*load_asset_checks_from_modules(list(STAGES)), *freshness_checks],
    jobs=[daily_pipeline_job, marts_job, replay_dead_letters_job],
    schedules=[daily_schedule],
    sensors=[freshness_sensor, landing_sensor],
    resources={
        **default_resources(),
        "dbt": DbtCliResource(project_dir=marts.dbt_project, dbt_executable=_dbt_executable()),
        "monitoring": monitoring_from_environment(),
    },
    executor=executor,
)
