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

import json
import re
import time
from dataclasses import asdict, dataclass
from datetime import date

import duckdb
import numpy as np
import pyarrow as pa
from scipy.sparse import csr_array
from scipy.sparse.csgraph import connected_components

from capi_pipeline.enrich.normalize import country_code, normalize_email, phone_e164
from capi_pipeline.lib.duck import ensure_schema

# Local parts and domains that people type when a form insists on an address.
JUNK_LOCAL_PARTS = frozenset({
    "test", "tester", "testing", "noreply", "no-reply", "none", "null", "na", "nobody", "asdf",
    "abc", "email", "user", "customer", "unknown", "xxx", "fake",
})
JUNK_DOMAINS = frozenset({"test.com", "test.test", "email.com", "domain.com", "fake.com"})
# Ids that collectors and apps send when they have none: never a person's.
JUNK_IDS = (
    "undefined", "null", "none", "nil", "nan", "unknown", "anonymous", "guest", "test", "n/a",
    "na", "false", "true", "[object object]", "0", "-1",
)
# Identifier kinds, most personal first: an event belongs to the visitor of the first of its
# identifiers that is not a hub.
KINDS = ("customer", "email", "phone", "device", "client", "checkout", "cart")
IDENTITY_TABLES = (
    "identifiers", "edges", "refused_edges", "event_visitors", "identifier_days", "edge_days",
    "graph_days", "graph_runs", "visitor_id_map", "visitor_profiles",
)


@dataclass(frozen=True)
class GraphRules:
    """Thresholds for the guards, from PipelineSettings."""

    default_region: str
    hub_max_clients: int
    hub_max_people_per_client: int
    junk_emails: frozenset[str]
    max_visitor_identifiers: int = 200
    attribution_window_days: int = 30

    def fingerprint(self) -> str:
        """The rules that decide nodes, edges and attribution; a change makes the next run
        reread every staged day."""
        rules = asdict(self)
        rules["junk_emails"] = sorted(self.junk_emails)
        return json.dumps(rules, sort_keys=True)


def is_junk_email(email: str | None, junk_emails: frozenset[str]) -> bool:
    """Whether a normalized address is a placeholder that many people share."""
    if email is None:
        return True
    if email in junk_emails:
        return True
    local, _, domain = email.partition("@")
    return local in JUNK_LOCAL_PARTS or domain in JUNK_DOMAINS


_REPEATED = re.compile(r"^(\d)\1+$")


def is_junk_phone(e164: str | None) -> bool:
    """Whether an E.164 number is a placeholder: one digit repeated, or a counting run."""
    if e164 is None:
        return True
    national = e164.lstrip("+")[-10:]
    return bool(_REPEATED.match(national)) or national in {"1234567890", "0123456789"}


def email_node(value: str | None, rules: GraphRules) -> str | None:
    """The email node's value: normalized like the payload, None for junk."""
    email = normalize_email(value) if value else None
    return None if is_junk_email(email, rules.junk_emails) else email


def phone_node(value: str | None, country: str | None, rules: GraphRules) -> str | None:
    """The phone node's value: E.164 in the event's country (else the default), None for junk."""
    if not value:
        return None
    region = country_code(country) if country else None
    e164 = phone_e164(value, region or rules.default_region)
    return None if is_junk_phone(e164) else e164


@dataclass
class RunPlan:
    """What one run reads from staging and whether it recomputes every derived table."""

    days: list[date]
    removed: list[date]
    full: bool
    fingerprints: list[tuple[date, int, int]]


def build_identity(conn: duckdb.DuckDBPyConnection, rules: GraphRules) -> dict[str, int]:
    """Bring every identity table up to date with staging; returns counts for metadata.

    Only staged days that are new or whose rows changed are read. A run that only adds days
    is incremental: new identifiers and edges are appended, hubs are re-examined among the
    identifiers those days touched, and only visitors whose identifiers or events changed get
    new profiles. A staged day that was re-run or deleted, or a change of the rules, makes the
    run recompute every derived table from the per-day tables (and, for a rules change, reread
    every staged day), so the result never depends on the order of runs.
    """
    started = time.perf_counter()
    ensure_layout(conn)
    plan = plan_run(conn, rules)
    conn.execute("BEGIN TRANSACTION")
    try:
        stats = _apply(conn, rules, plan)
        stats["seconds"] = round(time.perf_counter() - started, 3)
        conn.execute(
            "INSERT INTO identity.graph_runs VALUES (now(), ?, ?, ?, ?, ?, ?, ?)",
            ["full" if plan.full else "incremental", len(plan.days), rules.fingerprint(),
             stats["visitors"], stats["visitors_merged"], stats["visitors_split"],
             stats["seconds"]],
        )
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return stats


