"""The identity graph over hand-staged events: chains across days, guards, stable ids, merges.

Each test stages a few events per day, runs identity after each day as the pipeline does (only
the new day is read), and asserts the visitor ids, the refusals and the profiles.
"""

from __future__ import annotations

import hashlib
from dataclasses import replace

from capi_pipeline.identity.graph import _vacuum_due
from capi_pipeline_tests.identity_helpers import Graph, at, day

EPIK = "dj0yJnU9bGFuZGluZw"


def test_a_chain_across_five_days_is_one_visitor_with_the_latest_contacts():
    graph = Graph()
    graph.stage(0, client_id="cookie-1")
    first = graph.run()
    assert first["days_read"] == 1 and first["visitors"] == 1
    visitor = graph.visitor("client:cookie-1")

    days = [
        [{"client_id": "cookie-1", "email": " Ann.Lee@Example.COM ", "first_name": "Ann"}],
        [{"client_id": "cookie-2", "email": "ann.lee@example.com"}],
        [{"client_id": "cookie-2", "phone": "(415) 555-0132", "country": "US"}],
        # The third cookie arrives alone first (in the app), then with the phone.
        [{"hour": 8, "client_id": "cookie-3", "action_source": "app_ios", "ip": "198.51.100.9"},
         {"hour": 9, "client_id": "cookie-3", "phone": "+1 415 555 0132", "last_name": "Lee",
          "gender": "f", "date_of_birth": "1990-04-02"}],
    ]
    for on, events in enumerate(days, start=1):
        keys = [graph.stage(on, **fields) for fields in events]
        stats = graph.run()
        assert stats["days_read"] == 1 and stats["full_recompute"] == 0
    lone = keys[0]

    keys = ["client:cookie-1", "email:ann.lee@example.com", "client:cookie-2",
            "phone:+14155550132", "client:cookie-3"]
    assert {graph.visitor(key) for key in keys} == {visitor}
    assert graph.event_visitor(lone) == visitor
    profile = graph.profile(visitor)
    assert profile["identifiers"] == 5 and profile["events"] == 6
    assert profile["email"] == "ann.lee@example.com" and profile["email_seen_at"] == at(2)
    assert profile["phone"] == "+14155550132" and profile["phone_seen_at"] == at(4, 9)
    assert (profile["first_name"], profile["last_name"]) == ("Ann", "Lee")
    assert (profile["gender"], profile["date_of_birth"]) == ("f", "1990-04-02")
    # The app event's IP is not a web visit's: the latest web event's IP is kept.
    assert profile["ip"] == "203.0.113.7" and profile["web_seen_at"] == at(4, 9)
    assert profile["first_seen"] == at(0) and profile["last_seen"] == at(4, 9)
    assert graph.rows("SELECT count(*) FROM identity.visitor_profiles") == [(1,)]

    # Reading the same history at once gives the same visitors.
    again, stats = run_once_on_the_same_staging(graph)
    assert stats["days_read"] == 5
    assert again.grouping() == graph.grouping()
    assert profiles_by_identifiers(again) == profiles_by_identifiers(graph)


def run_once_on_the_same_staging(graph: Graph) -> tuple[Graph, dict]:
    """A new identity built in one run from the staged events `graph` was built from over
    several, and that run's stats."""
    fresh = Graph()
    staged = graph.conn.sql("SELECT * FROM staging.events").arrow()  # noqa: F841
    fresh.conn.execute("INSERT INTO staging.events SELECT * FROM staged")
    return fresh, fresh.run()


def profiles_by_identifiers(graph: Graph) -> dict:
    """Every profile keyed by its visitor's identifiers, without the visitor id."""
    cursor = graph.conn.execute("""
        SELECT p.*, (SELECT list(node_key ORDER BY node_key) FROM identity.identifiers i
                     WHERE i.visitor_id = p.visitor_id) AS keys
        FROM identity.visitor_profiles p
    """)
    names = [column[0] for column in cursor.description]
    rows = [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]
    return {tuple(row.pop("keys")): {k: v for k, v in row.items() if k != "visitor_id"}
            for row in rows}


def test_a_click_id_is_carried_from_the_landing_page_to_a_checkout_within_the_window():
    graph = Graph()
    landing = graph.stage(0, client_id="c-land", click_id=EPIK,
                          event_type="page_view")
    graph.run()
    checkout = graph.stage(3, client_id="c-land", email="buyer@example.com",
                           event_type="purchase")
    late = graph.stage(40, client_id="c-land", event_type="purchase")
    graph.run()

    visitor = graph.visitor("client:c-land")
    assert graph.event_visitor(checkout) == graph.event_visitor(landing) == visitor
    profile = graph.profile(visitor)
    assert (profile["click_id"], profile["click_id_seen_at"]) == (EPIK, at(0))
    attributed = dict(
        (key, (click, when)) for key, click, when in graph.rows(
            "SELECT event_key, attributed_click_id, attributed_click_at "
            "FROM identity.event_visitors"))
    assert attributed[landing] == (EPIK, at(0))
    assert attributed[checkout] == (EPIK, at(0))
    # Forty days later the click is outside the 30-day window.
    assert attributed[late] == (None, None)

    # A longer window, a rules change: every day is read again and the late purchase is
    # attributed too.
    stats = graph.run(attribution_window_days=45)
    assert stats["full_recompute"] == 1
    assert graph.rows("SELECT attributed_click_id FROM identity.event_visitors "
                      "WHERE event_key = ?", late) == [(EPIK,)]


