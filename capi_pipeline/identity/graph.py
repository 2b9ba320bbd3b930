"""The identity graph: identifiers seen together, joined into visitors, guarded against welds.

Nodes are identifiers (`customer:`, `email:`, `phone:`, `device:`, `client:`, `checkout:`,
`cart:` keys), each given a number the first time it is seen; an edge joins two identifiers that
appeared on one event (every pair of them, so refusing one identifier's edges leaves the event's
other identifiers joined). A visitor is a connected component.

The graph is kept per staged day (`identity.identifier_days`, `identity.edge_days`, the events'
identifiers and facts in `identity.event_visitors`), so a run reads from staging only the days
that are new or changed since the last run and adds their edges to the accumulated ones. The
components are then recomputed over every accumulated edge with scipy's connected components
(a few seconds for millions of edges), which also handles the rare edge that stops joining.

Guards stop one junk or shared identifier from welding strangers into one visitor: junk values
never become nodes; hubs (a cookie with more people on it than one browser has, an address on
more browsers than one person uses, a token shared by several people) keep their node but lose
their edges; and a merge that would make a visitor larger than the size limit is refused. Every
edge refused is listed in `identity.refused_edges` with its reason.

Visitor ids are stable: a visitor whose identifiers did not change keeps its id, a merged
visitor keeps the id of the oldest visitor it absorbed, and the ids that stop being used are
kept in `identity.visitor_id_map` pointing to the current one.
"""

from __future__ import annotations

import time
from contextlib import nullcontext
from dataclasses import dataclass
from datetime import date

import duckdb
import numpy as np
import pyarrow as pa

from capi_pipeline.identity.components import assign_visitor_ids, guarded_components
from capi_pipeline.identity.profiles import (
    attribute_clicks,
    refresh_profiles,
    update_events,
    write_refused_edges,
)
from capi_pipeline.identity.rules import (  # noqa: F401 - is_junk_email is enrich's too
    JUNK_IDS,
    KINDS,
    GraphRules,
    email_node,
    is_junk_email,
    phone_node,
)
from capi_pipeline.identity.tables import replace_rows, temp_table
from capi_pipeline.lib.duck import ensure_schema, temporary_setting

IDENTITY_TABLES = (
    "identifiers", "edges", "refused_edges", "event_visitors", "identifier_days", "edge_days",
    "graph_days", "graph_runs", "visitor_id_map", "visitor_profiles",
)


@dataclass
class RunPlan:
    """What one run reads from staging and whether it recomputes every derived table."""

    days: list[date]
    removed: list[date]
    full: bool
    records: list[tuple[date, int, int, int]]
    rules_changed: bool = False


def build_identity(conn: duckdb.DuckDBPyConnection, rules: GraphRules,
                   phases: dict[str, float] | None = None) -> dict[str, int]:
    """Bring every identity table up to date with staging; returns counts for metadata.

    Only staged days that are new or whose rows changed are read. A run that only adds days
    is incremental: new identifiers and edges are appended, hubs are re-examined among the
    identifiers those days touched, and only visitors whose identifiers or events changed get
    new profiles. A staged day that was re-run or deleted, or a change of the rules, makes the
    run recompute every derived table from the per-day tables (and, for a rules change, reread
    every staged day), so the result never depends on the order of runs.

    `phases`, when given, receives the seconds each phase of the run took (the benchmark
    prints them).
    """
    started = time.perf_counter()
    clock = _Phases(phases)
    ensure_layout(conn)
    plan = plan_run(conn, rules)
    defer_vacuum = not _vacuum_due(conn)
    clock.done("plan")
    conn.execute("BEGIN TRANSACTION")
    try:
        stats = _apply(conn, rules, plan, clock)
        conn.execute("DELETE FROM identity.graph_days WHERE partition_date IN "
                     "(SELECT unnest(?::DATE[]))", [[r[0] for r in plan.records] + plan.removed])
        if plan.records:
            conn.executemany(
                "INSERT INTO identity.graph_days VALUES (?, ?, ?, ?, now())", plan.records)
        stats["seconds"] = round(time.perf_counter() - started, 3)
        conn.execute(
            "INSERT INTO identity.graph_runs VALUES (now(), ?, ?, ?, ?, ?, ?, ?)",
            ["full" if plan.full else "incremental", len(plan.days), rules.fingerprint(),
             stats["visitors"], stats["visitors_merged"], stats["visitors_split"],
             stats["seconds"]],
        )
        with _vacuum_deferred(conn, defer_vacuum):
            conn.execute("COMMIT")
        clock.done("commit")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return stats


# The identity tables whose rows a run replaces (deleted and appended).
REPLACED_TABLES = ("visitor_profiles", "identifiers", "edges", "event_visitors")
# Deleted rows are reclaimed once they are this share of a table's stored rows.
VACUUM_SHARE = 1 / 3


