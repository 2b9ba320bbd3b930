"""When the pipeline runs by itself: a daily schedule for yesterday, retries of transient
failures, and freshness checks that say when a day is late.

The schedule's hour and the freshness deadline are read from the environment when the code
location loads (README.md, "Configuration"), so an operator sets them where Dagster runs.
The landing sensor that asks for late partitions belongs to the ingest stage.
"""

import os

from dagster import (
    AssetSelection,
    Backoff,
    DefaultScheduleStatus,
    DefaultSensorStatus,
    Jitter,
    RetryPolicy,
    build_schedule_from_partitioned_job,
    build_sensor_for_freshness_checks,
    build_time_partition_freshness_checks,
    define_asset_job,
    multiprocess_executor,
)

from capi_pipeline.lib.tags import WRITER_TAG_KEY

DEFAULT_HOUR_UTC = 2
DEFAULT_FRESHNESS_HOURS = 4

# The daily stages, in the order a day moves through them; each should hold yesterday by the
# freshness deadline.
DAILY_ASSETS = [
    ["raw", "events"],
    ["staging", "events"],
    ["capi", "pinterest_events"],
    ["delivery", "event_outcomes"],
    ["monitoring", "match_rate"],
]

# A step that fails is tried twice more, 30 s then about 60 s later: long enough for a DuckDB
# session holding the file to let go or Pinterest to recover from a 5xx spell. Dagster cannot
# tell a transient failure from a lasting one here, so a wrong token is tried three times too,
# at the cost of a minute and a half. The run itself is retried (from the failed step) only
# when the instance enables run retries (`run_retries: enabled: true` in dagster.yaml) and
# the run failed outside a step, e.g. its process was killed.
STEP_RETRIES = RetryPolicy(max_retries=2, delay=30, backoff=Backoff.EXPONENTIAL,
                           jitter=Jitter.PLUS_MINUS)
RUN_RETRY_TAGS = {
    "dagster/max_retries": "2",
    "dagster/retry_strategy": "FROM_FAILURE",
    "dagster/retry_on_asset_or_op_failure": "false",
}

# Dagster's multiprocess executor, with step processes forked from a server that imported the
# code location once (a fresh interpreter takes seconds to import Dagster, DuckDB and polars).
# Within a run one writer step runs at a time; across runs the `capi_duckdb` pool does the same
# (lib/tags.py, deploy/dagster.yaml), so a backfill of many days queues for the DuckDB files
# instead of failing on their lock, while delivery steps, which only wait on the network, run
# beside the writers.
step_processes = multiprocess_executor.configured(
    {
        "max_concurrent": 2,
        "start_method": {"forkserver": {"preload_modules": ["capi_pipeline.definitions"]}},
        "tag_concurrency_limits": [{"key": WRITER_TAG_KEY, "value": "writer", "limit": 1}],
    },
    name="capi_multiprocess",
)

# The dbt marts are views over the pipeline's tables: what they show changes with the tables,
# so a day's run need not rebuild them (and dbt takes seconds to start). `marts_job` builds
# and tests them after an install or an upgrade that changes a model.
MARTS = AssetSelection.groups("marts")

daily_pipeline_job = define_asset_job(
    "daily_pipeline_job",
    selection=AssetSelection.all() - MARTS,
    description="Every stage for one UTC day: ingest to delivery and monitoring.",
    tags=RUN_RETRY_TAGS,
    op_retry_policy=STEP_RETRIES,
    executor_def=step_processes,
)

marts_job = define_asset_job(
    "marts_job",
    selection=MARTS,
    description="Build the dbt marts (views) and run their tests: after installing, or after "
    "an upgrade that changes a model.",
    executor_def=step_processes,
)


def _int_env(name: str, default: int, low: int, high: int) -> int:
    raw = os.environ.get(name)
    if not raw:
        return default
    if not raw.isdigit() or not low <= int(raw) <= high:
        raise ValueError(f"{name} must be a whole number from {low} to {high}, not {raw!r}")
    return int(raw)


def schedule_hour() -> int:
    """The hour (UTC) after which yesterday is processed: CAPI_SCHEDULE_HOUR_UTC, default 2."""
    return _int_env("CAPI_SCHEDULE_HOUR_UTC", DEFAULT_HOUR_UTC, 0, 23)


def freshness_deadline_hour() -> int:
    """The hour (UTC) by which yesterday should be done: CAPI_FRESHNESS_HOURS after the run."""
    hours = _int_env("CAPI_FRESHNESS_HOURS", DEFAULT_FRESHNESS_HOURS, 1, 23)
    return (schedule_hour() + hours) % 24


def _enabled(name: str) -> bool:
    return (os.environ.get(name) or "").strip().lower() in {"1", "true", "yes", "on"}


daily_schedule = build_schedule_from_partitioned_job(
    daily_pipeline_job,
    name="daily_pipeline_schedule",
    description="Processes yesterday (UTC) every day after CAPI_SCHEDULE_HOUR_UTC.",
    hour_of_day=schedule_hour(),
    minute_of_hour=0,
    # Off until switched on in the UI, or by CAPI_SCHEDULE_RUNNING=true where it should run
    # unattended: a laptop's `dagster dev` must not start sending on its own.
    default_status=(DefaultScheduleStatus.RUNNING if _enabled("CAPI_SCHEDULE_RUNNING")
                    else DefaultScheduleStatus.STOPPED),
)

freshness_checks = build_time_partition_freshness_checks(
    assets=DAILY_ASSETS,
    deadline_cron=f"0 {freshness_deadline_hour()} * * *",
    timezone="UTC",
)

freshness_sensor = build_sensor_for_freshness_checks(
    freshness_checks=freshness_checks,
    name="daily_freshness_sensor",
    default_status=(DefaultSensorStatus.RUNNING if _enabled("CAPI_SCHEDULE_RUNNING")
                    else DefaultSensorStatus.STOPPED),
)