def test_junk_identifiers_never_join_anyone():
    graph = Graph()
    junk = [
        {"email": "test@test.com"}, {"email": "Support@Shop.Example.com"},
        {"phone": "000-000-0000", "country": "US"}, {"phone": "1234567890"},
        {"client_id": "undefined"}, {"client_id": "null"}, {"client_id": "-----"},
        {"advertising_id": "00000000-0000-0000-0000-000000000000"}, {"client_id": "   "},
    ]
    for n in range(3):
        for fields in junk:
            graph.stage(0, hour=n, customer_id=f"person-{n}", **fields)
    graph.run()

    visitors = {graph.visitor(f"customer:person-{n}") for n in range(3)}
    assert len(visitors) == 3
    kinds = {kind for (kind,) in graph.rows(
        "SELECT DISTINCT identifier_type FROM identity.identifiers")}
    assert kinds == {"customer"}
    for visitor in visitors:
        profile = graph.profile(visitor)
        assert profile["identifiers"] == 1
        assert profile["email"] is None and profile["phone"] is None


def test_hubs_stop_joining_and_every_refusal_is_explained():
    graph = Graph()
    # A shop's kiosk: five people check out on one browser (a person has at most 4).
    kiosk_events = {
        n: graph.stage(0, hour=n + 1, client_id="kiosk", email=f"shopper{n}@example.com",
                       event_type="purchase")
        for n in range(5)
    }
    kiosk_only = graph.stage(0, hour=7, client_id="kiosk")
    # A made-up address on 26 browsers (a person has at most 25).
    for n in range(26):
        graph.stage(1, client_id=f"browser-{n}", email="everyone@example.net")
    graph.stage(1, client_id="browser-0", phone="+14155550100")
    graph.run()

    shoppers = {graph.visitor(f"email:shopper{n}@example.com") for n in range(5)}
    assert len(shoppers) == 5 and graph.visitor("client:kiosk") not in shoppers
    for n, event in kiosk_events.items():
        visitor = graph.event_visitor(event)
        assert visitor == graph.visitor(f"email:shopper{n}@example.com")
        assert graph.profile(visitor)["email"] == f"shopper{n}@example.com"
    # The kiosk's own page view belongs to the kiosk, whose profile holds nobody's email.
    kiosk = graph.event_visitor(kiosk_only)
    assert kiosk == graph.visitor("client:kiosk")
    assert graph.profile(kiosk)["email"] is None and graph.profile(kiosk)["identifiers"] == 1

    browsers = {graph.visitor(f"client:browser-{n}") for n in range(26)}
    assert len(browsers) == 26
    assert graph.visitor("phone:+14155550100") == graph.visitor("client:browser-0")

    reasons = dict(graph.rows(
        "SELECT node_key, hub_reason FROM identity.identifiers WHERE hub_reason IS NOT NULL"))
    assert reasons == {
        "client:kiosk": "hub: 5 people on one client id, limit 4",
        "email:everyone@example.net": "hub: on 26 client ids, limit 25",
    }
    refused = graph.rows("SELECT least(node_a, node_b), greatest(node_a, node_b), reason "
                         "FROM identity.refused_edges")
    assert len(refused) == 5 + 26
    assert ("client:kiosk", "email:shopper3@example.com",
            "hub: 5 people on one client id, limit 4") in refused
    assert all("@" not in reason for _, _, reason in refused)


def test_a_hub_found_later_splits_its_visitor_and_the_person_keeps_the_id():
    graph = Graph()
    for n in range(4):
        graph.stage(0, hour=n + 1, client_id="kiosk", email=f"shopper{n}@example.com")
    graph.run()
    before = graph.visitor("email:shopper0@example.com")
    assert {graph.visitor(f"email:shopper{n}@example.com") for n in range(4)} == {before}

    fifth = graph.stage(1, client_id="kiosk", email="shopper4@example.com")
    stats = graph.run()
    assert stats["new_hubs"] == 1 and stats["visitors_split"] == 4
    ids = [graph.visitor(f"email:shopper{n}@example.com") for n in range(5)]
    assert len(set(ids)) == 5 and graph.visitor("client:kiosk") not in ids
    # The earliest shopper keeps the id; the others are recorded as split from it.
    assert ids[0] == before
    splits = graph.rows("SELECT old_visitor_id, visitor_id, reason FROM identity.visitor_id_map")
    assert sorted(splits) == sorted(
        (before, graph.visitor(key), "split") for key in
        ["client:kiosk", *(f"email:shopper{n}@example.com" for n in range(1, 4))])
    assert graph.event_visitor(fifth) == ids[4]
    for n, visitor in enumerate(ids):
        assert graph.profile(visitor)["email"] == f"shopper{n}@example.com"


