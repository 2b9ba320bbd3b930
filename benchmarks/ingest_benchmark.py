"""Ingest + staging throughput on generated landing data, against a bare DuckDB read_json.

    uv run python benchmarks/ingest_benchmark.py --events 1000000 --runs 3

Generates realistic events with the demo generator (Shopify pixel events in the collector
envelope, Segment calls and batches, order webhooks, with its bad lines, duplicates and late
events; each source and day's file gives its share, and seven pixel events in eight keep a
lighter collector's context, about 1.1 KB a line), writes them as one NDJSON file, then for
each run, in a fresh process and a fresh DuckDB file: lands the file (manifest, fast path,
Python fallback: raw.events and raw.rejected_lines) and builds staging.events for every day
it holds. It prints events per
second and the peak RSS of the process (DuckDB included), the median of the runs, and the rate
of `CREATE TABLE AS SELECT * FROM read_json(...)` of the same file into a DuckDB file, timed
the same way, with the ratio of the two.

With `--floors`, it also times what any pipeline that keeps raw events must do at least:
the file's lines stored as text, with DuckDB's own compression choice, with `zstd` (what
raw.events.body uses) and uncompressed, each ending in a CHECKPOINT like the pipeline's
commits, one process each, median of the runs.
"""

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

LINES_PER_VISITOR_DAY = 6.5  # what the demo generator writes per visitor and day, roughly


