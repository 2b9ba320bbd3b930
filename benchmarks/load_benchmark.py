"""The whole pipeline under load: N days of generated events, every stage, to the emulator.

    uv run python benchmarks/load_benchmark.py --days 30 --events-per-day 330000
    uv run python benchmarks/load_benchmark.py --days 2 --events-per-day 50000   # a quick look

The demo generator writes the landing files (Shopify pixel events in the collector envelope,
Segment calls and batches, order webhooks, with their bad lines, duplicates, bots and late
arrivals) once into a cache folder (`--cache`, default `capi-load-cache` in the temporary
folder), keyed by the days, the size, the last day and the seed, so a second run with the
same arguments on the same day reuses them. Every run starts from an empty warehouse and an
empty landing folder, and each day's files appear there (hard links into the cache) just
before that day is materialized, the way a collector drops them before the nightly run: a
day's ingest reads that day's files only. The emulator runs in its own process without
keeping bodies. Every day is materialized in order, oldest first, the way the daily schedule
runs them: every asset and asset check of `daily_pipeline_job` (all but the dbt marts, which
are views and are built once at the end, as `marts_job` builds them), in one process, on one
pair of DuckDB files. For each day it prints the seconds per stage and for the checks (from
Dagster's step events) and end to end; at the end the median and slowest day per step and end
to end, the last day (the only one whose events are all inside Pinterest's 7-day window, so
the one that sends the most) and the peak RSS of this process, DuckDB included. The
emulator's memory is its own and is not counted."""

from __future__ import annotations

import argparse
import gzip
import os
import resource
import shutil
import statistics
import sys
import tempfile
import time
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

TOKEN = "load-benchmark-token"
ACCOUNT = "549755813599"
# What the demo generator writes per visitor and day, roughly (lines, not events: a Segment
# batch line holds several).
LINES_PER_VISITOR_DAY = 6.5


def file_lines(files: list[Path]) -> int:
    count = 0
    for file in files:
        opener = gzip.open if file.suffix == ".gz" else open
        with opener(file, "rb") as handle:
            count += sum(1 for _ in handle)
    return count


