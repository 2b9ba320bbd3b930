"""Events pointed at their visitors, profiles, click attribution and the refused-edge list."""

from __future__ import annotations

from datetime import timedelta

import duckdb

from capi_pipeline.identity.rules import KINDS, GraphRules
from capi_pipeline.identity.tables import replace_rows


def insert_events(conn: duckdb.DuckDBPyConnection) -> None:
    """Write the event rows of this run (`run_inserts`), whole: each with its anchor, the
    most personal of its identifiers that is not a hub, and that anchor's visitor.

    Written once the visitors are decided, rather than written first and updated: an UPDATE
    of rows written in the same transaction costs about a second per 100,000 rows.
    """
    conn.execute("""
        CREATE OR REPLACE TEMP TABLE run_anchor_ids AS
        SELECT n.ev, arg_min(n.node_id, n.rank + CASE WHEN h.node_id IS NULL THEN 0 ELSE 100 END)
                   AS anchor_node_id
        FROM run_node_ids n
        LEFT JOIN (SELECT node_id FROM identity.identifiers WHERE hub_reason IS NOT NULL) h
            USING (node_id)
        WHERE n.ev IN (SELECT _ev FROM run_inserts)
        GROUP BY n.ev
    """)
    # The anchor's visitor: the one this run gave it, else the one it had (run_key_ids).
    conn.execute("""
        INSERT INTO identity.event_visitors BY NAME
        SELECT r.* EXCLUDE (_ev) REPLACE (a.anchor_node_id AS anchor_node_id,
                                          coalesce(c.visitor_id, k.visitor_id) AS visitor_id)
        FROM run_inserts r
        JOIN run_anchor_ids a ON a.ev = r._ev
        JOIN run_key_ids k ON k.node_id = a.anchor_node_id
        LEFT JOIN node_changes c ON c.node_id = a.anchor_node_id
    """)


