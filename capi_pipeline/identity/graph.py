"""The identity graph: identifiers seen together, joined into visitors, guarded against welds.

Nodes are identifiers (`client:`, `customer:`, `email:`, `phone:`, `checkout:`, `cart:` keys);
an edge joins two identifiers that appeared on one event. A visitor is a connected component,
computed in DuckDB by label propagation with pointer jumping, so a day of millions of edges
never passes through a Python loop.

Two guards stop one junk or shared identifier from welding strangers into one visitor: junk
values (placeholders, `test@test.com`, the store's own addresses, repeated digits) never become
nodes, and hubs (a cookie with more people on it than one browser has, an address on more
browsers than one person uses) keep their node but lose their edges. Every edge refused is kept
in `identity.refused_edges` with its reason.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import duckdb

from capi_pipeline.enrich.normalize import country_code, normalize_email, phone_e164

# Local parts and domains that people type when a form insists on an address.
JUNK_LOCAL_PARTS = frozenset({
    "test", "tester", "testing", "noreply", "no-reply", "none", "null", "na", "nobody", "asdf",
    "abc", "email", "user", "customer", "unknown", "xxx", "fake",
})
JUNK_DOMAINS = frozenset({"test.com", "test.test", "email.com", "domain.com", "fake.com"})
# Priority of identifiers when an event's visitor is chosen: people before browsers.
NODE_PRIORITY = ("customer", "email", "phone", "client", "checkout", "cart")
MAX_ITERATIONS = 200


@dataclass(frozen=True)
class GraphRules:
    """Thresholds for the guards, from PipelineSettings."""

    default_region: str
    hub_max_clients: int
    hub_max_people_per_client: int
    junk_emails: frozenset[str]


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


def register_functions(conn: duckdb.DuckDBPyConnection, rules: GraphRules) -> None:
    """The normalization table's email and phone rules, callable from SQL."""

    def email_node(value: str | None) -> str | None:
        email = normalize_email(value) if value else None
        return None if is_junk_email(email, rules.junk_emails) else email

    def phone_node(value: str | None, country: str | None) -> str | None:
        if not value:
            return None
        region = country_code(country) if country else None
        e164 = phone_e164(value, region or rules.default_region)
        return None if is_junk_phone(e164) else e164

    for name in ("capi_email_node", "capi_phone_node"):
        try:
            conn.remove_function(name)
        except (duckdb.InvalidInputException, duckdb.CatalogException):
            pass
    conn.create_function("capi_email_node", email_node, ["VARCHAR"], "VARCHAR",
                         null_handling="special", side_effects=False)
    conn.create_function("capi_phone_node", phone_node, ["VARCHAR", "VARCHAR"], "VARCHAR",
                         null_handling="special", side_effects=False)


def build_identity(conn: duckdb.DuckDBPyConnection, rules: GraphRules) -> dict[str, int]:
    """Rebuild every identity table from all of staging; returns counts for metadata.

    The rebuild rereads all staged history each run. That is simple and keeps visitor ids
    stable (a component's id is the hash of its smallest identifier), but its cost grows with
    history; an incremental version would start from the stored labels and only the day's
    new edges.
    """
    register_functions(conn, rules)
    conn.execute(EVENT_NODES_SQL)
    conn.execute(HUBS_SQL, [rules.hub_max_clients, rules.hub_max_people_per_client])
    conn.execute(CANDIDATE_EDGES_SQL)
    labels = _components(conn)
    conn.execute("BEGIN TRANSACTION")
    try:
        for statement in WRITE_SQL:
            conn.execute(statement)
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    stats = conn.execute(STATS_SQL).fetchone()
    names = ("visitors", "identifiers", "edges", "refused_edges", "largest_visitor",
             "events_resolved")
    return {"iterations": labels, **dict(zip(names, (int(v or 0) for v in stats), strict=True))}


# One row per (event, identifier) from the events people made: bots and test traffic would
# only join strangers.
EVENT_NODES_SQL = """
CREATE OR REPLACE TEMP TABLE event_nodes AS
WITH events AS (
    SELECT event_key, partition_date, event_time, client_id, customer_id, checkout_token,
           cart_token, capi_email_node(email) AS email, capi_phone_node(phone, country) AS phone
    FROM staging.events
    WHERE duplicate_of IS NULL AND NOT is_bot AND NOT is_test
),
unpivoted AS (
    SELECT event_key, partition_date, event_time, 'client' AS kind, client_id AS value
    FROM events
    UNION ALL SELECT event_key, partition_date, event_time, 'customer', customer_id FROM events
    UNION ALL SELECT event_key, partition_date, event_time, 'email', email FROM events
    UNION ALL SELECT event_key, partition_date, event_time, 'phone', phone FROM events
    UNION ALL SELECT event_key, partition_date, event_time, 'checkout', checkout_token FROM events
    UNION ALL SELECT event_key, partition_date, event_time, 'cart', cart_token FROM events
)
SELECT event_key, partition_date, event_time, kind, value, kind || ':' || value AS node_key
FROM unpivoted
WHERE value IS NOT NULL AND trim(value) <> ''
"""

