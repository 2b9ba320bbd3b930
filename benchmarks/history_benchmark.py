"""How the per-day stages after identity grow with the days of history, without waiting 30 days.

    uv run python benchmarks/load_benchmark.py --days 8 --events-per-day 100000 \
        --dir /tmp/capi-history --keep
    uv run python benchmarks/history_benchmark.py /tmp/capi-history --copies 3 --runs 3

Takes the folder a load benchmark run left (`--keep`), copies its two DuckDB files and times,
for its last day, the functions the assets and checks run (one code path): enrich's build
(`build_pinterest_events`, statement by statement), the blocking `no_raw_personal_data`
check, delivery's due and skipped queries, the match-rate and skip statements and the other
checks. Each run times it twice: on the copy with only its last two days (every table's older
rows deleted), then on a copy whose old days are written `--copies` more times further back
(staging, identity's event rows, capi and the ledger, each copy under new keys and ids), so
that 8 days become 29. A statement whose seconds rise from the first to the second reads
history. The medians of `--runs` runs are printed, with the peak RSS of this process.
Nothing is sent: delivery's queries are timed, not the sending.
"""

from __future__ import annotations

import argparse
import resource
import shutil
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from pathlib import Path

HISTORY_TABLES = ("staging.events", "identity.event_visitors", "capi.pinterest_events",
                  "delivery.event_outcomes", "delivery.requests", "raw.events",
                  "monitoring.match_rate", "monitoring.skipped_by_reason")
# The old days' rows written again `copies` times, a week further back each time, under new
# keys: (table, the columns given new values).
COPIED = {
    "staging.events": ("event_key", "event_key || '~c{k}' AS event_key, "
                       "event_id || '~c{k}' AS event_id, "
                       "event_time - INTERVAL {days} DAY AS event_time"),
    "identity.event_visitors": ("event_key", "event_key || '~c{k}' AS event_key, "
                                "event_time - INTERVAL {days} DAY AS event_time"),
    "capi.pinterest_events": ("event_id", "event_id || '~c{k}' AS event_id"),
    "delivery.event_outcomes": ("event_id", "event_id || '~c{k}' AS event_id"),
}


class Timed:
    """A connection whose statements are timed by their first words."""

    def __init__(self, conn, seconds: dict[str, float]) -> None:
        self._conn, self._seconds = conn, seconds

    def execute(self, sql, *args, **kwargs):
        started = time.perf_counter()
        result = self._conn.execute(sql, *args, **kwargs)
        self._seconds["  " + " ".join(sql.split())[:72]] += time.perf_counter() - started
        return result

    def __getattr__(self, name):
        return getattr(self._conn, name)


def prepare(source: Path, target: Path, last, copies: int) -> None:
    from capi_pipeline.resources import WarehouseResource

    shutil.rmtree(target, ignore_errors=True)
    target.mkdir(parents=True)
    for file in source.glob("warehouse.*"):
        if file.is_file():
            shutil.copy(file, target / file.name)
    with WarehouseResource(database=str(target / "warehouse.duckdb")).get_connection() as conn:
        if copies == 0:
            for table in HISTORY_TABLES:
                conn.execute(f"DELETE FROM {table} WHERE partition_date < ?",
                             [last - timedelta(days=1)])
        else:
            days = conn.execute("SELECT count(DISTINCT partition_date) FROM staging.events"
                                ).fetchall()[0][0]
            for k in range(1, copies + 1):
                shift = (days - 1) * k
                for table, (key, replaced) in COPIED.items():
                    conn.execute(
                        f"INSERT INTO {table} SELECT * REPLACE ("
                        f"(partition_date - INTERVAL {shift} DAY)::DATE AS partition_date, "
                        f"{replaced.format(k=k, days=shift)}) FROM {table} "
                        f"WHERE partition_date < ? AND NOT contains({key}, '~c')", [last])
        conn.execute("CHECKPOINT")
        conn.execute("CHECKPOINT personal")


