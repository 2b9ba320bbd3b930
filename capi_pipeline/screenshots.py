"""Screenshots of the Dagster UI and the report, taken in headless Chromium, for docs/.

    python -m capi_pipeline screenshots [--db data/demo/warehouse.duckdb]
        [--dagster-home data/demo/dagster_home] [--out docs/screenshots] [--date YYYY-MM-DD]

It starts the Dagster webserver on 127.0.0.1 (a free port) over the DuckDB file and run
history `make demo` leaves, waits for the code location to load, opens the asset graph and
the match-rate asset's page in Debian's Chromium (driven by playwright), writes the report for
the file's latest day and photographs it too. It fails, saying which, when the code location
does not load, an asset is missing, or a page shows an error; it stops the webserver it
started in every case.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import duckdb
import httpx

REPOSITORY = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"
# The flags a sandboxed, offline machine needs: no GPU, no sandbox (root in a container), and
# nothing that would try the network behind the page's back.
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu",
                  "--disable-background-networking", "--disable-component-update",
                  "--disable-sync", "--no-first-run"]
ASSETS = (("monitoring", "match_rate"), ("monitoring", "pinterest_eqs"),
          ("delivery", "event_outcomes"), ("marts", "match_rate_daily"))
# What Dagster's UI shows when a page breaks; none of it appears on a healthy page.
ERROR_TEXTS = ("Something went wrong", "Unexpected error", "An error occurred",
               "Asset not found", "PythonError", "Failed to load", "Error loading")

LOCATION_QUERY = """
{ workspaceOrError { __typename ... on Workspace { locationEntries { name loadStatus
  locationOrLoadError { __typename ... on PythonError { message } } } } } }
"""
# An asset that only has history (materialized once, since removed) is an Asset too, without
# a definition: only one with a definition is in the code location.
ASSET_QUERY = """
query($path: [String!]!) { assetOrError(assetKey: {path: $path}) { __typename
  ... on Asset { definition { id } } } }
"""


class ScreenshotError(Exception):
    """The UI or the report could not be photographed as it should look; says why."""


@dataclass
class Shot:
    name: str
    url: str
    wait_for: str  # text the page must show once loaded
    click: str | None = None  # a button or text to click first (a tab, a check's name)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def webserver(database: Path, dagster_home: Path, timeout: float = 240.0):
    """The Dagster webserver on a free loopback port; yields its base URL."""
    dagster_home.mkdir(parents=True, exist_ok=True)
    port = free_port()
    env = {**os.environ, "DAGSTER_HOME": str(dagster_home.resolve()),
           "CAPI_DUCKDB_PATH": str(database.resolve())}
    log = tempfile.TemporaryFile()
    process = subprocess.Popen(
        [sys.executable, "-m", "dagster_webserver", "-h", "127.0.0.1", "-p", str(port),
         "-w", str(REPOSITORY / "workspace.yaml")],
        cwd=REPOSITORY, env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for_location(base, process, timeout)
        yield base
    except ScreenshotError:
        log.seek(0)
        tail = log.read().decode(errors="replace").splitlines()[-15:]
        print("\n".join(tail), file=sys.stderr)
        raise
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


def wait_for_location(base: str, process: subprocess.Popen, timeout: float) -> None:
    """Until the code location is loaded; raises with its error when it failed to load."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise ScreenshotError(f"the Dagster webserver exited with {process.returncode} "
                                  "before it served the UI")
        try:
            answer = httpx.post(f"{base}/graphql", json={"query": LOCATION_QUERY}, timeout=5)
            entries = answer.json()["data"]["workspaceOrError"]["locationEntries"]
        except (httpx.HTTPError, KeyError, TypeError, ValueError):
            time.sleep(1)
            continue
        if entries and all(entry["loadStatus"] == "LOADED" for entry in entries):
            for entry in entries:
                error = entry["locationOrLoadError"]
                if error and error["__typename"] == "PythonError":
                    first = error["message"].strip().splitlines()[0]
                    raise ScreenshotError(f"code location {entry['name']} failed to load: "
                                          f"{first}")
            return
        time.sleep(1)
    raise ScreenshotError(f"the code location did not load within {timeout:.0f}s")


def require_assets(base: str, assets: Sequence[Sequence[str]]) -> None:
    for path in assets:
        answer = httpx.post(f"{base}/graphql", timeout=30, json={
            "query": ASSET_QUERY, "variables": {"path": list(path)}}).json()
        found = answer["data"]["assetOrError"]
        if found["__typename"] != "Asset" or not found.get("definition"):
            raise ScreenshotError(f"asset {'/'.join(path)} is missing from the code location")


