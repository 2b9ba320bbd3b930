"""Identity graph speed and memory on a synthetic store history.

    uv run python benchmarks/identity_benchmark.py                # 10M events, median of 3
    uv run python benchmarks/identity_benchmark.py --scale 0.05   # a quick run

The history (30 days at scale 1: 10,000,000 events, about 5,000,000 identifiers and 8,000,000
edges) has realistic shapes: most visitors have 1 to 5 identifiers (cookies, an email, an E.164
phone, a customer id, checkout tokens), a few thousand long chains (cookie, email, cookie,
email ... growing across days, each below the hub limits) and one 50,000-cookie trap built
around one shared address.

The input is generated once; each figure is the median of --runs runs, each in a fresh process
working on a fresh copy of a prepared file, so the peak resident memory printed (DuckDB
included) is that step's alone. Every step is `build_identity`, the asset's code path:

- first build: identity over days 1-29 at once, from staging (every distinct email and phone
  normalized, every event's row written); its result is the base of the incremental day;
- incremental day: day 30 added to that graph (the pipeline's daily run); its result is the
  base of the full recompute;
- full computation: what a re-run staged day costs (here with one more event): that day reread
  from staging, then the graph recomputed over the whole history from the per-day identity
  tables (identifier and edge totals, hubs, components with the size guard, visitor ids and
  the id map, refused edges); the day's events that differ from the kept ones are rewritten
  and their visitors' profiles and click attribution redone; committed;
- scipy: `scipy.sparse.csgraph.connected_components` alone over the same kept edges, in the
  same process as the full computation, loaded from DuckDB the same way. It is printed beside
  the whole full computation and beside that computation's component step alone (from the
  edges in DuckDB to component labels, loading and the size guard included).
"""

from __future__ import annotations

import argparse
import multiprocessing
import resource
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import duckdb
import numpy as np

DAYS = 30
# build_identity's phase that goes from the kept edges in DuckDB to component labels.
COMPONENT_PHASE = "components and size guard"
EVENTS = 10_000_000
VISITORS = 1_600_000
CHAINS, CHAIN_NODES = 2_000, 150
TRAP_COOKIES = 50_000

# Visitors: a cookie each; 75% an email, 35% a phone, 50% a customer id, 20% a second cookie;
# an identity event carries all of a visitor's identifiers, a purchase (30% of visitors) its
# cookie, email and checkout token, every other event the cookie alone.
GENERATE_SQL = """
INSERT INTO staging.events BY NAME
WITH visitors AS (
    SELECT v, hash(v) % 100 AS h, hash(v * 7 + 1) % $days AS d FROM range($visitors) t(v)
),
identity_events AS (
    SELECT 'i' || v AS event_key, d, 'identify' AS event_type, 'c' || v AS client_id,
           CASE WHEN h < 75 THEN 'U' || v || '@Example.com' END AS email,
           CASE WHEN h >= 65 THEN '+1415' || (2000000 + v) END AS phone,
           CASE WHEN h % 2 = 0 THEN 'cust' || v END AS customer_id,
           NULL AS checkout_token, CASE WHEN h >= 80 THEN 'm' || v END AS second_cookie,
           NULL AS click_id, 'F' || v AS first_name
    FROM visitors
),
purchases AS (
    SELECT 'p' || v, (d + 1) % $days, 'purchase', 'c' || v,
           CASE WHEN h < 75 THEN 'u' || v || '@example.com' END, NULL, NULL, 'tok' || v,
           NULL, NULL, NULL
    FROM visitors WHERE hash(v * 13) % 10 < 3
),
chains AS (
    SELECT 'ch' || c || '_' || j || '_' || side, j % $days, 'page_view',
           'chc' || c || '_' || (j + side), 'chain' || c || '_' || j || '@example.org',
           NULL, NULL, NULL, NULL, NULL, NULL
    FROM range($chains) a(c), range($chain_links) b(j), range(2) s(side)
),
trap AS (
    SELECT 't' || i, i % $days, 'page_view', 'trap' || i, 'orders@shared.example', NULL, NULL,
           NULL, NULL, NULL, NULL
    FROM range($trap) t(i)
),
filler AS (
    SELECT 'f' || i, hash(i * 3) % $days, 'page_view', 'c' || (hash(i) % $visitors), NULL,
           NULL, NULL, NULL, NULL,
           CASE WHEN i % 20 = 0 THEN 'dj0y' || i END, NULL
    FROM range($filler) t(i)
),
everything AS (
    SELECT * FROM identity_events UNION ALL SELECT * FROM purchases
    UNION ALL SELECT * FROM chains UNION ALL SELECT * FROM trap
    UNION ALL SELECT * FROM filler
)
SELECT DATE '2026-11-01' + d::INTEGER AS partition_date, event_key, 'segment' AS source_format,
       event_type, 'web' AS action_source,
       TIMESTAMPTZ '2026-11-01 00:00:00+00' + to_days(d::INTEGER)
           + to_seconds((hash(event_key) % 86400)::BIGINT) AS event_time,
       event_key AS event_id, client_id,
       customer_id,
       email, phone, first_name, checkout_token, click_id,
       second_cookie AS advertising_id,
       '203.0.113.' || (hash(event_key) % 250) AS ip,
       'Mozilla/5.0 (X11; Linux x86_64) Chrome/131' AS user_agent,
       false AS is_bot, false AS is_test
FROM everything
-- Staging holds one day after another, as its daily partitions are written.
ORDER BY partition_date
"""