def _vacuum_due(conn: duckdb.DuckDBPyConnection) -> bool:
    """Whether deleted rows make up VACUUM_SHARE of one of REPLACED_TABLES's stored rows.

    `estimated_size` counts the rows stored, deleted ones included; count(*) the live ones.
    """
    stored = dict(conn.execute("""
        SELECT table_name, estimated_size FROM duckdb_tables()
        WHERE database_name IN (current_database(), 'personal') AND schema_name = 'identity'
    """).fetchall())
    live = conn.execute("SELECT " + ", ".join(
        f"(SELECT count(*) FROM identity.{table})" for table in REPLACED_TABLES)).fetchall()[0]
    dead = {table: stored.get(table, 0) - rows
            for table, rows in zip(REPLACED_TABLES, live, strict=True)}
    return any(dead[table] > 0 and dead[table] >= VACUUM_SHARE * stored[table]
               for table in REPLACED_TABLES)


def _vacuum_deferred(conn: duckdb.DuckDBPyConnection, defer: bool):
    """The commit's checkpoint without vacuuming deletes, when `defer`.

    A day replaces about an eighth of the profiles and a tenth of the identifiers, spread over
    the tables; DuckDB's checkpoint then merges (rewrites) whole row groups to reclaim the
    deleted rows, most of the commit's time (4.5 of 5 s at 10M events). Deferred, the deleted
    rows stay marked and skipped by scans, and are reclaimed by the checkpoint of the first run
    that starts with them at VACUUM_SHARE of a table's stored rows (every few days). The
    setting is the database instance's, so it is put back right after the commit.
    """
    return temporary_setting(conn, "max_vacuum_tasks", 0) if defer else nullcontext()


class _Phases:
    """Seconds per phase of a run, into a caller's dict (nothing when it gave none)."""

    def __init__(self, into: dict[str, float] | None) -> None:
        self.into = into
        self.last = time.perf_counter()

    def done(self, phase: str) -> None:
        now = time.perf_counter()
        if self.into is not None:
            self.into[phase] = self.into.get(phase, 0.0) + now - self.last
        self.last = now


def ensure_layout(conn: duckdb.DuckDBPyConnection) -> None:
    """Replace identity tables of the earlier, rebuilt-each-run layout; they hold nothing the
    staged events cannot give again, and the first run after this reads every staged day."""
    current = conn.execute("""
        SELECT count(*) FROM duckdb_columns()
        WHERE database_name IN (current_database(), 'personal') AND schema_name = 'identity'
          AND table_name = 'identifiers' AND column_name = 'node_id'
    """).fetchone()[0]
    if current:
        return
    for table in IDENTITY_TABLES:
        conn.execute(f"DROP TABLE IF EXISTS identity.{table}")
    ensure_schema(conn)


# A day's row signature changes whenever staging rewrites its rows (a re-run replaces them):
# cheap, one aggregate over row ids. Only for the days whose rows were rewritten is the content
# fingerprint computed, over every staged column identity reads, so a re-run that changed an
# email is read again while a re-run that changed nothing is not.
ROW_SIGNATURES_SQL = """
SELECT partition_date, count(*) AS staged_events, bit_xor(hash(rowid)) AS row_signature
FROM staging.events
GROUP BY partition_date
"""

FINGERPRINTS_SQL = """
SELECT partition_date,
       bit_xor(hash(event_key, event_time, action_source, client_id, customer_id, email, phone,
                    first_name, last_name, city, state, zip, country, ip, user_agent, click_id,
                    cart_token, checkout_token, gender, date_of_birth, advertising_id, is_bot,
                    is_test, duplicate_of)) AS fingerprint
FROM staging.events
WHERE partition_date IN (SELECT unnest(?::DATE[]))
GROUP BY partition_date
"""


def plan_run(conn: duckdb.DuckDBPyConnection, rules: GraphRules) -> RunPlan:
    """The staged days to read, the days gone from staging, and whether to recompute all."""
    staged = {
        day: (int(events), int(signature))
        for day, events, signature in conn.execute(ROW_SIGNATURES_SQL).fetchall()
    }
    seen = {
        day: (int(events), int(fingerprint), int(signature))
        for day, events, fingerprint, signature in conn.execute(
            "SELECT partition_date, staged_events, fingerprint, row_signature "
            "FROM identity.graph_days"
        ).fetchall()
    }
    last_rules = conn.execute(
        "SELECT rules FROM identity.graph_runs ORDER BY run_at DESC LIMIT 1"
    ).fetchone()
    rules_changed = last_rules is not None and last_rules[0] != rules.fingerprint()
    rewritten = sorted(
        day for day, (events, signature) in staged.items()
        if rules_changed or day not in seen or seen[day][0::2] != (events, signature)
    )
    content = dict(conn.execute(FINGERPRINTS_SQL, [rewritten]).fetchall()) if rewritten else {}
    if rules_changed:
        days = sorted(staged)
    else:
        days = [
            day for day in rewritten
            if day not in seen or seen[day][:2] != (staged[day][0], int(content[day]))
        ]
    # A day the retention asset purged from staging keeps what identity derived from it.
    purged = {day for (day,) in conn.execute(
        "SELECT partition_date FROM privacy.purged_days").fetchall()}
    removed = sorted(day for day in seen if day not in staged and day not in purged)
    reread = any(day in seen for day in days)
    return RunPlan(
        days=days,
        removed=removed,
        full=rules_changed or reread or bool(removed) or not seen,
        records=[(day, staged[day][0], int(content[day]), staged[day][1]) for day in rewritten],
        rules_changed=rules_changed,
    )