def update_events(conn: duckdb.DuckDBPyConnection, new_hubs: list[int], written: str,
                  combine: bool) -> None:
    """Point each event at its visitor: the visitor of its most personal identifier that is
    not a hub, so a purchase made on a shop's kiosk goes to the buyer, not to the kiosk.

    The rows of this run are written with their anchor and visitor (insert_events); of the
    rows kept, only those carrying a hub found (or cleared) in this run can change anchor, and
    only those anchored on an identifier whose visitor changed move.
    """
    if new_hubs:
        conn.execute("""
            CREATE OR REPLACE TEMP TABLE run_anchors AS
            SELECT u.row, any_value(u.visitor_id) AS visitor_id,
                   arg_min(u.node_id, list_position($kinds, i.identifier_type)
                                      + CASE WHEN i.hub_reason IS NULL THEN 0 ELSE 100 END)
                       AS anchor_node_id
            FROM (SELECT rowid AS row, visitor_id, unnest(node_ids) AS node_id
                  FROM identity.event_visitors
                  WHERE list_has_any(node_ids, $changed::BIGINT[])) u
            JOIN identity.identifiers i USING (node_id)
            GROUP BY u.row
        """, {"kinds": list(KINDS), "changed": new_hubs})
    else:
        conn.execute("""
            CREATE OR REPLACE TEMP TABLE run_anchors
                (row BIGINT, visitor_id VARCHAR, anchor_node_id BIGINT)
        """)
    # The visitors that lose or gain events or identifiers get new profiles.
    conn.execute("""
        CREATE OR REPLACE TEMP TABLE affected_visitors AS
        SELECT old_visitor_id AS visitor_id FROM node_changes
        UNION SELECT visitor_id FROM node_changes
        UNION SELECT visitor_id FROM dropped_visitors
        UNION SELECT visitor_id FROM run_anchors
    """)
    # Rows are found again by row id (stable within the run's transaction), a join DuckDB
    # narrows to the row groups holding them instead of matching every event key.
    conn.execute("""
        UPDATE identity.event_visitors e SET anchor_node_id = a.anchor_node_id
        FROM run_anchors a WHERE e.rowid = a.row AND e.anchor_node_id <> a.anchor_node_id
    """)
    # An older row moves only when its anchor's visitor changed (a merge, a split, a new
    # anchor): those are found over the anchors (integers), then replaced whole by row id.
    # A row anchored on an identifier of node_changes had that identifier's old visitor, so
    # it moves without comparing visitor ids over every row; a row given another anchor
    # moves when the new anchor's visitor is another.
    conn.execute("""
        CREATE OR REPLACE TEMP TABLE moved_events AS
        SELECT e.rowid AS row, c.visitor_id
        FROM identity.event_visitors e JOIN node_changes c ON e.anchor_node_id = c.node_id
        UNION
        SELECT a.row, i.visitor_id
        FROM run_anchors a JOIN identity.identifiers i ON i.node_id = a.anchor_node_id
        WHERE a.visitor_id <> i.visitor_id
    """)
    replace_rows(conn, "identity.event_visitors", """
        SELECT e.rowid AS _row, e.* REPLACE (m.visitor_id AS visitor_id)
        FROM identity.event_visitors e JOIN moved_events m ON e.rowid = m.row
    """)
    insert_events(conn)
    if new_hubs:
        conn.execute("""
            INSERT INTO affected_visitors
            SELECT visitor_id FROM identity.identifiers
            WHERE node_id IN (SELECT anchor_node_id FROM run_anchors)
        """)
    # A visitor that only gained events on the days read keeps its history: its profile is
    # combined with those days' latest values instead of being rebuilt from all its events.
    conn.execute(f"""
        CREATE OR REPLACE TEMP TABLE extended_visitors AS
        SELECT DISTINCT visitor_id FROM identity.event_visitors
        WHERE {written} AND visitor_id NOT IN (SELECT visitor_id FROM affected_visitors)
    """)
    # Every event's visitor is now its anchor's, so the events of the affected visitors are
    # those anchored on their identifiers: an integer lookup rather than a match of visitor ids
    # over every event row. With `combine` the affected visitors are those of node_changes
    # (no hub, no event read again), whose identifiers are all in the changed components.
    if combine:
        conn.execute("""
            CREATE OR REPLACE TEMP TABLE affected_nodes AS
            SELECT n.node_id, c.visitor_id
            FROM node_components n JOIN component_ids c USING (component)
        """)
    else:
        conn.execute("""
            CREATE OR REPLACE TEMP TABLE affected_nodes AS
            SELECT node_id, visitor_id FROM identity.identifiers
            WHERE visitor_id IN (SELECT visitor_id FROM affected_visitors)
        """)


def _latest_value(name: str) -> str:
    """A profile field's latest non-empty value and when it was seen, over a visitor's events.

    arg_max skips the rows whose time is NULL, which is cheaper than a FILTER on each aggregate.
    """
    seen = f"CASE WHEN {name} IS NOT NULL THEN event_time END"
    return f"arg_max({name}, {seen}) AS {name},\n           max({seen}) AS {name}_seen_at"


_LATEST_VALUES = ",\n".join(
    "           " + _latest_value(name) for name in ("email", "phone", "first_name", "last_name")
) + """,
           max(CASE WHEN coalesce(first_name, last_name) IS NOT NULL THEN event_time END)
               AS name_seen_at,
""" + ",\n".join(
    "           " + _latest_value(name)
    for name in ("address", "customer_id", "web", "click_id", "gender", "date_of_birth",
                 "advertising_id")
)

# The profile's values of the events read ({which}): an address and a web pair (IP with user
# agent, web events only) each kept whole, so their parts come from one event.
_EVENTS = """
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
"""

PROFILES_SQL = _EVENTS + """identifier_counts AS (
    SELECT visitor_id, count(*) AS identifiers FROM {nodes}
    WHERE visitor_id IN (SELECT visitor_id FROM events) GROUP BY visitor_id
),
-- Each value is the one at its latest non-empty time (_latest_value).
latest AS (
    SELECT visitor_id, count(*) AS events, min(event_time) AS first_seen,
           max(event_time) AS last_seen,
""" + _LATEST_VALUES + """
    FROM events GROUP BY visitor_id
)
SELECT l.* EXCLUDE (address, web), coalesce(c.identifiers, 0) AS identifiers,
       l.address.city AS city, l.address.state AS state, l.address.zip AS zip,
       l.address.country AS country, l.web.ip AS ip, l.web.user_agent AS user_agent
FROM latest l LEFT JOIN identifier_counts c USING (visitor_id)
"""


