"""Connected components over the accumulated edges, the size guard, and stable visitor ids.

scipy's connected components labels millions of nodes in a second or two; the size guard
replays only the edges inside an oversized component, and visitor ids are re-decided only for
components whose identifiers changed.
"""

from __future__ import annotations

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from scipy.sparse import csr_array
from scipy.sparse.csgraph import connected_components

from capi_pipeline.identity.rules import GraphRules
from capi_pipeline.identity.tables import replace_rows, temp_table


def _components(nodes: int, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    graph = csr_array((np.ones(len(a), dtype=np.int8), (a, b)), shape=(nodes, nodes))
    return connected_components(graph, directed=False)[1]


# Incrementally, only the visitors a new edge touches or a new hub belonged to, and the new
# identifiers, can form other components: edges only join (an old edge is never refused by an
# incremental run, hubs are only added), so every kept edge with an end among these nodes has
# its other end among them too, and every other visitor stays the component it was.
# The ends of new edges and the new hubs are identifiers of the days read, whose visitor ids
# (as the run started; nothing has changed them yet) run_key_ids holds.
SUBGRAPH_NODES_SQL = """
CREATE OR REPLACE TEMP TABLE subgraph_nodes AS
SELECT node_id, hub_reason IS NOT NULL AS hub FROM identity.identifiers
WHERE visitor_id = ''
   OR visitor_id IN (SELECT visitor_id FROM run_key_ids
                     WHERE node_id IN (SELECT a_id FROM new_pairs UNION SELECT b_id FROM new_pairs
                                       UNION SELECT unnest($hubs::BIGINT[])))
"""


def guarded_components(
    conn: duckdb.DuckDBPyConnection, rules: GraphRules, full: bool, new_hubs: list[int]
) -> tuple[np.ndarray, np.ndarray, int]:
    """Components over the edges that join, after the size guard.

    Returns node ids, their component labels (aligned), and how many edges the size guard
    refused in this run. A full run labels every node id (the first array is then
    0..max node id); an incremental run only the subgraph of SUBGRAPH_NODES_SQL, the
    identifiers whose visitor can change, so its cost follows the day, not the history.
    """
    if full:
        conn.execute("UPDATE identity.edges SET refused_reason = NULL "
                     "WHERE refused_reason IS NOT NULL")
        nodes = int(conn.execute(
            "SELECT coalesce(max(node_id), -1) + 1 FROM identity.identifiers").fetchone()[0])
        node_ids = np.arange(nodes, dtype=np.int64)
        hub = np.zeros(nodes, dtype=bool)
        hub_ids = conn.execute("SELECT node_id FROM identity.identifiers "
                               "WHERE hub_reason IS NOT NULL").fetchnumpy()
        hub[np.asarray(hub_ids["node_id"], np.int64)] = True
        # Every edge is new on a full run: no need to look them up.
        edges = conn.execute("""
            SELECT a_id, b_id, refused_reason IS NOT NULL AS refused,
                   date_diff('day', DATE '2000-01-01', first_day) AS day, true AS new
            FROM identity.edges
        """).fetchnumpy()
        a, b = np.asarray(edges["a_id"], np.int64), np.asarray(edges["b_id"], np.int64)
    else:
        conn.execute(SUBGRAPH_NODES_SQL, {"hubs": new_hubs})
        sub = conn.execute(
            "SELECT node_id, hub FROM subgraph_nodes ORDER BY node_id").fetchnumpy()
        node_ids = np.asarray(sub["node_id"], np.int64)
        hub = np.asarray(sub["hub"], bool)
        nodes = len(node_ids)
        edges = conn.execute("""
            SELECT e.a_id, e.b_id, e.refused_reason IS NOT NULL AS refused,
                   0 AS day, n.a_id IS NOT NULL AS new
            FROM identity.edges e
            LEFT JOIN new_pairs n ON n.a_id = e.a_id AND n.b_id = e.b_id
            WHERE e.a_id IN (SELECT node_id FROM subgraph_nodes)
              AND e.b_id IN (SELECT node_id FROM subgraph_nodes)
        """).fetchnumpy()
        # Positions in the subgraph stand for node ids from here on.
        a = np.searchsorted(node_ids, np.asarray(edges["a_id"], np.int64))
        b = np.searchsorted(node_ids, np.asarray(edges["b_id"], np.int64))
    kept = ~np.asarray(edges["refused"], bool) & ~hub[a] & ~hub[b]
    labels = _components(nodes, a[kept], b[kept])

    limit = rules.max_visitor_identifiers
    sizes = np.bincount(labels, minlength=nodes)
    if not (sizes > limit).any():
        return node_ids, labels, 0
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
        temp_table(conn, "size_refused", pa.table({
            "a_id": node_ids[a[rows]], "b_id": node_ids[b[rows]], "size": reasons[refused],
        }))
        conn.execute("""
            UPDATE identity.edges e
            SET refused_reason = 'size: would join ' || r.size
                || ' identifiers into one visitor, limit ' || $limit
            FROM size_refused r WHERE e.a_id = r.a_id AND e.b_id = r.b_id
        """, {"limit": limit})
        kept[rows] = False
        labels = _components(nodes, a[kept], b[kept])
    return node_ids, labels, int(refused.sum())


# --- stable visitor ids -------------------------------------------------------------------------

# Per component: its identifiers and the visitor ids they had. A component is unchanged when
# all its identifiers had one id and that id had no other identifiers. (First seen with the
# days read: an incremental run writes those totals with the new visitor ids.)
COMPONENTS_SQL = """
CREATE OR REPLACE TEMP TABLE node_components AS
SELECT i.node_id, i.node_key, i.visitor_id AS old_visitor_id,
       least(i.first_seen, t.first_seen) AS first_seen, l.component,
       i.hub_reason IS NOT NULL AS hub, i.rowid AS _row
FROM identity.identifiers i JOIN component_labels l ON l.node_id = i.node_id
LEFT JOIN pending_totals t ON t._row = i.rowid
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


def changed_nodes(conn: duckdb.DuckDBPyConnection, labels: np.ndarray) -> np.ndarray:
    """The identifiers of the components that are not exactly the visitor they were.

    The test of CHANGED_SQL, in integers over every identifier: a component is unchanged when
    all its identifiers had one visitor id (not '') and that id had no other identifiers. Only
    the changed components need ids decided; an old id met there has none of its identifiers
    in an unchanged component, so the SQL that follows sees the same rows as over all nodes.
    """
    current = conn.sql("SELECT node_id, visitor_id FROM identity.identifiers").to_arrow_table()
    node_id = np.asarray(current["node_id"].to_numpy(), np.int64)
    if not len(node_id):
        return node_id
    encoded = pc.dictionary_encode(current["visitor_id"].combine_chunks())
    codes = np.asarray(encoded.indices.to_numpy(), np.int64)
    empty = encoded.dictionary.index("").as_py()  # -1 when every identifier has a visitor
    component = labels[node_id]
    count = int(component.max()) + 1
    size = np.bincount(component, minlength=count)
    low = np.full(count, len(encoded.dictionary), np.int64)
    high = np.full(count, -1, np.int64)
    np.minimum.at(low, component, codes)
    np.maximum.at(high, component, codes)
    per_id = np.bincount(codes, minlength=len(encoded.dictionary) + 1)
    unchanged = (size > 0) & (low == high) & (low != empty) & (per_id[low] == size)
    return np.sort(node_id[~unchanged[component]])


def assign_visitor_ids(
    conn: duckdb.DuckDBPyConnection, node_ids: np.ndarray, labels: np.ndarray, full: bool
) -> dict[str, int]:
    """Give every changed component its visitor id and record ids that stopped being used.

    A full run finds the changed components among all (changed_nodes); an incremental run's
    labels are those of its subgraph, each of whose components holds a new identifier, an end
    of a new edge or an identifier of a visitor a new hub belonged to.
    """
    if full:
        nodes = changed_nodes(conn, labels)
        components = labels[nodes]
    else:
        nodes, components = node_ids, labels
    temp_table(conn, "component_labels", pa.table({
        "node_id": nodes, "component": components.astype(np.int64),
    }))
    conn.execute(COMPONENTS_SQL)
    conn.execute(CHANGED_SQL)
    conn.execute(NEW_IDS_SQL)
    conn.execute("""
        CREATE OR REPLACE TEMP TABLE node_changes AS
        SELECT n.node_id, n.old_visitor_id, c.visitor_id, n._row
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
    # The identifiers whose visitor or (pending_totals) totals changed, each rewritten once,
    # read by the row ids their key lookup and node_components found.
    replace_rows(conn, "identity.identifiers", """
        SELECT i.rowid AS _row,
               i.* REPLACE (coalesce(c.visitor_id, i.visitor_id) AS visitor_id,
                            i.events + t.events AS events,
                            least(i.first_seen, t.first_seen) AS first_seen,
                            greatest(i.last_seen, t.last_seen) AS last_seen)
        FROM identity.identifiers i JOIN pending_totals t ON i.rowid = t._row
        LEFT JOIN node_changes c USING (node_id)
        UNION ALL
        SELECT i.rowid AS _row, i.* REPLACE (c.visitor_id AS visitor_id)
        FROM identity.identifiers i JOIN node_changes c ON i.rowid = c._row
        WHERE c._row NOT IN (SELECT _row FROM pending_totals WHERE _row IS NOT NULL)
    """)
    merged, split = conn.execute("""
        SELECT (SELECT count(*) FROM merged_ids),
               (SELECT count(*) FROM component_ids WHERE split)
    """).fetchone()
    return {"visitors_merged": int(merged), "visitors_split": int(split)}