def _apply(conn: duckdb.DuckDBPyConnection, rules: GraphRules, plan: RunPlan,
           clock: _Phases) -> dict[str, int]:
    conn.execute(
        "CREATE OR REPLACE TEMP TABLE run_days AS SELECT unnest(?::DATE[]) AS partition_date",
        [plan.days + plan.removed],
    )
    if not plan.days and not plan.full:
        return _stats(conn, plan, new_hubs=[], size_refused=0,
                      changes={"visitors_merged": 0, "visitors_split": 0})
    _extract(conn, rules)
    clock.done("read staged days")
    written = _replace_days(conn, keep_unchanged=not plan.rules_changed)
    clock.done("per-day tables and event rows")
    if plan.full:
        _rebuild_accumulated(conn)
        conn.execute("CREATE OR REPLACE TEMP TABLE pending_totals (_row BIGINT, "
                     "events INTEGER, first_seen TIMESTAMPTZ, last_seen TIMESTAMPTZ)")
    else:
        _add_accumulated(conn)
    clock.done("identifier and edge totals")
    new_hubs = _find_hubs(conn, rules, plan.full)
    clock.done("hubs")
    node_ids, labels, size_refused = guarded_components(conn, rules, plan.full, new_hubs)
    clock.done("components and size guard")
    changes = assign_visitor_ids(conn, node_ids, labels, plan.full)
    clock.done("visitor ids and id map")
    # An incremental run that found no hub only merges and grows visitors.
    combine = not plan.full and not new_hubs
    update_events(conn, new_hubs, written, combine)
    clock.done("events' visitors")
    refresh_profiles(conn, written, combine)
    clock.done("profiles")
    attribute_clicks(conn, rules, written, combine)
    clock.done("click attribution")
    write_refused_edges(conn, plan.full, new_hubs)
    clock.done("refused edges")
    stats = _stats(conn, plan, new_hubs, size_refused, changes)
    clock.done("counts")
    return stats


def _stats(conn, plan: RunPlan, new_hubs: list[int], size_refused: int,
           changes: dict[str, int]) -> dict[str, int]:
    stats = conn.execute(STATS_SQL).fetchone()
    names = ("visitors", "identifiers", "edges", "refused_edges", "largest_visitor",
             "events_resolved")
    return {
        **dict(zip(names, (int(v or 0) for v in stats), strict=True)),
        "days_read": len(plan.days),
        "full_recompute": int(plan.full),
        "new_hubs": len(new_hubs),
        "size_refused_edges": size_refused,
        **changes,
    }


# --- reading the new days ---------------------------------------------------------------------

# The events people made on the days read: bots and test traffic would only join strangers.
RUN_EVENTS_SQL = """
CREATE OR REPLACE TEMP TABLE run_staged AS
SELECT rowid AS ev, event_key, partition_date, event_time, action_source,
       client_id, customer_id, email AS raw_email, phone AS raw_phone, first_name, last_name,
       city, state, zip, country, ip, user_agent, click_id, checkout_token, cart_token,
       advertising_id, gender, date_of_birth
FROM staging.events
WHERE partition_date IN (SELECT partition_date FROM run_days)
  AND duplicate_of IS NULL AND NOT is_bot AND NOT is_test
"""

# A junk id is a placeholder word, or one character repeated (dashes aside: the zeroed
# advertising id 00000000-0000-0000-0000-000000000000 is what a device sends without consent).
JUNK_ID_MACRO = """
CREATE OR REPLACE TEMP MACRO capi_junk_id(v) AS
    list_contains($junk_ids, lower(v))
    OR length(replace(replace(v, '-', ''), left(replace(v, '-', ''), 1), '')) = 0
"""