def measure(folder: Path, last) -> dict[str, float]:
    from capi_pipeline.delivery import ledger
    from capi_pipeline.enrich import assets as enrich
    from capi_pipeline.enrich.build import build_pinterest_events
    from capi_pipeline.enrich.payload import PayloadConfig
    from capi_pipeline.monitoring import assets as monitoring
    from capi_pipeline.monitoring import checks
    from capi_pipeline.monitoring.settings import MonitoringSettings
    from capi_pipeline.resources import PinterestResource, PipelineSettings, WarehouseResource

    warehouse = WarehouseResource(database=str(folder / "warehouse.duckdb"))
    pinterest = PinterestResource(base_url="http://127.0.0.1:9", ad_account_id="549755813599",
                                  access_token="unused")
    destination = pinterest.destinations()[0].ledger_name
    settings = MonitoringSettings()
    config = PayloadConfig.from_settings(PipelineSettings(landing_dir=str(folder)),
                                         now=datetime.now(UTC))
    seconds: dict[str, float] = defaultdict(float)

    def timed(name: str, call):
        started = time.perf_counter()
        result = call()
        seconds[name] += time.perf_counter() - started
        return result

    with warehouse.get_connection() as conn:
        timed("enrich (build_pinterest_events)",
              lambda: build_pinterest_events(Timed(conn, seconds), last, config))
        timed("check no_raw_personal_data (blocking)",
              lambda: enrich.personal_data_problems(conn, last))
        stores = ledger.partition_stores(conn, last)
        params = {"day": last, "stores": stores, "destination": destination}
        due = ledger.DUE_SQL.format(selection=ledger.SELECTIONS["due"], suppressed="false")
        skipped = ledger.SKIPPED_SQL.replace("INSERT INTO delivery.event_outcomes", "")
        timed("delivery: due events", lambda: conn.execute(
            f"SELECT count(*) FROM ({due})", params).fetchall())
        timed("delivery: skips to record", lambda: conn.execute(
            f"SELECT count(*) FROM ({skipped})", params).fetchall())
        timed("monitoring: match rate", lambda: conn.execute(
            monitoring.MATCH_RATE_SQL, params).fetchall())
        timed("monitoring: skips by reason", lambda: conn.execute(
            monitoring.SKIPPED_SQL, params).fetchall())
    timed("check every_eligible_event_has_an_outcome",
          lambda: checks._every_eligible_event_has_an_outcome(warehouse, pinterest, last))
    timed("check pinterest_processed_what_was_sent",
          lambda: checks._pinterest_processed_what_was_sent(warehouse, settings, last))
    timed("check no_raw_personal_data_in_capi_and_monitoring",
          lambda: checks._no_raw_personal_data_in_capi_and_monitoring(warehouse, last))
    timed("check event_id_unique_per_destination_and_day",
          lambda: checks._event_id_unique_per_destination_and_day(warehouse, pinterest, last))
    return seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path, help="a load benchmark's folder, left by --keep")
    parser.add_argument("--copies", type=int, default=3)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()

    import duckdb

    with duckdb.connect(str(args.folder / "warehouse.duckdb"), read_only=True) as conn:
        last = conn.execute("SELECT max(partition_date) FROM capi.pinterest_events"
                            ).fetchall()[0][0]
    work = Path(tempfile.mkdtemp(prefix="capi-history-"))
    figures: dict[str, dict[str, list[float]]] = {"2 days": defaultdict(list),
                                                  "many days": defaultdict(list)}
    sizes = {}
    try:
        for _ in range(args.runs):
            for label, copies in (("2 days", 0), ("many days", args.copies)):
                prepare(args.folder, work / label.replace(" ", "-"), last, copies)
                if label not in sizes:
                    with duckdb.connect(str(work / label.replace(" ", "-") / "warehouse.duckdb"),
                                        read_only=True) as conn:
                        sizes[label] = conn.execute(
                            "SELECT count(DISTINCT partition_date), count(*) "
                            "FROM capi.pinterest_events").fetchall()[0]
                for name, value in measure(work / label.replace(" ", "-"), last).items():
                    figures[label][name].append(value)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"last day {last}; " + "; ".join(
        f"{label}: {days} days, {rows:,} capi rows" for label, (days, rows) in sizes.items()))
    print(f"{'median of ' + str(args.runs) + ' runs, seconds':74s} {'2 days':>8s} "
          f"{'many':>8s}")
    for name in sorted(figures["many days"], key=lambda n: -statistics.median(
            figures["many days"][n])):
        few, many = (statistics.median(figures[label].get(name, [0.0]))
                     for label in ("2 days", "many days"))
        if max(few, many) >= 0.01:
            print(f"{name[:74]:74s} {few:8.2f} {many:8.2f}")
    print(f"peak RSS of this process: "
          f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:,.0f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