def photograph(shots: Sequence[Shot], out: Path, chromium: str = CHROMIUM,
               timeout_ms: int = 120_000) -> list[Path]:
    """Open each page in headless Chromium, check it, and save a PNG per page under `out`."""
    from playwright.sync_api import Error as PlaywrightError
    from playwright.sync_api import sync_playwright

    if not Path(chromium).exists():
        raise ScreenshotError(f"{chromium} not found: apt-get install -y chromium")
    out.mkdir(parents=True, exist_ok=True)
    saved = []
    with tempfile.TemporaryDirectory() as profile, sync_playwright() as playwright:
        browser = playwright.chromium.launch_persistent_context(
            profile, executable_path=chromium, headless=True, args=CHROMIUM_FLAGS,
            viewport={"width": 1600, "height": 1000}, device_scale_factor=1)
        try:
            page = browser.new_page()
            for shot in shots:
                try:
                    page.goto(shot.url, wait_until="load", timeout=timeout_ms)
                    if shot.click:
                        target = page.get_by_role("button", name=shot.click)
                        target.or_(page.get_by_text(shot.click, exact=True)).first.click(
                            timeout=timeout_ms)
                    page.get_by_text(shot.wait_for, exact=False).first.wait_for(
                        timeout=timeout_ms)
                    page.wait_for_load_state("networkidle", timeout=timeout_ms)
                    _dismiss_invitation(page)
                    page.wait_for_timeout(1000)  # charts and the graph animate into place
                except PlaywrightError as error:
                    raise ScreenshotError(f"{shot.name}: {shot.url} did not show "
                                          f"{shot.wait_for!r} ({str(error).splitlines()[0]})"
                                          ) from None
                text = page.inner_text("body")
                for marker in ERROR_TEXTS:
                    if marker in text:
                        raise ScreenshotError(f"{shot.name}: {shot.url} shows {marker!r}")
                path = out / f"{shot.name}.png"
                page.screenshot(path=str(path), full_page=False)
                saved.append(path)
        finally:
            browser.close()
    return saved


def ui_shots(base: str, report_uri: str) -> list[Shot]:
    """The pages the docs show: the asset graph, the match-rate asset's lineage, overview,
    plots of its headline figures over time, its latest materialization, its checks, and the
    report."""
    asset = f"{base}/assets/monitoring/match_rate"
    return [
        # The toolbar's button appears once the graph is laid out, not while it loads.
        Shot("dagster-asset-graph", f"{base}/asset-groups", "Materialize all"),
        Shot("dagster-match-rate-lineage",
             f"{asset}?view=lineage&lineageScope=upstream&lineageDepth=6", "Graph depth"),
        Shot("dagster-match-rate", asset, "Latest materialization"),
        Shot("dagster-match-rate-plots", asset, "match_score", click="Plots"),
        Shot("dagster-match-rate-events", f"{asset}?view=events", "by_event"),
        Shot("dagster-match-rate-checks", f"{asset}?view=checks", "Warns when",
             click="match_score_above_floor"),
        Shot("report", report_uri, "Match score"),
    ]


def _dismiss_invitation(page) -> None:
    """Close the newsletter invitation a fresh browser profile gets on its first page."""
    skip = page.get_by_role("button", name="Skip")
    if skip.count():
        skip.first.click()
        page.wait_for_timeout(500)


def latest_day(database: Path) -> date:
    with duckdb.connect(str(database), read_only=True) as conn:
        day = conn.execute("SELECT max(partition_date) FROM monitoring.match_rate").fetchone()[0]
    if day is None:
        raise ScreenshotError(f"{database} has no match-rate figures: run make demo first")
    return day


def take(database: Path, dagster_home: Path, out: Path, day: date | None = None,
         chromium: str = CHROMIUM, assets: Sequence[Sequence[str]] = ASSETS) -> list[Path]:
    """Every screenshot for the docs: the UI's asset graph and match-rate page, the report."""
    from capi_pipeline.report import load, render_html

    if not database.exists():
        raise ScreenshotError(f"{database} does not exist: run make demo first")
    day = day or latest_day(database)
    with tempfile.TemporaryDirectory() as scratch:
        report_page = Path(scratch) / f"report-{day}.html"
        report_page.write_text(render_html(load(database, day)), encoding="utf-8")
        # The server reads the file while it runs; a copy leaves the demo's file free.
        copy = Path(scratch) / "warehouse.duckdb"
        shutil.copyfile(database, copy)
        with webserver(copy, dagster_home) as base:
            require_assets(base, assets)
            shots = ui_shots(base, report_page.as_uri())
            return photograph(shots, out, chromium)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m capi_pipeline screenshots",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--db", type=Path, default=Path("data/demo/warehouse.duckdb"))
    parser.add_argument("--dagster-home", type=Path, default=Path("data/demo/dagster_home"))
    parser.add_argument("--out", type=Path, default=Path("docs/screenshots"))
    parser.add_argument("--date", type=date.fromisoformat, default=None)
    parser.add_argument("--chromium", default=CHROMIUM)
    args = parser.parse_args(argv)
    try:
        saved = take(args.db, args.dagster_home, args.out, args.date, args.chromium)
    except ScreenshotError as error:
        print(f"screenshots: {error}", file=sys.stderr)
        return 1
    for path in saved:
        print(f"saved {path}")
    return 0