def test_a_merge_beyond_the_size_limit_is_refused_and_the_check_reports_the_largest(tmp_path):
    graph = Graph()
    graph.rules = replace(graph.rules, max_visitor_identifiers=5)
    # A chain of browsers and addresses, each below the hub limits: c1-e1-c2-e2-c3 ...
    graph.stage(0, client_id="c1", email="e1@example.com")
    graph.stage(0, client_id="c2", email="e1@example.com")
    graph.run()
    graph.stage(1, client_id="c2", email="e2@example.com")
    graph.stage(1, client_id="c3", email="e2@example.com")
    graph.run()
    graph.stage(2, client_id="c3", email="e3@example.com")
    stats = graph.run()

    assert stats["size_refused_edges"] == 1
    chain = {graph.visitor(key) for key in (
        "client:c1", "email:e1@example.com", "client:c2", "email:e2@example.com", "client:c3")}
    assert len(chain) == 1
    assert graph.visitor("email:e3@example.com") not in chain
    assert graph.rows("SELECT least(node_a, node_b), greatest(node_a, node_b), reason "
                      "FROM identity.refused_edges") == [
        ("client:c3", "email:e3@example.com",
         "size: would join 6 identifiers into one visitor, limit 5")]
    assert graph.profile(graph.visitor("email:e3@example.com"))["identifiers"] == 1

    # The refusal stays: the same edge seen again does not join.
    graph.stage(3, client_id="c3", email="e3@example.com")
    graph.run()
    assert graph.visitor("email:e3@example.com") not in chain

    # A full recompute (a staged day re-run) replays the days and refuses the same edge.
    graph.conn.execute("DELETE FROM staging.events WHERE partition_date = ?",
                       [graph.rows("SELECT max(partition_date) FROM staging.events")[0][0]])
    assert graph.run()["full_recompute"] == 1
    assert graph.rows("SELECT least(node_a, node_b), greatest(node_a, node_b) "
                      "FROM identity.refused_edges") == [
        ("client:c3", "email:e3@example.com")]

    from capi_pipeline.identity.assets import largest_visitor_is_one_person
    from capi_pipeline.resources import PipelineSettings, WarehouseResource

    path = tmp_path / "warehouse.duckdb"
    graph.conn.execute(f"ATTACH '{path}' AS copy")
    graph.conn.execute("COPY FROM DATABASE memory TO copy")
    graph.conn.execute("DETACH copy")
    warehouse = WarehouseResource(database=str(path))
    ok = largest_visitor_is_one_person(
        duckdb=warehouse, settings=PipelineSettings(landing_dir=".", max_visitor_identifiers=5))
    assert ok.passed and ok.metadata["largest_visitor_identifiers"].value == 5
    failed = largest_visitor_is_one_person(
        duckdb=warehouse, settings=PipelineSettings(landing_dir=".", max_visitor_identifiers=4))
    assert not failed.passed
    assert failed.metadata["largest_visitor_id"].value == next(iter(chain))


def test_visitor_ids_stay_put_across_re_runs_and_unrelated_changes():
    graph = Graph()
    for n in range(6):
        graph.stage(n % 3, client_id=f"c{n}", email=f"p{n // 2}@example.com")
    graph.run()
    ids = dict(graph.rows("SELECT node_key, visitor_id FROM identity.identifiers"))
    assert len(set(ids.values())) == 3
    # The first visitor id of a new component is the hash of its smallest identifier, as
    # before incremental identity, so ids carried over from the earlier layout stay valid.
    smallest = min(key for key, value in ids.items() if value == ids["client:c0"])
    assert ids["client:c0"] == "v_" + hashlib.md5(smallest.encode()).hexdigest()[:16]

    nothing = graph.run()
    assert nothing["days_read"] == 0
    assert dict(graph.rows("SELECT node_key, visitor_id FROM identity.identifiers")) == ids

    # Staging re-run with the same rows (new row ids, same content): nothing to read again.
    signature = "SELECT row_signature FROM identity.graph_days WHERE partition_date = ?"
    before = graph.rows(signature, day(1))
    graph.conn.execute("CREATE TEMP TABLE day_one AS SELECT * FROM staging.events "
                       "WHERE partition_date = ?", [day(1)])
    graph.conn.execute("DELETE FROM staging.events WHERE partition_date = ?", [day(1)])
    graph.conn.execute("INSERT INTO staging.events SELECT * FROM day_one")
    same = graph.run()
    assert (same["days_read"], same["full_recompute"]) == (0, 0)
    assert graph.rows(signature, day(1)) != before

    # Re-staging a day with one more, unrelated event rereads it (a full recompute); nobody
    # else's id moves.
    graph.stage(1, client_id="stranger")
    stats = graph.run()
    assert stats["days_read"] == 1 and stats["full_recompute"] == 1
    after = dict(graph.rows("SELECT node_key, visitor_id FROM identity.identifiers"))
    assert {key: after[key] for key in ids} == ids
    assert after["client:stranger"] not in ids.values()
    assert graph.rows("SELECT count(*) FROM identity.visitor_id_map") == [(0,)]


