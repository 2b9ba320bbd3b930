"""Identity: visitors resolved over all history, one profile each, brought up to date from the
staged days that are new or changed since the last run."""


from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetExecutionContext,
    AssetKey,
    MaterializeResult,
    asset,
    asset_check,
)

from capi_pipeline.identity.graph import GraphRules, build_identity
from capi_pipeline.lib.tags import WRITER
from capi_pipeline.resources import PipelineSettings, WarehouseResource

VISITOR_PROFILES = ["identity", "visitor_profiles"]


@asset(
    key=VISITOR_PROFILES,
    deps=[["staging", "events"]],
    group_name="identity",
    op_tags=WRITER,
    kinds={"duckdb"},
)
def visitor_profiles(
    context: AssetExecutionContext, duckdb: WarehouseResource, settings: PipelineSettings
) -> MaterializeResult:
    """One row per visitor: the identifiers seen together across all days, resolved into a
    person, with the latest email, phone, address, IP and user agent, and Pinterest click id.
    Also keeps identity.identifiers, identity.edges, identity.refused_edges (with reasons),
    identity.event_visitors and identity.visitor_id_map, so every merge and every refusal can
    be explained. Only staged days that are new or changed since the last run are read.
    """
    with duckdb.get_connection() as conn:
        stats = build_identity(conn, graph_rules(settings))
    context.log.info(
        f"{stats['days_read']} staged days read "
        f"({'full recompute' if stats['full_recompute'] else 'incremental'}) in "
        f"{stats['seconds']} s: {stats['visitors']} visitors from {stats['identifiers']} "
        f"identifiers, {stats['edges']} edges, {stats['refused_edges']} refused, "
        f"{stats['visitors_merged']} visitors merged, {stats['visitors_split']} split, "
        f"largest visitor {stats['largest_visitor']} identifiers"
    )
    return MaterializeResult(metadata={"dagster/row_count": stats["visitors"], **stats})


def graph_rules(settings: PipelineSettings) -> GraphRules:
    return GraphRules(
        default_region=settings.default_region,
        hub_max_clients=settings.hub_max_clients,
        hub_max_people_per_client=settings.hub_max_people_per_client,
        junk_emails=frozenset(email.strip().lower() for email in settings.junk_emails),
        max_visitor_identifiers=settings.max_visitor_identifiers,
        attribution_window_days=settings.attribution_window_days,
    )


@asset_check(asset=AssetKey(VISITOR_PROFILES), blocking=False)
def largest_visitor_is_one_person(
    duckdb: WarehouseResource, settings: PipelineSettings
) -> AssetCheckResult:
    """Fails when a visitor holds more identifiers than the size limit lets one person have."""
    limit = settings.max_visitor_identifiers
    with duckdb.get_connection() as conn:
        largest, visitor_id = conn.execute(
            "SELECT coalesce(max(identifiers), 0), arg_max(visitor_id, identifiers) "
            "FROM identity.visitor_profiles"
        ).fetchone()
    return AssetCheckResult(
        passed=largest <= limit,
        severity=AssetCheckSeverity.ERROR,
        metadata={"largest_visitor_identifiers": largest, "limit": limit,
                  "largest_visitor_id": visitor_id or ""},
        description=None if largest <= limit else (
            f"Visitor {visitor_id} joins {largest} identifiers (limit {limit}): look in "
            "identity.identifiers for the identifier shared by strangers and add it to the "
            "junk list or lower the hub limits."
        ),
    )
