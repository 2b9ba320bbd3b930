"""The daily schedule's choice of partition, its retries, and the freshness checks."""

import importlib
from datetime import UTC, datetime

import pytest
from dagster import (
    DagsterInstance,
    build_schedule_context,
)

from capi_pipeline import schedules
from capi_pipeline.definitions import defs


def partitions_at(schedule, when: datetime) -> list[str]:
    with DagsterInstance.ephemeral() as instance:
        context = build_schedule_context(instance=instance, scheduled_execution_time=when)
        return [request.partition_key for request in schedule.evaluate_tick(context).run_requests]


def test_schedule_runs_yesterday_after_the_hour():
    schedule = defs.resolve_schedule_def("daily_pipeline_schedule")
    assert (schedule.cron_schedule, schedule.execution_timezone) == ("0 2 * * *", "UTC")
    assert schedule.job_name == "daily_pipeline_job"
    assert partitions_at(schedule, datetime(2026, 12, 2, 2, 0, tzinfo=UTC)) == ["2026-12-01"]
    # Across a year's end, and on a leap day.
    assert partitions_at(schedule, datetime(2027, 1, 1, 2, 0, tzinfo=UTC)) == ["2026-12-31"]
    assert partitions_at(schedule, datetime(2028, 3, 1, 2, 0, tzinfo=UTC)) == ["2028-02-29"]


@pytest.fixture
def reloaded(monkeypatch):
    """The schedules module as loaded under other environment settings."""
    def load(**environment):
        for name, value in environment.items():
            monkeypatch.setenv(name, value)
        return importlib.reload(schedules)
    yield load
    monkeypatch.delenv("CAPI_SCHEDULE_HOUR_UTC", raising=False)
    monkeypatch.delenv("CAPI_FRESHNESS_HOURS", raising=False)
    importlib.reload(schedules)


def test_hour_and_freshness_deadline_come_from_the_environment(reloaded):
    module = reloaded(CAPI_SCHEDULE_HOUR_UTC="22", CAPI_FRESHNESS_HOURS="3")
    assert module.schedule_hour() == 22
    assert module.freshness_deadline_hour() == 1  # past midnight
    with pytest.raises(ValueError, match="CAPI_SCHEDULE_HOUR_UTC must be a whole number"):
        reloaded(CAPI_SCHEDULE_HOUR_UTC="25")


def test_job_retries_transient_failures_and_covers_every_stage():
    job = defs.resolve_job_def("daily_pipeline_job")
    assert job.tags["dagster/max_retries"] == "2"
    assert job.tags["dagster/retry_strategy"] == "FROM_FAILURE"
    assert schedules.STEP_RETRIES.max_retries == 2 and schedules.STEP_RETRIES.delay == 30
    keys = {key.to_user_string() for key in job.asset_layer.executable_asset_keys}
    assert {"raw/events", "staging/events", "identity/visitor_profiles",
            "capi/pinterest_events", "delivery/event_outcomes",
            "monitoring/match_rate"} <= keys
    # The marts are views: built by their own job, not rebuilt every day.
    assert not any(key.startswith("marts/") for key in keys)
    marts = defs.resolve_job_def("marts_job").asset_layer.executable_asset_keys
    assert {key.to_user_string() for key in marts} >= {"marts/match_rate_daily"}


def test_freshness_checks_cover_the_daily_stages():
    checked = {key.asset_key.to_user_string() for check in schedules.freshness_checks
               for key in check.check_keys}
    assert checked == {"raw/events", "staging/events", "capi/pinterest_events",
                       "delivery/event_outcomes", "monitoring/match_rate"}
