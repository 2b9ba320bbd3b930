"""A run over a range of days (what a backfill launches) writes what one run per day writes."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from dagster import AssetKey, AssetSelection, DagsterInstance, materialize

from capi_pipeline import definitions
from capi_pipeline.demo.generate import generate
from capi_pipeline_tests.conftest import Pipeline

DAYS = 3
FIRST_HALF = AssetSelection.groups("ingest", "staging")
SECOND_HALF = AssetSelection.groups("enrich")
TABLES = {
    "staging.events": "SELECT * FROM staging.events",
    "capi.pinterest_events": "SELECT * FROM capi.pinterest_events",
    "raw.rejected_lines": "SELECT * FROM raw.rejected_lines",
}


def _days() -> list[str]:
    last = datetime.now(UTC).date() - timedelta(days=1)
    return [str(last - timedelta(days=n)) for n in range(DAYS - 1, -1, -1)]


def _run(pipeline: Pipeline, selection, instance, **partition):
    result = materialize(list(definitions.defs.assets), resources=pipeline.resources(),
                         selection=selection, instance=instance, raise_on_error=False,
                         **partition)
    assert result.success
    return result


def _contents(pipeline: Pipeline) -> dict[str, list]:
    return {name: sorted(pipeline.query(sql), key=repr) for name, sql in TABLES.items()}


def test_a_range_run_writes_what_day_runs_write(tmp_path, emulator):
    days = _days()
    by_day = Pipeline(tmp_path / "by_day", emulator.base_url)
    ranged = Pipeline(tmp_path / "ranged", emulator.base_url)
    for pipeline in (by_day, ranged):
        generate(pipeline.landing, datetime.fromisoformat(days[-1]).date(), days=DAYS,
                 visitors_per_day=15, seed=11)
    profiles = AssetSelection.assets(AssetKey(["identity", "visitor_profiles"]))

    for day in days:
        _run(by_day, FIRST_HALF, DagsterInstance.ephemeral(), partition_key=day)
    _run(by_day, profiles, DagsterInstance.ephemeral())
    for day in days:
        _run(by_day, SECOND_HALF, DagsterInstance.ephemeral(), partition_key=day)

    instance = DagsterInstance.ephemeral()
    span = {"dagster/asset_partition_range_start": days[0],
            "dagster/asset_partition_range_end": days[-1]}
    first = _run(ranged, FIRST_HALF, instance, tags=span)
    _run(ranged, profiles, instance)
    second = _run(ranged, SECOND_HALF, instance, tags=span)

    expected, got = _contents(by_day), _contents(ranged)
    assert {name: len(rows) for name, rows in got.items()} == {
        name: len(rows) for name, rows in expected.items()}
    assert len(got["capi.pinterest_events"]) > 30
    assert {row[0] for row in got["staging.events"]} == {
        datetime.fromisoformat(day).date() for day in days}
    assert got == expected

    # One materialization per asset and day, whose metadata keeps each day's figures.
    staged = [event for event in first.asset_materializations_for_node("staging__events")]
    assert sorted(event.partition for event in staged) == days
    metadata = staged[0].metadata
    assert metadata["days"].value == DAYS
    by_day_rows = metadata["by_day"].value
    assert sorted(by_day_rows) == days
    assert metadata["dagster/row_count"].value == sum(
        figures["dagster/row_count"] for figures in by_day_rows.values())
    enriched = second.asset_materializations_for_node("capi__pinterest_events")
    assert sorted(event.partition for event in enriched) == days


def test_a_range_check_names_every_failing_day():
    """A check over a range of days shows one day's result; it must still name every day that
    failed (a range run's score check once named only the first of three days below floor)."""
    from datetime import date

    from dagster import AssetCheckResult, AssetCheckSeverity

    from capi_pipeline.partitions import worst_day

    warn = AssetCheckSeverity.WARN
    results = {
        date(2026, 12, 1): AssetCheckResult(passed=False, severity=warn, description="low 31"),
        date(2026, 12, 2): AssetCheckResult(passed=True, description="fine"),
        date(2026, 12, 3): AssetCheckResult(passed=False, severity=warn, description="low 33"),
    }
    combined = worst_day(results)
    assert not combined.passed
    assert combined.metadata["failing_days"].value == "2026-12-01, 2026-12-03"
    assert combined.metadata["days_failing"].value == 2
    assert combined.description == (
        "2 of 3 days fail (2026-12-01, 2026-12-03); the first of them: low 31")
    assert worst_day({date(2026, 12, 2): results[date(2026, 12, 2)]}).description == "fine"
