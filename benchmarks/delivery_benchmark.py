"""Delivery speed: eligible events from DuckDB to the emulator on loopback.

    uv run python benchmarks/delivery_benchmark.py --events 1000000 --runs 3

Each run builds a fresh DuckDB file holding N eligible events in capi.pinterest_events,
starts the emulator (no bodies kept, so its memory stays flat), and sends them with the
pipeline's own ledger code (keyset pages, batches of 1,000, bounded concurrency, the
5,000-calls-per-minute limiter) in a child process whose peak memory is read when it ends.
It prints events per second, requests per second and the child's peak RSS for each run and
the median of the runs. The emulator shares the machine's cores with the sender.
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


def child(database: str, base_url: str, day: str) -> None:
    """Send every due event of `day` and print figures as one JSON line."""
    from capi_pipeline.delivery.destinations import Destination
    from capi_pipeline.delivery.ledger import DeliveryPlan, deliver
    from capi_pipeline.resources import WarehouseResource

    warehouse = WarehouseResource(database=database)
    destination = Destination(name=f"pinterest:{ACCOUNT}", base_url=base_url,
                              ad_account_id=ACCOUNT, token_env="BENCH_TOKEN", stores=("*",),
                              access_token=TOKEN)
    plan = DeliveryPlan(destination=destination, stores=[""],
                        day=datetime.fromisoformat(day).date(),
                        max_concurrency=int(os.environ.get("BENCH_CONCURRENCY", "8")))
    started = time.perf_counter()
    totals = deliver(warehouse, plan, lambda line: print(line, file=sys.stderr))
    seconds = time.perf_counter() - started
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"seconds": seconds, "events": totals.to_send,
                      "requests": totals.requests, "outcomes": dict(totals.outcomes),
                      "peak_rss_mb": peak_mb}))


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
    args = parser.parse_args()
    if args.child:
        child(*args.child)
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