RUN_NODES_SQL = """
CREATE OR REPLACE TEMP TABLE run_nodes AS
WITH unpivoted AS (
    SELECT ev, partition_date, event_time, 'customer' AS kind, customer_id AS value
    FROM run_events
    UNION ALL SELECT ev, partition_date, event_time, 'email', email FROM run_events
    UNION ALL SELECT ev, partition_date, event_time, 'phone', phone FROM run_events
    UNION ALL SELECT ev, partition_date, event_time, 'device', advertising_id
    FROM run_events
    UNION ALL SELECT ev, partition_date, event_time, 'client', client_id FROM run_events
    UNION ALL SELECT ev, partition_date, event_time, 'checkout', checkout_token
    FROM run_events
    UNION ALL SELECT ev, partition_date, event_time, 'cart', cart_token FROM run_events
)
SELECT ev, partition_date, event_time, kind, value,
       kind || ':' || value AS node_key, list_position($kinds, kind) AS rank
FROM unpivoted
WHERE value IS NOT NULL AND trim(value) <> ''
  AND (kind IN ('email', 'phone') OR NOT capi_junk_id(trim(value)))
"""


def _extract(conn: duckdb.DuckDBPyConnection, rules: GraphRules) -> None:
    """The days' events, their identifiers (registered as nodes) and their facts."""
    conn.execute(RUN_EVENTS_SQL)
    # Normalization runs once per distinct value, not per event.
    emails = [row[0] for row in conn.execute(
        "SELECT DISTINCT raw_email FROM run_staged WHERE raw_email IS NOT NULL").fetchall()]
    temp_table(conn, "run_emails", pa.table({
        "raw": pa.array(emails, pa.string()),
        "node": pa.array([email_node(email, rules) for email in emails], pa.string()),
    }))
    phones = conn.execute(
        "SELECT DISTINCT raw_phone, country FROM run_staged WHERE raw_phone IS NOT NULL"
    ).fetchall()
    temp_table(conn, "run_phones", pa.table({
        "raw": pa.array([raw for raw, _ in phones], pa.string()),
        "country": pa.array([country for _, country in phones], pa.string()),
        "node": pa.array([phone_node(raw, country, rules) for raw, country in phones],
                         pa.string()),
    }))

    conn.execute("""
        CREATE OR REPLACE TEMP TABLE run_events AS
        SELECT s.* EXCLUDE (raw_email, raw_phone), m.node AS email, p.node AS phone
        FROM run_staged s
        LEFT JOIN run_emails m ON m.raw = s.raw_email
        LEFT JOIN run_phones p ON p.raw = s.raw_phone AND p.country IS NOT DISTINCT FROM s.country
    """)
    conn.execute(JUNK_ID_MACRO.replace("$junk_ids", _sql_list(JUNK_IDS)))
    conn.execute(RUN_NODES_SQL, {"kinds": list(KINDS)})
    next_id = conn.execute(
        "SELECT coalesce(max(node_id), -1) + 1 FROM identity.identifiers").fetchone()[0]
    # The days' identifiers are looked up by key once (a join over every identifier's key):
    # the known ones keep their node id, the others are numbered from next_id. Their visitor
    # ids as the run starts are kept too: the run's event rows take their anchor's from there
    # (or from node_changes), not from a join over every identifier; and their row ids, by
    # which _add_accumulated reads them again.
    conn.execute("""
        CREATE OR REPLACE TEMP TABLE run_keys AS
        SELECT n.node_key, n.kind, n.value, i.node_id, i.visitor_id, i._row
        FROM (SELECT DISTINCT node_key, kind, value FROM run_nodes) n
        LEFT JOIN (SELECT node_key, node_id, visitor_id, rowid AS _row
                   FROM identity.identifiers) i USING (node_key)
    """)
    conn.execute("""
        CREATE OR REPLACE TEMP TABLE new_keys AS
        SELECT node_key, kind, value, $next_id - 1 + row_number() OVER () AS node_id
        FROM run_keys WHERE node_id IS NULL
    """, {"next_id": next_id})
    conn.execute("""
        CREATE OR REPLACE TEMP TABLE run_key_ids AS
        SELECT node_key, kind AS identifier_type, node_id, visitor_id FROM run_keys
        WHERE node_id IS NOT NULL
        UNION ALL SELECT node_key, kind, node_id, '' FROM new_keys
    """)
    conn.execute("""
        CREATE OR REPLACE TEMP TABLE run_node_ids AS
        SELECT n.ev, n.partition_date, n.event_time, n.rank, k.node_id
        FROM run_nodes n JOIN run_key_ids k USING (node_key)
    """)
    # A new identifier appears on the days read only: its totals are theirs, written with it.
    conn.execute("""
        INSERT INTO identity.identifiers
            (node_key, identifier_type, identifier_value, visitor_id, events, first_seen,
             last_seen, node_id)
        SELECT k.node_key, k.kind, k.value, '', t.events, t.first_seen, t.last_seen, k.node_id
        FROM new_keys k
        JOIN (SELECT node_id, count(*) AS events, min(event_time) AS first_seen,
                     max(event_time) AS last_seen
              FROM run_node_ids WHERE node_id >= $next_id GROUP BY node_id) t USING (node_id)
    """, {"next_id": next_id})


