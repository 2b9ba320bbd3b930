"""Monitoring: how much of the day reached Pinterest, and how well it can be matched."""


from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetExecutionContext,
    AssetKey,
    MaterializeResult,
    MetadataValue,
    asset,
    asset_check,
)

from capi_pipeline.delivery.destinations import stores_for
from capi_pipeline.delivery.ledger import partition_stores
from capi_pipeline.lib.tags import WRITER
from capi_pipeline.partitions import daily_partitions, partition_day
from capi_pipeline.resources import PinterestResource, WarehouseResource

MATCH_RATE = ["monitoring", "match_rate"]

# Our match score: how much of what Pinterest matches on the sent events carry, weighted by how
# strongly each identifier ties an event to a Pinterest user (an email most, then the click
# id that names the ad click, IP with user agent, phone, the store's own customer id). The
# weights sum to 1, so the score runs from 0 to 100.
SCORE_WEIGHTS = {
    "em_share": 0.35,
    "click_id_share": 0.25,
    "ip_ua_share": 0.20,
    "ph_share": 0.10,
    "external_id_share": 0.10,
}

MATCH_RATE_SQL = f"""
WITH events AS (
    SELECT e.*, s.outcome
    FROM capi.pinterest_events e
    LEFT JOIN delivery.event_status s
      ON s.event_id = e.event_id AND s.destination = $destination
    WHERE e.partition_date = $day AND coalesce(e.store, '') IN (SELECT unnest($stores))
),
grouped AS (
    SELECT coalesce(event_name, 'all') AS event_name,
           count(*) AS events_seen,
           count(*) FILTER (WHERE eligible) AS eligible,
           count(*) FILTER (WHERE skip_reason = 'bot') AS skipped_bot,
           count(*) FILTER (WHERE skip_reason IN ('test_order', 'test_traffic')) AS skipped_test,
           count(*) FILTER (WHERE skip_reason = 'too_old') AS skipped_too_old,
           count(*) FILTER (WHERE skip_reason = 'future_time') AS skipped_future,
           count(*) FILTER (WHERE skip_reason = 'no_identifier') AS skipped_no_identifier,
           count(*) FILTER (WHERE outcome IN ('delivered', 'dead_letter', 'pending')) AS sent,
           count(*) FILTER (WHERE outcome = 'delivered') AS processed,
           count(*) FILTER (WHERE outcome = 'dead_letter') AS dead_lettered,
           count(*) FILTER (WHERE eligible AND (outcome IS NULL OR outcome = 'pending'))
               AS pending,
           avg(has_em::INT) FILTER (WHERE eligible) AS em_share,
           avg(has_ph::INT) FILTER (WHERE eligible) AS ph_share,
           avg(has_external_id::INT) FILTER (WHERE eligible) AS external_id_share,
           avg(has_click_id::INT) FILTER (WHERE eligible) AS click_id_share,
           avg(has_ip_ua::INT) FILTER (WHERE eligible) AS ip_ua_share,
           avg(has_hashed_maids::INT) FILTER (WHERE eligible) AS hashed_maids_share,
           avg((has_em OR has_ph OR has_external_id OR has_click_id)::INT)
               FILTER (WHERE outcome = 'delivered') AS match_rate
    FROM events
    GROUP BY ROLLUP (event_name)
)
SELECT $day, $destination, *,
       100 * ({" + ".join(f"coalesce({name}, 0) * {weight}"
                          for name, weight in SCORE_WEIGHTS.items())}) AS match_score,
       now()
FROM grouped
"""


