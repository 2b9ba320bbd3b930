"""Ingest: the landing folder's lines into raw.events and raw.rejected_lines."""


from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import polars as pl
from dagster import (
    AssetExecutionContext,
    AssetSpec,
    Failure,
    MaterializeResult,
    MetadataValue,
    multi_asset,
)

from capi_pipeline.ingest.landing import UnreadableFile, landing_files, read_lines
from capi_pipeline.ingest.parse import Message, Rejected, parse_line
from capi_pipeline.lib.duck import replace_partition
from capi_pipeline.lib.tags import WRITER
from capi_pipeline.partitions import daily_partitions, partition_day
from capi_pipeline.resources import PipelineSettings, WarehouseResource

RAW_EVENTS = ["raw", "events"]
RAW_REJECTED = ["raw", "rejected_lines"]

RAW_SCHEMA = {
    "partition_date": pl.Date,
    "source_file": pl.String,
    "line_no": pl.Int32,
    "msg_index": pl.Int32,
    "source_format": pl.String,
    "topic": pl.String,
    "source_event_name": pl.String,
    "source_event_id": pl.String,
    "event_time": pl.Datetime("us", "UTC"),
    "received_at": pl.Datetime("us", "UTC"),
    "envelope_ip": pl.String,
    "envelope_user_agent": pl.String,
    "envelope_store": pl.String,
    "time_flags": pl.List(pl.String),
    "body": pl.String,
}
REJECTED_SCHEMA = {
    "partition_date": pl.Date,
    "source_file": pl.String,
    "line_no": pl.Int32,
    "reason": pl.String,
    "detail": pl.String,
    "byte_length": pl.Int32,
    "first_bytes": pl.String,
}


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
)
def raw_events(
    context: AssetExecutionContext, duckdb: WarehouseResource, settings: PipelineSettings
):
    """Read every landing file and keep the lines whose event falls on this partition's day.

    Each run rereads the whole landing folder, which keeps late lines for an old day from
    being missed but costs a scan of every file per partition. A manifest of landed files
    (path, size, content hash) would let a run read only what is new; until it exists, keep
    the landing folder to the days still being processed.
    """
    day = partition_day(context.partition_key)
    now = datetime.now(UTC)
    skew = timedelta(seconds=settings.max_future_skew_seconds)
    accepted: list[dict] = []
    rejected: list[dict] = []
    landing = Path(settings.landing_dir)
    if not landing.is_dir():
        raise Failure(
            description=f"CAPI_LANDING_DIR={landing} is not a folder: set it to where the "
            "collectors write their NDJSON files. Nothing was changed.",
            allow_retries=False,
        )
    files = landing_files(landing)

    for landed in files:
        try:
            lines = list(read_lines(landed))
        except UnreadableFile as error:
            if landed.landed_on == day:
                rejected.append(_rejection(day, landed.name, 0, Rejected(
                    "unreadable_file", str(error)[:200], landed.path.stat().st_size, "")))
            continue
        undated: list[tuple[int, Rejected]] = []
        days: Counter = Counter()
        for line_no, raw in lines:
            for result in parse_line(raw, now, skew):
                if isinstance(result, Message):
                    days[result.event_time.date()] += 1
                    if result.event_time.date() == day:
                        accepted.append(_row(day, landed.name, line_no, result))
                elif result.event_time is not None:
                    if result.event_time.date() == day:
                        rejected.append(_rejection(day, landed.name, line_no, result))
                else:
                    undated.append((line_no, result))
        # A line without a time belongs to the day most of its file's events fall on, which a
        # file still being appended to does not change; the path's date or the file's
        # modification day only when nothing in the file has a time.
        home = days.most_common(1)[0][0] if days else landed.landed_on
        if home == day:
            rejected.extend(_rejection(day, landed.name, line_no, result)
                            for line_no, result in undated)

    events = pl.DataFrame(accepted, schema=RAW_SCHEMA, orient="row")
    rejections = pl.DataFrame(rejected, schema=REJECTED_SCHEMA, orient="row")
    with duckdb.get_connection() as conn:
        held = conn.execute("SELECT count(*) FROM raw.events WHERE partition_date = ?",
                            [day]).fetchone()[0]
        if held and not accepted and not rejected:
            # The landing files for this day are gone (moved, purged); the day's rows stay
            # rather than being replaced by nothing.
            context.log.warning(
                f"partition {day}: no landing line falls on this day any more; keeping the "
                f"{held} rows raw.events already holds"
            )
            accepted_count = held
        else:
            replace_partition(conn, "raw.events", day, events)
            replace_partition(conn, "raw.rejected_lines", day, rejections)
            accepted_count = len(accepted)

    reasons = Counter(row["reason"] for row in rejected)
    formats = Counter(row["source_format"] for row in accepted)
    context.log.info(
        f"partition {day}: {len(files)} files, {len(accepted)} messages accepted, "
        f"{len(rejected)} lines rejected {dict(reasons)}"
    )
    common = {"files_scanned": len(files)}
    yield MaterializeResult(
        asset_key=RAW_EVENTS,
        metadata={
            **common,
            "dagster/row_count": accepted_count,
            "accepted": len(accepted),
            **{f"format_{name}": count for name, count in sorted(formats.items())},
        },
    )
    yield MaterializeResult(
        asset_key=RAW_REJECTED,
        metadata={
            **common,
            "dagster/row_count": len(rejected),
            "rejected": len(rejected),
            "by_reason": MetadataValue.json(dict(sorted(reasons.items()))),
        },
    )


def _row(day, source_file: str, line_no: int, message: Message) -> dict:
    return {
        "partition_date": day,
        "source_file": source_file,
        "line_no": line_no,
        "msg_index": message.msg_index,
        "source_format": message.source_format,
        "topic": message.topic,
        "source_event_name": message.source_event_name,
        "source_event_id": message.source_event_id,
        "event_time": message.event_time,
        "received_at": message.received_at,
        "envelope_ip": message.envelope_ip,
        "envelope_user_agent": message.envelope_user_agent,
        "envelope_store": message.envelope_store,
        "time_flags": list(message.time_flags),
        "body": orjson.dumps(message.body).decode(),
    }


def _rejection(day, source_file: str, line_no: int, rejected: Rejected) -> dict:
    return {
        "partition_date": day,
        "source_file": source_file,
        "line_no": line_no,
        "reason": rejected.reason,
        "detail": rejected.detail,
        "byte_length": rejected.byte_length,
        "first_bytes": rejected.first_bytes,
    }
