"""A sensor on the landing folder: a run for exactly the days new lines fall on.

Every minute it lists the landing folder and compares each file's size and modification time
with what it saw last (its cursor). For each new or changed file it reads the file the way
ingest does, into a throwaway in-memory DuckDB (the warehouse file stays free for runs), to
learn which UTC days its lines fall on, and requests one run per such day for the daily
stages. The run key names the day and the file versions, so a file seen twice asks for
nothing more, and a file that lands late asks for its own old day; ingest's manifest makes a
repeated run add nothing.
"""

import hashlib
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import duckdb
from dagster import (
    AssetSelection,
    DefaultSensorStatus,
    RunRequest,
    SensorEvaluationContext,
    SensorResult,
    SkipReason,
    sensor,
)

from capi_pipeline.ingest.landing import landing_files
from capi_pipeline.ingest.load import load_file
from capi_pipeline.lib.duck import ensure_schema
from capi_pipeline.partitions import daily_partitions
from capi_pipeline.resources import PipelineSettings

DAILY_STAGES = AssetSelection.groups(
    "ingest", "staging", "identity", "enrich", "delivery", "monitoring"
)


def days_to_run(landing_dir: Path, seen: dict[str, list[int]], max_skew_seconds: int):
    """(days the new or changed files touch, the new cursor, how many files changed)."""
    now = datetime.now(UTC)
    skew = timedelta(seconds=max_skew_seconds)
    cursor: dict[str, list[int]] = {}
    changed = []
    for landed in landing_files(landing_dir):
        stat = landed.path.stat()
        cursor[landed.name] = [stat.st_size, stat.st_mtime_ns]
        if seen.get(landed.name) != cursor[landed.name]:
            changed.append(landed)
    days: dict[str, list[str]] = {}
    if changed:
        with duckdb.connect(":memory:") as conn:
            ensure_schema(conn)
            for landed in changed:
                result = load_file(conn, landed, None, now, skew)
                version = f"{landed.name}:{cursor[landed.name][0]}:{cursor[landed.name][1]}"
                for day in result.partitions:
                    days.setdefault(day.isoformat(), []).append(version)
    return days, cursor, len(changed)


@sensor(
    name="landing_sensor",
    asset_selection=DAILY_STAGES,
    minimum_interval_seconds=60,
    default_status=DefaultSensorStatus.STOPPED,
    description="Requests a run of the daily stages for each UTC day that new or changed "
    "landing files hold lines for.",
)
def landing_sensor(context: SensorEvaluationContext, settings: PipelineSettings):
    landing = Path(settings.landing_dir)
    if not landing.is_dir():
        return SkipReason(f"CAPI_LANDING_DIR={landing} is not a folder")
    seen = json.loads(context.cursor) if context.cursor else {}
    days, cursor, changed = days_to_run(landing, seen, settings.max_future_skew_seconds)
    if not changed:
        return SkipReason("no new or changed landing files")
    requests = []
    for key, versions in sorted(days.items()):
        if not daily_partitions.has_partition_key(key):
            context.log.warning(f"lines for {key} fall outside the daily partitions; "
                                "they are kept in raw tables but no run is requested")
            continue
        digest = hashlib.sha256("\n".join(sorted(versions)).encode()).hexdigest()[:16]
        requests.append(RunRequest(run_key=f"landing:{key}:{digest}", partition_key=key))
    context.log.info(f"{changed} new or changed landing files; runs for {len(requests)} days")
    return SensorResult(run_requests=requests, cursor=json.dumps(cursor, sort_keys=True))
