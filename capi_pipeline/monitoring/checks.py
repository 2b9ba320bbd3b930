"""The monitoring checks: each judges one daily partition and, when it fails, says in its
first line what is wrong and what to do. A run over a range of days (a backfill) judges each
day and reports the worst."""


from dagster import (
    AssetCheckExecutionContext,
    AssetCheckResult,
    AssetCheckSeverity,
    AssetKey,
    asset_check,
)

from capi_pipeline.delivery.destinations import stores_for
from capi_pipeline.delivery.ledger import partition_stores
from capi_pipeline.monitoring.assets import DAY_STATUS_SQL, MATCH_RATE, is_live
from capi_pipeline.monitoring.settings import MonitoringSettings
from capi_pipeline.partitions import daily_partitions, partition_days, worst_day
from capi_pipeline.resources import PinterestResource, WarehouseResource

EVENT_OUTCOMES = ["delivery", "event_outcomes"]
PINTEREST_EVENTS = ["capi", "pinterest_events"]

# What raw personal data looks like in clear: an email address, or a phone number written the
# way people write them (E.164 with its plus, or digits in groups). Hashes are hex without
# separators, IP addresses and version numbers have other groupings, so none matches.
EMAIL_PATTERN = r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}"
# A phone number in E.164 form, or grouped the North American way; kept as two patterns so
# that the first, like the email pattern, is only tried on text holding its literal (+, @):
# the same matches, without running a regular expression over every payload's 600 bytes.
PHONE_E164 = r"(^|[^0-9A-Za-z/+=])\+[1-9][0-9]{7,14}($|[^0-9A-Za-z])"
PHONE_GROUPED = r"(^|[^0-9])\(?[0-9]{3}\)?[ .-][0-9]{3}[ .-][0-9]{4}($|[^0-9])"
PHONE_PATTERN = f"{PHONE_E164}|{PHONE_GROUPED}"
SCANNED_SCHEMAS = ("capi", "monitoring")
NOT_TEXT = ("BOOLEAN", "TINYINT", "SMALLINT", "INTEGER", "BIGINT", "HUGEINT", "UTINYINT",
            "USMALLINT", "UINTEGER", "UBIGINT", "FLOAT", "DOUBLE", "DATE", "TIME",
            "TIMESTAMP", "TIMESTAMP WITH TIME ZONE", "INTERVAL", "UUID")


@asset_check(asset=AssetKey(MATCH_RATE), blocking=False, partitions_def=daily_partitions)
def match_score_above_floor(
    context: AssetCheckExecutionContext, duckdb: WarehouseResource,
    monitoring: MonitoringSettings,
) -> AssetCheckResult:
    """Warns when a live destination's match score for the day is below the configured floor."""
    return worst_day({day: _match_score_above_floor(duckdb, monitoring, day)
                      for day in partition_days(context)})


def _match_score_above_floor(
    duckdb: WarehouseResource, monitoring: MonitoringSettings, day,
) -> AssetCheckResult:
    floor = monitoring.match_score_floor
    with duckdb.get_connection() as conn:
        rows = conn.execute(
            "SELECT destination, match_score, em_share, click_id_share, ip_ua_share "
            "FROM monitoring.match_rate WHERE partition_date = ? AND event_name = 'all' "
            "AND sent > 0 ORDER BY match_score", [day]).fetchall()
    rows = [row for row in rows if is_live(row[0])]
    low = [row for row in rows if row[1] < floor]
    metadata = {"floor": floor, "destinations": len(rows),
                "lowest_score": round(rows[0][1], 2) if rows else None}
    if not low:
        return AssetCheckResult(passed=True, metadata=metadata)
    destination, score, em, click, ip_ua = low[0]
    return AssetCheckResult(
        passed=False, severity=AssetCheckSeverity.WARN, metadata=metadata,
        description=(
            f"Match score {score:.1f} for {destination} on {day} is below the floor of "
            f"{floor:g}: send more identifiers (email on {em:.0%} of sent events, click id on "
            f"{click:.0%}, IP with user agent on {ip_ua:.0%}); the floor is "
            "CAPI_MATCH_SCORE_FLOOR.\n"
            f"{len(low)} destination(s) below the floor. Capture the email at checkout and "
            "sign-up, keep the epik click id from landing URLs, and have the collector record "
            "IP and user agent."
        ),
    )


# The day's most common refusal among the events whose latest outcome (as
# delivery.event_status has it) is a dead letter of that day: such an event has a dead-letter
# row of the day, so only those events' history is read, and an aggregate finds each latest.
TOP_ERROR_SQL = """
WITH latest AS (
    SELECT arg_max({'outcome': o.outcome, 'error_message': o.error_message,
                    'partition_date': o.partition_date}, (o.recorded_at, o.attempts)) AS last_row
    FROM delivery.event_outcomes o
    WHERE o.destination = $destination AND o.event_id IN (
        SELECT event_id FROM delivery.event_outcomes
        WHERE partition_date = $day AND destination = $destination
          AND outcome = 'dead_letter')
    GROUP BY o.event_id
)
SELECT last_row.error_message, count(*) FROM latest
WHERE last_row.partition_date = $day AND last_row.outcome = 'dead_letter'
GROUP BY ALL ORDER BY 2 DESC LIMIT 1
"""