def _sql_list(values) -> str:
    return "[" + ", ".join("'" + value.replace("'", "''") + "'" for value in values) + "]"


# The new days' event rows, as identity.event_visitors keeps them (visitor and attribution to
# be decided).
EVENT_ROWS_SQL = """
SELECT e.ev AS _ev, e.event_key, e.partition_date, '' AS visitor_id, e.event_time, n.node_ids,
       n.first_node AS anchor_node_id, e.action_source, e.email, e.phone, e.first_name,
       e.last_name, e.city, e.state, e.zip, e.country, e.customer_id, e.ip,
       e.user_agent, e.click_id, e.gender, e.date_of_birth, e.advertising_id
FROM run_events e
JOIN (SELECT ev, list(node_id) AS node_ids, arg_min(node_id, rank) AS first_node
      FROM run_node_ids GROUP BY ev) n USING (ev)
"""

# What an event row holds that comes from staging (its visitor, anchor and attribution are
# derived later); identifiers compared as a set.
EVENT_FACTS = """
event_key, partition_date, event_time, list_sort(node_ids) AS node_ids, action_source, email,
phone, first_name, last_name, city, state, zip, country, customer_id, ip, user_agent, click_id,
gender, date_of_birth, advertising_id
"""

RUN_DAYS = "partition_date IN (SELECT partition_date FROM run_days)"
WRITTEN = (RUN_DAYS + " AND (partition_date, event_key) IN "
           "(SELECT partition_date, event_key FROM run_written)")


def _replace_days(conn: duckdb.DuckDBPyConnection, keep_unchanged: bool) -> str:
    """The per-day tables of the days read (or removed) hold exactly those days' rows.

    Returns the SQL condition on `identity.event_visitors` that selects the event rows written
    in this run. An event of a day read again that is the same as the one kept (same key, time,
    identifiers and facts) keeps its row, visitor and attribution, so re-running staging for a
    day with a few changed events rebuilds the profiles of those events' visitors only. Under
    changed rules (other normalization) every row of the days read is written again.
    """
    # The identifiers and pairs these days held before: with those they hold now, the only
    # ones whose totals a full run can change (_rebuild_accumulated).
    conn.execute(f"""
        CREATE OR REPLACE TEMP TABLE touched_nodes AS
        SELECT DISTINCT node_id FROM identity.identifier_days WHERE {RUN_DAYS}
    """)
    conn.execute(f"""
        CREATE OR REPLACE TEMP TABLE touched_pairs AS
        SELECT DISTINCT a_id, b_id FROM identity.edge_days WHERE {RUN_DAYS}
    """)
    for table in ("identifier_days", "edge_days"):
        conn.execute(f"DELETE FROM identity.{table} WHERE {RUN_DAYS}")
    conn.execute("""
        INSERT INTO identity.identifier_days
        SELECT partition_date, node_id, count(*), min(event_time), max(event_time)
        FROM run_node_ids GROUP BY partition_date, node_id
    """)
    conn.execute("""
        INSERT INTO identity.edge_days
        SELECT a.partition_date, a.node_id, b.node_id, count(*), min(a.event_time),
               max(a.event_time)
        FROM run_node_ids a
        JOIN run_node_ids b ON a.ev = b.ev AND a.node_id < b.node_id
        GROUP BY a.partition_date, a.node_id, b.node_id
    """)
    kept = conn.execute(
        f"SELECT count(*) FROM identity.event_visitors WHERE {RUN_DAYS}").fetchall()[0][0]
    if not kept or not keep_unchanged:
        # The visitors of the events replaced here get new profiles, whatever else changes.
        conn.execute(f"""
            CREATE OR REPLACE TEMP TABLE dropped_visitors AS
            SELECT DISTINCT visitor_id FROM identity.event_visitors WHERE {RUN_DAYS}
        """)
        conn.execute(f"DELETE FROM identity.event_visitors WHERE {RUN_DAYS}")
        conn.execute("CREATE OR REPLACE TEMP TABLE run_inserts AS " + EVENT_ROWS_SQL)
        return RUN_DAYS
    conn.execute("CREATE OR REPLACE TEMP TABLE run_event_rows AS " + EVENT_ROWS_SQL)
    # The events (day, key) that differ between the rows kept and the rows read, either way.
    conn.execute(f"""
        CREATE OR REPLACE TEMP TABLE run_written AS
        SELECT DISTINCT partition_date, event_key FROM (
            (SELECT {EVENT_FACTS} FROM identity.event_visitors WHERE {RUN_DAYS}
             EXCEPT ALL SELECT {EVENT_FACTS} FROM run_event_rows)
            UNION ALL
            (SELECT {EVENT_FACTS} FROM run_event_rows
             EXCEPT ALL SELECT {EVENT_FACTS} FROM identity.event_visitors WHERE {RUN_DAYS})
        )
    """)
    conn.execute(f"""
        CREATE OR REPLACE TEMP TABLE dropped_visitors AS
        SELECT DISTINCT visitor_id FROM identity.event_visitors WHERE {WRITTEN}
    """)
    conn.execute(f"DELETE FROM identity.event_visitors WHERE {WRITTEN}")
    conn.execute("CREATE OR REPLACE TEMP TABLE run_inserts AS SELECT * FROM run_event_rows "
                 "WHERE (partition_date, event_key) IN "
                 "(SELECT partition_date, event_key FROM run_written)")
    return WRITTEN