def test_a_new_edge_merges_visitors_into_the_oldest_and_maps_the_old_ids():
    graph = Graph()
    graph.stage(0, client_id="c-old", email="old@example.com", city="Portland", state="OR")
    graph.run()
    graph.stage(1, client_id="c-mid", email="mid@example.com")
    graph.run()
    lone = graph.stage(2, client_id="c-new", phone="+14155550177")
    graph.run()
    oldest, middle, newest = (graph.visitor(key) for key in (
        "client:c-old", "client:c-mid", "client:c-new"))
    assert len({oldest, middle, newest}) == 3

    # c-new meets mid's address: the newest visitor merges into the middle one.
    graph.stage(3, client_id="c-new", email="mid@example.com")
    stats = graph.run()
    assert stats["visitors_merged"] == 1
    assert graph.visitor("client:c-new") == middle
    assert graph.event_visitor(lone) == middle
    assert graph.rows("SELECT old_visitor_id, visitor_id, reason FROM identity.visitor_id_map"
                      ) == [(newest, middle, "merged")]
    assert graph.rows("SELECT count(*) FROM identity.visitor_profiles WHERE visitor_id = ?",
                      newest) == [(0,)]
    assert graph.profile(middle)["phone"] == "+14155550177"

    # Then the middle visitor meets the oldest: everything is the oldest's, and the map points
    # every old id at the visitor that exists now.
    graph.stage(4, client_id="c-mid", email="old@example.com")
    graph.run()
    assert {graph.visitor(key) for key in ("client:c-old", "client:c-mid", "client:c-new",
                                           "phone:+14155550177")} == {oldest}
    assert sorted(graph.rows(
        "SELECT old_visitor_id, visitor_id, reason FROM identity.visitor_id_map")) == sorted(
        [(newest, oldest, "merged"), (middle, oldest, "merged")])
    profile = graph.profile(oldest)
    assert profile["email"] == "old@example.com" and profile["email_seen_at"] == at(4)
    assert profile["phone"] == "+14155550177" and profile["city"] == "Portland"
    assert profile["identifiers"] == 6 and profile["events"] == 5
    assert graph.rows("SELECT count(*) FROM identity.visitor_profiles") == [(1,)]

    # A day that only adds events to a visitor extends its profile: the same as a rebuild.
    graph.stage(5, client_id="c-old", first_name="Olga", click_id=EPIK, city="Salem")
    graph.stage(5, hour=13, client_id="c-mid")
    assert graph.run()["visitors_merged"] == 0
    extended = graph.profile(oldest)
    assert (extended["first_name"], extended["city"], extended["state"]) == (
        "Olga", "Salem", None)
    assert extended["events"] == 7 and extended["last_seen"] == at(5, 13)
    again, _ = run_once_on_the_same_staging(graph)
    assert profiles_by_identifiers(again) == profiles_by_identifiers(graph)
    assert graph.rows("SELECT attributed_click_id FROM identity.event_visitors "
                      "ORDER BY event_time DESC LIMIT 1") == [(EPIK,)]


def test_an_identity_file_of_the_earlier_layout_is_replaced_and_rebuilt():
    graph = Graph()
    for table in ("identifiers", "event_visitors"):
        graph.conn.execute(f"DROP TABLE identity.{table}")
    graph.conn.execute("CREATE TABLE identity.identifiers (node_key VARCHAR, visitor_id VARCHAR)")
    graph.conn.execute("CREATE TABLE identity.event_visitors (event_key VARCHAR)")
    graph.stage(0, client_id="c1", email="a@example.com")
    stats = graph.run()
    assert stats["visitors"] == 1 and stats["full_recompute"] == 1
    assert graph.visitor("client:c1") == graph.visitor("email:a@example.com")


