"""Ingest: the landing folder's lines into raw.events and raw.rejected_lines."""


from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

from dagster import (
    AssetExecutionContext,
    AssetSpec,
    Failure,
    MaterializeResult,
    MetadataValue,
    multi_asset,
)

from capi_pipeline.ingest.load import RAW_SCHEMA, REJECTED_SCHEMA, sync_landing
from capi_pipeline.lib.tags import WRITER
from capi_pipeline.partitions import backfill_policy, daily_partitions, over_days, partition_days
from capi_pipeline.resources import PipelineSettings, WarehouseResource

RAW_EVENTS = ["raw", "events"]
RAW_REJECTED = ["raw", "rejected_lines"]

__all__ = ["RAW_SCHEMA", "REJECTED_SCHEMA", "raw_events"]


@multi_asset(
    specs=[
        AssetSpec(
            RAW_EVENTS,
            description=(
                "Every event the store's collectors landed, one row per message as it arrived "
                "(body kept as JSON), for the UTC day the event happened."
            ),
            group_name="ingest",
            kinds={"duckdb"},
        ),
        AssetSpec(
            RAW_REJECTED,
            description=(
                "Landed lines that could not become events, with the reason and their first "
                "bytes. raw.events plus this table accounts for every line read."
            ),
            group_name="ingest",
            kinds={"duckdb"},
        ),
    ],
    partitions_def=daily_partitions,
    op_tags=WRITER,
    backfill_policy=backfill_policy,
)
def raw_events(
    context: AssetExecutionContext, duckdb: WarehouseResource, settings: PipelineSettings
):
    """Load the landing files that are new or changed, then report this partition's day.

    The manifest (raw.landed_files) decides what is read: a file already loaded with the same
    size and modification time is skipped, the same bytes under another name add nothing, and
    a changed file is a new version that replaces its earlier rows. Loading a file writes
    every day its lines fall on, so a late line lands in its own day; the landing sensor
    requests runs for exactly those days. Re-running a day with no new files changes nothing.
    """
    days = partition_days(context)
    now = datetime.now(UTC)
    skew = timedelta(seconds=settings.max_future_skew_seconds)
    landing = Path(settings.landing_dir)
    if not landing.is_dir():
        raise Failure(
            description=f"CAPI_LANDING_DIR={landing} is not a folder: set it to where the "
            "collectors write their NDJSON files. Nothing was changed.",
            allow_retries=False,
        )
    with duckdb.get_connection() as conn:
        files, loaded = sync_landing(conn, landing, now, skew)
        held = {day: _day_counts(conn, day) for day in days}

    for result in loaded:
        if result.lines_read != result.lines_accepted + result.lines_rejected:
            raise Failure(description=f"{result.path}: {result.lines_read} lines read but "
                          f"{result.lines_accepted} accepted and {result.lines_rejected} "
                          "rejected; nothing is lost silently, so the run stops here.")
    run_reasons: Counter = Counter()
    for result in loaded:
        run_reasons.update(result.reasons)
    statuses = Counter(result.status for result in loaded)
    lines_read = sum(result.lines_read for result in loaded)
    lines_accepted = sum(result.lines_accepted for result in loaded)
    lines_rejected = sum(result.lines_rejected for result in loaded)
    for day, (accepted, _, reasons) in held.items():
        context.log.info(
            f"partition {day}: {len(files)} landing files, {len(loaded)} new or changed "
            f"({dict(statuses)}); this run read {lines_read} lines: {lines_accepted} accepted, "
            f"{lines_rejected} rejected {dict(run_reasons)}; the day holds {accepted} events "
            f"and {sum(reasons.values())} rejected lines"
        )
    common = {
        "files_scanned": len(files),
        "files_loaded": statuses["loaded"],
        "files_duplicate": statuses["duplicate"],
        "files_unreadable": statuses["unreadable"],
        "run_lines_read": lines_read,
        "run_lines_accepted": lines_accepted,
        "run_lines_rejected": lines_rejected,
        "run_rejected_by_reason": MetadataValue.json(dict(sorted(run_reasons.items()))),
        "run_days_touched": MetadataValue.json(
            sorted({d.isoformat() for result in loaded for d in result.partitions})),
    }
    events = {day: {"dagster/row_count": accepted, "accepted": accepted,
                    **{f"format_{name}": count for name, count in formats.items()}}
              for day, (accepted, formats, _) in held.items()}
    rejections = {day: {"dagster/row_count": sum(reasons.values()),
                        "rejected": sum(reasons.values()),
                        "by_reason": MetadataValue.json(reasons)}
                  for day, (_, _, reasons) in held.items()}
    yield MaterializeResult(asset_key=RAW_EVENTS, metadata={**common, **over_days(events)})
    yield MaterializeResult(asset_key=RAW_REJECTED, metadata={**common, **over_days(rejections)})


def _day_counts(conn, day) -> tuple[int, dict[str, int], dict[str, int]]:
    """A day's events, its events by source format and its rejected lines by reason."""
    accepted = conn.execute(
        "SELECT count(*) FROM raw.events WHERE partition_date = ?", [day]).fetchone()[0]
    formats = dict(conn.execute(
        "SELECT source_format, count(*) FROM raw.events WHERE partition_date = ? "
        "GROUP BY ALL ORDER BY 1", [day]).fetchall())
    reasons = dict(conn.execute(
        "SELECT reason, count(*) FROM raw.rejected_lines WHERE partition_date = ? "
        "GROUP BY ALL ORDER BY 1", [day]).fetchall())
    return accepted, formats, reasons