# A hub has more distinct partners of the other side than one person could: many people on
# one browser (a kiosk), or one address on many browsers (a shared or made-up address).
HUBS_SQL = """
CREATE OR REPLACE TEMP TABLE hubs AS
WITH pairs AS (
    SELECT DISTINCT c.node_key AS client_node, p.node_key AS person_node
    FROM event_nodes c
    JOIN event_nodes p ON c.event_key = p.event_key
    WHERE c.kind = 'client' AND p.kind IN ('customer', 'email', 'phone')
)
SELECT person_node AS node_key,
       'hub: on ' || count(*) || ' client ids, limit ' || $1 AS reason
FROM pairs GROUP BY person_node HAVING count(*) > $1
UNION ALL
SELECT client_node,
       'hub: ' || count(*) || ' people on one client id, limit ' || $2
FROM pairs GROUP BY client_node HAVING count(*) > $2
UNION ALL
-- A cart or checkout token belongs to one shopping session: one shared by several people is a
-- placeholder or a collector bug.
SELECT t.node_key,
       'hub: ' || count(DISTINCT p.node_key) || ' people on one ' || any_value(t.kind)
       || ' token, limit ' || $2
FROM event_nodes t
JOIN event_nodes p ON p.event_key = t.event_key
WHERE t.kind IN ('checkout', 'cart') AND p.kind IN ('customer', 'email', 'phone', 'client')
GROUP BY t.node_key
HAVING count(DISTINCT p.node_key) > $2 * 2
"""

# Each event joins its identifiers in a star around the first one, which connects them all
# with n-1 edges instead of n(n-1)/2.
CANDIDATE_EDGES_SQL = """
CREATE OR REPLACE TEMP TABLE candidate_edges AS
WITH ranked AS (
    SELECT event_key, event_time, node_key,
           row_number() OVER (
               PARTITION BY event_key
               ORDER BY list_position(
                   ['client', 'customer', 'email', 'phone', 'checkout', 'cart'], kind),
                   node_key
           ) AS position
    FROM event_nodes
),
star AS (
    SELECT a.event_key, a.event_time, least(a.node_key, b.node_key) AS node_a,
           greatest(a.node_key, b.node_key) AS node_b
    FROM ranked a JOIN ranked b ON a.event_key = b.event_key
    WHERE a.position = 1 AND b.position > 1
)
SELECT s.node_a, s.node_b, count(DISTINCT s.event_key) AS events,
       min(s.event_time) AS first_seen, max(s.event_time) AS last_seen,
       coalesce(any_value(ha.reason), any_value(hb.reason)) AS refused_reason
FROM star s
LEFT JOIN hubs ha ON ha.node_key = s.node_a
LEFT JOIN hubs hb ON hb.node_key = s.node_b
WHERE s.node_a <> s.node_b
GROUP BY s.node_a, s.node_b
"""


def _components(conn: duckdb.DuckDBPyConnection) -> int:
    """Label every node with the smallest node key of its component; returns iterations."""
    conn.execute("""
        CREATE OR REPLACE TEMP TABLE links AS
        SELECT node_a AS src, node_b AS dst FROM candidate_edges WHERE refused_reason IS NULL
        UNION ALL
        SELECT node_b, node_a FROM candidate_edges WHERE refused_reason IS NULL
    """)
    conn.execute("""
        CREATE OR REPLACE TEMP TABLE labels AS
        SELECT DISTINCT node_key, node_key AS label FROM event_nodes
    """)
    for iteration in range(1, MAX_ITERATIONS + 1):
        # One step takes the smallest label among a node's neighbours; the pointer jump then
        # adopts the label of that label, which halves the distance left on long chains.
        conn.execute("""
            CREATE OR REPLACE TEMP TABLE next_labels AS
            WITH stepped AS (
                SELECT l.node_key, least(l.label, coalesce(min(n.label), l.label)) AS label
                FROM labels l
                LEFT JOIN links k ON k.src = l.node_key
                LEFT JOIN labels n ON n.node_key = k.dst
                GROUP BY l.node_key, l.label
            )
            SELECT s.node_key, least(s.label, j.label) AS label
            FROM stepped s JOIN stepped j ON j.node_key = s.label
        """)
        changed = conn.execute("""
            SELECT count(*) FROM next_labels n JOIN labels l USING (node_key)
            WHERE n.label <> l.label
        """).fetchone()[0]
        conn.execute("CREATE OR REPLACE TEMP TABLE labels AS SELECT * FROM next_labels")
        if changed == 0:
            return iteration
    raise RuntimeError(f"identity components did not converge in {MAX_ITERATIONS} iterations")


