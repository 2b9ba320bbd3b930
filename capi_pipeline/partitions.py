"""Daily partitions by the event's UTC date, shared by every daily stage."""

from datetime import date

from dagster import DailyPartitionsDefinition

# The first day a store's history can be backfilled from; the real Shopify sample is from
# January 2024, so the range starts there.
daily_partitions = DailyPartitionsDefinition(start_date="2024-01-01", timezone="UTC")


def partition_day(partition_key: str) -> date:
    """The UTC date a daily partition key names."""
    return date.fromisoformat(partition_key)