def test_changed_components_in_integers_match_the_sql_over_every_identifier():
    """A full run finds the changed components in numpy; the SQL it stands for must agree."""
    import duckdb
    import numpy as np
    import pyarrow as pa

    from capi_pipeline.identity.components import (
        CHANGED_SQL,
        COMPONENTS_SQL,
        changed_nodes,
    )
    from capi_pipeline.identity.tables import temp_table
    from capi_pipeline.lib.duck import ensure_schema

    conn = duckdb.connect()
    ensure_schema(conn)
    # node: old visitor id, new component. Node 9 was deleted (a gap in the node ids).
    rows = {
        0: ("v_a", 0), 1: ("v_a", 0),             # unchanged
        2: ("v_b", 1), 3: ("v_c", 1),             # merged
        4: ("v_d", 2), 5: ("v_d", 3),             # split
        6: ("v_e", 4), 14: ("v_e", 4), 15: ("v_e", 9),  # split
        7: ("v_h", 11), 8: ("", 5), 16: ("", 5),  # unchanged; every new identifier in one
        10: ("v_f", 6),                           # unchanged single
        11: ("v_g", 7), 12: ("v_g", 7), 13: ("v_g", 8),  # split, one part unchanged-looking
    }
    conn.executemany(
        "INSERT INTO identity.identifiers VALUES (?, 'client', ?, ?, 1, NULL, NULL, ?, NULL)",
        [(f"client:{n}", str(n), old, n) for n, (old, _) in rows.items()],
    )
    labels = np.zeros(17, np.int64)
    labels[9] = 10
    for n, (_, component) in rows.items():
        labels[n] = component
    nodes = np.arange(len(labels), dtype=np.int64)
    temp_table(conn, "component_labels", pa.table({"node_id": nodes, "component": labels}))
    # (A full run leaves no totals pending.)
    conn.execute("CREATE TEMP TABLE pending_totals (_row BIGINT, first_seen TIMESTAMPTZ)")
    conn.execute(COMPONENTS_SQL)
    conn.execute(CHANGED_SQL)
    by_sql = sorted(row[0] for row in conn.execute(
        "SELECT node_id FROM node_components SEMI JOIN changed_components USING (component)"
    ).fetchall())
    assert by_sql == [2, 3, 4, 5, 6, 8, 11, 12, 13, 14, 15, 16]
    assert changed_nodes(conn, labels).tolist() == by_sql


def test_a_re_staged_day_keeps_its_unchanged_events_and_ends_as_a_fresh_build_would():
    graph = Graph()
    graph.stage(0, hour=9, client_id="cx", email="x@example.com", click_id="clk1")
    graph.stage(0, hour=9, client_id="cy", email="y@example.com", first_name="Ann")
    graph.stage(0, hour=9, client_id="cz", email="z@example.com", first_name="Zoe")
    kept = graph.stage(1, client_id="cx", event_type="checkout")
    changed = graph.stage(1, client_id="cy", first_name="Ann")
    removed = graph.stage(1, client_id="cz", first_name="Zara")
    graph.run()
    rowid = "SELECT rowid FROM identity.event_visitors WHERE event_key = ?"
    kept_row = graph.rows(rowid, kept)

    # Staging re-runs day 1: one event changed, one gone, two new ones for known visitors.
    graph.conn.execute("UPDATE staging.events SET first_name = 'Bea' WHERE event_key = ?",
                       [changed])
    graph.conn.execute("DELETE FROM staging.events WHERE event_key = ?", [removed])
    added = graph.stage(1, hour=14, client_id="cz", click_id="clk2")
    later = graph.stage(1, hour=15, client_id="cx")
    stats = graph.run()
    assert (stats["days_read"], stats["full_recompute"]) == (1, 1)
    assert graph.rows(rowid, kept) == kept_row

    fresh = Graph()
    fresh.conn.executemany("INSERT INTO staging.events VALUES (" + ", ".join(
        "?" for _ in graph.rows("DESCRIBE staging.events")) + ")",
        graph.rows("SELECT * FROM staging.events"))
    fresh.run()
    profiles = "SELECT * FROM identity.visitor_profiles ORDER BY visitor_id"
    assert graph.rows(profiles) == fresh.rows(profiles)
    events = ("SELECT event_key, visitor_id, attributed_click_id, attributed_click_at "
              "FROM identity.event_visitors ORDER BY event_key")
    assert graph.rows(events) == fresh.rows(events)

    x, y, z = (graph.profile(graph.visitor(f"client:{c}")) for c in ("cx", "cy", "cz"))
    assert (x["events"], y["first_name"], z["first_name"], z["events"]) == (3, "Bea", "Zoe", 2)
    assert {key: click for key, _, click, _ in graph.rows(events)
            if key in (kept, later, added, removed)} == {
        kept: "clk1", later: "clk1", added: "clk2"}


