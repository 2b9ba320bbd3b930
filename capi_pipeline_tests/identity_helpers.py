"""A staging table filled by hand and the identity graph run over it, for the identity tests."""

from __future__ import annotations

import itertools
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta

import duckdb

from capi_pipeline.identity.graph import GraphRules, build_identity
from capi_pipeline.lib.duck import ensure_schema

RULES = GraphRules(
    default_region="US",
    hub_max_clients=25,
    hub_max_people_per_client=4,
    junk_emails=frozenset({"support@shop.example.com"}),
    max_visitor_identifiers=200,
    attribution_window_days=30,
)
START = date(2026, 11, 1)
UA = "Mozilla/5.0 (X11; Linux x86_64) Chrome/131"
COLUMNS = (
    "partition_date", "event_key", "source_format", "event_type", "action_source", "event_time",
    "event_id", "client_id", "customer_id", "email", "phone", "first_name", "last_name", "city",
    "state", "zip", "country", "ip", "user_agent", "click_id", "cart_token", "checkout_token",
    "gender", "date_of_birth", "advertising_id", "is_bot", "is_test", "duplicate_of",
)
_keys = itertools.count()


def day(n: int) -> date:
    """The n-th day of the test history (day 0 is START)."""
    return START + timedelta(days=n)


class Graph:
    """An in-memory warehouse: stage events day by day, run identity, read the results."""

    def __init__(self, rules: GraphRules = RULES) -> None:
        self.conn = duckdb.connect()
        ensure_schema(self.conn)
        self.rules = rules

    def stage(self, on: int, hour: int = 12, **fields) -> str:
        """Stage one event on day `on` at `hour`; returns its event key."""
        key = f"e{next(_keys)}"
        moment = datetime.combine(day(on), datetime.min.time(), UTC) + timedelta(hours=hour)
        row = {
            "partition_date": day(on), "event_key": key, "source_format": "segment",
            "event_type": "page_view", "action_source": "web", "event_time": moment,
            "event_id": key, "ip": "203.0.113.7", "user_agent": UA, "is_bot": False,
            "is_test": False, **fields,
        }
        self.conn.execute(
            f"INSERT INTO staging.events ({', '.join(COLUMNS)}) "
            f"VALUES ({', '.join('?' for _ in COLUMNS)})",
            [row.get(column) for column in COLUMNS],
        )
        return key

    def run(self, **rules) -> dict[str, int]:
        if rules:
            self.rules = replace(self.rules, **rules)
        return build_identity(self.conn, self.rules)

    def visitor(self, node_key: str) -> str:
        found = self.conn.execute(
            "SELECT visitor_id FROM identity.identifiers WHERE node_key = ?", [node_key]
        ).fetchone()
        assert found is not None, f"no identifier {node_key}"
        return found[0]

    def event_visitor(self, event_key: str) -> str:
        return self.conn.execute(
            "SELECT visitor_id FROM identity.event_visitors WHERE event_key = ?", [event_key]
        ).fetchone()[0]

    def profile(self, visitor_id: str) -> dict:
        cursor = self.conn.execute(
            "SELECT * FROM identity.visitor_profiles WHERE visitor_id = ?", [visitor_id])
        rows = cursor.fetchall()
        assert len(rows) == 1, f"{len(rows)} profiles for {visitor_id}"
        return dict(zip([c[0] for c in cursor.description], rows[0], strict=True))

    def rows(self, sql: str, *params) -> list[tuple]:
        return self.conn.execute(sql, list(params)).fetchall()

    def grouping(self) -> set[frozenset[str]]:
        """The visitors as sets of identifiers, whatever their ids."""
        return {
            frozenset(keys) for (keys,) in self.rows(
                "SELECT list(node_key) FROM identity.identifiers GROUP BY visitor_id")
        }


def at(on: int, hour: int = 12) -> datetime:
    return datetime.combine(day(on), datetime.min.time(), UTC) + timedelta(hours=hour)