def ensure_layout(conn: duckdb.DuckDBPyConnection) -> None:
    """Replace identity tables of the earlier, rebuilt-each-run layout; they hold nothing the
    staged events cannot give again, and the first run after this reads every staged day."""
    current = conn.execute("""
        SELECT count(*) FROM duckdb_columns()
        WHERE database_name = current_database() AND schema_name = 'identity'
          AND table_name = 'identifiers' AND column_name = 'node_id'
    """).fetchone()[0]
    if current:
        return
    for table in IDENTITY_TABLES:
        conn.execute(f"DROP TABLE IF EXISTS identity.{table}")
    ensure_schema(conn)


# A day's fingerprint covers every staged column identity reads, so a staging re-run that
# changes an email is read again while an untouched day is not.
FINGERPRINTS_SQL = """
SELECT partition_date, count(*) AS staged_events,
       bit_xor(hash(event_key, event_time, action_source, client_id, customer_id, email, phone,
                    first_name, last_name, city, state, zip, country, ip, user_agent, click_id,
                    cart_token, checkout_token, gender, date_of_birth, advertising_id, is_bot,
                    is_test, duplicate_of)) AS fingerprint
FROM staging.events
GROUP BY partition_date
"""


def plan_run(conn: duckdb.DuckDBPyConnection, rules: GraphRules) -> RunPlan:
    """The staged days to read, the days gone from staging, and whether to recompute all."""
    staged = {
        day: (int(events), int(fingerprint))
        for day, events, fingerprint in conn.execute(FINGERPRINTS_SQL).fetchall()
    }
    seen = {
        day: (int(events), int(fingerprint))
        for day, events, fingerprint in conn.execute(
            "SELECT partition_date, staged_events, fingerprint FROM identity.graph_days"
        ).fetchall()
    }
    last_rules = conn.execute(
        "SELECT rules FROM identity.graph_runs ORDER BY run_at DESC LIMIT 1"
    ).fetchone()
    rules_changed = last_rules is not None and last_rules[0] != rules.fingerprint()
    if rules_changed:
        days = sorted(staged)
    else:
        days = sorted(day for day, value in staged.items() if seen.get(day) != value)
    removed = sorted(day for day in seen if day not in staged)
    reread = any(day in seen for day in days)
    return RunPlan(
        days=days,
        removed=removed,
        full=rules_changed or reread or bool(removed) or not seen,
        fingerprints=[(day, *staged[day]) for day in days],
    )


