"""Retention: raw and staged events older than the configured window are purged."""

from datetime import UTC, datetime, timedelta

from dagster import AssetExecutionContext, MaterializeResult, asset

from capi_pipeline.lib.duck import transaction
from capi_pipeline.lib.tags import WRITER
from capi_pipeline.resources import PipelineSettings, WarehouseResource

PURGED_TABLES = ("raw.events", "raw.rejected_lines", "staging.events")


@asset(
    key=["privacy", "retention"],
    deps=[["staging", "events"]],
    group_name="privacy",
    op_tags=WRITER,
    kinds={"duckdb"},
)
def retention(
    context: AssetExecutionContext, duckdb: WarehouseResource, settings: PipelineSettings
) -> MaterializeResult:
    """Deletes raw and staging rows whose UTC day is older than CAPI_RETENTION_DAYS (0 keeps
    everything). The identity graph, the payloads and the ledger keep what they derived: the
    purged days are listed in privacy.purged_days, which identity reads as "gone on purpose".
    """
    if settings.retention_days <= 0:
        context.log.info("retention is off (CAPI_RETENTION_DAYS=0): nothing purged")
        return MaterializeResult(metadata={"retention_days": 0, "rows_purged": 0})
    cutoff = datetime.now(UTC).date() - timedelta(days=settings.retention_days)
    purged: dict[str, int] = {}
    with duckdb.get_connection() as conn:
        with transaction(conn):
            conn.execute(
                "INSERT INTO privacy.purged_days SELECT DISTINCT partition_date, now() "
                "FROM staging.events WHERE partition_date < ? AND partition_date NOT IN "
                "(SELECT partition_date FROM privacy.purged_days)", [cutoff])
            for table in PURGED_TABLES:
                purged[table] = conn.execute(
                    f"DELETE FROM {table} WHERE partition_date < ?", [cutoff]).fetchall()[0][0]
    total = sum(purged.values())
    context.log.info(f"purged {total} rows from before {cutoff}: {purged}")
    return MaterializeResult(metadata={
        "retention_days": settings.retention_days,
        "cutoff": str(cutoff),
        "rows_purged": total,
        **{f"purged_{table.replace('.', '_')}": count for table, count in purged.items()},
    })
