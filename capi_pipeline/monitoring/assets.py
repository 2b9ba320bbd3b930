"""Monitoring: how much of the day reached Pinterest, and how well it can be matched."""


from dagster import (
    AssetExecutionContext,
    MaterializeResult,
    MetadataValue,
    asset,
)

from capi_pipeline.delivery.destinations import stores_for
from capi_pipeline.delivery.ledger import partition_stores
from capi_pipeline.lib.tags import WRITER
from capi_pipeline.partitions import backfill_policy, daily_partitions, over_days, partition_days
from capi_pipeline.resources import PinterestResource, WarehouseResource

MATCH_RATE = ["monitoring", "match_rate"]

# The match score weighs the identifier coverage of the sent events by the user-matching
# components of Pinterest's Event Quality Score (the `quality_components` of
# GET /v5/ad_accounts/{id}/conversion_eqs): hashed_email, click_id_epik, ip_address with
# user_agent, advertiser_external_id, hashed_maid. Pinterest publishes the components but not
# how it weighs them (neither its OpenAPI file nor its help pages, nor our capi.md, give a
# figure), so the weights below are ours: an email first, because Pinterest matches most
# events on it; then the click id, which ties the event to the ad click itself; then IP with
# user agent, which Pinterest takes only together; then the store's customer id. Mobile ad ids
# only exist on app events, so they are scored only as a stand-in for an email (an event with
# either counts as covered). The phone number is no EQS component and is not scored, though
# its share is kept. The weights sum to 1, so the score runs from 0 to 100; when Pinterest
# publishes its weights, only this table changes.
SCORE_WEIGHTS = {
    "em_or_maid_share": 0.35,
    "click_id_share": 0.25,
    "ip_ua_share": 0.25,
    "external_id_share": 0.15,
}

# Outcomes of an event that was handed to Pinterest (or, in a dry run, written for it).
SENT = "('delivered', 'dead_letter', 'pending')"
HANDED_OVER = "('delivered', 'dead_letter', 'pending', 'dry_run')"

# Each of the day's events' latest outcome for the destination, as delivery.event_status has
# it (latest recorded_at, then most attempts), from these events' own history rather than the
# view's window over every row the ledger ever had; and an aggregate rather than a window,
# which sorted the day's 300,000 rows by text keys for a second.
DAY_STATUS_SQL = """
SELECT o.event_id, arg_max(o.outcome, (o.recorded_at, o.attempts)) AS outcome
FROM delivery.event_outcomes o
WHERE o.destination = $destination
  AND o.event_id IN (SELECT event_id FROM capi.pinterest_events WHERE partition_date = $day)
GROUP BY o.event_id
"""
DAY_EVENTS_SQL = f"""
SELECT e.*, s.outcome
FROM capi.pinterest_events e
LEFT JOIN ({DAY_STATUS_SQL}) s ON s.event_id = e.event_id
WHERE e.partition_date = $day AND coalesce(e.store, '') IN (SELECT unnest($stores))
"""

MATCH_RATE_SQL = f"""
WITH events AS ({DAY_EVENTS_SQL}),
grouped AS (
    SELECT coalesce(event_name, 'all') AS event_name,
           count(*) AS events_seen,
           count(*) FILTER (WHERE eligible) AS eligible,
           count(*) FILTER (WHERE skip_reason = 'bot') AS skipped_bot,
           count(*) FILTER (WHERE skip_reason IN ('test_order', 'test_traffic')) AS skipped_test,
           count(*) FILTER (WHERE skip_reason = 'too_old') AS skipped_too_old,
           count(*) FILTER (WHERE skip_reason = 'future_time') AS skipped_future,
           count(*) FILTER (WHERE skip_reason = 'no_identifier') AS skipped_no_identifier,
           coalesce(histogram(skip_reason) FILTER (WHERE NOT eligible), MAP {{}})
               ::MAP(VARCHAR, INTEGER) AS skipped_by_reason,
           count(*) FILTER (WHERE outcome IN {SENT}) AS sent,
           count(*) FILTER (WHERE outcome = 'delivered') AS processed,
           count(*) FILTER (WHERE outcome = 'dead_letter') AS dead_lettered,
           count(*) FILTER (WHERE eligible AND (outcome IS NULL OR outcome = 'pending'))
               AS pending,
           count(*) FILTER (WHERE outcome = 'dry_run') AS dry_run,
           avg(has_em::INT) FILTER (WHERE outcome IN {HANDED_OVER}) AS em_share,
           avg(has_ph::INT) FILTER (WHERE outcome IN {HANDED_OVER}) AS ph_share,
           avg(has_external_id::INT) FILTER (WHERE outcome IN {HANDED_OVER})
               AS external_id_share,
           avg(has_click_id::INT) FILTER (WHERE outcome IN {HANDED_OVER}) AS click_id_share,
           avg(has_ip_ua::INT) FILTER (WHERE outcome IN {HANDED_OVER}) AS ip_ua_share,
           avg(has_hashed_maids::INT) FILTER (WHERE outcome IN {HANDED_OVER})
               AS hashed_maids_share,
           avg((has_em OR has_hashed_maids)::INT) FILTER (WHERE outcome IN {HANDED_OVER})
               AS em_or_maid_share,
           avg((has_em OR has_ph OR has_external_id OR has_click_id)::INT)
               FILTER (WHERE outcome = 'delivered') AS match_rate
    FROM events
    GROUP BY ROLLUP (event_name)
)
SELECT $day AS partition_date, $destination AS destination, * EXCLUDE (em_or_maid_share),
       100 * ({" + ".join(f"coalesce({name}, 0) * {weight}"
                          for name, weight in SCORE_WEIGHTS.items())}) AS match_score,
       now() AS computed_at
FROM grouped
"""