def _apply(conn: duckdb.DuckDBPyConnection, rules: GraphRules, plan: RunPlan) -> dict[str, int]:
    conn.execute(
        "CREATE OR REPLACE TEMP TABLE run_days AS SELECT unnest(?::DATE[]) AS partition_date",
        [plan.days + plan.removed],
    )
    if not plan.days and not plan.full:
        return _stats(conn, plan, new_hubs=[], size_refused=0,
                      changes={"visitors_merged": 0, "visitors_split": 0})
    _extract(conn, rules)
    _replace_days(conn)
    if plan.full:
        _rebuild_accumulated(conn)
    else:
        _add_accumulated(conn)
    new_hubs = _find_hubs(conn, rules, plan.full)
    labels, size_refused = _guarded_components(conn, rules, plan.full)
    changes = _assign_visitor_ids(conn, labels)
    _update_events(conn, plan.full, new_hubs)
    _refresh_profiles(conn, plan.full)
    _attribute_clicks(conn, rules, plan.full)
    _write_refused_edges(conn)
    conn.execute("DELETE FROM identity.graph_days WHERE partition_date IN "
                 "(SELECT partition_date FROM run_days)")
    if plan.fingerprints:
        conn.executemany(
            "INSERT INTO identity.graph_days VALUES (?, ?, ?, now())", plan.fingerprints)
    return _stats(conn, plan, new_hubs, size_refused, changes)


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
SELECT row_number() OVER () AS ev, event_key, partition_date, event_time, action_source,
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
    _temp_table(conn, "run_emails", pa.table({
        "raw": pa.array(emails, pa.string()),
        "node": pa.array([email_node(email, rules) for email in emails], pa.string()),
    }))
    phones = conn.execute(
        "SELECT DISTINCT raw_phone, country FROM run_staged WHERE raw_phone IS NOT NULL"
    ).fetchall()
    _temp_table(conn, "run_phones", pa.table({
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
    conn.execute("""
        INSERT INTO identity.identifiers
            (node_key, identifier_type, identifier_value, visitor_id, events, node_id)
        SELECT node_key, kind, value, '', 0, $next_id - 1 + row_number() OVER ()
        FROM (SELECT DISTINCT node_key, kind, value FROM run_nodes) n
        WHERE NOT EXISTS (SELECT 1 FROM identity.identifiers i WHERE i.node_key = n.node_key)
    """, {"next_id": next_id})
    conn.execute("""
        CREATE OR REPLACE TEMP TABLE run_node_ids AS
        SELECT n.ev, n.partition_date, n.event_time, n.rank, i.node_id
        FROM run_nodes n JOIN identity.identifiers i USING (node_key)
    """)


def _temp_table(conn: duckdb.DuckDBPyConnection, name: str, table: pa.Table) -> None:
    """A temp table holding an arrow table's rows."""
    conn.register(f"{name}_arrow", table)
    try:
        conn.execute(f"CREATE OR REPLACE TEMP TABLE {name} AS SELECT * FROM {name}_arrow")
    finally:
        conn.unregister(f"{name}_arrow")


def _sql_list(values) -> str:
    return "[" + ", ".join("'" + value.replace("'", "''") + "'" for value in values) + "]"


def _replace_days(conn: duckdb.DuckDBPyConnection) -> None:
    """The per-day tables of the days read (or removed) hold exactly those days' rows."""
    for table in ("identifier_days", "edge_days", "event_visitors"):
        conn.execute(f"DELETE FROM identity.{table} WHERE partition_date IN "
                     "(SELECT partition_date FROM run_days)")
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
    conn.execute("""
        INSERT INTO identity.event_visitors BY NAME
        SELECT e.event_key, e.partition_date, '' AS visitor_id, e.event_time, n.node_ids,
               n.first_node AS anchor_node_id, e.action_source, e.email, e.phone, e.first_name,
               e.last_name, e.city, e.state, e.zip, e.country, e.customer_id, e.ip,
               e.user_agent, e.click_id, e.gender, e.date_of_birth, e.advertising_id
        FROM run_events e
        JOIN (SELECT ev, list(node_id) AS node_ids, arg_min(node_id, rank) AS first_node
              FROM run_node_ids GROUP BY ev) n USING (ev)
    """)


# --- the accumulated graph --------------------------------------------------------------------

INSERT_EDGES_SQL = """
INSERT INTO identity.edges
SELECT ia.node_key, ib.node_key, p.events, p.first_seen, p.last_seen, p.a_id, p.b_id,
       ia.identifier_type, ib.identifier_type, p.first_day, NULL
FROM {source} p
JOIN identity.identifiers ia ON ia.node_id = p.a_id
JOIN identity.identifiers ib ON ib.node_id = p.b_id
"""


def _rebuild_accumulated(conn: duckdb.DuckDBPyConnection) -> None:
    """Every identifier's and edge's totals from the per-day tables (after a re-run)."""
    conn.execute("""
        CREATE OR REPLACE TEMP TABLE run_pairs AS
        SELECT a_id, b_id, sum(events)::INTEGER AS events, min(first_seen) AS first_seen,
               max(last_seen) AS last_seen, min(partition_date) AS first_day
        FROM identity.edge_days GROUP BY a_id, b_id
    """)
    conn.execute("""
        CREATE OR REPLACE TEMP TABLE node_totals AS
        SELECT node_id, sum(events)::INTEGER AS events, min(first_seen) AS first_seen,
               max(last_seen) AS last_seen
        FROM identity.identifier_days GROUP BY node_id
    """)
    # An identifier no staged event carries any more is gone, with its edges.
    conn.execute("""
        DELETE FROM identity.identifiers
        WHERE node_id NOT IN (SELECT node_id FROM node_totals)
    """)
    conn.execute("""
        UPDATE identity.identifiers i
        SET events = t.events, first_seen = t.first_seen, last_seen = t.last_seen
        FROM node_totals t WHERE i.node_id = t.node_id
    """)
    conn.execute("DELETE FROM identity.edges")
    conn.execute(INSERT_EDGES_SQL.format(source="run_pairs"))
    conn.execute("CREATE OR REPLACE TEMP TABLE new_pairs AS SELECT * FROM run_pairs")


def _add_accumulated(conn: duckdb.DuckDBPyConnection) -> None:
    """Add the new days' counts to the totals, and their new edges to the graph."""
    conn.execute("""
        CREATE OR REPLACE TEMP TABLE node_totals AS
        SELECT node_id, sum(events)::INTEGER AS events, min(first_seen) AS first_seen,
               max(last_seen) AS last_seen
        FROM identity.identifier_days
        WHERE partition_date IN (SELECT partition_date FROM run_days)
        GROUP BY node_id
    """)
    conn.execute("""
        UPDATE identity.identifiers i
        SET events = i.events + t.events, first_seen = least(i.first_seen, t.first_seen),
            last_seen = greatest(i.last_seen, t.last_seen)
        FROM node_totals t WHERE i.node_id = t.node_id
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
        CREATE OR REPLACE TEMP TABLE new_pairs AS
        SELECT r.* FROM run_pairs r
        ANTI JOIN identity.edges e ON e.a_id = r.a_id AND e.b_id = r.b_id
    """)
    conn.execute("""
        UPDATE identity.edges e
        SET events = e.events + r.events, first_seen = least(e.first_seen, r.first_seen),
            last_seen = greatest(e.last_seen, r.last_seen),
            first_day = least(e.first_day, r.first_day)
        FROM run_pairs r WHERE e.a_id = r.a_id AND e.b_id = r.b_id
    """)
    conn.execute(INSERT_EDGES_SQL.format(source="new_pairs"))


# A hub has more distinct partners of one side than one person could: many people on one
# browser (a kiosk), one address on many browsers (a shared or made-up address), or a cart or
# checkout token (one shopping session) carried by several people.
HUBS_SQL = """
CREATE OR REPLACE TEMP TABLE run_hubs AS
WITH sides AS (
    SELECT a_id AS node_id, a_type AS kind, b_type AS partner FROM identity.edges
    WHERE a_id IN (SELECT node_id FROM hub_candidates)
    UNION ALL
    SELECT b_id, b_type, a_type FROM identity.edges
    WHERE b_id IN (SELECT node_id FROM hub_candidates)
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


def _find_hubs(conn: duckdb.DuckDBPyConnection, rules: GraphRules, full: bool) -> list[int]:
    """Mark hubs; returns the identifiers that became hubs in this run.

    Partner counts only grow as days are added, so an incremental run only re-examines the
    identifiers on the new days' edges; a full run examines all and may also clear a mark.
    """
    if full:
        conn.execute("CREATE OR REPLACE TEMP TABLE hub_candidates AS "
                     "SELECT node_id FROM identity.identifiers")
    else:
        conn.execute("""
            CREATE OR REPLACE TEMP TABLE hub_candidates AS
            SELECT a_id AS node_id FROM run_pairs UNION SELECT b_id FROM run_pairs
        """)
    conn.execute(HUBS_SQL, {"max_clients": rules.hub_max_clients,
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


# --- components ---------------------------------------------------------------------------------

def _components(nodes: int, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    graph = csr_array((np.ones(len(a), dtype=np.int8), (a, b)), shape=(nodes, nodes))
    return connected_components(graph, directed=False)[1]


def _guarded_components(
    conn: duckdb.DuckDBPyConnection, rules: GraphRules, full: bool
) -> tuple[np.ndarray, int]:
    """Each node's component over the edges that join, after the size guard; returns the
    labels (indexed by node id) and how many edges the size guard refused in this run."""
    nodes = int(conn.execute(
        "SELECT coalesce(max(node_id), -1) + 1 FROM identity.identifiers").fetchone()[0])
    if full:
        conn.execute("UPDATE identity.edges SET refused_reason = NULL "
                     "WHERE refused_reason IS NOT NULL")
    edges = conn.execute("""
        SELECT e.a_id, e.b_id, e.refused_reason IS NOT NULL AS refused,
               date_diff('day', DATE '2000-01-01', e.first_day) AS day,
               n.a_id IS NOT NULL AS new
        FROM identity.edges e
        LEFT JOIN new_pairs n ON n.a_id = e.a_id AND n.b_id = e.b_id
    """).fetchnumpy()
    a, b = np.asarray(edges["a_id"], np.int64), np.asarray(edges["b_id"], np.int64)
    hub = np.zeros(nodes, dtype=bool)
    hub_ids = conn.execute(
        "SELECT node_id FROM identity.identifiers WHERE hub_reason IS NOT NULL").fetchnumpy()
    hub[np.asarray(hub_ids["node_id"], np.int64)] = True
    kept = ~np.asarray(edges["refused"], bool) & ~hub[a] & ~hub[b]
    labels = _components(nodes, a[kept], b[kept])

    limit = rules.max_visitor_identifiers
    sizes = np.bincount(labels, minlength=nodes)
    if not (sizes > limit).any():
        return labels, 0
    # Only edges inside the oversized components can be refused: replay their arrival, day by
    # day on a full rebuild, or this run's new edges on top of the rest incrementally.
    inside = np.flatnonzero(kept & (sizes[labels[a]] > limit))
    sub_nodes, sub = np.unique(np.concatenate([a[inside], b[inside]]), return_inverse=True)
    sa, sb = sub[: len(inside)], sub[len(inside):]
    if full:
        day = np.asarray(edges["day"], np.int64)[inside]
        steps = [day == value for value in np.unique(day)]
        earlier = [day < value for value in np.unique(day)]
    else:
        new = np.asarray(edges["new"], bool)[inside]
        steps, earlier = [new], [~new]
    refused = np.zeros(len(inside), dtype=bool)
    reasons = np.zeros(len(inside), dtype=np.int64)
    for step, before in zip(steps, earlier, strict=True):
        before = before & ~refused
        was = _components(len(sub_nodes), sa[before], sb[before])
        joined = before | step
        now = _components(len(sub_nodes), sa[joined], sb[joined])
        now_sizes = np.bincount(now, minlength=len(sub_nodes))
        bad = step & (now_sizes[now[sa]] > limit) & (was[sa] != was[sb])
        refused |= bad
        reasons[bad] = now_sizes[now[sa[bad]]]
    if refused.any():
        rows = inside[refused]
        _temp_table(conn, "size_refused", pa.table({
            "a_id": a[rows], "b_id": b[rows], "size": reasons[refused],
        }))
        conn.execute("""
            UPDATE identity.edges e
            SET refused_reason = 'size: would join ' || r.size
                || ' identifiers into one visitor, limit ' || $limit
            FROM size_refused r WHERE e.a_id = r.a_id AND e.b_id = r.b_id
        """, {"limit": limit})
        kept[rows] = False
        labels = _components(nodes, a[kept], b[kept])
    return labels, int(refused.sum())


# --- stable visitor ids -------------------------------------------------------------------------

# Per component: its identifiers and the visitor ids they had. A component is unchanged when
# all its identifiers had one id and that id had no other identifiers.
COMPONENTS_SQL = """
CREATE OR REPLACE TEMP TABLE node_components AS
SELECT i.node_id, i.node_key, i.visitor_id AS old_visitor_id, i.first_seen, l.component,
       i.hub_reason IS NOT NULL AS hub
FROM identity.identifiers i JOIN component_labels l ON l.node_id = i.node_id
"""

CHANGED_SQL = """
CREATE OR REPLACE TEMP TABLE changed_components AS
WITH old_sizes AS (
    SELECT old_visitor_id, count(*) AS nodes FROM node_components
    WHERE old_visitor_id <> '' GROUP BY old_visitor_id
),
per_component AS (
    SELECT component, count(*) AS nodes, min(old_visitor_id) AS low, max(old_visitor_id) AS high
    FROM node_components GROUP BY component
)
SELECT p.component FROM per_component p LEFT JOIN old_sizes o ON o.old_visitor_id = p.low
WHERE p.low = '' OR p.low <> p.high OR o.nodes IS DISTINCT FROM p.nodes
"""

# Each old id goes to the component that holds most of its identifiers; a component holding
# several keeps the oldest (first seen earliest), then the largest; a component with none of its
# own is new (or split off) and gets an id from its smallest identifier.
NEW_IDS_SQL = """
CREATE OR REPLACE TEMP TABLE component_ids AS
WITH changed AS (
    SELECT n.* FROM node_components n SEMI JOIN changed_components c USING (component)
),
old_visitors AS (
    SELECT old_visitor_id, count(*) AS nodes, min(first_seen) AS first_seen
    FROM node_components WHERE old_visitor_id IN (SELECT old_visitor_id FROM changed)
      AND old_visitor_id <> ''
    GROUP BY old_visitor_id
),
overlap AS (
    SELECT component, old_visitor_id, count(*) AS shared, bool_and(hub) AS only_hubs,
           min(first_seen) AS earliest, min(node_key) AS first_key
    FROM changed
    WHERE old_visitor_id <> '' GROUP BY component, old_visitor_id
),
-- On a tie (a visitor split into equal parts) the part that is a person, not a hub that just
-- lost its edges, keeps the id; then the part seen first.
claims AS (
    SELECT o.component, o.old_visitor_id, v.first_seen, v.nodes
    FROM overlap o JOIN old_visitors v USING (old_visitor_id)
    QUALIFY row_number() OVER (
        PARTITION BY o.old_visitor_id
        ORDER BY o.shared DESC, o.only_hubs, o.earliest NULLS LAST, o.first_key) = 1
),
keepers AS (
    SELECT component, old_visitor_id FROM claims
    QUALIFY row_number() OVER (
        PARTITION BY component ORDER BY first_seen NULLS LAST, nodes DESC, old_visitor_id) = 1
),
firsts AS (
    SELECT component, min(node_key) AS first_key,
           min(old_visitor_id) FILTER (WHERE old_visitor_id <> '') AS split_from
    FROM changed GROUP BY component
)
SELECT f.component, f.split_from,
       coalesce(k.old_visitor_id,
                'v_' || left(md5(f.first_key || coalesce('|split|' || f.split_from, '')), 16))
           AS visitor_id,
       k.old_visitor_id IS NULL AND f.split_from IS NOT NULL AS split
FROM firsts f LEFT JOIN keepers k USING (component)
"""


def _assign_visitor_ids(conn: duckdb.DuckDBPyConnection, labels: np.ndarray) -> dict[str, int]:
    """Give every changed component its visitor id and record ids that stopped being used."""
    _temp_table(conn, "component_labels", pa.table({
        "node_id": np.arange(len(labels), dtype=np.int64),
        "component": labels.astype(np.int64),
    }))
    conn.execute(COMPONENTS_SQL)
    conn.execute(CHANGED_SQL)
    conn.execute(NEW_IDS_SQL)
    conn.execute("""
        CREATE OR REPLACE TEMP TABLE node_changes AS
        SELECT n.node_id, n.old_visitor_id, c.visitor_id
        FROM node_components n JOIN component_ids c USING (component)
        WHERE n.old_visitor_id <> c.visitor_id
    """)
    # An old id no component kept was merged into the visitor holding most of its identifiers.
    conn.execute("""
        CREATE OR REPLACE TEMP TABLE merged_ids AS
        SELECT old_visitor_id, arg_max(visitor_id, shared) AS visitor_id
        FROM (SELECT old_visitor_id, visitor_id, count(*) AS shared FROM node_changes
              WHERE old_visitor_id <> '' GROUP BY ALL)
        WHERE old_visitor_id NOT IN (SELECT visitor_id FROM component_ids)
        GROUP BY old_visitor_id
    """)
    conn.execute("""
        UPDATE identity.visitor_id_map m SET visitor_id = g.visitor_id
        FROM merged_ids g WHERE m.visitor_id = g.old_visitor_id
    """)
    conn.execute("""
        INSERT INTO identity.visitor_id_map
        SELECT old_visitor_id, visitor_id, 'merged', now() FROM merged_ids
        UNION ALL
        SELECT split_from, visitor_id, 'split', now() FROM component_ids WHERE split
    """)
    conn.execute("""
        UPDATE identity.identifiers i SET visitor_id = c.visitor_id
        FROM node_changes c WHERE i.node_id = c.node_id
    """)
    merged, split = conn.execute("""
        SELECT (SELECT count(*) FROM merged_ids),
               (SELECT count(*) FROM component_ids WHERE split)
    """).fetchone()
    return {"visitors_merged": int(merged), "visitors_split": int(split)}


# --- events and profiles ------------------------------------------------------------------------

def _update_events(conn: duckdb.DuckDBPyConnection, full: bool, new_hubs: list[int]) -> None:
    """Point each event at its visitor: the visitor of its most personal identifier that is
    not a hub, so a purchase made on a shop's kiosk goes to the buyer, not to the kiosk.

    The new days' events were given their most personal identifier; only events carrying a
    hub need another look: the new days' events with any hub, older ones with a hub found (or
    cleared) in this run.
    """
    hubs = [row[0] for row in conn.execute(
        "SELECT node_id FROM identity.identifiers WHERE hub_reason IS NOT NULL").fetchall()]
    conn.execute("""
        CREATE OR REPLACE TEMP TABLE run_anchors AS
        SELECT u.event_key,
               arg_min(u.node_id, list_position($kinds, i.identifier_type)
                                  + CASE WHEN i.hub_reason IS NULL THEN 0 ELSE 100 END)
                   AS anchor_node_id
        FROM (SELECT event_key, unnest(node_ids) AS node_id FROM identity.event_visitors
              WHERE (partition_date IN (SELECT partition_date FROM run_days)
                     AND list_has_any(node_ids, $hubs::BIGINT[]))
                 OR list_has_any(node_ids, $changed::BIGINT[])) u
        JOIN identity.identifiers i USING (node_id)
        GROUP BY u.event_key
    """, {"kinds": list(KINDS), "hubs": hubs, "changed": new_hubs})
    conn.execute("""
        CREATE OR REPLACE TEMP TABLE touched_nodes AS
        SELECT node_id FROM node_changes
        UNION SELECT anchor_node_id FROM run_anchors
        UNION SELECT anchor_node_id FROM identity.event_visitors
              WHERE partition_date IN (SELECT partition_date FROM run_days)
    """)
    if not full:
        # The visitors that lose or gain events or identifiers get new profiles.
        conn.execute("""
            CREATE OR REPLACE TEMP TABLE affected_visitors AS
            SELECT old_visitor_id AS visitor_id FROM node_changes
            UNION SELECT visitor_id FROM node_changes
            UNION SELECT visitor_id FROM identity.event_visitors
                  WHERE event_key IN (SELECT event_key FROM run_anchors)
        """)
    conn.execute("""
        UPDATE identity.event_visitors e SET anchor_node_id = a.anchor_node_id
        FROM run_anchors a WHERE e.event_key = a.event_key AND e.anchor_node_id <> a.anchor_node_id
    """)
    conn.execute("""
        UPDATE identity.event_visitors e SET visitor_id = i.visitor_id
        FROM (SELECT node_id, visitor_id FROM identity.identifiers
              WHERE node_id IN (SELECT node_id FROM touched_nodes)) i
        WHERE e.anchor_node_id = i.node_id AND e.visitor_id <> i.visitor_id
    """)
    if not full:
        conn.execute("""
            INSERT INTO affected_visitors
            SELECT visitor_id FROM identity.identifiers
            WHERE node_id IN (SELECT node_id FROM touched_nodes)
        """)


PROFILES_SQL = """
INSERT INTO identity.visitor_profiles BY NAME
WITH events AS (
    SELECT visitor_id, event_time, email, phone, first_name, last_name, customer_id, click_id,
           gender, date_of_birth, advertising_id,
           CASE WHEN coalesce(city, state, zip, country) IS NOT NULL
                THEN {{'city': city, 'state': state, 'zip': zip, 'country': country}} END
               AS address,
           CASE WHEN action_source = 'web' AND ip IS NOT NULL AND user_agent IS NOT NULL
                THEN {{'ip': ip, 'user_agent': user_agent}} END AS web
    FROM identity.event_visitors
    WHERE {which}
),
identifier_counts AS (
    SELECT visitor_id, count(*) AS identifiers FROM identity.identifiers
    WHERE {which} GROUP BY visitor_id
),
latest AS (
    SELECT visitor_id, count(*) AS events, min(event_time) AS first_seen,
           max(event_time) AS last_seen,
           arg_max(email, event_time) FILTER (WHERE email IS NOT NULL) AS email,
           max(event_time) FILTER (WHERE email IS NOT NULL) AS email_seen_at,
           arg_max(phone, event_time) FILTER (WHERE phone IS NOT NULL) AS phone,
           max(event_time) FILTER (WHERE phone IS NOT NULL) AS phone_seen_at,
           arg_max(first_name, event_time) FILTER (WHERE first_name IS NOT NULL) AS first_name,
           arg_max(last_name, event_time) FILTER (WHERE last_name IS NOT NULL) AS last_name,
           max(event_time) FILTER (WHERE coalesce(first_name, last_name) IS NOT NULL)
               AS name_seen_at,
           arg_max(address, event_time) FILTER (WHERE address IS NOT NULL) AS address,
           max(event_time) FILTER (WHERE address IS NOT NULL) AS address_seen_at,
           arg_max(customer_id, event_time) FILTER (WHERE customer_id IS NOT NULL)
               AS customer_id,
           max(event_time) FILTER (WHERE customer_id IS NOT NULL) AS customer_id_seen_at,
           arg_max(web, event_time) FILTER (WHERE web IS NOT NULL) AS web,
           max(event_time) FILTER (WHERE web IS NOT NULL) AS web_seen_at,
           arg_max(click_id, event_time) FILTER (WHERE click_id IS NOT NULL) AS click_id,
           max(event_time) FILTER (WHERE click_id IS NOT NULL) AS click_id_seen_at,
           arg_max(gender, event_time) FILTER (WHERE gender IS NOT NULL) AS gender,
           max(event_time) FILTER (WHERE gender IS NOT NULL) AS gender_seen_at,
           arg_max(date_of_birth, event_time) FILTER (WHERE date_of_birth IS NOT NULL)
               AS date_of_birth,
           max(event_time) FILTER (WHERE date_of_birth IS NOT NULL) AS date_of_birth_seen_at,
           arg_max(advertising_id, event_time) FILTER (WHERE advertising_id IS NOT NULL)
               AS advertising_id,
           max(event_time) FILTER (WHERE advertising_id IS NOT NULL)
               AS advertising_id_seen_at
    FROM events GROUP BY visitor_id
)
SELECT l.* EXCLUDE (address, web), coalesce(c.identifiers, 0) AS identifiers,
       l.address.city AS city, l.address.state AS state, l.address.zip AS zip,
       l.address.country AS country, l.web.ip AS ip, l.web.user_agent AS user_agent
FROM latest l LEFT JOIN identifier_counts c USING (visitor_id)
"""


# An event's click id is its own, else the visitor's latest click before it within the
# attribution window: what a conversion days after the landing page is attributed to.
ATTRIBUTION_SQL = """
CREATE OR REPLACE TEMP TABLE run_attribution AS
WITH events AS (
    SELECT event_key, visitor_id, event_time, click_id FROM identity.event_visitors WHERE {which}
),
clicks AS (
    SELECT visitor_id, event_time AS click_time, click_id FROM events WHERE click_id IS NOT NULL
)
SELECT e.event_key,
       CASE WHEN e.click_id IS NOT NULL THEN e.click_id
            WHEN e.event_time - c.click_time <= to_days($window_days) THEN c.click_id END
           AS attributed_click_id,
       CASE WHEN e.click_id IS NOT NULL THEN e.event_time
            WHEN e.event_time - c.click_time <= to_days($window_days) THEN c.click_time END
           AS attributed_click_at
FROM events e
ASOF LEFT JOIN clicks c ON c.visitor_id = e.visitor_id AND e.event_time >= c.click_time
"""


def _attribute_clicks(conn: duckdb.DuckDBPyConnection, rules: GraphRules, full: bool) -> None:
    which = "TRUE" if full else "visitor_id IN (SELECT visitor_id FROM affected_visitors)"
    conn.execute(ATTRIBUTION_SQL.format(which=which),
                 {"window_days": rules.attribution_window_days})
    conn.execute("""
        UPDATE identity.event_visitors e
        SET attributed_click_id = a.attributed_click_id,
            attributed_click_at = a.attributed_click_at
        FROM run_attribution a
        WHERE e.event_key = a.event_key
          AND (e.attributed_click_id IS DISTINCT FROM a.attributed_click_id
               OR e.attributed_click_at IS DISTINCT FROM a.attributed_click_at)
    """)


def _refresh_profiles(conn: duckdb.DuckDBPyConnection, full: bool) -> None:
    """Rebuild the profiles of the visitors this run touched (all of them on a full run)."""
    if full:
        conn.execute("DELETE FROM identity.visitor_profiles")
        conn.execute(PROFILES_SQL.format(which="TRUE"))
        return
    conn.execute("""
        DELETE FROM identity.visitor_profiles
        WHERE visitor_id IN (SELECT visitor_id FROM affected_visitors)
    """)
    conn.execute(PROFILES_SQL.format(
        which="visitor_id IN (SELECT visitor_id FROM affected_visitors)"))


def _write_refused_edges(conn: duckdb.DuckDBPyConnection) -> None:
    conn.execute("DELETE FROM identity.refused_edges")
    conn.execute("""
        INSERT INTO identity.refused_edges
        SELECT e.node_a, e.node_b, coalesce(e.refused_reason, ha.hub_reason, hb.hub_reason),
               e.events
        FROM identity.edges e
        LEFT JOIN (SELECT node_id, hub_reason FROM identity.identifiers
                   WHERE hub_reason IS NOT NULL) ha ON ha.node_id = e.a_id
        LEFT JOIN (SELECT node_id, hub_reason FROM identity.identifiers
                   WHERE hub_reason IS NOT NULL) hb ON hb.node_id = e.b_id
        WHERE e.refused_reason IS NOT NULL OR ha.node_id IS NOT NULL OR hb.node_id IS NOT NULL
    """)


STATS_SQL = """
SELECT (SELECT count(*) FROM identity.visitor_profiles),
       (SELECT count(*) FROM identity.identifiers),
       (SELECT count(*) FROM identity.edges),
       (SELECT count(*) FROM identity.refused_edges),
       (SELECT max(identifiers) FROM identity.visitor_profiles),
       (SELECT count(*) FROM identity.event_visitors)
"""
