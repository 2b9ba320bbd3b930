"""Erasure: a person's values and hashes leave every table, and they are never sent again."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import duckdb
import pytest
from dagster import AssetSelection, materialize

from capi_pipeline.demo.generate import generate
from capi_pipeline.enrich.normalize import sha256_hex
from capi_pipeline.identity.assets import visitor_profiles
from capi_pipeline.lib.duck import personal_path
from capi_pipeline.privacy.__main__ import main as privacy_main
from capi_pipeline.privacy.assets import retention
from capi_pipeline_tests.conftest import Pipeline
from capi_pipeline_tests.test_cases import NOON, checkout, pixel
from capi_pipeline_tests.test_secrets import CUSTOMER, EMAIL, FIRST, LAST, _landing_lines

DAY = NOON.date()


def _traces() -> dict[str, str]:
    normalized = EMAIL.lower()
    return {
        "email": normalized, "phone digits": "4155550172", "first name": FIRST,
        "last name": LAST, "customer id": CUSTOMER, "client id": "client-canary",
        "anonymous id": "anon-canary", "checkout token": "tok-canary",
        "em hash": sha256_hex(normalized), "ph hash": sha256_hex("14155550172"),
        "external_id hash": sha256_hex(CUSTOMER), "fn hash": sha256_hex(FIRST.lower()),
        "ln hash": sha256_hex(LAST.lower()),
    }


def _find_traces(database: str) -> dict[str, str]:
    """Every table column of both files that holds one of the person's traces."""
    found = {}
    with duckdb.connect(database, read_only=True) as conn:
        conn.execute(f"ATTACH '{personal_path(database)}' AS personal (READ_ONLY)")
        columns = conn.execute(
            "SELECT database_name, schema_name, table_name, column_name FROM duckdb_columns() "
            "WHERE NOT internal AND schema_name NOT IN ('temp', 'privacy') "
            "AND database_name <> 'temp' AND (data_type IN ('VARCHAR', 'JSON') "
            "OR data_type LIKE 'STRUCT%' OR data_type LIKE '%[]')").fetchall()
        for catalog, schema, table, column in columns:
            relation = f'"{catalog}".{schema}."{table}"'
            for label, value in _traces().items():
                hit = conn.execute(
                    f'SELECT count(*) FROM {relation} '
                    f'WHERE contains(lower(CAST("{column}" AS VARCHAR)), lower(?))',
                    [value]).fetchone()[0]
                if hit:
                    found[f"{schema}.{table}.{column}"] = label
    return found


@pytest.fixture(scope="module")
def erased(tmp_path_factory, emulator):
    emulator.reset()
    pipeline = Pipeline(tmp_path_factory.mktemp("erasure"), emulator.base_url)
    generate(pipeline.landing, DAY, days=1, visitors_per_day=80, seed=3)
    lines = _landing_lines()
    text = "\n".join(json.dumps(line) for line in lines[:-1]) + "\n" + lines[-1]["bad"] + "\n"
    (pipeline.landing / "person.ndjson").write_text(text)
    assert pipeline.run(str(DAY)).success
    before = {
        "traces": _find_traces(str(pipeline.database)),
        "staged": pipeline.scalar("SELECT count(*) FROM staging.events"),
        "person": pipeline.scalar(
            "SELECT count(*) FROM staging.events s JOIN identity.event_visitors v "
            "USING (event_key) WHERE v.visitor_id IN (SELECT v2.visitor_id FROM "
            "identity.event_visitors v2 JOIN staging.events s2 USING (event_key) "
            "WHERE lower(s2.email) = ?)", EMAIL.lower()),
        "payloads": pipeline.scalar("SELECT count(*) FROM capi.pinterest_events"),
    }
    return pipeline, before


def test_the_person_was_everywhere_before(erased):
    _, before = erased
    # Without these the "nothing left" below would prove nothing.
    assert {"raw.events.body", "staging.events.email", "capi.pinterest_events.payload"} <= set(
        before["traces"])
    assert before["person"] >= 3


def test_erasure_leaves_no_value_or_hash_and_keeps_everyone_else(erased, monkeypatch, capsys):
    pipeline, before = erased
    monkeypatch.setenv("CAPI_DUCKDB_PATH", str(pipeline.database))
    # Spelled as a person would type it: case and spaces differ from what was stored.
    assert privacy_main(["erase", "--email", f"  {EMAIL.upper()} "]) == 0
    printed = capsys.readouterr().out
    assert "staging" in printed and EMAIL.lower() not in printed.lower()

    assert _find_traces(str(pipeline.database)) == {}
    staged = pipeline.scalar("SELECT count(*) FROM staging.events")
    # The person's events and the order webhook that duplicates their checkout went; only
    # theirs: the rest of the day is intact.
    assert before["person"] <= before["staged"] - staged <= before["person"] + 2
    assert pipeline.scalar("SELECT count(*) FROM capi.pinterest_events") > before["payloads"] - 10
    assert pipeline.scalar("SELECT count(*) FROM privacy.suppressions") == 1


