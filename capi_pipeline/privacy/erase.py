"""Erasure: one person removed from every table, and never sent again.

A request names the person by an email address, a phone number or a customer id. The person is
every visitor the identity graph holds with that identifier, and every staged event that carries
it; erasure removes all of their events and identifiers from raw, staging and identity, their
rows from `capi.pinterest_events`, the messages Pinterest returned for their events from the
delivery ledger (the ledger keeps each event's id and outcome, so nothing is sent twice), and
adds keys to `privacy.suppressions` so later events carrying the same identifier are skipped
with reason `erased`.

A suppression key is sha256(salt || the Pinterest hash): the installation's salt is random and
lives in the personal-data file, so the key is neither the person's value nor the hash
Pinterest receives, and cannot be looked up without that file.

Deleted rows leave DuckDB's tables at once; the blocks that held them are reused or freed by
the CHECKPOINT that ends the erasure, not overwritten byte by byte.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field

import duckdb

from capi_pipeline.enrich.normalize import clean, hash_field, normalize, sha256_hex
from capi_pipeline.lib.duck import PERSONAL_CATALOG, PERSONAL_SCHEMAS, transaction

# Values this long are searched for inside JSON bodies and free text; shorter ones (a state
# code, a first name) also occur inside strangers' rows and are only matched whole.
MIN_SEARCHED_LENGTH = 6
HASHED_FIELDS = ("em", "ph", "external_id")


class ErasureRequestError(ValueError):
    """An erasure request that names nobody."""


@dataclass
class Person:
    """What identifies one person in the warehouse, gathered before anything is deleted."""

    event_keys: set[str] = field(default_factory=set)
    event_ids: set[str] = field(default_factory=set)
    visitor_ids: set[str] = field(default_factory=set)
    node_keys: set[str] = field(default_factory=set)
    values: set[str] = field(default_factory=set)
    hashes: set[str] = field(default_factory=set)


def erase_person(
    conn: duckdb.DuckDBPyConnection,
    email: str | None = None,
    phone: str | None = None,
    customer_id: str | None = None,
    default_region: str = "US",
) -> dict[str, int]:
    """Remove one person everywhere and suppress their future sends; returns rows per table.

    The counts name tables, never values, so they can be logged and shown.
    """
    wanted = {
        "em": normalize("em", email),
        "ph": normalize("ph", phone, default_region=default_region),
        "external_id": normalize("external_id", customer_id),
    }
    if not any(wanted.values()):
        raise ErasureRequestError(
            "give an email address, a phone number (with its country code, or one of the "
            "default region) or a customer id that normalizes to a value")
    person = _find(conn, wanted, default_region)
    counts: dict[str, int] = {}
    # DuckDB writes one attached file per transaction. Suppression comes first, so nothing is
    # sent while the rest runs; then the warehouse file, then the personal-data file, so a
    # crash part-way leaves the person findable and the command can simply be run again.
    with transaction(conn):
        _suppress(conn, wanted)
    with transaction(conn):
        counts["capi.pinterest_events"] = _delete_payloads(conn, person)
        counts["delivery.event_outcomes (messages cleared)"] = conn.execute(
            "UPDATE delivery.event_outcomes SET error_message = NULL, warning_message = NULL "
            "WHERE event_id IN (SELECT unnest($ids)) AND (error_message IS NOT NULL OR "
            "warning_message IS NOT NULL) AND outcome <> 'skipped'",
            {"ids": sorted(person.event_ids) or [""]}).fetchall()[0][0]
    with transaction(conn):
        for table, columns in _personal_tables(conn):
            counts[table.replace(f"{PERSONAL_CATALOG}.", "").replace('"', "")] = (
                _delete_matching(conn, table, columns, person))
        conn.execute("INSERT INTO privacy.erasures VALUES (now(), $events, $visitors)",
                     {"events": len(person.event_keys), "visitors": len(person.visitor_ids)})
    conn.execute("CHECKPOINT")
    conn.execute(f"CHECKPOINT {PERSONAL_CATALOG}")
    return {table: count for table, count in counts.items() if count}


def _find(conn, wanted: dict[str, str | None], region: str) -> Person:
    person = Person()
    # Which raw spellings in staging normalize to the requested values (Leak@X.org and
    # leak@x.org are one address); normalization runs over distinct values only.
    spellings: dict[str, set[str]] = {"email": set(), "phone": set(), "customer_id": set()}
    if wanted["em"]:
        for (value,) in conn.execute(
                "SELECT DISTINCT email FROM staging.events WHERE email IS NOT NULL "
                "AND lower(email) LIKE '%' || $local || '%'",
                {"local": wanted["em"].split("@")[0]}).fetchall():
            if normalize("em", value) == wanted["em"]:
                spellings["email"].add(value)
    if wanted["ph"]:
        for value, country in conn.execute(
                "SELECT DISTINCT phone, country FROM staging.events WHERE phone IS NOT NULL "
                "AND regexp_replace(phone, '[^0-9]', '', 'g') LIKE '%' || $tail",
                {"tail": wanted["ph"][-7:]}).fetchall():
            if normalize("ph", value, country, region) == wanted["ph"]:
                spellings["phone"].add(value)
    if wanted["external_id"]:
        spellings["customer_id"].add(wanted["external_id"])

    direct = conn.execute(
        "SELECT event_key FROM staging.events WHERE email IN (SELECT unnest($email)) "
        "OR phone IN (SELECT unnest($phone)) OR trim(customer_id) IN (SELECT unnest($customer))",
        {"email": sorted(spellings["email"]) or [""], "phone": sorted(spellings["phone"]) or [""],
         "customer": sorted(spellings["customer_id"]) or [""]}).fetchall()
    person.event_keys = {key for (key,) in direct}
    person.visitor_ids = {visitor for (visitor,) in conn.execute(
        "SELECT DISTINCT visitor_id FROM identity.event_visitors "
        "WHERE event_key IN (SELECT unnest($keys))",
        {"keys": sorted(person.event_keys)}).fetchall()}
    if person.visitor_ids:
        person.event_keys |= {key for (key,) in conn.execute(
            "SELECT event_key FROM identity.event_visitors "
            "WHERE visitor_id IN (SELECT unnest($visitors))",
            {"visitors": sorted(person.visitor_ids)}).fetchall()}
        person.node_keys = {node for (node,) in conn.execute(
            "SELECT node_key FROM identity.identifiers "
            "WHERE visitor_id IN (SELECT unnest($visitors))",
            {"visitors": sorted(person.visitor_ids)}).fetchall()}
    rows = conn.execute(
        "SELECT event_id, email, phone, customer_id, client_id, checkout_token, cart_token, "
        "country FROM staging.events "
        "WHERE event_key IN (SELECT unnest($keys))", {"keys": sorted(person.event_keys)}
    ).fetchall()
    # Only what identifies this person alone is searched for in other rows: names and
    # countries are shared with strangers (every "Riley", every "Sample"), so the person's
    # names go with the person's own rows, found by their keys and ids, and no further.
    for event_id, email, phone, customer, client, checkout, cart, country in rows:
        person.event_ids.add(event_id)
        for value in (email, phone, customer, client, checkout, cart):
            if clean(value):
                person.values.add(value)
        for name, value in (("em", email), ("ph", phone), ("external_id", customer)):
            digest = hash_field(name, value, country, region)
            if digest:
                person.hashes.add(digest)
    # Duplicates of the person's events repeat their ids; a report of one of their orders
    # from another source names the event it duplicates.
    person.event_keys |= {key for (key,) in conn.execute(
        "SELECT event_key FROM staging.events WHERE duplicate_of IN (SELECT unnest($ids)) "
        "OR event_id IN (SELECT unnest($ids))", {"ids": sorted(person.event_ids)}).fetchall()}
    person.values |= {v for v in wanted.values() if v}
    person.values |= {e164 for v in spellings["phone"] if (e164 := normalize(
        "ph", v, None, region))}
    person.hashes |= {sha256_hex(value) for value in wanted.values() if value}
    return person


def _personal_tables(conn) -> list[tuple[str, list[tuple[str, str]]]]:
    rows = conn.execute(
        "SELECT schema_name, table_name, column_name, data_type FROM duckdb_columns() "
        "WHERE database_name = $catalog AND schema_name IN (SELECT unnest($schemas)) "
        "AND schema_name <> 'privacy' ORDER BY schema_name, table_name, column_index",
        {"catalog": PERSONAL_CATALOG, "schemas": list(PERSONAL_SCHEMAS)}).fetchall()
    tables: dict[str, list[tuple[str, str]]] = {}
    for schema, table, column, data_type in rows:
        tables.setdefault(f'{PERSONAL_CATALOG}.{schema}."{table}"', []).append(
            (column, data_type))
    return list(tables.items())


def _delete_matching(conn, table: str, columns: list[tuple[str, str]], person: Person) -> int:
    """Delete a table's rows that name the person: an id whole, or a long value inside text."""
    exact = sorted(person.event_keys | person.event_ids | person.visitor_ids | person.node_keys
                   | person.values)
    searched = sorted(v for v in person.values | person.hashes if len(v) >= MIN_SEARCHED_LENGTH)
    conditions = []
    for column, data_type in columns:
        if data_type not in ("VARCHAR", "JSON") and not data_type.startswith("STRUCT"):
            continue
        text = f'CAST("{column}" AS VARCHAR)'
        conditions.append(f"{text} IN (SELECT unnest($exact))")
        conditions.append(f"EXISTS (SELECT 1 FROM unnest($searched) s(v) "
                          f"WHERE contains(lower({text}), lower(s.v)))")
    # source_file, line_no and msg_index make up a raw row's event_key.
    names = {column for column, _ in columns}
    if {"source_file", "line_no", "msg_index"} <= names:
        conditions.append("source_file || ':' || line_no || ':' || msg_index "
                          "IN (SELECT unnest($exact))")
    if not conditions:
        return 0
    return conn.execute(
        f"DELETE FROM {table} WHERE " + " OR ".join(f"({c})" for c in conditions),
        {"exact": exact or [""], "searched": searched or [""]}).fetchall()[0][0]


def _delete_payloads(conn, person: Person) -> int:
    return conn.execute(
        "DELETE FROM capi.pinterest_events WHERE event_id IN (SELECT unnest($ids)) OR EXISTS ("
        "SELECT 1 FROM unnest($hashes) h(v) WHERE contains(payload::VARCHAR, h.v))",
        {"ids": sorted(person.event_ids) or [""],
         "hashes": sorted(person.hashes) or ["-"]}).fetchall()[0][0]


def salt(conn) -> str:
    """The installation's suppression salt, made on first use."""
    found = conn.execute("SELECT salt FROM privacy.settings").fetchall()
    if found:
        return found[0][0]
    value = secrets.token_hex(32)
    conn.execute("INSERT INTO privacy.settings VALUES (?)", [value])
    return value


def _suppress(conn, wanted: dict[str, str | None]) -> None:
    key_salt = salt(conn)
    for name, value in wanted.items():
        if value:
            conn.execute(
                "INSERT INTO privacy.suppressions SELECT sha256($salt || $hash), $field, now() "
                "WHERE NOT EXISTS (SELECT 1 FROM privacy.suppressions "
                "WHERE key = sha256($salt || $hash))",
                {"salt": key_salt, "hash": sha256_hex(value), "field": name})