# --- the accumulated graph --------------------------------------------------------------------

# `nodes`: identity.identifiers, or (incrementally) run_key_ids, which holds both ends of
# every pair of the days read.
NEW_EDGES_SQL = """
SELECT ia.node_key AS node_a, ib.node_key AS node_b, p.events, p.first_seen, p.last_seen,
       p.a_id, p.b_id, ia.identifier_type AS a_type, ib.identifier_type AS b_type,
       p.first_day, NULL::VARCHAR AS refused_reason
FROM {source} p
JOIN {nodes} ia ON ia.node_id = p.a_id
JOIN {nodes} ib ON ib.node_id = p.b_id
"""
INSERT_EDGES_SQL = "INSERT INTO identity.edges " + NEW_EDGES_SQL


def _rebuild_accumulated(conn: duckdb.DuckDBPyConnection) -> None:
    """The identifier and edge totals from the per-day tables (after a re-run).

    Only the identifiers and pairs the days read held, before or now, can have other totals:
    those are recomputed from all their per-day rows, every other total stays as it is.
    """
    conn.execute(f"""
        INSERT INTO touched_nodes
        SELECT DISTINCT node_id FROM identity.identifier_days WHERE {RUN_DAYS}
        EXCEPT SELECT node_id FROM touched_nodes
    """)
    conn.execute(f"""
        INSERT INTO touched_pairs
        SELECT DISTINCT a_id, b_id FROM identity.edge_days WHERE {RUN_DAYS}
        EXCEPT SELECT a_id, b_id FROM touched_pairs
    """)
    conn.execute("""
        CREATE OR REPLACE TEMP TABLE run_pairs AS
        SELECT a_id, b_id, sum(events)::INTEGER AS events, min(first_seen) AS first_seen,
               max(last_seen) AS last_seen, min(partition_date) AS first_day
        FROM identity.edge_days d SEMI JOIN touched_pairs t USING (a_id, b_id)
        GROUP BY a_id, b_id
    """)
    conn.execute("""
        CREATE OR REPLACE TEMP TABLE node_totals AS
        SELECT node_id, sum(events)::INTEGER AS events, min(first_seen) AS first_seen,
               max(last_seen) AS last_seen
        FROM identity.identifier_days
        WHERE node_id IN (SELECT node_id FROM touched_nodes)
        GROUP BY node_id
    """)
    # Only differences are written: an identifier or pair no staged event carries any more is
    # gone, changed totals are updated, new pairs are added.
    conn.execute("""
        DELETE FROM identity.identifiers
        WHERE node_id IN (SELECT node_id FROM touched_nodes EXCEPT SELECT node_id FROM node_totals)
    """)
    replace_rows(conn, "identity.identifiers", """
        SELECT i.rowid AS _row,
               i.* REPLACE (t.events AS events, t.first_seen AS first_seen,
                            t.last_seen AS last_seen)
        FROM identity.identifiers i JOIN node_totals t USING (node_id)
        WHERE i.events <> t.events OR i.first_seen IS DISTINCT FROM t.first_seen
              OR i.last_seen IS DISTINCT FROM t.last_seen
    """)
    conn.execute("""
        DELETE FROM identity.edges e
        WHERE EXISTS (SELECT 1 FROM (SELECT a_id, b_id FROM touched_pairs
                                     EXCEPT SELECT a_id, b_id FROM run_pairs) g
                      WHERE g.a_id = e.a_id AND g.b_id = e.b_id)
    """)
    replace_rows(conn, "identity.edges", """
        SELECT e.rowid AS _row,
               e.* REPLACE (r.events AS events, r.first_seen AS first_seen,
                            r.last_seen AS last_seen, r.first_day AS first_day)
        FROM identity.edges e JOIN run_pairs r ON e.a_id = r.a_id AND e.b_id = r.b_id
        WHERE e.events <> r.events OR e.first_seen IS DISTINCT FROM r.first_seen
              OR e.last_seen IS DISTINCT FROM r.last_seen OR e.first_day <> r.first_day
    """)
    conn.execute("""
        CREATE OR REPLACE TEMP TABLE new_pairs AS
        SELECT r.* FROM run_pairs r
        ANTI JOIN identity.edges e ON e.a_id = r.a_id AND e.b_id = r.b_id
    """)
    conn.execute(INSERT_EDGES_SQL.format(source="new_pairs", nodes="identity.identifiers"))


