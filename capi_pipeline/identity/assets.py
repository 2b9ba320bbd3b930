"""Identity: visitors resolved over all history, one profile each."""


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
# A visitor with more identifiers than this is almost surely several people welded together.
MAX_VISITOR_IDENTIFIERS = 200


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
    Also rewrites identity.identifiers, identity.edges, identity.refused_edges and
    identity.event_visitors, so every merge and every refusal can be explained.
    """
    rules = GraphRules(
        default_region=settings.default_region,
        hub_max_clients=settings.hub_max_clients,
        hub_max_people_per_client=settings.hub_max_people_per_client,
        junk_emails=frozenset(email.strip().lower() for email in settings.junk_emails),
    )
    with duckdb.get_connection() as conn:
        stats = build_identity(conn, rules)
    context.log.info(
        f"{stats['visitors']} visitors from {stats['identifiers']} identifiers, "
        f"{stats['edges']} edges kept, {stats['refused_edges']} refused, "
        f"largest visitor {stats['largest_visitor']} identifiers, "
        f"{stats['iterations']} iterations"
    )
    return MaterializeResult(metadata={"dagster/row_count": stats["visitors"], **stats})


@asset_check(asset=AssetKey(VISITOR_PROFILES), blocking=False)
def largest_visitor_is_one_person(duckdb: WarehouseResource) -> AssetCheckResult:
    """Fails when a visitor holds more identifiers than one person plausibly has."""
    with duckdb.get_connection() as conn:
        largest = conn.execute(
            "SELECT coalesce(max(identifiers), 0) FROM identity.visitor_profiles"
        ).fetchone()[0]
    return AssetCheckResult(
        passed=largest <= MAX_VISITOR_IDENTIFIERS,
        severity=AssetCheckSeverity.ERROR,
        metadata={"largest_visitor_identifiers": largest, "limit": MAX_VISITOR_IDENTIFIERS},
        description=None if largest <= MAX_VISITOR_IDENTIFIERS else (
            f"A visitor joins {largest} identifiers (limit {MAX_VISITOR_IDENTIFIERS}): look in "
            "identity.identifiers for the identifier shared by strangers and add it to the "
            "junk list or lower the hub limits."
        ),
    )