def _single_event_values() -> str:
    """What _LATEST_VALUES gives over one event: its values, each seen at its time if set."""
    return ",\n".join(
        f"           {name}, CASE WHEN {name} IS NOT NULL THEN event_time END AS {name}_seen_at"
        for name in ("email", "phone", "first_name", "last_name", "address", "customer_id",
                     "web", "click_id", "gender", "date_of_birth", "advertising_id")
    )


# PROFILES_SQL over the days read (identifiers counted elsewhere): most visitors have one event
# on a day, and their profile is that event's values, without the hash aggregate of sixteen
# latest values (half its time at 10M events).
DAY_PROFILES_SQL = _EVENTS + """counts AS (
    SELECT visitor_id, count(*) AS events FROM events GROUP BY visitor_id
),
single AS (
    SELECT visitor_id, 1 AS events, event_time AS first_seen, event_time AS last_seen,
           CASE WHEN coalesce(first_name, last_name) IS NOT NULL THEN event_time END
               AS name_seen_at,
""" + _single_event_values() + """
    FROM events WHERE visitor_id IN (SELECT visitor_id FROM counts WHERE events = 1)
),
several AS (
    SELECT visitor_id, count(*) AS events, min(event_time) AS first_seen,
           max(event_time) AS last_seen,
""" + _LATEST_VALUES + """
    FROM events WHERE visitor_id IN (SELECT visitor_id FROM counts WHERE events > 1)
    GROUP BY visitor_id
),
latest AS (
    SELECT * FROM single UNION ALL BY NAME SELECT * FROM several
)
SELECT l.* EXCLUDE (address, web), 0 AS identifiers,
       l.address.city AS city, l.address.state AS state, l.address.zip AS zip,
       l.address.country AS country, l.web.ip AS ip, l.web.user_agent AS user_agent
FROM latest l
"""


# An event's click id is its own, else the visitor's latest click before it within the
# attribution window: what a conversion days after the landing page is attributed to.
# `attributed_events` are the events to attribute, `run_clicks` their visitors' clicks.
ATTRIBUTION_SQL = """
CREATE OR REPLACE TEMP TABLE run_attribution AS
SELECT e.row,
       CASE WHEN e.click_id IS NOT NULL THEN e.click_id
            WHEN e.event_time - c.click_time <= to_days($window_days) THEN c.click_id END
           AS attributed_click_id,
       CASE WHEN e.click_id IS NOT NULL THEN e.event_time
            WHEN e.event_time - c.click_time <= to_days($window_days) THEN c.click_time END
           AS attributed_click_at
FROM attributed_events e
ASOF LEFT JOIN run_clicks c ON c.visitor_id = e.visitor_id AND e.event_time >= c.click_time
"""

# Events kept from earlier runs to attribute again: those of attributed_visitors from `since`
# on, found by visitor id within the row groups from the earliest `since` on (the events of a
# visitor who clicked on the days read: in the latest row groups), and every event of
# attributed_nodes, through an integer probe of every event row's anchor.
KEPT_EVENTS_SQL = """
INSERT INTO attributed_events
SELECT e.rowid AS row, e.visitor_id, e.event_time, e.click_id
FROM identity.event_visitors e
JOIN (SELECT visitor_id, min(since) AS since FROM attributed_visitors
      WHERE since IS NOT NULL GROUP BY visitor_id) a USING (visitor_id)
WHERE e.event_time >= a.since AND e.event_time >= $floor AND NOT ({written})
UNION
SELECT e.rowid AS row, e.visitor_id, e.event_time, e.click_id
FROM identity.event_visitors e JOIN attributed_nodes a ON a.node_id = e.anchor_node_id
WHERE {by_nodes} AND (NOT a.unclicked OR e.attributed_click_id IS NOT NULL)
  AND NOT ({written})
"""