def generate(path: Path, events: int) -> None:
    """One NDJSON file of `events` lines from the demo generator (cached by size).

    The generator writes one file per source and day (pixel, Segment, webhooks); each gives
    the same share of its lines, so every shape and day is in the file whatever its size.
    """
    import gzip

    from capi_pipeline.demo.generate import generate as demo

    if path.exists():
        return
    days = 3
    visitors = max(1, int(events / days / LINES_PER_VISITOR_DAY * 1.1))
    with tempfile.TemporaryDirectory() as folder:
        demo(Path(folder), date(2026, 12, 2), days=days, visitors_per_day=visitors, seed=11)
        files = sorted(Path(folder).rglob("*.ndjson*"))

        def lines_of(file: Path):
            opener = gzip.open if file.suffix == ".gz" else open
            with opener(file, "rb") as handle:
                yield from handle

        counts = [sum(1 for _ in lines_of(file)) for file in files]
        total = sum(counts)
        if total < events:
            raise SystemExit(f"generator gave {total} lines, fewer than {events}")
        shares = [count * events // total for count in counts]
        shares[-1] += events - sum(shares)
        partial = path.with_suffix(".partial")
        with partial.open("wb") as out:
            for file, share in zip(files, shares, strict=True):
                for written, line in enumerate(lines_of(file)):
                    if written == share:
                        break
                    line = trim_context(line)
                    out.write(line if line.endswith(b"\n") else line + b"\n")
        partial.rename(path)


FULL_CONTEXT_EVERY = 8  # one pixel event in eight keeps the generator's whole browser context
COLLECTION_VARIANTS = 4  # the variants a lighter collector forwards of a collection_viewed


def trim_context(line: bytes) -> bytes:
    """A pixel event in the envelope as a lighter collector keeps it, seven times in eight.

    The demo generator gives every pixel event the whole `context` a custom pixel sees
    (document, navigator and window, about 1.2 KB) and every product variant its image and
    URLs. Most collectors forward less: these keep the page's URL, referrer and title, the
    navigator's user agent and language, each variant's ids, titles, price, vendor and type,
    and a collection's first four variants, so the file averages about 1.1 KB a line. An
    envelope whose body is a JSON string is trimmed inside the string and stays a string.
    Every other line (bad lines, Segment calls and batches, webhooks) is written as the
    generator wrote it; the choice depends on the line's bytes, so a duplicated line stays a
    duplicate.
    """
    import orjson

    if hash_bucket(line) == 0:
        return line
    try:
        value = orjson.loads(line)
    except orjson.JSONDecodeError:
        return line
    body = value.get("body") if isinstance(value, dict) else None
    if isinstance(body, str):
        try:
            inner = orjson.loads(body)
        except orjson.JSONDecodeError:
            return line
        if not isinstance(inner, dict) or not _trim_body(inner):
            return line
        value["body"] = orjson.dumps(inner).decode()
    elif not isinstance(body, dict) or not _trim_body(body):
        return line
    return orjson.dumps(value) + b"\n"


def _trim_body(body: dict) -> bool:
    context = body.get("context")
    if not isinstance(context, dict):
        return False
    document = context.get("document") or {}
    navigator = context.get("navigator") or {}
    body["context"] = {
        "document": {"location": {"href": (document.get("location") or {}).get("href")},
                     "referrer": document.get("referrer"), "title": document.get("title")},
        "navigator": {"language": navigator.get("language"),
                      "userAgent": navigator.get("userAgent")},
    }
    data = body.get("data")
    collection = data.get("collection") if isinstance(data, dict) else None
    if isinstance(collection, dict) and isinstance(collection.get("productVariants"), list):
        collection["productVariants"] = collection["productVariants"][:COLLECTION_VARIANTS]
    _trim_variants(data)
    return True


def _trim_variants(value) -> None:
    """Drop the image and URL fields of every product variant, wherever it sits."""
    if isinstance(value, list):
        for item in value:
            _trim_variants(item)
    elif isinstance(value, dict):
        value.pop("image", None)
        value.pop("untranslatedTitle", None)
        product = value.get("product")
        if isinstance(product, dict):
            product.pop("untranslatedTitle", None)
            product.pop("url", None)
        for item in value.values():
            _trim_variants(item)


def hash_bucket(line: bytes) -> int:
    import zlib

    return zlib.crc32(line) % FULL_CONTEXT_EVERY


def run_pipeline(source: Path, memory_limit: str) -> dict:
    """Land the file and stage every day, in this process; returns figures as a dict."""
    from datetime import UTC, datetime, timedelta

    from capi_pipeline.ingest.load import sync_landing
    from capi_pipeline.resources import WarehouseResource
    from capi_pipeline.staging.sql import write_staging

    with tempfile.TemporaryDirectory() as folder, WarehouseResource(
        database=str(Path(folder) / "bench.duckdb"),
        connection_config={"memory_limit": memory_limit},
    ).get_connection() as conn:
        # The pipeline's own connection: the warehouse file with the personal-data file, which
        # holds raw and staging, attached as the assets have it.
        landing = Path(folder) / "landing"
        landing.mkdir()
        (landing / "events.ndjson").symlink_to(source.resolve())
        started, cpu_started = time.perf_counter(), _cpu_seconds()
        _, results = sync_landing(conn, landing, datetime.now(UTC), timedelta(minutes=10))
        landed = time.perf_counter()
        staged = 0
        for (day,) in conn.execute(
            "SELECT DISTINCT partition_date FROM raw.events ORDER BY 1"
        ).fetchall():
            staged += write_staging(conn, day)
        finished, cpu_finished = time.perf_counter(), _cpu_seconds()
        result = results[0]
    return {
        "lines": result.lines_read, "events": result.events, "staged": staged,
        "rejected_lines": result.lines_rejected, "fast_lines": result.fast_lines,
        "ingest_seconds": landed - started, "staging_seconds": finished - landed,
        "seconds": finished - started, "cpu_seconds": cpu_finished - cpu_started,
        "peak_rss_mb": _peak_rss_mb(),
    }


def run_read_json(source: Path) -> dict:
    import duckdb

    with tempfile.TemporaryDirectory() as folder:
        conn = duckdb.connect(str(Path(folder) / "bare.duckdb"))
        started, cpu_started = time.perf_counter(), _cpu_seconds()
        conn.execute(
            "CREATE TABLE t AS SELECT * FROM read_json(?, format = 'newline_delimited', "
            "ignore_errors = true, maximum_object_size = 2000000)", [str(source)])
        seconds, cpu = time.perf_counter() - started, _cpu_seconds() - cpu_started
        rows = conn.execute("SELECT count(*) FROM t").fetchone()[0]
        conn.close()
    return {"rows": rows, "seconds": seconds, "cpu_seconds": cpu, "peak_rss_mb": _peak_rss_mb()}


FLOOR_COMPRESSIONS = ("auto", "zstd", "uncompressed")


def run_text_floor(source: Path, compression: str) -> dict:
    """The file's lines stored as text in a fresh DuckDB file, with one compression."""
    import duckdb

    with tempfile.TemporaryDirectory() as folder:
        conn = duckdb.connect(str(Path(folder) / "text.duckdb"))
        using = "" if compression == "auto" else f" USING COMPRESSION {compression}"
        conn.execute(f"CREATE TABLE t (line VARCHAR{using})")
        started, cpu_started = time.perf_counter(), _cpu_seconds()
        conn.execute("INSERT INTO t SELECT json FROM read_ndjson_objects(?, ignore_errors = "
                     "true, maximum_object_size = 2000000)", [str(source)])
        conn.execute("CHECKPOINT")
        seconds, cpu = time.perf_counter() - started, _cpu_seconds() - cpu_started
        rows = conn.execute("SELECT count(*) FROM t").fetchone()[0]
        size_mb = (Path(folder) / "text.duckdb").stat().st_size / 1e6
        conn.close()
    return {"rows": rows, "seconds": seconds, "cpu_seconds": cpu, "size_mb": size_mb}


def _cpu_seconds() -> float:
    """CPU time of this process, all its threads (DuckDB's included), user and system."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _child(kind: str, source: Path, memory_limit: str, *extra: str) -> dict:
    output = subprocess.run(
        [sys.executable, __file__, "--child", kind, "--file", str(source),
         "--memory-limit", memory_limit, *extra],
        check=True, capture_output=True, text=True,
    ).stdout
    return json.loads(output.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--workdir", type=Path, default=Path("data/bench-ingest"))
    parser.add_argument("--memory-limit", default="1GB",
                        help="DuckDB memory_limit for the pipeline runs (default 1GB)")
    parser.add_argument("--floors", action="store_true",
                        help="also time the file's lines stored as text (see the docstring)")
    parser.add_argument("--child", choices=["pipeline", "read_json", "text"],
                        help=argparse.SUPPRESS)
    parser.add_argument("--file", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--compression", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.child:
        if args.child == "pipeline":
            figures = run_pipeline(args.file, args.memory_limit)
        elif args.child == "read_json":
            figures = run_read_json(args.file)
        else:
            figures = run_text_floor(args.file, args.compression)
        print(json.dumps(figures))
        return 0

    args.workdir.mkdir(parents=True, exist_ok=True)
    source = args.workdir / f"events-{args.events}-1kb.ndjson"
    started = time.perf_counter()
    generate(source, args.events)
    size_mb = source.stat().st_size / 1e6
    print(f"file: {source} ({args.events:,} lines, {size_mb:,.0f} MB, "
          f"{size_mb * 1e6 / args.events:,.0f} bytes a line; ready in "
          f"{time.perf_counter() - started:.0f} s)")

    pipeline, bare = [], []
    for run in range(1, args.runs + 1):
        figures = _child("pipeline", source, args.memory_limit)
        pipeline.append(figures)
        print(f"run {run}: {figures['events']:,} events ({figures['fast_lines']:,} lines by the "
              f"SQL fast path, {figures['rejected_lines']:,} rejected) in "
              f"{figures['seconds']:.2f} s (ingest {figures['ingest_seconds']:.2f} s, staging "
              f"{figures['staging_seconds']:.2f} s; {figures['cpu_seconds']:.1f} s of CPU): "
              f"{figures['events'] / figures['seconds']:,.0f} events/s, peak RSS "
              f"{figures['peak_rss_mb']:,.0f} MB")
        reference = _child("read_json", source, args.memory_limit)
        bare.append(reference)
        print(f"run {run}: bare read_json {reference['rows']:,} rows in "
              f"{reference['seconds']:.2f} s ({reference['cpu_seconds']:.1f} s of CPU): "
              f"{reference['rows'] / reference['seconds']:,.0f} "
              f"rows/s, peak RSS {reference['peak_rss_mb']:,.0f} MB")

    rate = statistics.median(f["events"] / f["seconds"] for f in pipeline)
    bare_rate = statistics.median(f["rows"] / f["seconds"] for f in bare)
    peak = statistics.median(f["peak_rss_mb"] for f in pipeline)
    print(f"median of {args.runs}: ingest + staging {rate:,.0f} events/s, peak RSS {peak:,.0f} MB; "
          f"bare read_json {bare_rate:,.0f} rows/s; ratio {rate / bare_rate:.2f}")
    if args.floors:
        for compression in FLOOR_COMPRESSIONS:
            runs = [_child("text", source, args.memory_limit, "--compression", compression)
                    for _ in range(args.runs)]
            times = [f["seconds"] for f in runs]
            seconds = statistics.median(times)
            each = ", ".join(f"{value:.2f}" for value in times)
            print(f"floor: the lines stored as text, compression {compression}: "
                  f"{runs[0]['rows']:,} rows in {seconds:.2f} s (median of {args.runs}: {each} s), "
                  f"{runs[0]['rows'] / seconds:,.0f} rows/s, file {runs[0]['size_mb']:,.0f} MB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