def _add_accumulated(conn: duckdb.DuckDBPyConnection) -> None:
    """Add the new days' counts to the totals, and their new edges to the graph.

    The edges that get other totals are read by row id (found over ids alone), rather than by
    a join that read every column of every edge. The known identifiers' new totals are left in
    pending_totals (by row id) and written with their new visitor ids (assign_visitor_ids):
    one rewrite of each changed identifier instead of two.
    """
    # New identifiers were written with their totals (_extract).
    conn.execute("""
        CREATE OR REPLACE TEMP TABLE pending_totals AS
        SELECT k._row, sum(d.events)::INTEGER AS events, min(d.first_seen) AS first_seen,
               max(d.last_seen) AS last_seen
        FROM identity.identifier_days d JOIN run_keys k USING (node_id)
        WHERE d.partition_date IN (SELECT partition_date FROM run_days)
        GROUP BY k._row
    """)
    conn.execute("""
        CREATE OR REPLACE TEMP TABLE run_pairs AS
        SELECT a_id, b_id, sum(events)::INTEGER AS events, min(first_seen) AS first_seen,
               max(last_seen) AS last_seen, min(partition_date) AS first_day
        FROM identity.edge_days
        WHERE partition_date IN (SELECT partition_date FROM run_days)
        GROUP BY a_id, b_id
    """)
    conn.execute("""
        CREATE OR REPLACE TEMP TABLE run_pair_rows AS
        SELECT r.*, e._row FROM run_pairs r
        LEFT JOIN (SELECT a_id, b_id, rowid AS _row FROM identity.edges) e USING (a_id, b_id)
    """)
    conn.execute("""
        CREATE OR REPLACE TEMP TABLE new_pairs AS
        SELECT * EXCLUDE (_row) FROM run_pair_rows WHERE _row IS NULL
    """)
    replace_rows(conn, "identity.edges", """
        SELECT e.rowid AS _row,
               e.* REPLACE (e.events + r.events AS events,
                            least(e.first_seen, r.first_seen) AS first_seen,
                            greatest(e.last_seen, r.last_seen) AS last_seen,
                            least(e.first_day, r.first_day) AS first_day)
        FROM identity.edges e JOIN run_pair_rows r ON e.rowid = r._row
    """)
    # Every edge of the days read as it now stands (but for the size guard's refusals): the
    # rows write_refused_edges looks at.
    conn.execute("""
        CREATE OR REPLACE TEMP TABLE run_edges AS
        SELECT node_a, node_b, a_id, b_id, events FROM replaced_rows
    """)
    conn.execute("CREATE OR REPLACE TEMP TABLE new_edges AS "
                 + NEW_EDGES_SQL.format(source="new_pairs", nodes="run_key_ids"))
    conn.execute("INSERT INTO identity.edges SELECT * FROM new_edges")
    conn.execute("INSERT INTO run_edges SELECT node_a, node_b, a_id, b_id, events FROM new_edges")


# A hub has more distinct partners of one side than one person could: many people on one
# browser (a kiosk), one address on many browsers (a shared or made-up address), or a cart or
# checkout token (one shopping session) carried by several people.
HUBS_SQL = """
CREATE OR REPLACE TEMP TABLE run_hubs AS
WITH sides AS (
    SELECT a_id AS node_id, a_type AS kind, b_type AS partner FROM identity.edges
    WHERE {candidates_a}
    UNION ALL
    SELECT b_id, b_type, a_type FROM identity.edges
    WHERE {candidates_b}
),
counts AS (
    SELECT node_id, any_value(kind) AS kind,
           count(*) FILTER (WHERE partner IN ('client', 'device')) AS browsers,
           count(*) FILTER (WHERE partner IN ('customer', 'email', 'phone')) AS people
    FROM sides GROUP BY node_id
),
judged AS (
    SELECT node_id, CASE
        WHEN kind IN ('customer', 'email', 'phone') AND browsers > $max_clients
            THEN 'hub: on ' || browsers || ' client ids, limit ' || $max_clients
        WHEN kind IN ('client', 'device') AND people > $max_people
            THEN 'hub: ' || people || ' people on one client id, limit ' || $max_people
        WHEN kind IN ('checkout', 'cart') AND people + browsers > 2 * $max_people
            THEN 'hub: ' || (people + browsers) || ' people on one ' || kind
                 || ' token, limit ' || 2 * $max_people
    END AS reason
    FROM counts
)
SELECT node_id, reason FROM judged WHERE reason IS NOT NULL
"""