def attribute_clicks(conn: duckdb.DuckDBPyConnection, rules: GraphRules, written: str,
                     combine: bool) -> None:
    """Attribute the events written in this run, every event of a visitor whose identifiers
    or events changed, and the events of a visitor who clicked in the rows written from the
    first such click on (a click is carried to later events only); an event kept from an
    earlier run whose visitor is none of these keeps its own.

    With `combine` (see refresh_profiles) a merged visitor's kept events are those of the
    visitors it joined, each attributed over its own clicks: they are redone only when another
    part of the merge brings a click, every event when another joined visitor had one (its
    times are not kept), else from the days' first click on.
    """
    rebuilt_visitors, rebuilt_nodes = "affected_visitors", "affected_nodes"
    if combine:
        rebuilt_visitors, rebuilt_nodes = "rebuilt_nodes", "rebuilt_nodes"
    # Two plain selections rather than one OR of three lookups over every event row. `since`
    # NULL: every event of the visitor.
    # An affected visitor whose profile (just rebuilt) has no click id has no click in any
    # of its events: only its events still attributed to a click (a split, a deleted event)
    # change, to none.
    conn.execute(f"""
        CREATE OR REPLACE TEMP TABLE attributed_visitors AS
        SELECT a.visitor_id, NULL::TIMESTAMPTZ AS since, p.click_id IS NULL AS unclicked
        FROM (SELECT DISTINCT visitor_id FROM {rebuilt_visitors}) a
        LEFT JOIN identity.visitor_profiles p USING (visitor_id)
        UNION ALL
        SELECT visitor_id, min(event_time), false FROM identity.event_visitors
        WHERE {written} AND click_id IS NOT NULL
          AND visitor_id IN (SELECT visitor_id FROM extended_visitors)
        GROUP BY visitor_id
    """)
    # Their events are found through their identifiers (see affected_nodes).
    conn.execute(f"""
        CREATE OR REPLACE TEMP TABLE attributed_nodes AS
        SELECT n.node_id, a.unclicked
        FROM {rebuilt_nodes} n JOIN attributed_visitors a USING (visitor_id)
        WHERE a.since IS NULL
    """)
    if combine:
        conn.execute(f"""
            CREATE OR REPLACE TEMP TABLE redone_parts AS
            WITH day_clicks AS (
                SELECT visitor_id, min(event_time) AS first_click FROM identity.event_visitors
                WHERE {written} AND click_id IS NOT NULL
                  AND visitor_id IN (SELECT visitor_id FROM combined_ids)
                GROUP BY visitor_id
            ),
            parts AS (
                SELECT m.visitor_id, m.old_visitor_id,
                       count(*) FILTER (WHERE clicked) OVER (PARTITION BY m.visitor_id)
                           - m.clicked::INTEGER AS others_clicked,
                       d.first_click
                FROM combined_ids m LEFT JOIN day_clicks d USING (visitor_id)
            )
            SELECT visitor_id, old_visitor_id,
                   CASE WHEN others_clicked > 0 THEN NULL ELSE first_click END AS since
            FROM parts
            WHERE old_visitor_id <> '' AND (others_clicked > 0 OR first_click IS NOT NULL)
        """)
        # A part redone from the days' first click on: every event of the merged visitor
        # from then on (the other parts' too, which attributing again leaves as they are).
        conn.execute("""
            INSERT INTO attributed_visitors
            SELECT visitor_id, since, false FROM redone_parts WHERE since IS NOT NULL
        """)
        conn.execute("""
            INSERT INTO attributed_nodes
            SELECT n.node_id, false
            FROM node_components n JOIN redone_parts r USING (old_visitor_id)
            WHERE r.since IS NULL
        """)
    conn.execute(f"""
        CREATE OR REPLACE TEMP TABLE attributed_events AS
        SELECT rowid AS row, visitor_id, event_time, click_id FROM identity.event_visitors
        WHERE {written}
    """)
    nodes, floor = conn.execute(
        "SELECT (SELECT count(*) FROM attributed_nodes), min(since) FROM attributed_visitors"
    ).fetchone()
    if nodes or floor is not None:
        conn.execute(KEPT_EVENTS_SQL.format(written=written, by_nodes="TRUE" if nodes else "FALSE"),
                     {"floor": floor})
    _run_clicks(conn, rules, written, combine)
    conn.execute(ATTRIBUTION_SQL, {"window_days": rules.attribution_window_days})
    conn.execute("""
        UPDATE identity.event_visitors e
        SET attributed_click_id = a.attributed_click_id,
            attributed_click_at = a.attributed_click_at
        FROM run_attribution a
        WHERE e.rowid = a.row
          AND (e.attributed_click_id IS DISTINCT FROM a.attributed_click_id
               OR e.attributed_click_at IS DISTINCT FROM a.attributed_click_at)
    """)


