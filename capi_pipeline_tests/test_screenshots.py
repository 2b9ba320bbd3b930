"""The Dagster UI in a real browser: the webserver on loopback over a DuckDB file whose
match-rate history is known, photographed in headless Chromium (Debian's package)."""

from pathlib import Path

import pytest
from dagster import DagsterInstance, materialize

from capi_pipeline import screenshots
from capi_pipeline.monitoring.assets import match_rate
from capi_pipeline.monitoring.checks import (
    match_score_above_floor,
    no_raw_personal_data_in_capi_and_monitoring,
    pinterest_processed_what_was_sent,
)
from capi_pipeline.monitoring.settings import MonitoringSettings
from capi_pipeline.report import load, render_html
from capi_pipeline.resources import PinterestResource, WarehouseResource
from capi_pipeline_tests import monitoring_data as data

pytestmark = pytest.mark.skipif(
    not Path(screenshots.CHROMIUM).exists(),
    reason="/usr/bin/chromium is missing: apt-get install -y chromium (.ci/run installs it)")


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A webserver over the known day, with one materialization in its run history."""
    folder = tmp_path_factory.mktemp("ui")
    database = data.build(folder / "warehouse.duckdb")
    home = folder / "dagster_home"
    home.mkdir()
    resources = {"duckdb": WarehouseResource(database=str(database)),
                 "pinterest": PinterestResource(ad_account_id=data.AD_ACCOUNT,
                                                access_token="unused"),
                 "monitoring": MonitoringSettings()}
    checks = [match_score_above_floor, pinterest_processed_what_was_sent,
              no_raw_personal_data_in_capi_and_monitoring]
    with DagsterInstance.local_temp(str(home)) as instance:
        assert materialize([match_rate, *checks], instance=instance,
                           partition_key=data.DAY.isoformat(), resources=resources).success
    page = folder / "report.html"
    page.write_text(render_html(load(database, data.DAY)))
    with screenshots.webserver(database, home) as base:
        yield base, page


def test_asset_graph_match_rate_page_and_report_are_photographed(served, tmp_path):
    base, page = served
    screenshots.require_assets(base, screenshots.ASSETS)
    saved = screenshots.photograph(screenshots.ui_shots(base, page.as_uri()), tmp_path)
    assert [path.name for path in saved] == [
        "dagster-asset-graph.png", "dagster-match-rate-lineage.png", "dagster-match-rate.png",
        "dagster-match-rate-plots.png", "dagster-match-rate-events.png",
        "dagster-match-rate-checks.png", "report.png"]
    for path in saved:
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert path.stat().st_size > 20_000, f"{path.name} looks blank"


def test_a_missing_asset_fails(served):
    base, _ = served
    with pytest.raises(screenshots.ScreenshotError,
                       match="asset monitoring/no_such_table is missing"):
        screenshots.require_assets(base, [("monitoring", "no_such_table")])


def test_a_page_that_never_shows_its_content_fails(served, tmp_path):
    base, _ = served
    shot = screenshots.Shot("broken", f"{base}/assets/monitoring/match_rate",
                            "text this page never shows")
    with pytest.raises(screenshots.ScreenshotError, match="^broken: .* did not show"):
        screenshots.photograph([shot], tmp_path, timeout_ms=5_000)
    assert not (tmp_path / "broken.png").exists()