def generate(path: Path, scale: float) -> dict[str, int]:
    """A staging-only warehouse with the synthetic history; returns its counts."""
    from capi_pipeline.lib.duck import ensure_schema

    visitors = int(VISITORS * scale)
    chains = max(1, int(CHAINS * scale))
    trap = int(TRAP_COOKIES * min(1.0, scale * 4))
    chain_links = CHAIN_NODES // 2
    fixed = int(visitors * (1 + 0.3)) + chains * chain_links * 2 + trap
    filler = max(0, int(EVENTS * scale) - fixed)
    with duckdb.connect(str(path)) as conn:
        conn.execute("SET enable_progress_bar = false")
        ensure_schema(conn)
        conn.execute(GENERATE_SQL, {
            "days": DAYS, "visitors": visitors, "chains": chains, "chain_links": chain_links,
            "trap": trap, "filler": filler,
        })
        return {"events": conn.execute("SELECT count(*) FROM staging.events").fetchone()[0]}


def _peak_mb() -> float:
    """This process's peak resident memory since it started (DuckDB included).

    Not getrusage's ru_maxrss: Linux carries it over from the parent through fork and exec,
    so a step would report the generating parent's peak when that is higher."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _child(step: str, path: str, memory_limit: str, queue) -> None:
    """One measured step in a fresh process."""
    from capi_pipeline.identity.graph import build_identity
    from capi_pipeline_tests.identity_helpers import RULES

    with duckdb.connect(path) as conn:
        conn.execute("SET TimeZone = 'UTC'")
        conn.execute("SET enable_progress_bar = false")
        conn.execute(f"SET memory_limit = '{memory_limit}'")
        if step == "recompute":
            # Staging re-ran the last day with one more event: the day is read again and
            # everything derived is recomputed.
            conn.execute("""
                INSERT INTO staging.events BY NAME
                SELECT partition_date, 'extra' AS event_key, source_format, event_type,
                       action_source, event_time, 'extra' AS event_id, 'c-extra' AS client_id,
                       is_bot, is_test
                FROM staging.events WHERE partition_date = DATE '2026-11-01' + 29 LIMIT 1
            """)
        elif step == "incremental":
            conn.execute("INSERT INTO staging.events SELECT * FROM held_back.events")
        started, cpu = time.perf_counter(), _cpu_seconds()
        phases: dict[str, float] = {}
        stats = build_identity(conn, RULES, phases)
        seconds = time.perf_counter() - started
        result = {"seconds": seconds, "cpu": _cpu_seconds() - cpu, "peak_mb": _peak_mb(),
                  "stats": stats, "phases": phases}
        if step == "recompute":
            result["scipy"] = _scipy_alone(conn)
    queue.put(result)


def _scipy_alone(conn: duckdb.DuckDBPyConnection) -> dict[str, float]:
    from scipy.sparse import csr_array
    from scipy.sparse.csgraph import connected_components

    started = time.perf_counter()
    edges = conn.execute("""
        SELECT a_id, b_id FROM identity.edges e
        WHERE refused_reason IS NULL
          AND a_id NOT IN (SELECT node_id FROM identity.identifiers WHERE hub_reason IS NOT NULL)
          AND b_id NOT IN (SELECT node_id FROM identity.identifiers WHERE hub_reason IS NOT NULL)
    """).fetchnumpy()
    a, b = np.asarray(edges["a_id"]), np.asarray(edges["b_id"])
    nodes = int(conn.execute("SELECT max(node_id) + 1 FROM identity.identifiers").fetchone()[0])
    loaded = time.perf_counter()
    graph = csr_array((np.ones(len(a), dtype=np.int8), (a, b)), shape=(nodes, nodes))
    count, _ = connected_components(graph, directed=False)
    done = time.perf_counter()
    return {"seconds": done - loaded, "with_load": done - started, "components": count,
            "edges": len(a)}


def measure(step: str, source: Path, work: Path, runs: int, memory_limit: str,
            keep: Path | None = None) -> list[dict]:
    """Run a step `runs` times on fresh copies of `source`; `keep` keeps the last result."""
    results = []
    context = multiprocessing.get_context("spawn")
    for run in range(runs):
        copy = work / f"{step}-{run}.duckdb"
        shutil.copyfile(source, copy)
        queue = context.Queue()
        process = context.Process(target=_child, args=(step, str(copy), memory_limit, queue))
        process.start()
        results.append(queue.get())
        process.join()
        if keep is not None and run == runs - 1:
            copy.rename(keep)
        else:
            copy.unlink()
        print(f"  {step} run {run + 1}: {results[-1]['seconds']:.2f} s "
              f"({results[-1]['cpu']:.2f} s CPU), peak {results[-1]['peak_mb']:.0f} MB",
              flush=True)
    return results


def median(results: list[dict], key: str) -> float:
    return statistics.median(result[key] for result in results)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, default=1.0, help="1.0 = 10M events")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--first-build-runs", type=int, default=None,
                        help="runs of the first build (default --runs; it is the slow one)")
    parser.add_argument("--workdir", default=None, help="folder for the DuckDB files")
    parser.add_argument("--memory-limit", default="3GB",
                        help="DuckDB memory_limit of the measured steps (it spills beyond)")
    parser.add_argument("--keep", action="store_true",
                        help="keep the prepared files (base.duckdb: days 1-29 built; "
                             "built.duckdb: day 30 added) in the work folder")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="identity-bench-", dir=args.workdir))
    try:
        staged = work / "staged.duckdb"
        started = time.perf_counter()
        counts = generate(staged, args.scale)
        print(f"generated {counts['events']:,} staged events over {DAYS} days in "
              f"{time.perf_counter() - started:.1f} s", flush=True)

        # Days 1-29 staged, day 30 held back for the incremental run.
        with duckdb.connect(str(staged)) as conn:
            conn.execute("SET TimeZone = 'UTC'")
            conn.execute("CREATE SCHEMA held_back")
            conn.execute("CREATE TABLE held_back.events AS SELECT * FROM staging.events "
                         "WHERE partition_date = DATE '2026-11-01' + 29")
            conn.execute("DELETE FROM staging.events WHERE partition_date = "
                         "DATE '2026-11-01' + 29")
            conn.execute("CHECKPOINT")
            held = conn.execute("SELECT count(*) FROM held_back.events").fetchone()[0]
        base, built = work / "base.duckdb", work / "built.duckdb"
        print(f"first build ({counts['events'] - held:,} events of days 1-29 at once, "
              "from staging):", flush=True)
        first = measure("first", staged, work, args.first_build_runs or args.runs,
                        args.memory_limit, keep=base)
        print(f"incremental day (day 30, {held:,} events):", flush=True)
        incremental = measure("incremental", base, work, args.runs, args.memory_limit,
                              keep=built)
        print("full computation (day 30 re-run, the graph recomputed over all history):",
              flush=True)
        recompute = measure("recompute", built, work, args.runs, args.memory_limit)

        stats = recompute[0]["stats"]
        scipy_seconds = statistics.median(r["scipy"]["seconds"] for r in recompute)
        scipy_load = statistics.median(r["scipy"]["with_load"] for r in recompute)
        print()
        print(f"DuckDB memory_limit {args.memory_limit}")
        print(f"graph: {counts['events']:,} events, {stats['identifiers']:,} identifiers, "
              f"{stats['edges']:,} edges ({stats['refused_edges']:,} refused), "
              f"{stats['visitors']:,} visitors, largest {stats['largest_visitor']}")
        print(f"median of {args.runs} (first build: of {len(first)}):")
        for label, results in (("first build", first), ("incremental day", incremental),
                               ("full computation", recompute)):
            print(f"  {label:16} {median(results, 'seconds'):7.2f} s wall "
                  f"{median(results, 'cpu'):7.2f} s CPU  peak {median(results, 'peak_mb'):6.0f} MB")
        print(f"  scipy connected_components alone {scipy_seconds:.2f} s "
              f"({scipy_load:.2f} s with loading the edges from DuckDB) on "
              f"{recompute[0]['scipy']['edges']:,} kept edges")
        print(f"  full computation / scipy = {median(recompute, 'seconds') / scipy_seconds:.1f}x"
              f"  (/ scipy with loading = {median(recompute, 'seconds') / scipy_load:.1f}x)")
        # The other reading of the "within three times scipy": the full computation's
        # own component step (its edges and hub marks loaded from DuckDB, scipy, the size
        # guard; finding the hubs is a phase of its own) beside scipy alone on the same edges.
        step = statistics.median(r["phases"][COMPONENT_PHASE] for r in recompute)
        print(f"  full computation's component step {step:.2f} s (edges loaded from DuckDB, "
              f"size guard included) / scipy = {step / scipy_seconds:.1f}x"
              f"  (/ scipy with loading = {step / scipy_load:.1f}x)")
        for label, results in (("incremental day", incremental), ("full computation", recompute)):
            print(f"where the {label}'s time goes (wall seconds, median per phase):")
            for phase in results[0]["phases"]:
                seconds = statistics.median(r["phases"][phase] for r in results)
                print(f"  {phase:32} {seconds:6.2f}")
    finally:
        if args.keep:
            print(f"files kept in {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