def _run_clicks(conn: duckdb.DuckDBPyConnection, rules: GraphRules, written: str,
                combine: bool) -> None:
    """`run_clicks`: the clicks of the visitors of attributed_events that can be any event's
    latest click within the window (none before the earliest event's window).

    With `combine`, a visitor whose events to attribute are all at or after the latest click
    of its events kept from earlier runs (prior_clicks, from the profiles it had) needs no
    other of those: its clicks are that one and the ones written in this run. Only the other
    visitors' clicks are looked for over every event row (none when each visitor's events are
    the days' own, the daily case).
    """
    start = conn.execute("SELECT min(event_time) FROM attributed_events").fetchone()[0]
    if start is None:
        conn.execute("CREATE OR REPLACE TEMP TABLE run_clicks "
                     "(visitor_id VARCHAR, click_time TIMESTAMPTZ, click_id VARCHAR)")
        return
    floor = start - timedelta(days=rules.attribution_window_days)
    looked_up = "(SELECT visitor_id FROM attributed_events)"
    if combine:
        conn.execute("""
            CREATE OR REPLACE TEMP TABLE known_clicks AS
            SELECT p.visitor_id, p.click_id, p.click_time
            FROM prior_clicks p
            JOIN (SELECT visitor_id, min(event_time) AS first_event FROM attributed_events
                  GROUP BY visitor_id) e USING (visitor_id)
            WHERE p.click_time IS NULL OR e.first_event >= p.click_time
        """)
        conn.execute(f"""
            CREATE OR REPLACE TEMP TABLE run_clicks AS
            SELECT visitor_id, click_time, click_id FROM known_clicks
            WHERE click_id IS NOT NULL AND click_time >= $floor
            UNION ALL
            SELECT visitor_id, event_time, click_id FROM identity.event_visitors
            WHERE {written} AND click_id IS NOT NULL AND event_time >= $floor
              AND visitor_id IN (SELECT visitor_id FROM known_clicks)
        """, {"floor": floor})
        looked_up = ("(SELECT visitor_id FROM attributed_events "
                     "EXCEPT SELECT visitor_id FROM known_clicks)")
    else:
        conn.execute("CREATE OR REPLACE TEMP TABLE run_clicks "
                     "(visitor_id VARCHAR, click_time TIMESTAMPTZ, click_id VARCHAR)")
    if conn.execute(f"SELECT count(*) FROM {looked_up}").fetchone()[0]:
        conn.execute(f"""
            INSERT INTO run_clicks
            SELECT visitor_id, event_time, click_id FROM identity.event_visitors
            WHERE click_id IS NOT NULL AND event_time >= $floor
              AND visitor_id IN {looked_up}
        """, {"floor": floor})


# Each (value, seen at) of a profile combined with the same from the days read: the later wins.
LATEST_FIELDS = {
    "email": "email_seen_at", "phone": "phone_seen_at", "first_name": "first_name_seen_at",
    "last_name": "last_name_seen_at", "customer_id": "customer_id_seen_at",
    "click_id": "click_id_seen_at", "gender": "gender_seen_at",
    "date_of_birth": "date_of_birth_seen_at", "advertising_id": "advertising_id_seen_at",
    "city": "address_seen_at", "state": "address_seen_at", "zip": "address_seen_at",
    "country": "address_seen_at", "ip": "web_seen_at", "user_agent": "web_seen_at",
}