@asset_check(asset=AssetKey(MATCH_RATE), blocking=False, partitions_def=daily_partitions)
def pinterest_processed_what_was_sent(
    context: AssetCheckExecutionContext, duckdb: WarehouseResource,
    monitoring: MonitoringSettings,
) -> AssetCheckResult:
    """Fails when Pinterest processed less than 95% (configurable) of the events sent that day."""
    return worst_day({day: _pinterest_processed_what_was_sent(duckdb, monitoring, day)
                      for day in partition_days(context)})


def _pinterest_processed_what_was_sent(
    duckdb: WarehouseResource, monitoring: MonitoringSettings, day,
) -> AssetCheckResult:
    floor = monitoring.processed_share_floor
    with duckdb.get_connection() as conn:
        worst = conn.execute(
            "SELECT destination, processed, sent FROM monitoring.match_rate "
            "WHERE partition_date = ? AND event_name = 'all' AND sent > 0 "
            "ORDER BY processed / sent LIMIT 1", [day]).fetchone()
        top_error = None
        if worst is not None:
            top_error = conn.execute(TOP_ERROR_SQL, {"day": day, "destination": worst[0]}
                                     ).fetchall()
            top_error = top_error[0] if top_error else None
    if worst is None:
        return AssetCheckResult(passed=True, metadata={"destinations_with_sends": 0})
    destination, processed, sent = worst
    share = processed / sent
    metadata = {"worst_destination": destination, "processed_share": round(share, 4),
                "floor": floor}
    if share >= floor:
        return AssetCheckResult(passed=True, metadata=metadata)
    reason = f" Most common refusal ({top_error[1]}): {top_error[0]}" if top_error else ""
    return AssetCheckResult(
        passed=False, severity=AssetCheckSeverity.ERROR, metadata=metadata,
        description=(
            f"Pinterest processed {processed} of {sent} events sent to {destination} for {day} "
            f"({share:.1%}, floor {floor:.0%}): read the dead letters' error_message in "
            "delivery.event_status, fix the payload, then run replay_dead_letters_job.\n"
            + reason.strip()
        ),
    )


@asset_check(asset=AssetKey(EVENT_OUTCOMES), blocking=False, partitions_def=daily_partitions)
def every_eligible_event_has_an_outcome(
    context: AssetCheckExecutionContext, duckdb: WarehouseResource,
    pinterest: PinterestResource,
) -> AssetCheckResult:
    """Fails when an eligible event of the day has no outcome (or only a skip) in the ledger
    of a destination its store is routed to."""
    return worst_day({day: _every_eligible_event_has_an_outcome(duckdb, pinterest, day)
                      for day in partition_days(context)})


def _every_eligible_event_has_an_outcome(
    duckdb: WarehouseResource, pinterest: PinterestResource, day,
) -> AssetCheckResult:
    destinations = pinterest.destinations()
    missing: dict[str, int] = {}
    with duckdb.get_connection() as conn:
        stores = partition_stores(conn, day)
        for destination in destinations:
            routed = stores_for(destination, stores, destinations)
            if not routed:
                continue
            count = conn.execute(
                f"""
                SELECT count(*) FROM capi.pinterest_events e
                LEFT JOIN ({DAY_STATUS_SQL}) s ON s.event_id = e.event_id
                WHERE e.partition_date = $day AND e.eligible
                  AND coalesce(e.store, '') IN (SELECT unnest($stores))
                  AND (s.outcome IS NULL OR s.outcome = 'skipped')
                """,
                {"day": day, "destination": destination.ledger_name, "stores": routed},
            ).fetchall()[0][0]
            if count:
                missing[destination.ledger_name] = count
    if not missing:
        return AssetCheckResult(passed=True, metadata={"events_without_outcome": 0})
    worst = max(missing, key=missing.get)
    return AssetCheckResult(
        passed=False, severity=AssetCheckSeverity.ERROR,
        metadata={"events_without_outcome": sum(missing.values()), "worst_destination": worst},
        description=(
            f"{sum(missing.values())} eligible events of {day} have no delivery outcome "
            f"({missing[worst]} for {worst}): materialize delivery/event_outcomes for {day} "
            "again; it sends exactly the events without one.\n"
            "A run that stopped mid-way, or events that became eligible after delivery ran, "
            "leave events without an outcome."
        ),
    )


@asset_check(asset=AssetKey(PINTEREST_EVENTS), blocking=False, partitions_def=daily_partitions)
def event_id_unique_per_destination_and_day(
    context: AssetCheckExecutionContext, duckdb: WarehouseResource,
    pinterest: PinterestResource,
) -> AssetCheckResult:
    """Fails when two of a day's events going to one destination share an event_id, which
    Pinterest would take for one event (it de-duplicates on event_id)."""
    return worst_day({day: _event_id_unique_per_destination_and_day(duckdb, pinterest, day)
                      for day in partition_days(context)})


