"""`make demo`: the whole product on generated events, against the emulator, from the real CLI.

It writes three days of demo landing files, starts the Pinterest emulator on loopback, runs
`dagster asset materialize` for the earlier days' ingest and staging in one run over their
range (so that visitors can be resolved across days) and then for every asset of the most
recent complete day, and prints
what each stage did. It exits non-zero when any run failed.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

from capi_pipeline.demo.generate import generate
from capi_pipeline.lib.duck import connect_read_only, personal_path
from capi_pipeline.pinterest.emulator import EmulatorProcess

DEMO_TOKEN = "demo-conversion-token"
DEMO_AD_ACCOUNT = "549755813599"
DEPLOY_YAML = Path(__file__).resolve().parents[2] / "deploy" / "dagster.yaml"
SCHEMA_CHECKER = Path(__file__).resolve().parents[2].parent / "shared" / "tools" / "capi_schema.py"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, default=Path("data/demo"))
    parser.add_argument("--days", type=int, default=3)
    parser.add_argument("--visitors-per-day", type=int, default=400)
    args = parser.parse_args(argv)

    folder = args.dir.resolve()
    day = datetime.now(UTC).date() - timedelta(days=1)
    landing = folder / "landing"
    database = folder / "warehouse.duckdb"
    received = folder / "emulator_received.ndjson"
    personal = Path(personal_path(str(database)))
    for stale in (database, Path(f"{database}.wal"), personal, Path(f"{personal}.wal"),
                  received):
        stale.unlink(missing_ok=True)
    _clear(landing)

    started = time.perf_counter()
    summary = generate(landing, day, days=args.days, visitors_per_day=args.visitors_per_day)
    lines = sum(summary["lines"].values()) + sum(summary["bad_lines"].values())
    print(f"generated {lines} landing lines for {args.days} days up to {day}: "
          f"{summary['visitors']} visitors, {summary['orders']} orders, "
          f"{sum(summary['bad_lines'].values())} broken lines")

    with EmulatorProcess(token=DEMO_TOKEN, ad_account_ids=(DEMO_AD_ACCOUNT,),
                         record_path=received) as emulator:
        print(f"Pinterest emulator listening on {emulator.base_url}")
        env = {
            **os.environ,
            "CAPI_DUCKDB_PATH": str(database),
            "CAPI_LANDING_DIR": str(landing),
            "PINTEREST_API_BASE_URL": emulator.base_url,
            "PINTEREST_AD_ACCOUNT_ID": DEMO_AD_ACCOUNT,
            "PINTEREST_ACCESS_TOKEN": DEMO_TOKEN,
            # The emulator takes one token for both endpoints; at Pinterest the event quality
            # score needs an OAuth token with ads:read.
            "PINTEREST_EQS_TOKEN": DEMO_TOKEN,
            "DAGSTER_HOME": str(folder / "dagster_home"),
        }
        Path(env["DAGSTER_HOME"]).mkdir(parents=True, exist_ok=True)
        instance_yaml = Path(env["DAGSTER_HOME"]) / "dagster.yaml"
        if not instance_yaml.exists():
            shutil.copyfile(DEPLOY_YAML, instance_yaml)
        if args.days > 1:
            # The earlier days in one run over their range (the assets' single-run backfill
            # policy), as a backfill runs them.
            first, before = day - timedelta(days=args.days - 1), day - timedelta(days=1)
            if not _materialize(env, "key:raw/* or key:staging/*",
                                ["--partition-range", f"{first}...{before}"]):
                return 1
        if not _materialize(env, "*", ["--partition", str(day)]):
            return 1

    _print_summary(database, day)
    checked = _check_bodies(received)
    print(f"make demo took {time.perf_counter() - started:.0f}s")
    return 0 if checked else 1


def _materialize(env: dict[str, str], selection: str, partitions: list[str]) -> bool:
    command = [
        sys.executable, "-m", "dagster", "asset", "materialize",
        "-m", "capi_pipeline.definitions", "--select", selection, *partitions,
    ]
    print(f"$ dagster asset materialize -m capi_pipeline.definitions --select '{selection}' "
          + " ".join(partitions))
    started = time.perf_counter()
    result = subprocess.run(command, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    log_path = Path(env["DAGSTER_HOME"]) / f"materialize-{partitions[-1].split('...')[0]}.log"
    log_path.write_text(result.stdout + result.stderr)
    if result.returncode != 0:
        print(f"  FAILED after {seconds:.0f}s (exit {result.returncode}); log: {log_path}")
        print("\n".join((result.stdout + result.stderr).splitlines()[-30:]))
        return False
    print(f"  ok in {seconds:.0f}s (log: {log_path})")
    return True


def _print_summary(database: Path, day: date) -> None:
    with connect_read_only(str(database)) as conn:
        def one(sql: str, *params):
            return conn.execute(sql, list(params)).fetchone()

        accepted, = one("SELECT count(*) FROM raw.events WHERE partition_date = ?", day)
        rejected, = one("SELECT count(*) FROM raw.rejected_lines WHERE partition_date = ?", day)
        reasons = conn.execute(
            "SELECT reason, count(*) FROM raw.rejected_lines WHERE partition_date = ? "
            "GROUP BY ALL ORDER BY 2 DESC", [day]).fetchall()
        events, duplicates, bots, tests = one(
            "SELECT count(*) FILTER (WHERE duplicate_of IS NULL), "
            "count(*) FILTER (WHERE duplicate_of IS NOT NULL), "
            "count(*) FILTER (WHERE is_bot AND duplicate_of IS NULL), "
            "count(*) FILTER (WHERE is_test AND duplicate_of IS NULL) "
            "FROM staging.events WHERE partition_date = ?", day)
        visitors, = one("SELECT count(*) FROM identity.visitor_profiles")
        refused, = one("SELECT count(*) FROM identity.refused_edges")
        total = one(
            "SELECT events_seen, eligible, sent, processed, dead_lettered, pending, match_rate, "
            "match_score, em_share, click_id_share FROM monitoring.match_rate "
            "WHERE partition_date = ? AND event_name = 'all'", day)
        per_event = conn.execute(
            "SELECT event_name, eligible, sent, processed, match_rate FROM monitoring.match_rate "
            "WHERE partition_date = ? AND event_name <> 'all' ORDER BY event_name", [day],
        ).fetchall()

    seen, eligible, sent, processed, dead, pending, rate, score, em, click = total
    print()
    print(f"=== capi_pipeline demo: partition {day} ===")
    print(f"ingested   {accepted} messages accepted, {rejected} lines rejected "
          f"({', '.join(f'{reason} {count}' for reason, count in reasons) or 'none'})")
    print(f"staged     {events} distinct events ({duplicates} duplicates merged, {bots} from "
          f"bots, {tests} test)")
    print(f"identity   {visitors} visitors resolved over all days ({refused} merges refused)")
    print(f"pinterest  {seen} conversions built, {eligible} eligible, {sent} sent, "
          f"{processed} accepted by Pinterest, {dead} dead-lettered, {pending} pending")
    for name, event_eligible, event_sent, event_processed, event_rate in per_event:
        print(f"           {name:<14} eligible {event_eligible:>5}  sent {event_sent:>5}  "
              f"accepted {event_processed:>5}  match rate {(event_rate or 0):.1%}")
    print(f"match rate {(rate or 0):.1%} of accepted events carry an email, phone, customer id "
          f"or click id; match score {score:.1f}/100 (email on {(em or 0):.0%}, click id on "
          f"{(click or 0):.0%} of eligible events)")


def _check_bodies(received: Path) -> bool:
    if not SCHEMA_CHECKER.exists():
        print(f"schema check skipped: {SCHEMA_CHECKER} not present")
        return True
    if not received.exists():
        print("schema check: the emulator recorded no bodies")
        return False
    result = subprocess.run([sys.executable, str(SCHEMA_CHECKER), "--ndjson", str(received)],
                            capture_output=True, text=True)
    last = (result.stdout.strip().splitlines() or ["no output"])[-1]
    print(f"schema check of every body the emulator received: {last}")
    return result.returncode == 0


def _clear(folder: Path) -> None:
    if folder.exists():
        for path in sorted(folder.rglob("*"), reverse=True):
            path.unlink() if path.is_file() else path.rmdir()


if __name__ == "__main__":
    sys.exit(main())
