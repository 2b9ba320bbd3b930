"""`make demo`'s program, run as a user runs it: the real dagster CLI against the emulator."""

from __future__ import annotations

import re
import subprocess
import sys

import duckdb


def test_demo_sends_conversions_and_prints_the_match_rate(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "capi_pipeline.demo.run", "--dir", str(tmp_path / "demo"),
         "--days", "2", "--visitors-per-day", "60"],
        capture_output=True, text=True, timeout=540,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    out = result.stdout
    sent = re.search(r"(\d+) eligible, (\d+) sent, (\d+) accepted by Pinterest", out)
    assert sent, out
    eligible, sent_count, accepted = map(int, sent.groups())
    assert eligible > 0 and eligible == sent_count == accepted
    assert re.search(r"match rate \d+\.\d% of accepted events", out)
    assert re.search(r"(\d+) visitors resolved", out)

    # The printed figures are the warehouse's, not a separate tally.
    database = tmp_path / "demo" / "warehouse.duckdb"
    with duckdb.connect(str(database), read_only=True) as conn:
        processed = conn.execute(
            "SELECT count(*) FROM delivery.event_status WHERE outcome = 'delivered'"
        ).fetchone()[0]
    assert processed == accepted
    assert (tmp_path / "demo" / "dagster_home").is_dir()