def _event_id_unique_per_destination_and_day(
    duckdb: WarehouseResource, pinterest: PinterestResource, day,
) -> AssetCheckResult:
    destinations = pinterest.destinations()
    duplicated: dict[str, int] = {}
    with duckdb.get_connection() as conn:
        stores = partition_stores(conn, day)
        for destination in destinations:
            routed = stores_for(destination, stores, destinations)
            if not routed:
                continue
            count = conn.execute(
                """
                SELECT count(*) FROM (
                    SELECT event_id FROM capi.pinterest_events
                    WHERE partition_date = $day
                      AND coalesce(store, '') IN (SELECT unnest($stores))
                    GROUP BY event_id HAVING count(*) > 1
                )
                """, {"day": day, "stores": routed}).fetchone()[0]
            if count:
                duplicated[destination.ledger_name] = count
    if not duplicated:
        return AssetCheckResult(passed=True, metadata={"duplicated_event_ids": 0})
    worst = max(duplicated, key=duplicated.get)
    return AssetCheckResult(
        passed=False, severity=AssetCheckSeverity.ERROR,
        metadata={"duplicated_event_ids": sum(duplicated.values()), "worst_destination": worst},
        description=(
            f"{sum(duplicated.values())} event ids occur more than once in "
            f"capi.pinterest_events for {day} ({duplicated[worst]} for {worst}): Pinterest "
            "keeps one event per id, so find them with GROUP BY event_id HAVING count(*) > 1 "
            "and fix the de-duplication in staging before they are sent."
        ),
    )


@asset_check(asset=AssetKey(MATCH_RATE), blocking=False, partitions_def=daily_partitions)
def no_raw_personal_data_in_capi_and_monitoring(
    context: AssetCheckExecutionContext, duckdb: WarehouseResource,
) -> AssetCheckResult:
    """Fails when a text column of any table in the capi or monitoring schema holds an email
    address or a phone number in clear (the day's rows, for tables with partition_date)."""
    return worst_day({day: _no_raw_personal_data_in_capi_and_monitoring(duckdb, day)
                      for day in partition_days(context)})


def _no_raw_personal_data_in_capi_and_monitoring(
    duckdb: WarehouseResource, day,
) -> AssetCheckResult:
    found: dict[str, int] = {}
    with duckdb.get_connection() as conn:
        for table, columns, partitioned in text_columns(conn):
            where = " OR ".join(_personal_text(f'CAST("{column}" AS VARCHAR)')
                                for column in columns)
            sql = f"SELECT count(*) FROM {table} WHERE ({where})"
            params = {"email": EMAIL_PATTERN, "e164": PHONE_E164, "grouped": PHONE_GROUPED}
            if partitioned:
                sql += " AND partition_date = $day"
                params["day"] = day
            count = conn.execute(sql, params).fetchall()[0][0]
            if count:
                found[table] = count
    if not found:
        return AssetCheckResult(passed=True, metadata={"rows_with_personal_data": 0})
    tables = ", ".join(f"{table} ({count} rows)" for table, count in sorted(found.items()))
    return AssetCheckResult(
        passed=False, severity=AssetCheckSeverity.ERROR,
        metadata={"rows_with_personal_data": sum(found.values()), "tables": tables},
        description=(
            f"Email addresses or phone numbers in clear in {tables} for {day}: find the column "
            "that carries them through (a URL's query string, a new payload field) and hash or "
            "drop it in enrich, then re-materialize the day.\n"
            "capi and monitoring may hold hashes, ids and counts only; analysts read them "
            "without access to personal data."
        ),
    )


def _personal_text(text: str) -> str:
    """SQL true when `text` matches EMAIL_PATTERN or PHONE_PATTERN."""
    return (f"(contains({text}, '@') AND regexp_matches({text}, $email)) "
            f"OR (contains({text}, '+') AND regexp_matches({text}, $e164)) "
            f"OR regexp_matches({text}, $grouped)")


def text_columns(conn) -> list[tuple[str, list[str], bool]]:
    """Every table of the scanned schemas with its columns that can hold text."""
    rows = conn.execute(
        """
        SELECT c.table_schema, c.table_name, c.column_name, c.data_type
        FROM information_schema.columns c
        JOIN information_schema.tables t USING (table_catalog, table_schema, table_name)
        WHERE c.table_schema IN (SELECT unnest($schemas)) AND t.table_type = 'BASE TABLE'
          AND c.table_catalog = current_database()
        ORDER BY c.table_schema, c.table_name, c.ordinal_position
        """, {"schemas": list(SCANNED_SCHEMAS)}).fetchall()
    tables: dict[str, tuple[list[str], bool]] = {}
    for schema, table, column, data_type in rows:
        name = f"{schema}.{table}"
        columns, partitioned = tables.get(name, ([], False))
        if column == "partition_date":
            partitioned = True
        elif data_type not in NOT_TEXT and not data_type.startswith("DECIMAL"):
            columns.append(column)
        tables[name] = (columns, partitioned)
    return [(name, columns, partitioned) for name, (columns, partitioned) in tables.items()
            if columns]
