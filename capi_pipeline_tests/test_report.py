"""`python -m capi_pipeline report` on days whose figures are known by construction."""

from datetime import date

import duckdb
import pytest
from dagster import materialize

from capi_pipeline.__main__ import main as cli
from capi_pipeline.monitoring.assets import match_rate
from capi_pipeline.report import ReportError, figure, load
from capi_pipeline.resources import PinterestResource, WarehouseResource
from capi_pipeline_tests import monitoring_data as data

EARLIER = date(2026, 11, 29)


@pytest.fixture(scope="module")
def warehouse(tmp_path_factory):
    """monitoring_data's day, and two days before it with one delivered checkout."""
    path = data.build(tmp_path_factory.mktemp("report") / "warehouse.duckdb")
    with duckdb.connect(str(path)) as conn:
        data.insert_event(conn, "e1", "checkout", True, None, True, False, False, True, True,
                          day=EARLIER)
        data.insert_outcome(conn, "e1", "delivered", day=EARLIER)
    resources = {"duckdb": WarehouseResource(database=str(path)),
                 "pinterest": PinterestResource(ad_account_id=data.AD_ACCOUNT,
                                                access_token="unused")}
    for day in (EARLIER, data.DAY):
        assert materialize([match_rate], partition_key=day.isoformat(),
                           resources=resources).success
    return path


def test_prints_the_day_and_writes_a_page(warehouse, tmp_path, capsys):
    page = tmp_path / "out" / "report.html"
    assert cli(["report", "--date", "2026-12-01", "--db", str(warehouse),
                "--html", str(page)]) == 0
    out = capsys.readouterr().out
    assert "Pinterest delivery and match rate, 2026-12-01 (UTC)" in out
    assert "2026-12-01: 4 of 6 events sent reached Pinterest (66.7%); match score 59.2 of " \
           "100, match rate 75.0%." in out
    assert "Purchases: 2 of 4 sent were processed; 4 of 6 seen could be sent." in out
    assert "bot 1, consent 1" in out

    text = page.read_text()
    assert "<td>checkout</td><td>6</td><td>4</td><td>bot 1, consent 1</td>" in text
    # plotly.js is embedded; no script is fetched (the network is closed where it is read).
    assert "<script src=" not in text and "plotly.js v" in text
    assert f"HTML report: {page}" in out


def test_plot_holds_one_point_per_day_with_figures(warehouse):
    report = load(warehouse, data.DAY)
    plot = figure(report)
    score, rate, processed, dead, pending = plot.data
    assert list(score.x) == ["2026-11-29", "2026-12-01"]  # no figures for 11-30, no point
    # 11-29: one checkout with email, click id and IP+UA: 35 + 25 + 25.
    assert list(score.y) == pytest.approx([85.0, 59.1667], abs=1e-3)
    assert list(rate.y) == pytest.approx([100.0, 75.0])
    assert (list(processed.y), list(dead.y), list(pending.y)) == ([1, 4], [0, 1], [0, 1])


def test_days_limit_the_history(warehouse):
    assert [point["day"] for point in load(warehouse, data.DAY, days=2).history] == [data.DAY]


def test_a_day_without_figures_says_what_to_run(warehouse, capsys):
    assert cli(["report", "--date", "2026-11-30", "--db", str(warehouse)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("report: no match-rate figures for 2026-11-30: materialize "
                          "monitoring/match_rate for partition 2026-11-30 first")
    with pytest.raises(ReportError, match="does not exist: set --db or CAPI_DUCKDB_PATH"):
        load("/nonexistent/file.duckdb", data.DAY)