@asset(
    key=MATCH_RATE,
    deps=[["delivery", "event_outcomes"]],
    partitions_def=daily_partitions,
    group_name="monitoring",
    op_tags=WRITER,
    kinds={"duckdb"},
)
def match_rate(
    context: AssetExecutionContext, duckdb: WarehouseResource, pinterest: PinterestResource
) -> MaterializeResult:
    """Per day, destination and Pinterest event (plus an 'all' row): events seen, eligible,
    skipped by reason, sent, processed by Pinterest, dead-lettered, still pending; the share
    of eligible events carrying each identifier; the match rate (share of processed events
    carrying an email, phone, customer id or click id) and our weighted match score (0-100).
    """
    day = partition_day(context.partition_key)
    destinations = pinterest.destinations()
    with duckdb.get_connection() as conn:
        stores = partition_stores(conn, day)
        conn.execute("BEGIN TRANSACTION")
        conn.execute("DELETE FROM monitoring.match_rate WHERE partition_date = ?", [day])
        for destination in destinations:
            params = {"day": day, "destination": destination.ledger_name,
                      "stores": stores_for(destination, stores, destinations)}
            if params["stores"]:
                conn.execute(f"INSERT INTO monitoring.match_rate {MATCH_RATE_SQL}", params)
        conn.execute("COMMIT")
        cursor = conn.execute(
            "SELECT * FROM monitoring.match_rate WHERE partition_date = ? "
            "ORDER BY destination, event_name = 'all', event_name", [day],
        )
        columns = [column[0] for column in cursor.description]
        rows = [dict(zip(columns, values, strict=True)) for values in cursor.fetchall()]

    totals = [row for row in rows if row["event_name"] == "all"]
    metadata: dict[str, object] = {"dagster/row_count": len(rows)}
    if totals:
        total = _sum_totals(totals)
        for name in ("events_seen", "eligible", "sent", "processed", "dead_lettered", "pending"):
            metadata[name] = int(total[name])
        for name in ("match_rate", "match_score", "em_share", "click_id_share", "ip_ua_share"):
            metadata[name] = round(float(total[name] or 0.0), 4)
        context.log.info(
            f"partition {day}: {total['processed']}/{total['sent']} processed, match rate "
            f"{(total['match_rate'] or 0):.1%}, match score {total['match_score']:.1f}"
        )
    metadata["by_event"] = MetadataValue.md(_markdown(rows))
    return MaterializeResult(metadata=metadata)


def _sum_totals(totals: list[dict]) -> dict:
    """The day's headline over destinations: counts add up, shares weigh by events."""
    if len(totals) == 1:
        return totals[0]
    counts = ("events_seen", "eligible", "sent", "processed", "dead_lettered", "pending")
    total = {name: sum(row[name] for row in totals) for name in counts}
    for name in ("match_rate", "match_score", "em_share", "click_id_share", "ip_ua_share"):
        weight = "processed" if name == "match_rate" else "eligible"
        weights = sum(row[weight] for row in totals)
        total[name] = (sum((row[name] or 0) * row[weight] for row in totals) / weights
                       if weights else 0.0)
    return total


def _markdown(rows: list[dict]) -> str:
    header = ("| destination | event | seen | eligible | sent | processed | dead | match rate "
              "| score |")
    lines = [header, "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for row in rows:
        lines.append(
            f"| {row['destination']} | {row['event_name']} | {row['events_seen']} "
            f"| {row['eligible']} | {row['sent']} "
            f"| {row['processed']} | {row['dead_lettered']} | {(row['match_rate'] or 0):.1%} "
            f"| {row['match_score']:.1f} |"
        )
    return "\n".join(lines)


@asset_check(asset=AssetKey(MATCH_RATE), blocking=False)
def pinterest_processed_what_was_sent(
    context, duckdb: WarehouseResource, pinterest: PinterestResource
) -> AssetCheckResult:
    """Fails when Pinterest processed less than 95% of the events sent on any day."""
    names = [destination.ledger_name for destination in pinterest.destinations()]
    with duckdb.get_connection() as conn:
        worst = conn.execute(
            """
            SELECT partition_date, processed, sent FROM monitoring.match_rate
            WHERE event_name = 'all' AND destination IN (SELECT unnest(?)) AND sent > 0
            ORDER BY processed / sent LIMIT 1
            """,
            [names],
        ).fetchone()
    if worst is None:
        return AssetCheckResult(passed=True, metadata={"days_with_sends": 0})
    day, processed, sent = worst
    share = processed / sent
    return AssetCheckResult(
        passed=share >= 0.95,
        severity=AssetCheckSeverity.ERROR,
        metadata={"worst_day": str(day), "processed_share": round(share, 4)},
        description=None if share >= 0.95 else (
            f"Pinterest processed {processed} of {sent} events sent for {day} ({share:.1%}): "
            "read delivery.event_status for the dead letters' error_message."
        ),
    )