def _merged_profiles_sql() -> str:
    """Each profile of extended_rows combined with the visitor's profile of the days read,
    appended as a whole row (the old rows, found by row id, are deleted after); the number of
    identifiers is the component's when extended_rows gives one, else the old profile's."""
    later = "d.{seen} IS NOT NULL AND (p.{seen} IS NULL OR d.{seen} >= p.{seen})"
    values = [
        f"CASE WHEN {later.format(seen=seen)} THEN d.{field} ELSE p.{field} END AS {field}"
        for field, seen in LATEST_FIELDS.items()
    ]
    times = [f"greatest(p.{seen}, d.{seen}) AS {seen}"
             for seen in dict.fromkeys([*LATEST_FIELDS.values(), "name_seen_at"])]
    return (
        "INSERT INTO identity.visitor_profiles BY NAME SELECT p.* REPLACE ("
        + ", ".join(values + times)
        + ", p.events + d.events AS events, least(p.first_seen, d.first_seen) AS first_seen, "
        "greatest(p.last_seen, d.last_seen) AS last_seen, d.visitor_id AS visitor_id, "
        "coalesce(o.identifiers, p.identifiers) AS identifiers) "
        "FROM identity.visitor_profiles p JOIN extended_rows o ON p.rowid = o._row "
        "JOIN day_profiles d ON d.visitor_id = o.visitor_id"
    )


def _combined_profiles_sql() -> str:
    """Each merged visitor's profile from the profiles of the visitors it joined and the days'
    latest values of its own events: per field the value with the latest time (arg_max skips
    the parts without one), counts summed, identifiers counted over its component. For the
    visitors that joined several old visitors (extended_rows has those that joined one,
    fresh_visitors those that joined none)."""
    fields = [
        f"arg_max({field}, {seen}) AS {field}"
        for field, seen in LATEST_FIELDS.items()
        if field not in ADDRESS and field not in WEB
    ]
    fields += [
        "arg_max({" + ", ".join(f"'{f}': {f}" for f in ADDRESS) + "}, address_seen_at) AS address",
        "arg_max({" + ", ".join(f"'{f}': {f}" for f in WEB) + "}, web_seen_at) AS web",
    ]
    times = [f"max({seen}) AS {seen}"
             for seen in dict.fromkeys([*LATEST_FIELDS.values(), "name_seen_at"])]
    return f"""
CREATE OR REPLACE TEMP TABLE combined_profiles AS
WITH parts AS (
    SELECT m.visitor_id AS into_id, p.* EXCLUDE (visitor_id)
    FROM identity.visitor_profiles p JOIN old_profiles o ON p.rowid = o._row
    JOIN (SELECT visitor_id, old_visitor_id FROM combined_ids
          WHERE visitor_id NOT IN (SELECT visitor_id FROM extended_rows)) m
        ON m.old_visitor_id = o.visitor_id
    UNION ALL BY NAME
    SELECT visitor_id AS into_id, * EXCLUDE (visitor_id) FROM day_profiles
    WHERE visitor_id IN (SELECT visitor_id FROM combined_ids)
      AND visitor_id NOT IN (SELECT visitor_id FROM extended_rows
                             UNION ALL SELECT visitor_id FROM fresh_visitors)
),
latest AS (
    SELECT into_id AS visitor_id, sum(events) AS events, min(first_seen) AS first_seen,
           max(last_seen) AS last_seen, {", ".join(fields + times)}
    FROM parts GROUP BY into_id
)
SELECT l.* EXCLUDE (address, web), c.identifiers,
       {", ".join(f"l.address.{f} AS {f}" for f in ADDRESS)},
       {", ".join(f"l.web.{f} AS {f}" for f in WEB)}
FROM latest l JOIN combined_sizes c USING (visitor_id)
"""


ADDRESS = ("city", "state", "zip", "country")
WEB = ("ip", "user_agent")