def cached_landing(cache: Path, last: date, days: int, visitors: int, seed: int) -> Path:
    """The generated landing files for these arguments, written once and then reused.

    Written to a partial folder and renamed when complete, so an interrupted generation is
    never taken for a finished one.
    """
    from capi_pipeline.demo.generate import generate

    folder = cache / f"landing-{last}-{days}d-{visitors}v-seed{seed}"
    if folder.is_dir():
        return folder
    partial = folder.with_name(folder.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    generate(partial, last, days=days, visitors_per_day=visitors, seed=seed)
    partial.rename(folder)
    return folder


def day_files(source: Path, day: date) -> list[Path]:
    """A day's landing files: the generator writes them under `<kind>/<day>/`."""
    return sorted(path for path in source.glob(f"*/{day.isoformat()}/*") if path.is_file())


def land(files: list[Path], source: Path, landing: Path) -> None:
    """Make files appear in the landing folder at their place, as hard links when possible."""
    for file in files:
        target = landing / file.relative_to(source)
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(file, target)
        except OSError:
            shutil.copyfile(file, target)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def stage_seconds(instance, run_id: str) -> dict[str, float]:
    """Seconds per step, from the run's step start and success events."""
    started: dict[str, float] = {}
    seconds: dict[str, float] = {}
    for entry in instance.all_logs(run_id):
        event = entry.dagster_event
        if event is None or event.step_key is None:
            continue
        if event.event_type_value == "STEP_START":
            started[event.step_key] = entry.timestamp
        elif event.event_type_value in ("STEP_SUCCESS", "STEP_FAILURE"):
            seconds[event.step_key] = entry.timestamp - started.get(event.step_key,
                                                                    entry.timestamp)
    return seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--events-per-day", type=int, default=330_000)
    parser.add_argument("--dir", type=Path, default=None,
                        help="work folder, emptied first (default: a temporary one, removed "
                             "at the end)")
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    parser.add_argument("--cache", type=Path,
                        default=Path(tempfile.gettempdir()) / "capi-load-cache",
                        help="where generated landing files are kept and reused")
    parser.add_argument("--seed", type=int, default=23)
    args = parser.parse_args()

    from dagster import AssetSelection, DagsterInstance, materialize

    from capi_pipeline import definitions
    from capi_pipeline.pinterest.emulator import EmulatorProcess
    from capi_pipeline.resources import PinterestResource, PipelineSettings, WarehouseResource

    folder = args.dir or Path(tempfile.mkdtemp(prefix="capi-load-"))
    folder.mkdir(parents=True, exist_ok=True)
    # Every run starts empty: a warehouse or landing folder left by an earlier run would make
    # the days' runs find their files already ingested.
    landing = folder / "landing"
    shutil.rmtree(landing, ignore_errors=True)
    for leftover in folder.glob("warehouse.*"):
        shutil.rmtree(leftover) if leftover.is_dir() else leftover.unlink()
    landing.mkdir()
    last = datetime.now(UTC).date() - timedelta(days=1)
    visitors = max(1, int(args.events_per_day / LINES_PER_VISITOR_DAY))
    started = time.perf_counter()
    source = cached_landing(args.cache, last, args.days, visitors, args.seed)
    days = [last - timedelta(days=back) for back in range(args.days - 1, -1, -1)]
    files = {day: day_files(source, day) for day in days}
    unplaced = {path for path in source.rglob("*") if path.is_file()} - {
        path for paths in files.values() for path in paths}
    if unplaced:
        raise SystemExit(f"landing files outside the days' folders: {sorted(unplaced)[:5]}")
    lines = {day: file_lines(paths) for day, paths in files.items()}
    print(f"landing: {sum(lines.values()):,} lines for {args.days} days up to {last} "
          f"({visitors:,} visitors a day) in {source}, ready in "
          f"{time.perf_counter() - started:.0f} s", flush=True)
    # The daily job runs the asset checks too (the blocking one on the payloads included).
    assets = [*definitions.defs.assets, *definitions.defs.asset_checks]
    check_steps = {check.node_def.name for check in definitions.defs.asset_checks}
    selection = AssetSelection.all() - AssetSelection.groups("marts")
    rows = []
    with EmulatorProcess(token=TOKEN, ad_account_ids=(ACCOUNT,), keep_bodies=False) as emulator:
        resources = {
            "duckdb": WarehouseResource(database=str(folder / "warehouse.duckdb")),
            "settings": PipelineSettings(landing_dir=str(landing)),
            "pinterest": PinterestResource(base_url=emulator.base_url, ad_account_id=ACCOUNT,
                                           access_token=TOKEN),
            "dbt": definitions.defs.resources["dbt"],
            "monitoring": definitions.defs.resources["monitoring"],
        }
        instance = DagsterInstance.ephemeral()
        total_started = time.perf_counter()
        for day in days:
            # The collector drops the day's files just before the nightly run.
            land(files[day], source, landing)
            day_started = time.perf_counter()
            result = materialize(assets, partition_key=str(day), resources=resources,
                                 selection=selection, instance=instance, raise_on_error=False)
            wall = time.perf_counter() - day_started
            steps = stage_seconds(instance, result.run_id)
            rows.append((day, wall, steps, result.success))
            checks = sum(value for key, value in steps.items() if key in check_steps)
            print(f"{day}  {lines[day]:,} lines  {wall:6.1f} s  "
                  + "  ".join(f"{key.split('__')[-1][:14]}={value:.1f}"
                              for key, value in steps.items() if key not in check_steps)
                  + f"  checks={checks:.1f}"
                  + ("" if result.success else "  FAILED")
                  + f"  peak {peak_rss_mb():,.0f} MB", flush=True)
        total = time.perf_counter() - total_started
        marts_started = time.perf_counter()
        marts = materialize(assets, resources=resources, selection=AssetSelection.groups("marts"),
                            instance=instance, raise_on_error=False)
        marts_seconds = time.perf_counter() - marts_started
        sent = sum(emulator.event_counts().values()) if args.events_per_day <= 50_000 else None

    walls = [wall for _, wall, _, _ in rows]
    slowest = max(rows, key=lambda row: row[1])
    print()
    print(f"days: {len(rows)}, failed: {sum(not ok for *_, ok in rows)}")
    print(f"total: {total:.0f} s for {sum(lines.values()):,} landing lines "
          f"({sum(lines.values()) / total:,.0f} lines/s end to end)")
    print(f"median day: {statistics.median(walls):.1f} s; slowest: {slowest[0]} "
          f"{slowest[1]:.1f} s; last day (all sent): {rows[-1][1]:.1f} s")
    stages = sorted({key for _, _, steps, _ in rows for key in steps})
    for key in stages:
        values = [steps[key] for _, _, steps, _ in rows if key in steps]
        print(f"  {key:55s} median {statistics.median(values):6.2f} s  "
              f"max {max(values):6.2f} s  last {rows[-1][2].get(key, 0):6.2f} s")
    print(f"dbt marts, built once after the days: {marts_seconds:.1f} s"
          + ("" if marts.success else "  FAILED"))
    print(f"peak RSS of the pipeline process: {peak_rss_mb():,.0f} MB")
    if sent is not None:
        print(f"events the emulator processed: {sent:,}")
    print(f"machine: {os.cpu_count()} cores, Python {sys.version.split()[0]}")
    if not args.keep and args.dir is None:
        shutil.rmtree(folder, ignore_errors=True)
    return 0 if all(ok for *_, ok in rows) and marts.success else 1


if __name__ == "__main__":
    sys.exit(main())
