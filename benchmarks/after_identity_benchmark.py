"""The daily run's steps after identity, again and again on the same day, with their CPU.

    uv run python benchmarks/load_benchmark.py --days 2 --events-per-day 330000 \
        --dir /tmp/load-base --keep
    uv run python benchmarks/after_identity_benchmark.py /tmp/load-base --runs 3

Takes the folder a load benchmark run left (`--keep`) and, for its last day (or `--day`),
runs what the daily job runs after identity: enrich, delivery to the emulator, the match
rate, Pinterest's score, retention and every asset check of those assets, through Dagster's
`materialize` in this process as `load_benchmark.py` does. Before each run the two DuckDB
files are copied and the day's rows of `capi.pinterest_events`, the ledger and the
monitoring tables are deleted, so the run finds the day as identity left it and sends
everything again. For each step it prints the wall seconds (Dagster's step events) and the
CPU seconds of this process while the step ran (DuckDB's threads included), and for the run
the CPU seconds of the emulator, which runs in its own process. CPU seconds are the steadier
figure when other work shares the cores.

Older code runs the same way through `PYTHONPATH=<a worktree of the commit>`: the script
only needs `capi_pipeline` to have the same assets.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

TOKEN = "load-benchmark-token"
ACCOUNT = "549755813599"
CLEARED = ("capi.pinterest_events", "delivery.event_outcomes", "delivery.requests",
           "monitoring.match_rate", "monitoring.skipped_by_reason", "monitoring.pinterest_eqs")
AFTER_IDENTITY = (["capi", "pinterest_events"], ["delivery", "event_outcomes"],
                  ["delivery", "requests"], ["monitoring", "match_rate"],
                  ["monitoring", "pinterest_eqs"], ["privacy", "retention"])


def process_cpu(pid: int | None = None) -> float:
    """User and system CPU seconds of a process (this one by default), from /proc."""
    fields = Path(f"/proc/{pid or 'self'}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class StepClock:
    """This process's CPU seconds between each step's start and end, read as the instance
    receives the run's events."""

    def __init__(self, instance) -> None:
        self.started: dict[str, float] = {}
        self.cpu: dict[str, float] = {}
        handle = instance.handle_new_event

        def handle_and_clock(entry, **kwargs):
            self.saw(entry.dagster_event)
            return handle(entry, **kwargs)

        instance.handle_new_event = handle_and_clock

    def saw(self, event) -> None:
        if event is None or event.step_key is None:
            return
        if event.event_type_value == "STEP_START":
            self.started[event.step_key] = process_cpu()
        elif event.event_type_value in ("STEP_SUCCESS", "STEP_FAILURE"):
            self.cpu[event.step_key] = process_cpu() - self.started.get(event.step_key, 0.0)


def prepare(source: Path, target: Path, day) -> None:
    from capi_pipeline.resources import WarehouseResource

    shutil.rmtree(target, ignore_errors=True)
    target.mkdir(parents=True)
    for name in ("warehouse.duckdb", "warehouse.personal.duckdb"):
        shutil.copyfile(source / name, target / name)
    with WarehouseResource(database=str(target / "warehouse.duckdb")).get_connection() as conn:
        for table in CLEARED:
            conn.execute(f"DELETE FROM {table} WHERE partition_date = ?", [day])
        conn.execute("CHECKPOINT")


def one_run(folder: Path, day) -> tuple[float, dict[str, float], dict[str, float], float, bool]:
    from dagster import AssetSelection, DagsterInstance, materialize

    from capi_pipeline import definitions
    from capi_pipeline.pinterest.emulator import EmulatorProcess
    from capi_pipeline.resources import PinterestResource, PipelineSettings, WarehouseResource

    sys.path.insert(0, str(Path(__file__).parent))
    from load_benchmark import stage_seconds

    assets = [*definitions.defs.assets, *definitions.defs.asset_checks]
    selection = AssetSelection.assets(*AFTER_IDENTITY)
    instance = DagsterInstance.ephemeral()
    clock = StepClock(instance)
    with EmulatorProcess(token=TOKEN, ad_account_ids=(ACCOUNT,),
                         keep_bodies=False) as emulator:
        resources = {
            "duckdb": WarehouseResource(database=str(folder / "warehouse.duckdb")),
            "settings": PipelineSettings(landing_dir=str(folder / "landing")),
            "pinterest": PinterestResource(base_url=emulator.base_url,
                                           ad_account_id=ACCOUNT, access_token=TOKEN),
            "dbt": definitions.defs.resources["dbt"],
            "monitoring": definitions.defs.resources["monitoring"],
        }
        emulator_before = process_cpu(emulator._process.pid)
        started = time.perf_counter()
        result = materialize(assets, partition_key=str(day), resources=resources,
                             selection=selection, instance=instance, raise_on_error=False)
        wall = time.perf_counter() - started
        emulator_cpu = process_cpu(emulator._process.pid) - emulator_before
    return wall, stage_seconds(instance, result.run_id), clock.cpu, emulator_cpu, result.success


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path, help="a load benchmark's folder, left by --keep")
    parser.add_argument("--day", help="the day to run again (default: the folder's last)")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--work", type=Path, default=None,
                        help="where the copies go (default: a temporary folder)")
    args = parser.parse_args()

    from datetime import date

    import duckdb

    if args.day:
        day = date.fromisoformat(args.day)
    else:
        with duckdb.connect(str(args.folder / "warehouse.duckdb"), read_only=True) as conn:
            day = conn.execute("SELECT max(partition_date) FROM capi.pinterest_events"
                               ).fetchall()[0][0]
    work = args.work or Path(tempfile.mkdtemp(prefix="capi-after-identity-"))
    walls: dict[str, list[float]] = defaultdict(list)
    cpus: dict[str, list[float]] = defaultdict(list)
    try:
        for number in range(1, args.runs + 1):
            prepare(args.folder, work / "run", day)
            cpu_before = process_cpu()
            wall, steps, cpu, emulator_cpu, ok = one_run(work / "run", day)
            total_cpu = process_cpu() - cpu_before
            for key, seconds in steps.items():
                walls[key].append(seconds)
                cpus[key].append(cpu.get(key, 0.0))
            walls["(run)"].append(wall)
            cpus["(run)"].append(total_cpu)
            walls["(emulator)"].append(0.0)
            cpus["(emulator)"].append(emulator_cpu)
            print(f"run {number}: {wall:.2f} s wall, {total_cpu:.2f} s CPU here, emulator "
                  f"{emulator_cpu:.2f} s CPU" + ("" if ok else "  FAILED")
                  + f"; load average {os.getloadavg()[0]:.1f}", flush=True)
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    print(f"day {day}, median of {args.runs} runs:")
    print(f"  {'step':66s} {'wall s':>7s} {'CPU s':>7s}")
    for key in sorted(walls, key=lambda k: -statistics.median(cpus[k])):
        print(f"  {key[:66]:66s} {statistics.median(walls[key]):7.2f} "
              f"{statistics.median(cpus[key]):7.2f}   (CPU: "
              + ", ".join(f"{value:.2f}" for value in cpus[key]) + ")")
    return 0


if __name__ == "__main__":
    sys.exit(main())