def refresh_profiles(conn: duckdb.DuckDBPyConnection, written: str, combine: bool) -> None:
    """Rebuild the profiles of the visitors whose identifiers or events changed (on a full
    recompute too, so an unchanged visitor's profile is not rewritten), and extend those of
    visitors that only gained events.

    With `combine` (an incremental run that found no hub: visitors only merged or grew), a
    changed visitor's profile is combined from the profiles of the visitors it joined and the
    days' own events, instead of being rebuilt from all its events: every event kept belongs
    to one of those visitors, whose profile holds its latest values.
    """
    # The row ids of every profile this run reads or replaces, found over the visitor ids
    # alone: those rows are then read by row id, where each join of the whole profile table
    # read every column of its 1.65M rows (at 10M events).
    conn.execute("""
        CREATE OR REPLACE TEMP TABLE old_profiles AS
        SELECT rowid AS _row, visitor_id, click_id, click_id_seen_at
        FROM identity.visitor_profiles
        WHERE visitor_id IN (SELECT visitor_id FROM affected_visitors
                             UNION ALL SELECT visitor_id FROM extended_visitors)
    """)
    rebuilt = "affected_nodes"
    if combine:
        # The visitors of the changed components, each with the old visitors it joined.
        conn.execute("""
            CREATE OR REPLACE TEMP TABLE combined_ids AS
            SELECT m.*, p.click_id IS NOT NULL AS clicked
            FROM (SELECT DISTINCT c.visitor_id, n.old_visitor_id
                  FROM node_components n JOIN component_ids c USING (component)
                  WHERE c.visitor_id IN (SELECT visitor_id FROM affected_visitors)) m
            LEFT JOIN old_profiles p ON p.visitor_id = m.old_visitor_id
        """)
        conn.execute("""
            CREATE OR REPLACE TEMP TABLE combined_sizes AS
            SELECT c.visitor_id, count(*) AS identifiers
            FROM node_components n JOIN component_ids c USING (component)
            WHERE c.visitor_id IN (SELECT visitor_id FROM combined_ids)
            GROUP BY c.visitor_id
        """)
        # Any other changed visitor (none is expected) is rebuilt from its events.
        conn.execute("""
            CREATE OR REPLACE TEMP TABLE rebuilt_nodes AS
            SELECT * FROM affected_nodes WHERE visitor_id NOT IN (
                SELECT visitor_id FROM combined_ids UNION SELECT old_visitor_id FROM combined_ids)
        """)
        rebuilt = "rebuilt_nodes"
        # Per extended or combined visitor, the latest click of the events it had before this
        # run: that of the profiles it had (attribute_clicks needs no older one).
        conn.execute("""
            CREATE OR REPLACE TEMP TABLE prior_clicks AS
            SELECT visitor_id, arg_max(click_id, click_id_seen_at) AS click_id,
                   max(click_id_seen_at) AS click_time
            FROM (SELECT visitor_id, click_id, click_id_seen_at FROM old_profiles
                  WHERE visitor_id IN (SELECT visitor_id FROM extended_visitors)
                  UNION ALL
                  SELECT m.visitor_id, o.click_id, o.click_id_seen_at
                  FROM combined_ids m LEFT JOIN old_profiles o ON o.visitor_id = m.old_visitor_id)
            GROUP BY visitor_id
        """)
    conn.execute("CREATE OR REPLACE TEMP TABLE day_profiles AS " + DAY_PROFILES_SQL.format(
        which=written + " AND visitor_id IN (SELECT visitor_id FROM extended_visitors"
        + (" UNION ALL SELECT visitor_id FROM combined_ids" if combine else "") + ")"))
    # The profiles extended by the days' own: an extended visitor's, and that of the one old
    # visitor a changed visitor joined (new identifiers added to a known visitor, the common
    # merge). That is the combination below over two parts, without its aggregate.
    conn.execute("""
        CREATE OR REPLACE TEMP TABLE extended_rows AS
        SELECT visitor_id, _row, NULL::BIGINT AS identifiers FROM old_profiles
        WHERE visitor_id IN (SELECT visitor_id FROM extended_visitors)
    """)
    if combine:
        conn.execute("""
            INSERT INTO extended_rows
            SELECT m.visitor_id, o._row, s.identifiers
            FROM (SELECT visitor_id, any_value(old_visitor_id) AS old_visitor_id
                  FROM combined_ids WHERE old_visitor_id <> ''
                  GROUP BY visitor_id HAVING count(*) = 1) m
            JOIN old_profiles o ON o.visitor_id = m.old_visitor_id
            JOIN combined_sizes s ON s.visitor_id = m.visitor_id
            WHERE m.visitor_id IN (SELECT visitor_id FROM day_profiles)
        """)
        # A visitor of new identifiers only: its profile is the days' one.
        conn.execute("""
            CREATE OR REPLACE TEMP TABLE fresh_visitors AS
            SELECT visitor_id FROM combined_ids GROUP BY visitor_id
            HAVING count(*) FILTER (WHERE old_visitor_id <> '') = 0
        """)
        conn.execute(_combined_profiles_sql())
    # Profiles are replaced as whole rows rather than updated column by column (an UPDATE of
    # every column of rows spread over the table makes the commit rewrite the whole table's
    # columns): the new rows are appended while the old ones can still be read by row id,
    # then every old row of this run goes.
    conn.execute(_merged_profiles_sql())
    conn.execute("DELETE FROM identity.visitor_profiles "
                 "WHERE rowid IN (SELECT _row FROM old_profiles)")
    if combine:
        conn.execute(
            "INSERT INTO identity.visitor_profiles BY NAME SELECT * FROM combined_profiles")
        conn.execute("""
            INSERT INTO identity.visitor_profiles BY NAME
            SELECT d.* REPLACE (s.identifiers AS identifiers)
            FROM day_profiles d JOIN combined_sizes s USING (visitor_id)
            WHERE visitor_id IN (SELECT visitor_id FROM fresh_visitors)
        """)
    conn.execute("INSERT INTO identity.visitor_profiles BY NAME " + PROFILES_SQL.format(
        which=f"anchor_node_id IN (SELECT node_id FROM {rebuilt})", nodes=rebuilt))