def test_the_person_is_never_sent_again(erased, emulator):
    pipeline, _ = erased
    later = pixel("checkout_completed", "canary-return", "client-canary-2",
                  NOON + timedelta(hours=3), "https://shop.example.com/thank_you",
                  {"checkout": {"email": EMAIL, "token": "tok-canary-2",
                                "order": {"id": "8800999"}}})
    (pipeline.landing / "later.ndjson").write_text(json.dumps(later) + "\n")
    sent_before = set(emulator.event_counts())
    assert pipeline.run(str(DAY)).success
    new = set(emulator.event_counts()) - sent_before
    assert "canary-return" not in new and "canary-checkout" not in new
    assert pipeline.query(
        "SELECT outcome, error_message FROM delivery.event_status WHERE event_id = ?",
        "canary-return") == [("skipped", "erased")]


def test_retention_purges_raw_and_staging_rows_past_the_window(tmp_path, emulator):
    pipeline = Pipeline(tmp_path, emulator.base_url, retention_days=1)
    generate(pipeline.landing, DAY, days=3, visitors_per_day=10, seed=9)
    for back in range(3):
        assert pipeline.run(str(DAY - timedelta(days=back)),
                            selection=AssetSelection.groups("ingest", "staging")).success
    assert materialize([visitor_profiles], resources=pipeline.resources()).success
    visitors = pipeline.query("SELECT visitor_id, events FROM identity.visitor_profiles")
    per_day = dict(pipeline.query(
        "SELECT partition_date, count(*) FROM staging.events GROUP BY ALL"))
    assert len(per_day) == 3
    cutoff = datetime.now(UTC).date() - timedelta(days=1)
    expected = sum(count for day, count in per_day.items() if day < cutoff)
    assert expected > 0

    result = materialize([retention], resources=pipeline.resources())
    assert result.success
    metadata = result.get_asset_materialization_events()[0].materialization.metadata
    assert metadata["purged_staging_events"].value == expected
    assert pipeline.query("SELECT DISTINCT partition_date FROM staging.events") == [(cutoff,)]
    assert pipeline.scalar("SELECT min(partition_date) FROM raw.events") == cutoff
    # Identity keeps the visitors it resolved from the purged days.
    assert materialize([visitor_profiles], resources=pipeline.resources()).success
    assert sorted(pipeline.query(
        "SELECT visitor_id, events FROM identity.visitor_profiles")) == sorted(visitors)


def test_a_namesake_keeps_every_row(tmp_path, emulator, monkeypatch):
    """A stranger with the person's first and last name (and nothing else of theirs) is
    another person: erasure once deleted everyone who shared a name with the person."""
    emulator.reset()
    pipeline = Pipeline(tmp_path, emulator.base_url)
    lines = _landing_lines()
    namesake = pixel("checkout_completed", "namesake-checkout", "client-namesake",
                     NOON + timedelta(hours=1), "https://shop.example.com/thank_you",
                     checkout("namesake.other@example.org", "9900111", 20.0, 22.0,
                              "tok-namesake"))
    namesake["body"]["data"]["checkout"]["billingAddress"] = {
        "firstName": FIRST, "lastName": LAST, "countryCode": "US"}
    text = "\n".join(json.dumps(line) for line in [*lines[:-1], namesake]) + "\n"
    (pipeline.landing / "people.ndjson").write_text(text)
    assert pipeline.run(str(DAY)).success

    def namesakes_rows() -> dict[str, int]:
        return {
            "staging": pipeline.scalar("SELECT count(*) FROM staging.events "
                                       "WHERE client_id = 'client-namesake'"),
            "raw": pipeline.scalar("SELECT count(*) FROM raw.events "
                                   "WHERE contains(body, 'client-namesake')"),
            "capi": pipeline.scalar("SELECT count(*) FROM capi.pinterest_events "
                                    "WHERE event_id = 'namesake-checkout'"),
            "profiles": pipeline.scalar(
                "SELECT count(*) FROM identity.visitor_profiles WHERE first_name = ?", FIRST),
        }

    before = namesakes_rows()
    assert before["staging"] == before["raw"] == before["capi"] == 1
    assert before["profiles"] == 2  # the person and the namesake
    monkeypatch.setenv("CAPI_DUCKDB_PATH", str(pipeline.database))
    assert privacy_main(["erase", "--email", EMAIL]) == 0
    assert namesakes_rows() == {**before, "profiles": 1}
    assert pipeline.scalar("SELECT count(*) FROM staging.events WHERE lower(email) = ?",
                           EMAIL.lower()) == 0
