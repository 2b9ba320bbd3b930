"""Enrich speed: staged events to Pinterest request bodies, with the pipeline's own code.

    uv run python benchmarks/payload_benchmark.py --events 1000000 --runs 3
    uv run python benchmarks/payload_benchmark.py --events 50000 --runs 3     # a quick look

A fresh DuckDB file is filled once with N staged events of one day and their visitors: about
four events per visitor, a store's mix of page views, product views, adds to cart and
purchases from the Shopify pixel, Segment and order webhooks; a fifth of the visitors known
by email, one in seventeen by phone (written as people type them: national, international,
with punctuation), names, addresses in five countries, a share of app events with an advertising
id, consent flags, click ids. Each run then does what the enrich asset does,
`build_pinterest_events` (normalize every distinct value by the normalization table, hash in
DuckDB, assemble each payload as JSON), and joins the eligible payloads into request bodies
of 1,000 events as bytes. It does so twice per run count: first with the rows kept in a
temporary table (the cost of building the bodies), then as the asset does, replacing the
partition of capi.pinterest_events in the file (adding what DuckDB spends compressing and
writing some 600 bytes of JSON per event). The rule caches are emptied before each run, so
no run profits from the one before. It prints, per run and as the median of each mode,
events per second over the whole of that work, the CPU time of the process over all its
threads, and the distinct values normalized.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import sys
import tempfile
import time
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import duckdb

from capi_pipeline.enrich import normalize
from capi_pipeline.enrich.build import CAPI_TABLE, build_pinterest_events, request_bodies
from capi_pipeline.enrich.payload import PayloadConfig
from capi_pipeline.lib.duck import ensure_schema

# Staged events as the staging asset writes them. Values are derived from the row number so
# that the file is the same at every run; visitor v's personal data is fixed per visitor.
FILL_EVENTS_SQL = """
INSERT INTO staging.events BY NAME
WITH numbered AS (
    SELECT i, i // 4 AS v, (hash(i) % 100)::BIGINT AS roll, (hash(i // 4) % 100)::BIGINT AS who
    FROM range($events) t(i)
)
SELECT
    $day AS partition_date,
    'k' || i AS event_key,
    CASE WHEN roll < 70 THEN 'shopify_pixel' WHEN roll < 97 THEN 'segment'
         ELSE 'shopify_webhook' END AS source_format,
    CASE WHEN roll < 35 THEN 'page_viewed' WHEN roll < 55 THEN 'product_viewed'
         WHEN roll < 63 THEN 'product_added_to_cart' WHEN roll < 66 THEN 'collection_viewed'
         WHEN roll < 70 THEN 'checkout_completed' WHEN roll < 85 THEN 'page'
         WHEN roll < 90 THEN 'Product Viewed' WHEN roll < 94 THEN 'Product Added'
         WHEN roll < 96 THEN 'Order Completed' WHEN roll < 97 THEN 'Products Searched'
         ELSE 'orders/create' END AS source_event_name,
    CASE WHEN roll < 35 OR roll BETWEEN 70 AND 84 THEN 'page_view'
         WHEN roll < 55 OR roll BETWEEN 85 AND 89 THEN 'product_view'
         WHEN roll < 63 OR roll BETWEEN 90 AND 93 THEN 'add_to_cart'
         WHEN roll < 66 THEN 'collection_view' WHEN roll = 96 THEN 'search'
         ELSE 'purchase' END AS event_type,
    CASE WHEN roll BETWEEN 70 AND 96 AND who % 10 = 0 THEN 'app_ios'
         WHEN roll BETWEEN 70 AND 96 AND who % 10 = 1 THEN 'app_android'
         WHEN roll >= 97 AND who % 3 = 0 THEN 'offline' ELSE 'web' END AS action_source,
    $start + INTERVAL (i % 86000) SECOND AS event_time,
    'e-' || i AS event_id,
    'shop.example.com' AS store,
    'c-' || v AS client_id,
    CASE WHEN who < 30 THEN 'cust-' || v END AS customer_id,
    CASE WHEN who < 20 AND roll >= 63 THEN
        CASE WHEN who % 3 = 0 THEN ' Shopper.' || v || '@Example.COM '
             ELSE 'shopper' || v || '+news@mail' || (v % 97) || '.example' END END AS email,
    CASE WHEN who < 6 AND roll >= 66 THEN
        CASE who % 4
             WHEN 0 THEN '(' || (201 + v % 700) || ') 555-' || lpad((v % 10000)::VARCHAR, 4, '0')
             WHEN 1 THEN '+1 ' || (201 + v % 700) || ' 555 ' || lpad((v % 10000)::VARCHAR, 4, '0')
             WHEN 2 THEN '07700 9' || lpad((v % 100000)::VARCHAR, 5, '0')
             ELSE '030 ' || lpad((v % 100000000)::VARCHAR, 8, '0') END END AS phone,
    CASE WHEN who < 33 AND roll >= 66 THEN ['Ana', 'José', 'Li', 'Sam', 'Zoë'][1 + v % 5] END
        AS first_name,
    CASE WHEN who < 33 AND roll >= 66 THEN 'Surname' || (v % 5000) END AS last_name,
    CASE WHEN who < 33 AND roll >= 66 THEN ['New York', 'London', 'Toronto', 'Berlin',
         'Mumbai'][1 + who % 5] END AS city,
    CASE WHEN who < 33 AND roll >= 66 THEN ['NY', NULL, 'Ontario', 'BE', 'MH'][1 + who % 5]
        END AS state,
    CASE WHEN who < 33 AND roll >= 66 THEN [lpad((v % 99999)::VARCHAR, 5, '0'), 'SW1A 1AA',
         'M5V 2T6', '10115', '400001'][1 + who % 5] END AS zip,
    CASE WHEN who < 33 AND roll >= 66 THEN ['US', 'GB', 'CA', 'DE', 'IN'][1 + who % 5] END
        AS country,
    CASE WHEN roll < 97 THEN '203.0.' || (v % 250) || '.' || (v % 200 + 1) END AS ip,
    CASE WHEN roll < 97 THEN 'Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/'
         || '537.36 (KHTML, like Gecko) Chrome/' || (120 + who % 12) || '.0 Safari/537.36'
         END AS user_agent,
    'https://shop.example.com/products/p' || (i % 800) || '?utm_source=x' AS page_url,
    CASE WHEN who % 20 = 0 THEN 'dj0yJnU9' || v END AS click_id,
    CASE WHEN roll >= 66 AND roll NOT BETWEEN 70 AND 94 OR roll IN (66, 67, 68, 69, 94, 95)
         THEN (1000000 + v)::VARCHAR END AS order_id,
    CASE WHEN roll BETWEEN 70 AND 96 AND who % 10 IN (0, 1)
         THEN lower(uuid()::VARCHAR) END AS advertising_id,
    CASE WHEN roll BETWEEN 70 AND 96 AND who % 10 IN (0, 1) THEN who % 7 <> 0 END
        AS ad_tracking_allowed,
    CASE WHEN who % 25 = 0 THEN false WHEN who % 2 = 0 THEN true END AS marketing_allowed,
    CASE WHEN who % 30 = 0 THEN false END AS sale_of_data_allowed,
    CASE WHEN roll >= 55 THEN (19.99 + (i % 50))::DECIMAL(18, 2) END AS value,
    CASE WHEN roll >= 55 THEN 'usd' END AS currency,
    CASE WHEN roll = 96 THEN 'snowboard ' || (i % 40) END AS search_string,
    CASE WHEN roll >= 55 THEN [{'id': 'p' || (i % 800), 'name': 'Product ' || (i % 800),
         'price': (9.99 + i % 50)::DECIMAL(18, 2), 'quantity': 1 + i % 3,
         'brand': 'Brand', 'category': 'Boards'}] END AS items,
    CASE WHEN roll >= 55 THEN 1 + i % 3 END AS num_items,
    roll < 1 AS is_bot,
    false AS is_test