def write_refused_edges(conn: duckdb.DuckDBPyConnection, full: bool,
                        new_hubs: list[int]) -> None:
    """The list of refused edges, with only its differences written (most days add a few).

    An incremental run only adds pairs and counts (run_edges, the days' edges as written; the
    size guard refuses only new pairs among them) and hubs (new_hubs): only the rows of those
    edges can change, so only they are looked at, where a full run looks at every edge.
    """
    edges = "identity.edges"
    if not full:
        # The day's edges (run_edges) with the size guard's refusals, and a new hub's others.
        conn.execute("""
            CREATE OR REPLACE TEMP TABLE looked_at_edges AS
            SELECT r.*, e.refused_reason FROM run_edges r
            LEFT JOIN (SELECT a_id, b_id, refused_reason FROM identity.edges
                       WHERE refused_reason IS NOT NULL) e USING (a_id, b_id)
        """)
        if new_hubs:
            conn.execute("""
                INSERT INTO looked_at_edges BY NAME
                SELECT node_a, node_b, a_id, b_id, events, refused_reason FROM identity.edges
                WHERE (a_id IN (SELECT unnest($hubs::BIGINT[]))
                       OR b_id IN (SELECT unnest($hubs::BIGINT[])))
                  AND (a_id, b_id) NOT IN (SELECT a_id, b_id FROM run_edges)
            """, {"hubs": new_hubs})
        edges = "looked_at_edges"
    conn.execute(f"""
        CREATE OR REPLACE TEMP TABLE run_refused AS
        SELECT e.node_a, e.node_b,
               coalesce(e.refused_reason, ha.hub_reason, hb.hub_reason) AS reason,
               e.events
        FROM {edges} e
        LEFT JOIN (SELECT node_id, hub_reason FROM identity.identifiers
                   WHERE hub_reason IS NOT NULL) ha ON ha.node_id = e.a_id
        LEFT JOIN (SELECT node_id, hub_reason FROM identity.identifiers
                   WHERE hub_reason IS NOT NULL) hb ON hb.node_id = e.b_id
        WHERE e.refused_reason IS NOT NULL OR ha.node_id IS NOT NULL OR hb.node_id IS NOT NULL
    """)
    looked_at = "TRUE"
    if not full:
        looked_at = f"""EXISTS (SELECT 1 FROM {edges} c
                                WHERE c.node_a = r.node_a AND c.node_b = r.node_b)"""
    conn.execute(f"""
        DELETE FROM identity.refused_edges r WHERE {looked_at} AND NOT EXISTS (
            SELECT 1 FROM run_refused n WHERE n.node_a = r.node_a AND n.node_b = r.node_b
                AND n.reason = r.reason AND n.events = r.events)
    """)
    conn.execute("""
        INSERT INTO identity.refused_edges
        SELECT * FROM run_refused n
        ANTI JOIN identity.refused_edges r ON n.node_a = r.node_a AND n.node_b = r.node_b
            AND n.reason = r.reason AND n.events = r.events
    """)
