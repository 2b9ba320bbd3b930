"""Enrich: the day's events as Pinterest will receive them, hashed, with eligibility."""

from datetime import UTC, datetime

from dagster import (
    AssetCheckExecutionContext,
    AssetCheckResult,
    AssetExecutionContext,
    AssetKey,
    MaterializeResult,
    MetadataValue,
    asset,
    asset_check,
)

from capi_pipeline.enrich.build import EMAIL_SHAPED, PHONE_SHAPED, build_pinterest_events
from capi_pipeline.enrich.normalize import HASHED_FIELDS
from capi_pipeline.enrich.payload import PayloadConfig
from capi_pipeline.lib.tags import WRITER
from capi_pipeline.partitions import (
    backfill_policy,
    daily_partitions,
    over_days,
    partition_day,
    partition_days,
)
from capi_pipeline.resources import PipelineSettings, WarehouseResource

PINTEREST_EVENTS_KEY = ["capi", "pinterest_events"]


@asset(
    key=PINTEREST_EVENTS_KEY,
    deps=[["staging", "events"], ["identity", "visitor_profiles"]],
    partitions_def=daily_partitions,
    group_name="enrich",
    op_tags=WRITER,
    kinds={"duckdb"},
    backfill_policy=backfill_policy,
)
def pinterest_events(
    context: AssetExecutionContext, duckdb: WarehouseResource, settings: PipelineSettings
) -> MaterializeResult:
    """One row per event of the day that maps to a Pinterest conversion: the payload Pinterest
    will receive (SHA-256 hashes, plus the IP, user agent and click id it takes unhashed),
    whether it is eligible, and the reason when it is not. No raw personal data.
    """
    config = PayloadConfig.from_settings(settings, now=datetime.now(UTC))
    per_day = {day: _build_day(context, duckdb, config, day) for day in partition_days(context)}
    return MaterializeResult(metadata=over_days(per_day))


def _build_day(
    context: AssetExecutionContext, duckdb: WarehouseResource, config: PayloadConfig, day
) -> dict:
    with duckdb.get_connection() as conn:
        built = build_pinterest_events(conn, day, config)

    context.log.info(
        f"partition {day}: {built.rows} Pinterest events, {built.eligible} eligible, "
        f"skipped {built.skipped_by_reason}, fields left out {built.dropped_by_field}"
    )
    for field, count in built.not_hashed_on_arrival.items():
        context.log.warning(
            f"partition {day}: {count} distinct {field} values were configured to arrive "
            "hashed but are not SHA-256 digests; they were left out"
        )
    return {
        "dagster/row_count": built.rows,
        "eligible": built.eligible,
        "skipped": built.rows - built.eligible,
        "skipped_by_reason": MetadataValue.json(built.skipped_by_reason),
        "eligible_by_event": MetadataValue.json(built.eligible_by_event),
        "fields_left_out": MetadataValue.json(built.dropped_by_field),
        "not_hashed_on_arrival": MetadataValue.json(built.not_hashed_on_arrival),
        "em_share_of_eligible": built.em_share,
        "click_id_share_of_eligible": built.click_id_share,
    }