# Skips need no outcome: the day's events alone, not DAY_EVENTS_SQL, whose ledger lookup
# (one row per event at most) read the event_id of every outcome ever recorded.
SKIPPED_SQL = """
SELECT $day AS partition_date, $destination AS destination,
       coalesce(event_name, 'all') AS event_name, skip_reason, count(*) AS events
FROM capi.pinterest_events
WHERE partition_date = $day AND coalesce(store, '') IN (SELECT unnest($stores))
  AND NOT eligible
GROUP BY GROUPING SETS ((event_name, skip_reason), (skip_reason))
"""

# The day's headline over every destination: counts add up, shares weigh by the events they
# are shares of. Test and dry-run ledgers stay out of it, as they would double the day.
HEADLINE_COUNTS = ("events_seen", "eligible", "sent", "processed", "dead_lettered", "pending")
HEADLINE_SHARES = {
    "match_rate": "processed",
    "match_score": "sent",
    "em_share": "sent",
    "ph_share": "sent",
    "external_id_share": "sent",
    "click_id_share": "sent",
    "ip_ua_share": "sent",
    "hashed_maids_share": "sent",
}


@asset(
    key=MATCH_RATE,
    deps=[["delivery", "event_outcomes"]],
    partitions_def=daily_partitions,
    group_name="monitoring",
    op_tags=WRITER,
    kinds={"duckdb"},
    backfill_policy=backfill_policy,
)
def match_rate(
    context: AssetExecutionContext, duckdb: WarehouseResource, pinterest: PinterestResource
) -> MaterializeResult:
    """Per day, destination and Pinterest event (plus an 'all' row): events seen, eligible,
    skipped by reason (every reason enrich gives, in `skipped_by_reason` and the long table
    monitoring.skipped_by_reason), sent, processed by Pinterest, dead-lettered, still pending;
    the share of sent events carrying each identifier; the match rate (share of processed
    events carrying an email, phone, customer id or click id) and the match score (0-100,
    identifier coverage weighted by the components of Pinterest's Event Quality Score).
    """
    destinations = pinterest.destinations()
    per_day = {day: _rate_day(context, duckdb, destinations, day)
               for day in partition_days(context)}
    return MaterializeResult(metadata=over_days(per_day))