WRITE_SQL = (
    "DELETE FROM identity.identifiers",
    """
    INSERT INTO identity.identifiers
    SELECT n.node_key, any_value(n.kind), any_value(n.value),
           'v_' || left(md5(any_value(l.label)), 16), count(DISTINCT n.event_key),
           min(n.event_time), max(n.event_time)
    FROM event_nodes n JOIN labels l USING (node_key)
    GROUP BY n.node_key
    """,
    "DELETE FROM identity.edges",
    """
    INSERT INTO identity.edges
    SELECT node_a, node_b, events, first_seen, last_seen
    FROM candidate_edges WHERE refused_reason IS NULL
    """,
    "DELETE FROM identity.refused_edges",
    """
    INSERT INTO identity.refused_edges
    SELECT node_a, node_b, refused_reason, events
    FROM candidate_edges WHERE refused_reason IS NOT NULL
    """,
    # An event belongs to the visitor of its most personal identifier that is not a hub, so
    # a purchase made on a shop's kiosk goes to the buyer, not to the kiosk.
    "DELETE FROM identity.event_visitors",
    """
    INSERT INTO identity.event_visitors
    SELECT n.event_key, any_value(n.partition_date),
           arg_min(i.visitor_id, list_position(
               ['customer', 'email', 'phone', 'client', 'checkout', 'cart'], n.kind)
               + CASE WHEN h.node_key IS NULL THEN 0 ELSE 10 END)
    FROM event_nodes n
    JOIN identity.identifiers i USING (node_key)
    LEFT JOIN hubs h USING (node_key)
    GROUP BY n.event_key
    """,
    "DELETE FROM identity.visitor_profiles",
    """
    INSERT INTO identity.visitor_profiles
    WITH events AS (
        SELECT v.visitor_id, s.event_time, s.customer_id, s.first_name, s.last_name, s.city,
               s.state, s.zip, s.country, s.ip, s.user_agent, s.click_id,
               capi_email_node(s.email) AS email, capi_phone_node(s.phone, s.country) AS phone,
               coalesce(s.city, s.state, s.zip, s.country) IS NOT NULL AS has_address
        FROM staging.events s JOIN identity.event_visitors v USING (event_key)
    )
    SELECT visitor_id,
           (SELECT count(*) FROM identity.identifiers i WHERE i.visitor_id = e.visitor_id),
           count(*), min(event_time), max(event_time),
           arg_max(email, event_time) FILTER (WHERE email IS NOT NULL),
           max(event_time) FILTER (WHERE email IS NOT NULL),
           arg_max(phone, event_time) FILTER (WHERE phone IS NOT NULL),
           max(event_time) FILTER (WHERE phone IS NOT NULL),
           arg_max(first_name, event_time) FILTER (WHERE first_name IS NOT NULL),
           arg_max(last_name, event_time) FILTER (WHERE last_name IS NOT NULL),
           arg_max(city, event_time) FILTER (WHERE has_address),
           arg_max(state, event_time) FILTER (WHERE has_address),
           arg_max(zip, event_time) FILTER (WHERE has_address),
           arg_max(country, event_time) FILTER (WHERE has_address),
           max(event_time) FILTER (WHERE has_address),
           arg_max(customer_id, event_time) FILTER (WHERE customer_id IS NOT NULL),
           arg_max(ip, event_time) FILTER (WHERE ip IS NOT NULL AND user_agent IS NOT NULL),
           arg_max(user_agent, event_time) FILTER (WHERE ip IS NOT NULL AND user_agent IS NOT NULL),
           max(event_time) FILTER (WHERE ip IS NOT NULL AND user_agent IS NOT NULL),
           arg_max(click_id, event_time) FILTER (WHERE click_id IS NOT NULL),
           max(event_time) FILTER (WHERE click_id IS NOT NULL)
    FROM events e
    GROUP BY visitor_id
    """,
)

STATS_SQL = """
SELECT (SELECT count(*) FROM identity.visitor_profiles),
       (SELECT count(*) FROM identity.identifiers),
       (SELECT count(*) FROM identity.edges),
       (SELECT count(*) FROM identity.refused_edges),
       (SELECT max(identifiers) FROM identity.visitor_profiles),
       (SELECT count(*) FROM identity.event_visitors)
"""
