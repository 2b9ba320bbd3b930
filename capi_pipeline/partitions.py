"""Daily partitions by the event's UTC date, shared by every daily stage.

A run covers one day (the schedule, the landing sensor, a click on one partition) or a range
of days (a backfill). Every daily asset has the single-run backfill policy: a backfill of
fourteen days launched on the assets (the UI's Materialize on the asset graph, or
`dagster asset materialize --partition-range A...B`) is one run whose steps each go through
the fourteen days in order, instead of fourteen runs that each start a run worker and a
process per step and queue for the DuckDB files. Each day is still written in its own
transaction, the same rows a one-day run writes, so a failed range is re-run safely.
"""

from datetime import date
from numbers import Number

from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    BackfillPolicy,
    DailyPartitionsDefinition,
    MetadataValue,
)

# The first day a store's history can be backfilled from; the real Shopify sample is from
# January 2024, so the range starts there.
daily_partitions = DailyPartitionsDefinition(start_date="2024-01-01", timezone="UTC")

backfill_policy = BackfillPolicy.single_run()


def partition_day(partition_key: str) -> date:
    """The UTC date a daily partition key names."""
    return date.fromisoformat(partition_key)


def partition_days(context) -> list[date]:
    """The UTC dates a run's partition or partition range covers, oldest first."""
    return sorted(partition_day(key) for key in context.partition_keys)


def over_days(per_day: dict[date, dict]) -> dict:
    """One materialization's metadata for the days a run covered.

    A single day's metadata is returned as it is. For several days, the row counts are summed
    and every day's numbers are kept under `by_day`, since a share or a rate does not add up.
    """
    if len(per_day) == 1:
        return next(iter(per_day.values()))
    by_day = {
        day.isoformat(): {key: value for key, value in metadata.items()
                          if isinstance(value, Number) and not isinstance(value, bool)}
        for day, metadata in sorted(per_day.items())
    }
    rows = [metadata.get("dagster/row_count") for metadata in per_day.values()]
    combined: dict = {"days": len(per_day), "by_day": MetadataValue.json(by_day)}
    if all(isinstance(count, int) for count in rows):
        combined["dagster/row_count"] = sum(rows)
    return combined


def worst_day(results: dict[date, AssetCheckResult]) -> AssetCheckResult:
    """One check result for the days a run covered: the day's own for a single day; for
    several, the first failing day's (errors before warnings), with the count of failing days.
    """
    if len(results) == 1:
        return next(iter(results.values()))
    failing_days = [day for day, result in sorted(results.items()) if not result.passed]
    failing = [results[day] for day in failing_days]
    errors = [result for result in failing if result.severity == AssetCheckSeverity.ERROR]
    chosen = (errors or failing or [results[max(results)]])[0]
    metadata = {**chosen.metadata, "days_checked": len(results), "days_failing": len(failing)}
    description = chosen.description
    if failing_days:
        # Every failing day is named, not only the one whose result is shown.
        metadata["failing_days"] = ", ".join(day.isoformat() for day in failing_days)
        description = (f"{len(failing_days)} of {len(results)} days fail "
                       f"({metadata['failing_days']}); the first of them: {description}")
    return AssetCheckResult(passed=not failing, severity=chosen.severity, metadata=metadata,
                            description=description)