def test_hubs_counted_in_numpy_match_the_sql_over_every_edge():
    """A full run judges hubs with bincounts; the SQL it stands for must give the same rows."""
    import random

    import duckdb

    from capi_pipeline.identity.graph import HUBS_SQL, KINDS, all_hubs
    from capi_pipeline.lib.duck import ensure_schema
    from capi_pipeline_tests.identity_helpers import RULES

    conn = duckdb.connect()
    ensure_schema(conn)
    chooser = random.Random(7)
    kinds = {node: chooser.choice(KINDS) for node in range(200)}
    # Crowded nodes of each rule (an email on 30 cookies, a cookie with 6 people, a cart with
    # 9 partners, one short of each) among random ordinary ones.
    kinds.update({0: "email", 1: "email", 2: "client", 3: "device", 4: "cart", 5: "checkout"})
    clients = [n for n in range(10, 200) if kinds[n] in ("client", "device")]
    people = [n for n in range(10, 200) if kinds[n] in ("customer", "email", "phone")]
    pairs = {tuple(sorted(chooser.sample(range(10, 200), 2))) for _ in range(300)}
    pairs |= {(0, n) for n in clients[:30]} | {(1, n) for n in clients[:25]}
    pairs |= {(2, n) for n in people[:6]} | {(3, n) for n in people[:4]}
    pairs |= {(4, n) for n in (clients[:5] + people[:4])} | {(5, n) for n in people[:8]}
    conn.executemany(
        "INSERT INTO identity.edges VALUES (?, ?, 1, NULL, NULL, ?, ?, ?, ?, DATE '2026-11-01', "
        "NULL)",
        [(f"{kinds[a]}:{a}", f"{kinds[b]}:{b}", a, b, kinds[a], kinds[b]) for a, b in pairs],
    )
    limits = {"max_clients": RULES.hub_max_clients, "max_people": RULES.hub_max_people_per_client}
    conn.execute(HUBS_SQL.format(candidates_a="TRUE", candidates_b="TRUE"), limits)
    by_sql = sorted(conn.execute("SELECT node_id, reason FROM run_hubs").fetchall())
    all_hubs(conn, RULES)
    by_numpy = sorted(conn.execute("SELECT node_id, reason FROM run_hubs").fetchall())
    assert {0, 2, 4} <= {node for node, _ in by_sql}
    assert not {1, 3, 5} & {node for node, _ in by_sql}
    assert by_numpy == by_sql


def test_incremental_days_end_as_one_full_computation_over_the_same_history():
    """Merges, a click carried on, a hub found later (a split) and visitors a day leaves alone:
    each day run incrementally (over the subgraph the day touches) ends with the visitors,
    profiles and attributions a full computation over the whole history gives."""
    graph = Graph()
    days = [
        [{"client_id": "a1", "email": "a@example.com", "click_id": EPIK},
         {"client_id": "b1", "email": "b@example.com"},
         {"client_id": "quiet", "phone": "+14155550100", "first_name": "Q"}],
        [{"client_id": "a2", "email": "a@example.com", "event_type": "checkout"},
         {"client_id": "b1", "customer_id": "cust-b"},
         {"client_id": "kiosk", "email": "k1@example.com"}],
        # a's two cookies meet b's customer id: two visitors merge.
        [{"client_id": "a2", "customer_id": "cust-b", "first_name": "Ann"},
         {"client_id": "kiosk", "email": "k2@example.com"},
         {"client_id": "kiosk", "email": "k3@example.com"}],
        # The kiosk cookie gets its fifth person: it becomes a hub, its visitor splits.
        [{"client_id": "kiosk", "email": "k4@example.com"},
         {"client_id": "kiosk", "email": "k5@example.com", "click_id": "clk-kiosk"},
         {"client_id": "b1", "event_type": "checkout"}],
    ]
    for on, events in enumerate(days):
        for fields in events:
            graph.stage(on, **fields)
        stats = graph.run()
        assert stats["full_recompute"] == (on == 0)
    assert stats["new_hubs"] == 1

    fresh, stats = run_once_on_the_same_staging(graph)
    assert stats["full_recompute"] == 1
    assert fresh.grouping() == graph.grouping()
    assert profiles_by_identifiers(fresh) == profiles_by_identifiers(graph)
    events = """
        SELECT e.event_key, (SELECT list(node_key ORDER BY node_key) FROM identity.identifiers i
                             WHERE i.visitor_id = e.visitor_id),
               e.attributed_click_id, e.attributed_click_at
        FROM identity.event_visitors e ORDER BY e.event_key
    """
    assert graph.rows(events) == fresh.rows(events)
    # (Which end is node_a follows the node ids, which differ between the two.)
    refused = ("SELECT least(node_a, node_b), greatest(node_a, node_b), reason "
               "FROM identity.refused_edges ORDER BY ALL")
    assert graph.rows(refused) == fresh.rows(refused)
    assert len(graph.rows(refused)) == 5
    # The merged visitor's checkout is attributed to the click of a's landing page.
    ann = graph.profile(graph.visitor("client:a1"))
    assert (ann["identifiers"], ann["first_name"], ann["click_id"]) == (6, "Ann", EPIK)


