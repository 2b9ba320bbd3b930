"""The marketer's report: the day's delivery and match rate in the terminal, and an HTML page
with the last 30 days plotted.

    python -m capi_pipeline report --date 2026-12-01 [--db FILE] [--html FILE] [--days 30]

It reads monitoring.match_rate from the DuckDB file, opened read-only (so it can run beside
the pipeline only when no run is writing). Test-mode and dry-run ledgers are left out of the
headline and the plots, as they would count the same events twice.
"""

from __future__ import annotations

import html
import os
import shutil
import sys
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path

import duckdb
import plotly.graph_objects as go
import plotly.io as pio
from plotly.subplots import make_subplots
from rich.console import Console
from rich.table import Table

from capi_pipeline.monitoring.assets import headline, is_live

DEFAULT_DAYS = 30


class ReportError(Exception):
    """The report cannot be made; the message says why and what to do."""


@dataclass
class Report:
    day: date
    rows: list[dict]  # the day's rows, per destination and event
    history: list[dict]  # one headline per day with data, oldest first


def load(database: str | Path, day: date, days: int = DEFAULT_DAYS) -> Report:
    """The day's monitoring rows and the headline of each of the `days` days up to it."""
    if not Path(database).exists():
        raise ReportError(f"{database} does not exist: set --db or CAPI_DUCKDB_PATH to the "
                          "pipeline's DuckDB file (make demo writes data/demo/warehouse.duckdb)")
    try:
        conn = duckdb.connect(str(database), read_only=True)
    except duckdb.IOException as error:
        raise ReportError(f"cannot open {database} ({str(error).splitlines()[0]}): wait for "
                          "the running pipeline to finish, or report on a copy") from None
    with conn:
        has_table = conn.execute(
            "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'monitoring' "
            "AND table_name = 'match_rate'").fetchone()[0]
        if not has_table:
            raise ReportError(f"{database} has no monitoring.match_rate: run the pipeline "
                              "(make demo, or dagster asset materialize) first")
        cursor = conn.execute(
            "SELECT * FROM monitoring.match_rate WHERE partition_date BETWEEN ? AND ? "
            "ORDER BY partition_date, destination, event_name = 'all', event_name",
            [day - timedelta(days=days - 1), day])
        names = [column[0] for column in cursor.description]
        everything = [dict(zip(names, values, strict=True)) for values in cursor.fetchall()]
    rows = [row for row in everything if row["partition_date"] == day]
    if not rows:
        raise ReportError(f"no match-rate figures for {day}: materialize monitoring/match_rate "
                          f"for partition {day} first")
    history = []
    for current in sorted({row["partition_date"] for row in everything}):
        total = headline([row for row in everything if row["partition_date"] == current])
        if total:
            history.append({"day": current, **total})
    return Report(day=day, rows=rows, history=history)


def _pct(share: float | None) -> str:
    return "-" if share is None else f"{share:.1%}"


def _processed_share(row: dict) -> float | None:
    return row["processed"] / row["sent"] if row["sent"] else None


def _skips(row: dict) -> str:
    reasons = row.get("skipped_by_reason") or {}
    return ", ".join(f"{reason} {count}" for reason, count in sorted(reasons.items())) or "-"


COLUMNS = ("destination", "event", "seen", "eligible", "skipped (why)", "sent", "processed",
           "processed %", "dead letters", "pending", "match rate", "match score")


def table_rows(report: Report) -> list[tuple[str, ...]]:
    """The day's table, one tuple of display strings per destination and event."""
    return [(row["destination"], row["event_name"], str(row["events_seen"]),
             str(row["eligible"]), _skips(row), str(row["sent"]), str(row["processed"]),
             _pct(_processed_share(row)), str(row["dead_lettered"]), str(row["pending"]),
             _pct(row["match_rate"]), f"{row['match_score']:.1f}") for row in report.rows]


def summary_lines(report: Report) -> list[str]:
    """Two sentences a marketer reads first."""
    total = headline(report.rows)
    checkout = [row for row in report.rows if row["event_name"] == "checkout"
                and is_live(row["destination"])]
    lines = [
        f"{report.day}: {total['processed']} of {total['sent']} events sent reached Pinterest "
        f"({_pct(total['processed'] / total['sent'] if total['sent'] else None)}); match "
        f"score {total['match_score']:.1f} of 100, match rate {_pct(total['match_rate'])}."
    ]
    if checkout:
        sent = sum(row["sent"] for row in checkout)
        processed = sum(row["processed"] for row in checkout)
        lines.append(f"Purchases: {processed} of {sent} sent were processed; "
                     f"{sum(row['eligible'] for row in checkout)} of "
                     f"{sum(row['events_seen'] for row in checkout)} seen could be sent.")
    return lines


