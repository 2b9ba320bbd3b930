"""The code location's shape: asset keys are the DuckDB tables, grouped by stage."""

from __future__ import annotations

from capi_pipeline.definitions import defs
from capi_pipeline.partitions import daily_partitions


def test_asset_keys_groups_and_partitions():
    graph = defs.resolve_asset_graph()
    shape = {
        key.to_user_string(): (
            graph.get(key).group_name,
            graph.get(key).partitions_def is daily_partitions,
        )
        for key in graph.get_all_asset_keys()
    }
    assert shape == {
        "raw/events": ("ingest", True),
        "raw/rejected_lines": ("ingest", True),
        "staging/events": ("staging", True),
        "identity/visitor_profiles": ("identity", False),
        "capi/pinterest_events": ("enrich", True),
        "delivery/event_outcomes": ("delivery", True),
        "delivery/requests": ("delivery", True),
        "monitoring/match_rate": ("monitoring", True),
        "monitoring/pinterest_eqs": ("monitoring", True),
        "marts/match_rate_daily": ("marts", False),
        "privacy/retention": ("privacy", False),
        "marts/match_rate_by_event": ("marts", False),
        "marts/delivery_daily_summary": ("marts", False),
        "marts/dead_letters_by_reason": ("marts", False),
        "marts/visitor_counts": ("marts", False),
    }


def test_lineage_runs_from_landing_to_marts():
    graph = defs.resolve_asset_graph()

    def parents(name: str) -> set[str]:
        key = next(k for k in graph.get_all_asset_keys() if k.to_user_string() == name)
        return {parent.to_user_string() for parent in graph.get(key).parent_keys}

    assert parents("staging/events") == {"raw/events"}
    assert parents("identity/visitor_profiles") == {"staging/events"}
    assert parents("capi/pinterest_events") == {"staging/events", "identity/visitor_profiles"}
    assert parents("delivery/event_outcomes") == {"capi/pinterest_events"}
    assert parents("monitoring/match_rate") == {"delivery/event_outcomes"}
    assert parents("marts/match_rate_daily") == {"monitoring/match_rate"}
    assert parents("marts/delivery_daily_summary") == {"delivery/event_outcomes",
                                                      "delivery/requests"}
    # Analysts' models read the warehouse file only, never the personal-data file.
    assert parents("marts/visitor_counts") == {"capi/pinterest_events"}


def test_checks_are_attached():
    checks = {
        (key.asset_key.to_user_string(), key.name)
        for key in defs.resolve_asset_graph().asset_check_keys
    }
    assert {
        ("identity/visitor_profiles", "largest_visitor_is_one_person"),
        ("capi/pinterest_events", "no_raw_personal_data"),
        ("monitoring/match_rate", "pinterest_processed_what_was_sent"),
    } <= checks
