"""A day of Pinterest events and delivery outcomes whose monitoring figures are known.

Every row is written here by hand, so each figure the tests expect can be counted from the
table below without running the pipeline:

| event | name       | eligible | skip reason   | em | ph | ext | click | ip+ua | outcome     |
|-------|------------|----------|---------------|----|----|-----|-------|-------|-------------|
| c1    | checkout   | yes      |               | x  |    |     | x     | x     | delivered   |
| c2    | checkout   | yes      |               | x  | x  |     |       | x     | delivered   |
| c3    | checkout   | yes      |               |    |    |     |       | x     | dead_letter |
| c4    | checkout   | yes      |               | x  |    | x   |       | x     | pending     |
| c5    | checkout   | no       | bot           |    |    |     |       | x     | skipped     |
| c6    | checkout   | no       | consent       | x  |    |     |       | x     | skipped     |
| p1    | page_visit | yes      |               |    |    |     |       | x     | delivered   |
| p2    | page_visit | yes      |               | x  |    |     | x     | x     | delivered   |
| p3    | page_visit | no       | no_identifier |    |    |     |       |       | skipped     |
| p4    | page_visit | no       | no_identifier |    |    |     |       |       | skipped     |
| p5    | page_visit | no       | too_old       | x  |    |     |       | x     | skipped     |

`consent` is a reason the monitoring code names nowhere: it must still be counted.
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from pathlib import Path

import duckdb
import orjson

from capi_pipeline.lib.duck import ensure_schema

DAY = date(2026, 12, 1)
AD_ACCOUNT = "549755813599"
DESTINATION = f"pinterest:{AD_ACCOUNT}"
STORE = "shop.example.com"
HASH = "a" * 64

EVENTS = [
    # id, name, eligible, skip_reason, em, ph, external_id, click_id, ip_ua, outcome
    ("c1", "checkout", True, None, True, False, False, True, True, "delivered"),
    ("c2", "checkout", True, None, True, True, False, False, True, "delivered"),
    ("c3", "checkout", True, None, False, False, False, False, True, "dead_letter"),
    ("c4", "checkout", True, None, True, False, True, False, True, "pending"),
    ("c5", "checkout", False, "bot", False, False, False, False, True, "skipped"),
    ("c6", "checkout", False, "consent", True, False, False, False, True, "skipped"),
    ("p1", "page_visit", True, None, False, False, False, False, True, "delivered"),
    ("p2", "page_visit", True, None, True, False, False, True, True, "delivered"),
    ("p3", "page_visit", False, "no_identifier", False, False, False, False, False, "skipped"),
    ("p4", "page_visit", False, "no_identifier", False, False, False, False, False, "skipped"),
    ("p5", "page_visit", False, "too_old", True, False, False, False, True, "skipped"),
]


def payload(event_id: str, name: str, em: bool, ph: bool, external_id: bool, click: bool,
            ip_ua: bool, url: str = "https://shop.example.com/") -> str:
    user_data: dict[str, object] = {}
    if em:
        user_data["em"] = [HASH]
    if ph:
        user_data["ph"] = ["b" * 64]
    if external_id:
        user_data["external_id"] = ["c" * 64]
    if click:
        user_data["click_id"] = "dj0yJnU9bGFuZGluZw"
    if ip_ua:
        user_data["client_ip_address"] = "203.0.113.7"
        user_data["client_user_agent"] = "Mozilla/5.0 (X11; Linux x86_64) Chrome/120.0.6099.109"
    return orjson.dumps({"event_name": name, "action_source": "web", "event_time": 1796083200,
                         "event_id": event_id, "event_source_url": url,
                         "user_data": user_data}).decode()


def insert_event(conn, event_id: str, name: str, eligible: bool, skip_reason: str | None,
                 em: bool, ph: bool, external_id: bool, click: bool, ip_ua: bool,
                 day: date = DAY, url: str = "https://shop.example.com/",
                 visitor: str | None = None) -> None:
    conn.execute(
        """
        INSERT INTO capi.pinterest_events (partition_date, event_id, event_name, action_source,
            event_time, source_event_type, store, visitor_id, eligible, skip_reason, has_em,
            has_ph, has_external_id, has_click_id, has_ip_ua, has_hashed_maids,
            click_id_from_profile, payload)
        VALUES (?, ?, ?, 'web', 1796083200, 'purchase', ?, ?, ?, ?, ?, ?, ?, ?, ?, false,
                false, ?)
        """,
        [day, event_id, name, STORE, visitor or f"v_{event_id}", eligible, skip_reason, em,
         ph, external_id, click, ip_ua, payload(event_id, name, em, ph, external_id, click,
                                                ip_ua, url)],
    )


def insert_outcome(conn, event_id: str, outcome: str, day: date = DAY,
                   error: str | None = None) -> None:
    conn.execute(
        "INSERT INTO delivery.event_outcomes VALUES (?, ?, ?, ?, 1, 'r1', ?, NULL, ?)",
        [DESTINATION, day, event_id, outcome, error, datetime(2026, 12, 2, 2, tzinfo=UTC)],
    )


def build(path: Path, events=EVENTS) -> Path:
    """Write the day above into a fresh DuckDB file, with three visitors' profiles."""
    with duckdb.connect(str(path)) as conn:
        ensure_schema(conn)
        for event_id, name, eligible, reason, em, ph, ext, click, ip_ua, outcome in events:
            insert_event(conn, event_id, name, eligible, reason, em, ph, ext, click, ip_ua,
                         visitor=f"v_{event_id[0]}{int(event_id[1]) % 3}")
            insert_outcome(conn, event_id, outcome,
                           error="Event time is too old" if outcome == "dead_letter" else None)
        conn.execute(
            "INSERT INTO delivery.requests VALUES "
            "('r1', ?, ?, 1, 1, 8, 200, 12.5, NULL, ?), ('r0', ?, ?, 1, 0, 8, 503, 30.0, "
            "'HTTP 503', ?)",
            [DESTINATION, DAY, datetime(2026, 12, 2, 2, tzinfo=UTC)] * 2)
        for visitor, first_seen in (("v_c1", DAY), ("v_c2", DAY), ("v_p0", date(2026, 11, 30))):
            conn.execute(
                "INSERT INTO identity.visitor_profiles (visitor_id, identifiers, events, "
                "first_seen, last_seen) VALUES (?, 2, 3, ?, ?)",
                [visitor, datetime.combine(first_seen, datetime.min.time(), UTC),
                 datetime.combine(DAY, datetime.min.time(), UTC)])
    return path