def print_report(report: Report, console: Console) -> None:
    table = Table(title=f"Pinterest delivery and match rate, {report.day} (UTC)")
    for index, name in enumerate(COLUMNS):
        table.add_column(name, justify="left" if index in (0, 1, 4) else "right")
    for values in table_rows(report):
        table.add_row(*values, style="bold" if values[1] == "all" else None)
    console.print(table)
    for line in summary_lines(report):
        console.print(line)


def figure(report: Report) -> go.Figure:
    """Match score and rate over the days, above the delivery of each day's events."""
    days = [str(point["day"]) for point in report.history]
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, vertical_spacing=0.12,
                        subplot_titles=("Match score (0-100) and match rate (%)",
                                        "Events sent to Pinterest"))
    fig.add_trace(go.Scatter(x=days, y=[p["match_score"] for p in report.history],
                             name="match score", mode="lines+markers"), row=1, col=1)
    fig.add_trace(go.Scatter(x=days, y=[100 * p["match_rate"] for p in report.history],
                             name="match rate %", mode="lines+markers",
                             line={"dash": "dot"}), row=1, col=1)
    for name, key, colour in (("processed", "processed", "#2a9d8f"),
                              ("dead-lettered", "dead_lettered", "#e76f51"),
                              ("pending", "pending", "#e9c46a")):
        fig.add_trace(go.Bar(x=days, y=[p[key] for p in report.history], name=name,
                             marker_color=colour), row=2, col=1)
    fig.update_layout(barmode="stack", height=620, template="plotly_white",
                      margin={"l": 50, "r": 20, "t": 60, "b": 40},
                      legend={"orientation": "h", "y": -0.08})
    fig.update_yaxes(range=[0, 100], row=1, col=1)
    fig.update_xaxes(type="category")
    return fig


def render_html(report: Report) -> str:
    """A self-contained page: plotly's JavaScript is embedded, nothing is fetched."""
    head = "".join(f"<th>{html.escape(name)}</th>" for name in COLUMNS)
    body = "".join(
        "<tr" + (' class="all"' if values[1] == "all" else "") + ">"
        + "".join(f"<td>{html.escape(value)}</td>" for value in values) + "</tr>"
        for values in table_rows(report))
    summary = "".join(f"<p>{html.escape(line)}</p>" for line in summary_lines(report))
    plot = pio.to_html(figure(report), full_html=False, include_plotlyjs=True,
                       config={"displaylogo": False})
    first = report.history[0]["day"] if report.history else report.day
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>Pinterest delivery and match rate, {report.day}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2rem; color: #222; }}
table {{ border-collapse: collapse; font-size: 0.9rem; }}
th, td {{ border-bottom: 1px solid #ddd; padding: 0.3rem 0.6rem; text-align: right; }}
th:nth-child(-n+2), td:nth-child(-n+2), td:nth-child(5) {{ text-align: left; }}
tr.all {{ font-weight: bold; }}
</style></head>
<body>
<h1>Pinterest delivery and match rate, {report.day} (UTC)</h1>
{summary}
<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>
<h2>{first} to {report.day}</h2>
{plot}
<p><small>Match score: identifier coverage of sent events weighted by the components of
Pinterest's Event Quality Score. Match rate: share of processed events carrying an email,
phone, customer id or click id. Test sends and dry runs are left out of the headline and
plots.</small></p>
</body></html>
"""


def main(argv: list[str]) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m capi_pipeline report",
                                     description="The day's delivery and match rate.")
    parser.add_argument("--date", required=True, type=date.fromisoformat,
                        help="the UTC day (partition) to report on, YYYY-MM-DD")
    parser.add_argument("--db", default=os.environ.get("CAPI_DUCKDB_PATH")
                        or "data/capi_pipeline.duckdb",
                        help="the pipeline's DuckDB file (default: CAPI_DUCKDB_PATH)")
    parser.add_argument("--html", type=Path, default=None,
                        help="where to write the page (default: reports/report-DATE.html)")
    parser.add_argument("--days", type=int, default=DEFAULT_DAYS,
                        help="days plotted, ending with --date (default 30)")
    args = parser.parse_args(argv)
    if args.days < 1:
        parser.error("--days must be at least 1")
    # A pipe gets 80 columns from rich, too few for the table; a terminal keeps its own.
    console = Console(width=max(shutil.get_terminal_size((200, 40)).columns, 160))
    try:
        report = load(args.db, args.date, args.days)
    except ReportError as error:
        print(f"report: {error}", file=sys.stderr)
        return 1
    print_report(report, console)
    path = args.html or Path("reports") / f"report-{args.date}.html"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_html(report), encoding="utf-8")
    console.print(f"HTML report: {path}")
    return 0
