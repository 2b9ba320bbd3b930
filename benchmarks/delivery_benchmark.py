"""Delivery speed: eligible events from DuckDB to the emulator on loopback.

    uv run python benchmarks/delivery_benchmark.py --events 1000000 --runs 3

Each run builds a fresh DuckDB file holding N eligible events in capi.pinterest_events,
starts the emulator (no bodies kept, so its memory stays flat), and sends them with the
pipeline's own ledger code (keyset pages, batches of 1,000, bounded concurrency, the
5,000-calls-per-minute limiter) in a child process whose peak memory is read when it ends.
It prints events per second, requests per second and the child's peak RSS for each run and
the median of the runs. The emulator shares the machine's cores with the sender.

    uv run python benchmarks/delivery_benchmark.py --from-load DIR --day 2026-12-03 --runs 3

re-sends one day of a warehouse that `load_benchmark.py --dir DIR --keep` left: each run
copies the two DuckDB files, deletes that day's outcomes and requests, and runs the daily
asset's delivery (`deliver(..., record_skips=True)`: spool, send, journal import and the
day's skips) in the child, printing its wall seconds, the CPU seconds of the sender (all
its threads, DuckDB's included) and of the emulator, and the sender's peak RSS. The CPU
seconds are the steadier figure when other work shares the cores.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import duckdb

from capi_pipeline.pinterest.emulator import EmulatorProcess

TOKEN = "benchmark-token"
# The token load_benchmark.py's warehouse was sent with (any would do: the emulator is ours).
LOAD_TOKEN = "load-benchmark-token"
ACCOUNT = "549755813599"
FILL_SQL = """
INSERT INTO capi.pinterest_events
SELECT $day, 'bench-' || lpad(i::VARCHAR, 8, '0'), 'page_visit', 'web', $time + (i % 3600),
       'page_view', NULL, NULL, TRUE, NULL, TRUE, FALSE, FALSE, FALSE, TRUE, FALSE, FALSE,
       19.99, 'USD',
       '{"event_name":"page_visit","action_source":"web","event_time":'
         || ($time + (i % 3600)) || ',"event_id":"bench-' || lpad(i::VARCHAR, 8, '0')
         || '","event_source_url":"https://shop.example.com/products/' || (i % 500)
         || '","user_data":{"em":["' || sha256(i::VARCHAR)
         || '"],"client_ip_address":"203.0.113.' || (i % 250)
         || '","client_user_agent":"Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) '
         || 'AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0 Safari/537.36"},'
         || '"custom_data":{"currency":"USD","value":"19.99","content_ids":["p-'
         || (i % 500) || '"]}}'
FROM range($events) t(i)
"""


def child(database: str, base_url: str, day: str, token: str = TOKEN,
          skips: bool = False) -> None:
    """Send every due event of `day` and print figures as one JSON line.

    With `skips`, the run is the daily asset's: the day's stores, and the skips recorded.
    """
    import inspect

    from capi_pipeline.delivery.destinations import Destination
    from capi_pipeline.delivery.ledger import (
        DeliveryPlan,
        deliver,
        partition_stores,
        record_skipped,
    )
    from capi_pipeline.resources import WarehouseResource

    warehouse = WarehouseResource(database=database)
    the_day = datetime.fromisoformat(day).date()
    stores = [""]
    if skips:
        with warehouse.get_connection() as conn:
            stores = [store or "" for store in partition_stores(conn, the_day)]
    destination = Destination(name=f"pinterest:{ACCOUNT}", base_url=base_url,
                              ad_account_id=ACCOUNT, token_env="BENCH_TOKEN", stores=("*",),
                              access_token=token)
    plan = DeliveryPlan(destination=destination, stores=stores, day=the_day,
                        max_concurrency=int(os.environ.get("BENCH_CONCURRENCY", "8")))
    log = lambda line: print(line, file=sys.stderr)  # noqa: E731
    cpu = time.process_time()
    started = time.perf_counter()
    skipped = None
    if skips and "record_skips" in inspect.signature(deliver).parameters:
        totals = deliver(warehouse, plan, log, record_skips=True)
        skipped = totals.skipped_recorded
    else:
        # Code from before deliver() recorded skips (for comparing with older commits).
        totals = deliver(warehouse, plan, log)
        if skips:
            skipped = record_skipped(warehouse, plan)
    seconds = time.perf_counter() - started
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"seconds": seconds, "cpu_seconds": time.process_time() - cpu,
                      "events": totals.to_send, "requests": totals.requests,
                      "outcomes": dict(totals.outcomes), "skipped": skipped,
                      "peak_rss_mb": peak_mb}))


def cpu_seconds(pid: int) -> float:
    """User and system CPU seconds of a running process, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def resend_run(kept: Path, day: str, folder: Path) -> dict:
    """Re-send one day of a kept load-benchmark warehouse, as the daily asset sends it."""
    import shutil

    from capi_pipeline.resources import WarehouseResource

    for name in ("warehouse.duckdb", "warehouse.personal.duckdb"):
        shutil.copyfile(kept / name, folder / name)
    database = folder / "warehouse.duckdb"
    with WarehouseResource(database=str(database)).get_connection() as conn:
        for table in ("delivery.event_outcomes", "delivery.requests"):
            conn.execute(f"DELETE FROM {table} WHERE partition_date = ?", [day])
    with EmulatorProcess(token=LOAD_TOKEN, ad_account_ids=(ACCOUNT,),
                         keep_bodies=False) as emulator:
        pid = emulator._process.pid
        before = cpu_seconds(pid)
        result = subprocess.run(
            [sys.executable, __file__, "--child", str(database), emulator.base_url, day,
             "--daily"], capture_output=True, text=True, check=True,
            env={**os.environ, "BENCH_TOKEN_VALUE": LOAD_TOKEN})
        emulator_cpu = cpu_seconds(pid) - before
    figures = json.loads(result.stdout.strip().splitlines()[-1])
    figures["emulator_cpu_seconds"] = emulator_cpu
    return figures