def test_merged_profiles_combined_from_old_profiles_match_a_rebuild_from_every_event():
    """An incremental merge combines the joined visitors' profiles with the day's events
    instead of rereading their events: three visitors joined at once by a late event (older
    than what their profiles hold), an address and a web fact each taken whole from one
    event, a visitor made of new identifiers only, one that only gains events. Every profile
    ends as a full computation, which rebuilds each from all its events, gives it."""
    graph = Graph()
    graph.stage(0, hour=20, client_id="c1", email="x@example.com", city="Paris", country="FR",
                ip="203.0.113.1")
    graph.stage(0, hour=10, client_id="c2", phone="+14155550111", first_name="Bo",
                zip="94110", action_source="app", ip="203.0.113.2")
    graph.stage(0, hour=5, client_id="c3", customer_id="cu3", last_name="Ng", click_id=EPIK)
    graph.stage(0, hour=8, client_id="c9", email="nine@example.com")
    assert graph.run()["full_recompute"] == 1
    # Day 1: one late event (its time before every day-0 event) joins c1, c2 and c3.
    graph.stage(1, hour=-40, client_id="c1", phone="+14155550111", customer_id="cu3",
                first_name="Late", city="Lyon", ip="198.51.100.9", click_id="clk-late")
    graph.stage(1, hour=3, client_id="c2", gender="f", user_agent="Other/1.0")
    graph.stage(1, hour=2, client_id="n1", email="new@example.com", state="CA")
    graph.stage(1, hour=4, client_id="c9", first_name="Nina")
    stats = graph.run()
    assert (stats["full_recompute"], stats["new_hubs"], stats["visitors_merged"]) == (0, 0, 2)

    merged = graph.profile(graph.visitor("client:c1"))
    assert (merged["identifiers"], merged["events"]) == (6, 5)
    assert (merged["first_name"], merged["last_name"], merged["gender"]) == ("Bo", "Ng", "f")
    assert (merged["city"], merged["zip"], merged["country"]) == ("Paris", None, "FR")
    # The web fact is the latest web event's (c2's of day 1), the click id the latest click.
    assert (merged["click_id"], merged["ip"], merged["user_agent"]) == (
        EPIK, "203.0.113.7", "Other/1.0")

    fresh, stats = run_once_on_the_same_staging(graph)
    assert stats["full_recompute"] == 1
    assert profiles_by_identifiers(fresh) == profiles_by_identifiers(graph)
    # Attribution too: c2's and c1's day-0 events now follow the clicks c3 and the late event
    # brought, each over the merged visitor's clicks.
    attributed = ("SELECT event_key, attributed_click_id, attributed_click_at "
                  "FROM identity.event_visitors ORDER BY event_key")
    assert graph.rows(attributed) == fresh.rows(attributed)
    assert {click for _, click, _ in graph.rows(attributed)} == {EPIK, "clk-late", None}


def test_deleted_rows_are_reclaimed_once_they_are_a_third_of_a_table():
    """A run's commit defers vacuuming the rows it replaced (DuckDB would rewrite whole row
    groups for them every day) until a table's deleted rows reach a third of its stored rows;
    the database's own setting is left as it was."""
    graph = Graph()
    for n in range(30):
        graph.stage(0, client_id=f"c{n}")
    graph.run()
    setting = "SELECT current_setting('max_vacuum_tasks')"
    default = graph.rows(setting)
    assert not _vacuum_due(graph.conn)
    profiles = "DELETE FROM identity.visitor_profiles WHERE visitor_id IN (SELECT visitor_id " \
               "FROM identity.visitor_profiles ORDER BY visitor_id LIMIT {})"
    graph.conn.execute(profiles.format(9))
    assert not _vacuum_due(graph.conn)  # 9 of 30 stored rows deleted
    graph.conn.execute(profiles.format(1))
    assert _vacuum_due(graph.conn)  # 10 of 30
    graph.stage(1, client_id="c0")
    graph.run()
    assert graph.rows(setting) == default


def test_a_day_s_profiles_of_one_event_and_of_several_match_a_rebuild_from_every_event():
    """A day's profiles are taken as the event's own values for a visitor with one event that
    day and aggregated for one with several; a visitor joining one known visitor combines
    two profiles without the aggregate of several. Each must end as a full computation's."""
    graph = Graph()
    graph.stage(0, hour=8, client_id="one", email="one@example.com", city="Oslo",
                ip="203.0.113.1")
    graph.stage(0, hour=8, client_id="many", first_name="Mo", click_id=EPIK)
    graph.stage(0, hour=8, client_id="joined", phone="+14155550122", zip="10001")
    assert graph.run()["full_recompute"] == 1
    # One event: its email empty, so the profile's stays; its own web fact and state win.
    graph.stage(1, hour=9, client_id="one", state="CA", ip="198.51.100.1", click_id="clk-1")
    # Several: the latest non-empty value of each field, from different events.
    graph.stage(1, hour=7, client_id="many", email="early@example.com", last_name="Lee")
    graph.stage(1, hour=11, client_id="many", email="late@example.com", action_source="app")
    graph.stage(1, hour=10, client_id="many", first_name="Moe", city="Rome", country="IT")
    # A new identifier added to a known visitor: one old profile and the day's, combined.
    graph.stage(1, hour=6, client_id="joined", email="joined@example.com", gender="m")
    graph.stage(1, hour=12, client_id="new", email="new@example.com")
    stats = graph.run()
    assert (stats["full_recompute"], stats["new_hubs"]) == (0, 0)

    one = graph.profile(graph.visitor("client:one"))
    assert (one["email"], one["state"], one["city"], one["ip"], one["click_id"]) == (
        "one@example.com", "CA", None, "198.51.100.1", "clk-1")
    many = graph.profile(graph.visitor("client:many"))
    assert (many["events"], many["email"], many["first_name"], many["last_name"]) == (
        4, "late@example.com", "Moe", "Lee")
    assert (many["city"], many["click_id"], many["email_seen_at"]) == ("Rome", EPIK, at(1, 11))
    joined = graph.profile(graph.visitor("client:joined"))
    assert (joined["identifiers"], joined["events"], joined["phone"], joined["email"]) == (
        3, 2, "+14155550122", "joined@example.com")

    fresh, stats = run_once_on_the_same_staging(graph)
    assert stats["full_recompute"] == 1
    assert profiles_by_identifiers(fresh) == profiles_by_identifiers(graph)