def all_hubs(conn: duckdb.DuckDBPyConnection, rules: GraphRules) -> None:
    """HUBS_SQL over every edge, counted in numpy: `run_hubs` with the same rows and reasons.

    A full run judges every identifier; a group by of both ends of every edge was most of its
    hub time, bincounts over the edges' ends (kinds as their position in KINDS) are not.
    """
    edges = conn.execute(
        "SELECT a_id, b_id, list_position($kinds, a_type) AS a_kind, "
        "list_position($kinds, b_type) AS b_kind FROM identity.edges", {"kinds": list(KINDS)},
    ).fetchnumpy()
    ends = np.concatenate([np.asarray(edges["a_id"], np.int64),
                           np.asarray(edges["b_id"], np.int64)])
    own = np.concatenate([np.asarray(edges["a_kind"], np.int64),
                          np.asarray(edges["b_kind"], np.int64)])
    partner = own.reshape(2, -1)[::-1].reshape(-1)
    code = {kind: KINDS.index(kind) + 1 for kind in KINDS}
    nodes = int(ends.max()) + 1 if len(ends) else 0
    browsers = np.bincount(ends[np.isin(partner, [code["client"], code["device"]])],
                           minlength=nodes)
    people = np.bincount(
        ends[np.isin(partner, [code["customer"], code["email"], code["phone"]])],
        minlength=nodes)
    kind = np.zeros(nodes, np.int64)
    kind[ends] = own
    max_clients, max_people = rules.hub_max_clients, rules.hub_max_people_per_client
    person = np.isin(kind, [code["customer"], code["email"], code["phone"]])
    browser = np.isin(kind, [code["client"], code["device"]])
    token = np.isin(kind, [code["checkout"], code["cart"]])
    reasons: dict[int, str] = {}
    for node in np.flatnonzero(person & (browsers > max_clients)).tolist():
        reasons[node] = f"hub: on {browsers[node]} client ids, limit {max_clients}"
    for node in np.flatnonzero(browser & (people > max_people)).tolist():
        reasons[node] = f"hub: {people[node]} people on one client id, limit {max_people}"
    for node in np.flatnonzero(token & (people + browsers > 2 * max_people)).tolist():
        reasons[node] = (f"hub: {people[node] + browsers[node]} people on one "
                         f"{KINDS[kind[node] - 1]} token, limit {2 * max_people}")
    temp_table(conn, "run_hubs", pa.table({
        "node_id": pa.array(list(reasons), pa.int64()),
        "reason": pa.array(list(reasons.values()), pa.string()),
    }))


def _find_hubs(conn: duckdb.DuckDBPyConnection, rules: GraphRules, full: bool) -> list[int]:
    """Mark hubs; returns the identifiers that became hubs in this run.

    Partner counts only grow as days are added, so an incremental run only re-examines the
    identifiers on the new days' edges; a full run examines all and may also clear a mark.
    """
    if full:
        all_hubs(conn, rules)
    else:
        conn.execute("""
            CREATE OR REPLACE TEMP TABLE hub_candidates AS
            SELECT a_id AS node_id FROM run_pairs UNION SELECT b_id FROM run_pairs
        """)
        sql = HUBS_SQL.format(candidates_a="a_id IN (SELECT node_id FROM hub_candidates)",
                              candidates_b="b_id IN (SELECT node_id FROM hub_candidates)")
        conn.execute(sql, {"max_clients": rules.hub_max_clients,
                           "max_people": rules.hub_max_people_per_client})
    before = set()
    if full:
        before = {row[0] for row in conn.execute(
            "SELECT node_id FROM identity.identifiers WHERE hub_reason IS NOT NULL").fetchall()}
        conn.execute("UPDATE identity.identifiers SET hub_reason = NULL "
                     "WHERE hub_reason IS NOT NULL")
    new = [row[0] for row in conn.execute("""
        SELECT h.node_id FROM run_hubs h JOIN identity.identifiers i USING (node_id)
        WHERE i.hub_reason IS NULL
    """).fetchall()]
    conn.execute("""
        UPDATE identity.identifiers i SET hub_reason = h.reason
        FROM run_hubs h WHERE i.node_id = h.node_id AND i.hub_reason IS NULL
    """)
    if full:
        # Addresses added to the junk list after they were seen stop joining too.
        conn.execute(
            "UPDATE identity.identifiers SET hub_reason = 'junk: on the junk list' "
            "WHERE identifier_type = 'email' AND identifier_value IN (SELECT unnest(?))",
            [sorted(rules.junk_emails)],
        )
        now = {row[0] for row in conn.execute(
            "SELECT node_id FROM identity.identifiers WHERE hub_reason IS NOT NULL").fetchall()}
        return sorted(now ^ before)
    return new


STATS_SQL = """
SELECT (SELECT count(*) FROM identity.visitor_profiles),
       (SELECT count(*) FROM identity.identifiers),
       (SELECT count(*) FROM identity.edges),
       (SELECT count(*) FROM identity.refused_edges),
       (SELECT max(identifiers) FROM identity.visitor_profiles),
       (SELECT count(*) FROM identity.event_visitors)
"""
