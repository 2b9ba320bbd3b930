"""Pinterest's own Event Quality Score, read beside ours.

`GET /v5/ad_accounts/{id}/conversion_eqs` answers, for the last day (or fourteen), the share of
each event type's events that carried each quality component (hashed email, click id, IP
address, ...) and an overall rating. It takes an OAuth token with `ads:read`, not the
conversion token, so it is read only when PINTEREST_EQS_TOKEN is set; the emulator answers it
too. Pinterest scores a window ending now, so only the latest days can be read: an older
partition is left as it is.
"""


from datetime import UTC, date, datetime, timedelta

import httpx
import orjson
from dagster import AssetExecutionContext, Failure, MaterializeResult, MetadataValue, asset
from tenacity import Retrying, retry_if_result, stop_after_attempt, wait_exponential

from capi_pipeline.lib.tags import WRITER
from capi_pipeline.monitoring.assets import MATCH_RATE
from capi_pipeline.monitoring.settings import MonitoringSettings
from capi_pipeline.partitions import backfill_policy, daily_partitions, over_days, partition_days
from capi_pipeline.resources import PinterestResource, WarehouseResource

PINTEREST_EQS = ["monitoring", "pinterest_eqs"]
RETRYABLE = {429, 500, 502, 503, 504}


class EqsError(Exception):
    """Pinterest did not answer the event quality score; the message says what to fix."""


def fetch_eqs(base_url: str, ad_account_id: str, token: str, lookback_period: str,
              timeout: float = 30.0, attempts: int = 3) -> list[dict]:
    """Pinterest's EventQualityScore list for one ad account, retrying 429 and 5xx."""
    url = f"{base_url.rstrip('/')}/v5/ad_accounts/{ad_account_id}/conversion_eqs"
    with httpx.Client(timeout=timeout, headers={"Authorization": f"Bearer {token}"}) as client:
        def get() -> httpx.Response | None:
            try:
                return client.get(url, params={"lookback_period": lookback_period})
            except httpx.TransportError:
                return None

        retrying = Retrying(
            stop=stop_after_attempt(attempts), wait=wait_exponential(multiplier=0.5, max=10),
            retry=retry_if_result(lambda r: r is None or r.status_code in RETRYABLE),
            retry_error_callback=lambda state: state.outcome.result(),
        )
        response = retrying(get)
    if response is None:
        raise EqsError(f"cannot reach {base_url} for the event quality score of ad account "
                       f"{ad_account_id}: check PINTEREST_API_BASE_URL and the network")
    if response.status_code in (401, 403):
        raise EqsError(
            f"Pinterest refused the event quality score token for ad account {ad_account_id} "
            f"(HTTP {response.status_code}): set PINTEREST_EQS_TOKEN to an OAuth token with "
            "ads:read on that account, or unset it to stop reading the score")
    if response.status_code != 200:
        raise EqsError(f"Pinterest answered HTTP {response.status_code} for the event quality "
                       f"score of ad account {ad_account_id}: try again later")
    body = orjson.loads(response.content)
    if not isinstance(body, list):
        raise EqsError(f"the event quality score of ad account {ad_account_id} is not a list")
    return body


def eqs_rows(scores: list[dict], day: date, destination: str, fetched_at: datetime) -> list:
    """One row per score, component and event name, as monitoring.pinterest_eqs holds them."""
    rows = []
    for score in scores:
        for component, by_event in (score.get("quality_components") or {}).items():
            for event_name, details in (by_event or {}).items():
                rows.append((
                    day, destination, score["lookback_period"], score.get("source_platform"),
                    score.get("ingestion_source"), score["overall_status"], component,
                    event_name, details.get("coverage"), details.get("overlap"),
                    orjson.dumps(details["issues"]).decode() if details.get("issues") else None,
                    fetched_at,
                ))
    return rows


@asset(
    key=PINTEREST_EQS,
    deps=[MATCH_RATE],
    partitions_def=daily_partitions,
    group_name="monitoring",
    op_tags=WRITER,
    kinds={"duckdb"},
    backfill_policy=backfill_policy,
)
def pinterest_eqs(
    context: AssetExecutionContext, duckdb: WarehouseResource, pinterest: PinterestResource,
    monitoring: MonitoringSettings,
) -> MaterializeResult:
    """Pinterest's Event Quality Score per destination, component and event, read on the day
    after the partition (the view monitoring.eqs_comparison sets our coverage beside it).
    Read only when PINTEREST_EQS_TOKEN is set, and only for yesterday's or today's partition.
    """
    if not monitoring.eqs_access_token:
        context.log.info("PINTEREST_EQS_TOKEN is not set: Pinterest's event quality score "
                         "is not read")
        return MaterializeResult(metadata={"read": False, "reason": "no token configured"})
    per_day = {day: _read_day(context, duckdb, pinterest, monitoring, day)
               for day in partition_days(context)}
    return MaterializeResult(metadata=over_days(per_day))


def _read_day(context: AssetExecutionContext, duckdb: WarehouseResource,
              pinterest: PinterestResource, monitoring: MonitoringSettings, day) -> dict:
    today = datetime.now(UTC).date()
    if day < today - timedelta(days=1):
        context.log.info(f"partition {day}: Pinterest scores only the last "
                         f"{monitoring.eqs_lookback_period}; older days keep what was read")
        return {"read": False, "reason": "partition too old"}

    fetched_at = datetime.now(UTC)
    rows, statuses = [], {}
    for destination in pinterest.destinations():
        if destination.name.endswith(":dry_run"):
            continue
        try:
            scores = fetch_eqs(destination.base_url, destination.ad_account_id,
                               monitoring.eqs_access_token, monitoring.eqs_lookback_period,
                               timeout=pinterest.timeout_seconds)
        except EqsError as error:
            raise Failure(description=str(error)) from None
        rows += eqs_rows(scores, day, destination.name, fetched_at)
        statuses[destination.name] = ", ".join(
            f"{score.get('source_platform')}: {score['overall_status']}" for score in scores)
    with duckdb.get_connection() as conn:
        conn.execute("BEGIN TRANSACTION")
        # Only the destinations read now are replaced; another's scores for the day stay.
        conn.execute("DELETE FROM monitoring.pinterest_eqs WHERE partition_date = ? "
                     "AND destination IN (SELECT unnest(?))", [day, list(statuses)])
        if rows:
            conn.executemany("INSERT INTO monitoring.pinterest_eqs VALUES "
                             "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
        conn.execute("COMMIT")
    context.log.info(f"partition {day}: Pinterest's event quality score {statuses}")
    email = [row[8] for row in rows if row[6] == "hashed_email" and row[8] is not None]
    return {
        "read": True, "dagster/row_count": len(rows),
        "hashed_email_coverage_min": min(email) if email else 0.0,
        "overall_status": MetadataValue.json(statuses),
    }