def resend_main(kept: Path, day: str, runs: int) -> None:
    walls, cpus, emulator_cpus, peaks = [], [], [], []
    for number in range(1, runs + 1):
        with tempfile.TemporaryDirectory() as folder:
            figures = resend_run(kept, day, Path(folder))
        walls.append(figures["seconds"])
        cpus.append(figures["cpu_seconds"])
        emulator_cpus.append(figures["emulator_cpu_seconds"])
        peaks.append(figures["peak_rss_mb"])
        print(f"run {number}: {figures['events']:,} events, {figures['requests']} requests, "
              f"{figures['skipped']:,} skips recorded in {figures['seconds']:.2f} s; CPU: "
              f"sender {figures['cpu_seconds']:.2f} s, emulator "
              f"{figures['emulator_cpu_seconds']:.2f} s; sender peak RSS "
              f"{figures['peak_rss_mb']:,.0f} MB; outcomes {figures['outcomes']}; "
              f"load average {os.getloadavg()[0]:.1f}", flush=True)
    print(f"median of {runs}: {statistics.median(walls):.2f} s, sender CPU "
          f"{statistics.median(cpus):.2f} s, emulator CPU {statistics.median(emulator_cpus):.2f} "
          f"s, sender peak RSS {statistics.median(peaks):,.0f} MB")


def one_run(events: int, folder: Path) -> dict:
    database = folder / "bench.duckdb"
    day = datetime.now(UTC).date() - timedelta(days=1)
    with duckdb.connect(str(database)) as conn:
        from capi_pipeline.lib.duck import ensure_schema

        ensure_schema(conn)
        start = int(datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp())
        conn.execute(FILL_SQL, {"day": day, "time": start, "events": events})
    with EmulatorProcess(token=TOKEN, ad_account_ids=(ACCOUNT,), keep_bodies=False) as emulator:
        result = subprocess.run(
            [sys.executable, __file__, "--child", str(database), emulator.base_url, str(day)],
            capture_output=True, text=True, check=True)
        stats = emulator.stats(summary=True)
    figures = json.loads(result.stdout.strip().splitlines()[-1])
    figures["emulator_processed"] = stats["events_processed"]
    figures["emulator_duplicates"] = stats.get("duplicates")
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--child", nargs=3, metavar=("DATABASE", "BASE_URL", "DAY"))
    parser.add_argument("--daily", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--from-load", type=Path, metavar="DIR",
                        help="re-send a day of a kept load_benchmark.py work folder")
    parser.add_argument("--day", help="the day to re-send (with --from-load)")
    args = parser.parse_args()
    if args.child:
        child(*args.child, token=os.environ.get("BENCH_TOKEN_VALUE", TOKEN), skips=args.daily)
        return
    if args.from_load:
        if not args.day:
            parser.error("--from-load needs --day")
        resend_main(args.from_load, args.day, args.runs)
        return

    rates, request_rates, peaks = [], [], []
    for number in range(1, args.runs + 1):
        with tempfile.TemporaryDirectory() as folder:
            figures = one_run(args.events, Path(folder))
        rate = figures["events"] / figures["seconds"]
        request_rate = figures["requests"] / figures["seconds"]
        rates.append(rate)
        request_rates.append(request_rate)
        peaks.append(figures["peak_rss_mb"])
        print(f"run {number}: {figures['events']:,} events in {figures['seconds']:.1f}s = "
              f"{rate:,.0f} events/s, {request_rate:,.1f} requests/s, sender peak RSS "
              f"{figures['peak_rss_mb']:,.0f} MB; outcomes {figures['outcomes']}; emulator "
              f"processed {figures['emulator_processed']:,}, duplicates "
              f"{figures['emulator_duplicates']}")
    print(f"median of {args.runs}: {statistics.median(rates):,.0f} events/s, "
          f"{statistics.median(request_rates):,.1f} requests/s, sender peak RSS "
          f"{statistics.median(peaks):,.0f} MB")


if __name__ == "__main__":
    main()