def _rate_day(context: AssetExecutionContext, duckdb: WarehouseResource, destinations,
              day) -> dict:
    with duckdb.get_connection() as conn:
        stores = partition_stores(conn, day)
        names = [destination.ledger_name for destination in destinations]
        conn.execute("BEGIN TRANSACTION")
        try:
            # Only this run's destinations are replaced: a destination left out of the run's
            # settings keeps its figures for the day (and is named in a warning), so a run
            # with the wrong account cannot wipe another destination's day.
            for table in ("monitoring.match_rate", "monitoring.skipped_by_reason"):
                conn.execute(f"DELETE FROM {table} WHERE partition_date = ? "
                             f"AND destination IN (SELECT unnest(?))", [day, names])
            kept = [row[0] for row in conn.execute(
                "SELECT DISTINCT destination FROM monitoring.match_rate "
                "WHERE partition_date = ? AND destination NOT IN (SELECT unnest(?)) "
                "ORDER BY 1", [day, names]).fetchall()]
            for destination in destinations:
                params = {"day": day, "destination": destination.ledger_name,
                          "stores": stores_for(destination, stores, destinations)}
                if params["stores"]:
                    conn.execute(f"INSERT INTO monitoring.match_rate BY NAME {MATCH_RATE_SQL}",
                                 params)
                    conn.execute(f"INSERT INTO monitoring.skipped_by_reason BY NAME "
                                 f"{SKIPPED_SQL}", params)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        rows = day_rows(conn, day)

    metadata: dict[str, object] = {"dagster/row_count": len(rows)}
    if kept:
        metadata["kept_destinations"] = ", ".join(kept)
        context.log.warning(
            f"partition {day}: kept the figures of {', '.join(kept)}, not configured in "
            f"this run; they are left out of its headline"
        )
    # The run's headline is over the destinations it is configured with: a kept destination's
    # figures may cover the same events under an earlier configuration.
    total = headline([row for row in rows if row["destination"] in names])
    if total:
        metadata.update({name: int(total[name]) for name in HEADLINE_COUNTS})
        metadata.update({name: round(float(total[name]), 4) for name in HEADLINE_SHARES})
        metadata["processed_share"] = round(total["processed"] / total["sent"], 4) if total[
            "sent"] else 0.0
        for reason, count in sorted(total["skipped_by_reason"].items()):
            metadata[f"skipped_{reason}"] = int(count)
        context.log.info(
            f"partition {day}: {total['processed']}/{total['sent']} processed, match rate "
            f"{total['match_rate']:.1%}, match score {total['match_score']:.1f}"
        )
    else:
        context.log.info(f"partition {day}: no Pinterest events for any destination")
    metadata["by_event"] = MetadataValue.md(markdown_table(rows))
    return metadata


def day_rows(conn, day) -> list[dict]:
    """A day's monitoring.match_rate rows as dicts, by destination, events before 'all'."""
    cursor = conn.execute(
        "SELECT * FROM monitoring.match_rate WHERE partition_date = ? "
        "ORDER BY destination, event_name = 'all', event_name", [day],
    )
    columns = [column[0] for column in cursor.description]
    return [dict(zip(columns, values, strict=True)) for values in cursor.fetchall()]


def is_live(destination: str) -> bool:
    """Whether a ledger name is a live destination (not a test send or a dry run)."""
    return not destination.endswith((":test", ":dry_run"))


def headline(rows: list[dict]) -> dict | None:
    """The day's totals over its live destinations (over all of them when none is live)."""
    totals = [row for row in rows if row["event_name"] == "all"]
    live = [row for row in totals if is_live(row["destination"])]
    totals = live or totals
    if not totals:
        return None
    total: dict[str, object] = {name: sum(row[name] for row in totals)
                                for name in HEADLINE_COUNTS}
    for name, weight in HEADLINE_SHARES.items():
        weights = sum(_handed_over(row) if weight == "sent" else row[weight] for row in totals)
        total[name] = (sum((row[name] or 0) * (_handed_over(row) if weight == "sent"
                                               else row[weight]) for row in totals) / weights
                       if weights else 0.0)
    reasons: dict[str, int] = {}
    for row in totals:
        for reason, count in (row.get("skipped_by_reason") or {}).items():
            reasons[reason] = reasons.get(reason, 0) + count
    total["skipped_by_reason"] = reasons
    return total


def _handed_over(row: dict) -> int:
    return row["sent"] + (row.get("dry_run") or 0)


def markdown_table(rows: list[dict]) -> str:
    """One line per destination and event: the figures the UI shows beside the plots."""
    header = ("| destination | event | seen | eligible | skipped (by reason) | sent | processed "
              "| dead | pending | em | click id | IP+UA | match rate | score |")
    lines = [header, "|---|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for row in rows:
        skipped = ", ".join(f"{reason} {count}" for reason, count in
                            sorted((row.get("skipped_by_reason") or {}).items())) or "-"
        lines.append(
            f"| {row['destination']} | {row['event_name']} | {row['events_seen']} "
            f"| {row['eligible']} | {skipped} | {row['sent']} | {row['processed']} "
            f"| {row['dead_lettered']} | {row['pending']} | {_pct(row['em_share'])} "
            f"| {_pct(row['click_id_share'])} | {_pct(row['ip_ua_share'])} "
            f"| {_pct(row['match_rate'])} | {row['match_score']:.1f} |"
        )
    return "\n".join(lines)


def _pct(share: float | None) -> str:
    return "-" if share is None else f"{share:.0%}"