# Every leaf of every payload, by its path with array indexes folded to [*]. A leaf is allowed
# when its path is a hashed field holding a lower-case SHA-256, or a field Pinterest takes
# unhashed; free text must not look like an email address or a phone number anywhere.
HASHED_PATHS = [f"$.user_data.{field}[*]" for field in HASHED_FIELDS]
UNHASHED_PATHS = [
    "$.event_name", "$.action_source", "$.event_time", "$.event_id", "$.event_source_url",
    "$.opt_out", "$.partner_name", "$.user_data.client_ip_address",
    "$.user_data.client_user_agent", "$.user_data.click_id", "$.custom_data.currency",
    "$.custom_data.value", "$.custom_data.content_ids[*]", "$.custom_data.contents[*].id",
    "$.custom_data.contents[*].item_price", "$.custom_data.contents[*].quantity",
    "$.custom_data.num_items", "$.custom_data.order_id", "$.custom_data.opt_out_type",
]
FREE_TEXT_PATHS = [
    "$.custom_data.search_string", "$.custom_data.content_category",
    "$.custom_data.contents[*].item_name", "$.custom_data.contents[*].item_category",
    "$.custom_data.contents[*].item_brand",
]
PAYLOAD_LEAKS_SQL = f"""
WITH leaves AS (
    SELECT regexp_replace(t.fullkey, '\\[[0-9]+\\]', '[*]', 'g') AS path,
           t.atom::VARCHAR AS atom, t.type
    FROM capi.pinterest_events e, json_tree(e.payload) t
    WHERE t.type NOT IN ('OBJECT', 'ARRAY')
      AND ($day IS NULL OR e.partition_date = $day)
)
SELECT
    CASE
        WHEN list_contains($hashed, path) THEN
            CASE WHEN NOT regexp_full_match(trim(atom, '"'), '[0-9a-f]{{64}}')
                 THEN 'a hashed field that is not a lower-case SHA-256' END
        WHEN list_contains($free_text, path) THEN
            CASE WHEN regexp_matches(atom, '{EMAIL_SHAPED}')
                      OR regexp_matches(atom, '{PHONE_SHAPED}')
                 THEN 'free text shaped like an email address or phone number' END
        WHEN list_contains($unhashed, path) THEN
            CASE WHEN regexp_matches(atom, '{EMAIL_SHAPED}')
                 THEN 'an unhashed field shaped like an email address' END
        ELSE 'a field Pinterest neither hashes nor takes unhashed'
    END AS problem,
    count(*) AS values
FROM leaves
GROUP BY ALL
HAVING problem IS NOT NULL
"""
TEXT_COLUMNS_SQL = """
SELECT table_name, column_name FROM information_schema.columns
WHERE table_schema = 'capi' AND column_name <> 'payload'
  AND (data_type LIKE 'VARCHAR%' OR data_type = 'JSON')
ORDER BY ALL
"""


def personal_data_problems(conn, day=None) -> dict[str, int]:
    """What in the capi schema is neither a hash nor a field Pinterest takes unhashed.

    Args:
        conn: A connection to the pipeline's DuckDB file.
        day: Only this partition's payloads (the run's); every payload when None. Other
            capi tables and columns are read whole.

    Returns:
        Counts by problem (and, for plain columns, by table and column); empty when clean.
        Never the values themselves: they may be the personal data the check is looking for.
    """
    problems = {problem: int(n) for problem, n in conn.execute(PAYLOAD_LEAKS_SQL, {
        "hashed": HASHED_PATHS, "unhashed": UNHASHED_PATHS, "free_text": FREE_TEXT_PATHS,
        "day": day,
    }).fetchall()}
    for table, column in conn.execute(TEXT_COLUMNS_SQL).fetchall():
        leaks = conn.execute(
            f'SELECT count(*) FROM capi."{table}" '
            f"WHERE regexp_matches(CAST(\"{column}\" AS VARCHAR), '{EMAIL_SHAPED}')"
        ).fetchone()[0]
        if leaks:
            problems[f"capi.{table}.{column}: shaped like an email address"] = int(leaks)
    return problems


@asset_check(asset=AssetKey(PINTEREST_EVENTS_KEY), blocking=True)
def no_raw_personal_data(
    context: AssetCheckExecutionContext, duckdb: WarehouseResource
) -> AssetCheckResult:
    """Blocks delivery when the capi schema holds anything but hashes and the fields Pinterest
    takes unhashed: an email- or phone-shaped string, an unhashed value in a hashed field, or
    a field Pinterest does not know. A partitioned run reads its own day's payloads."""
    day = partition_day(context.partition_key) if context.has_partition_key else None
    with duckdb.get_connection() as conn:
        problems = personal_data_problems(conn, day)
    leaks = sum(problems.values())
    return AssetCheckResult(
        passed=leaks == 0,
        metadata={"values_with_raw_personal_data": leaks,
                  "problems": MetadataValue.json(problems)},
        description=None if leaks == 0 else (
            f"{leaks} values in the capi schema are neither hashes nor fields Pinterest takes "
            "unhashed (see the problems); a normalization rule is passing raw values through, "
            "and nothing is sent until it is fixed."
        ),
    )