def test_a_day_s_events_are_attributed_from_the_latest_earlier_click_and_a_late_event_too():
    """A daily run attributes a visitor's new events from the latest click its profile holds
    when every new event is after it, without looking up its older clicks; a late event (one
    before that click) is attributed from all of them. Both as a full computation does."""
    graph = Graph()
    graph.stage(0, hour=10, client_id="c1", click_id="clk-a")
    graph.stage(0, hour=20, client_id="c1", click_id="clk-b")
    graph.stage(0, hour=9, client_id="c2", click_id="clk-c")
    graph.run()
    after = graph.stage(1, hour=8, client_id="c1", event_type="checkout")
    late = graph.stage(1, hour=-6, client_id="c1")  # day 0 at 18:00
    merged = graph.stage(1, hour=12, client_id="c2", email="two@example.com")
    stats = graph.run()
    assert (stats["full_recompute"], stats["new_hubs"]) == (0, 0)
    attributed = ("SELECT attributed_click_id, attributed_click_at FROM identity.event_visitors "
                  "WHERE event_key = ?")
    assert graph.rows(attributed, after) == [("clk-b", at(0, 20))]
    assert graph.rows(attributed, late) == [("clk-a", at(0, 10))]
    assert graph.rows(attributed, merged) == [("clk-c", at(0, 9))]

    fresh, _ = run_once_on_the_same_staging(graph)
    everything = ("SELECT event_key, attributed_click_id, attributed_click_at "
                  "FROM identity.event_visitors ORDER BY event_key")
    assert graph.rows(everything) == fresh.rows(everything)


def test_a_daily_run_updates_the_refused_edges_its_day_touched_and_no_other():
    """An incremental run looks only at the pairs of its days and the edges of new hubs: a
    refused pair seen again gets its new count, a new pair on a hub is listed, a pair of a
    hub found that day is listed, and the rest stay. As a full computation lists them."""
    graph = Graph()
    for n in range(26):
        graph.stage(0, client_id=f"c{n}", email="shared@example.com")
    graph.stage(0, client_id="kiosk", email="p1@example.com")
    graph.stage(0, client_id="kiosk", email="p2@example.com")
    graph.stage(0, client_id="kiosk", email="p3@example.com")
    graph.stage(0, client_id="kiosk", email="p4@example.com")
    graph.run()
    refused = ("SELECT least(node_a, node_b), greatest(node_a, node_b), reason, events "
               "FROM identity.refused_edges ORDER BY ALL")
    assert len(graph.rows(refused)) == 26
    graph.stage(1, client_id="c3", email="shared@example.com")
    graph.stage(1, client_id="c99", email="shared@example.com")
    graph.stage(1, client_id="kiosk", email="p5@example.com")
    stats = graph.run()
    assert (stats["full_recompute"], stats["new_hubs"]) == (0, 1)
    rows = graph.rows(refused)
    assert len(rows) == 27 + 5
    # (A hub's reason keeps the count it was found with.)
    assert ("client:c3", "email:shared@example.com",
            "hub: on 26 client ids, limit 25", 2) in rows
    assert ("client:c99", "email:shared@example.com",
            "hub: on 26 client ids, limit 25", 1) in rows

    fresh, _ = run_once_on_the_same_staging(graph)
    pairs = f"SELECT a, b, events FROM ({refused}) t(a, b, reason, events) ORDER BY ALL"
    assert graph.rows(pairs) == fresh.rows(pairs)


def test_a_merge_keeps_the_id_of_the_visitor_seen_first_counting_the_day_s_late_events():
    """Which of two merging visitors keeps its id follows when each was first seen, with the
    days read counted: a late event makes the younger one the older (an incremental run
    writes the identifiers' new totals together with their new visitor ids)."""
    graph = Graph()
    graph.stage(0, hour=10, client_id="c-a")
    graph.stage(0, hour=12, client_id="c-b")
    graph.run()
    a, b = graph.visitor("client:c-a"), graph.visitor("client:c-b")
    graph.stage(1, hour=-30, client_id="c-b", email="x@example.com")  # before day 0
    graph.stage(1, hour=9, client_id="c-a", email="x@example.com")
    stats = graph.run()
    assert (stats["full_recompute"], stats["visitors_merged"]) == (0, 1)
    assert graph.visitor("client:c-a") == graph.visitor("client:c-b") == b
    assert graph.rows("SELECT old_visitor_id, visitor_id FROM identity.visitor_id_map") == [
        (a, b)]
    assert graph.rows("SELECT events, first_seen FROM identity.identifiers "
                      "WHERE node_key = 'client:c-b'") == [(2, at(1, -30))]