FROM numbered
"""
FILL_VISITORS_SQL = """
INSERT INTO identity.event_visitors (event_key, partition_date, visitor_id, event_time, node_ids,
                                     anchor_node_id)
SELECT event_key, partition_date, 'v' || split_part(client_id, '-', 2), event_time, [], 0
FROM staging.events;
INSERT INTO identity.visitor_profiles BY NAME
SELECT 'v' || split_part(client_id, '-', 2) AS visitor_id, 1 AS identifiers,
       count(*) AS events, min(event_time) AS first_seen, max(event_time) AS last_seen,
       any_value(email) AS email, any_value(phone) AS phone,
       any_value(first_name) AS first_name, any_value(last_name) AS last_name,
       any_value(city) AS city, any_value(state) AS state, any_value(zip) AS zip,
       any_value(country) AS country, any_value(customer_id) AS customer_id,
       any_value(ip) AS ip, any_value(user_agent) AS user_agent,
       max(event_time) AS web_seen_at
FROM staging.events GROUP BY ALL;
"""


def fill(database: Path, events: int, day: date) -> None:
    start = datetime(day.year, day.month, day.day, tzinfo=UTC)
    with duckdb.connect(str(database)) as conn:
        ensure_schema(conn)
        conn.execute(FILL_EVENTS_SQL, {"events": events, "day": day, "start": start})
        for statement in FILL_VISITORS_SQL.split(";"):
            if statement.strip():
                conn.execute(statement)


def clear_caches() -> None:
    for cached in (normalize._phone_e164_text, normalize._country_code_text):
        cached.cache_clear()


def one_run(database: Path, day: date, now: datetime, table: str) -> dict[str, float]:
    clear_caches()
    config = PayloadConfig(now=now)
    with duckdb.connect(str(database)) as conn:
        conn.execute("SET TimeZone = 'UTC'")
        started, cpu_started = time.perf_counter(), time.process_time()
        built = build_pinterest_events(conn, day, config, table=table)
        bodies = list(request_bodies(conn, day, 1000, table=table))
        seconds = time.perf_counter() - started
        cpu_seconds = time.process_time() - cpu_started
        distinct = {
            field: conn.execute(f"SELECT count(*) FROM enrich_norm_{field}").fetchone()[0]
            for field in ("em", "ph", "ln", "zp", "external_id", "hashed_maids")
        }
    return {"seconds": seconds, "cpu_seconds": cpu_seconds, "rows": built.rows,
            "eligible": built.eligible, "bodies": len(bodies),
            "body_bytes": sum(map(len, bodies)), "distinct": distinct}


def peak_rss_mb() -> float:
    """The process's peak resident memory so far (DuckDB's buffers included), in MB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args(argv)

    day = datetime.now(UTC).date() - timedelta(days=1)
    now = datetime.now(UTC)
    with tempfile.TemporaryDirectory() as folder:
        database = Path(folder) / "bench.duckdb"
        started = time.perf_counter()
        fill(database, args.events, day)
        print(f"filled {args.events:,} staged events in {time.perf_counter() - started:.1f} s")
        medians = {}
        for mode, table in (("bodies", "bench_pinterest_events"), ("asset", CAPI_TABLE)):
            rates = []
            for run in range(1, args.runs + 1):
                figures = one_run(database, day, now, table)
                rate = figures["rows"] / figures["seconds"]
                rates.append(rate)
                print(f"{mode} run {run}: {figures['rows']:,} events ({figures['eligible']:,} "
                      f"eligible) -> {figures['bodies']:,} bodies, "
                      f"{figures['body_bytes'] / 1e6:.0f} MB in {figures['seconds']:.2f} s = "
                      f"{rate:,.0f} events/s ({figures['cpu_seconds']:.2f} s of CPU over all "
                      f"threads, peak RSS so far {peak_rss_mb():,.0f} MB); distinct values "
                      f"normalized {figures['distinct']}")
            medians[mode] = statistics.median(rates)
    print(f"median of {args.runs}, request bodies built in memory: "
          f"{medians['bodies']:,.0f} events/s")
    print(f"median of {args.runs}, as the asset runs (rows stored in capi.pinterest_events, "
          f"bodies read back): {medians['asset']:,.0f} events/s")
    print(f"peak RSS of the process: {peak_rss_mb():,.0f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
