"""The normalization table against the shared golden cases and the edges they leave out."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from capi_pipeline.enrich.normalize import (
    HASHED_FIELDS,
    PLACEHOLDERS,
    RULES,
    clean,
    country_code,
    hash_field,
    is_sha256,
    normalize,
    normalize_email,
    phone_e164,
    sha256_hex,
    state_code,
)

CASES_PATH = Path(__file__).resolve().parents[2] / "shared" / "cases" / "normalization.json"
MISSING_REASON = (
    "../shared/cases/normalization.json not present (CI lays ../shared beside the repo)"
)


def _golden_cases() -> list:
    if not CASES_PATH.exists():
        return [pytest.param(None, marks=pytest.mark.skip(reason=MISSING_REASON), id="missing")]
    cases = json.loads(CASES_PATH.read_text(encoding="utf-8"))
    return [
        pytest.param(case, id=f"{i}-{case['field']}-{case['input'][:24]}")
        for i, case in enumerate(cases)
    ]


@pytest.mark.parametrize("case", _golden_cases())
def test_golden_case(case: dict) -> None:
    country = case.get("country")

    assert normalize(case["field"], case["input"], country) == case["normalized"]
    assert hash_field(case["field"], case["input"], country) == case["sha256"]


@pytest.mark.parametrize("case", _golden_cases())
def test_golden_case_hash_is_the_hash_of_the_normalized_value(case: dict) -> None:
    # Guards the file itself: a pass-through case is its own hash, every other its digest.
    if case["normalized"] is None:
        assert case["sha256"] is None
    elif is_sha256(case["input"].strip()):
        assert case["sha256"] == case["normalized"]
    else:
        expected = hashlib.sha256(case["normalized"].encode("utf-8")).hexdigest()
        assert case["sha256"] == expected


def test_one_rule_per_hashed_field() -> None:
    assert set(RULES) == set(HASHED_FIELDS)
    assert all(rule.field == field for field, rule in RULES.items())
    assert all(rule.description for rule in RULES.values())


def test_upper_case_hash_passes_through_lower_cased_for_every_field() -> None:
    digest = sha256_hex("jane@example.com")

    for field in HASHED_FIELDS:
        assert normalize(field, f"  {digest.upper()} ") == digest
        assert hash_field(field, digest.upper()) == digest


@pytest.mark.parametrize("placeholder", sorted(PLACEHOLDERS))
@pytest.mark.parametrize("field", HASHED_FIELDS)
def test_placeholder_is_never_hashed(field: str, placeholder: str) -> None:
    assert normalize(field, placeholder, "US") is None
    assert hash_field(field, placeholder.upper(), "US") is None
    assert hash_field(field, f"  {placeholder}  ", "US") is None


@pytest.mark.parametrize("field", HASHED_FIELDS)
@pytest.mark.parametrize("value", [None, True, {}, [], "   ", "\ufeff"])
def test_missing_values_are_left_out(field: str, value: object) -> None:
    assert hash_field(field, value, "US") is None


def test_empty_string_is_never_hashed() -> None:
    empty_digest = sha256_hex("")

    for field in HASHED_FIELDS:
        for value in ["", " ", ".", "-", "...", "()"]:
            assert hash_field(field, value, "US", "US") != empty_digest


def test_unknown_field_is_an_error() -> None:
    with pytest.raises(KeyError):
        normalize("email", "jane@example.com")


def test_sha256_hex() -> None:
    assert sha256_hex("us") == "79adb2a2fce5c6ba215fe5f27f532d4e7edbac4b6a5e09e1ef3a08084a904621"
    assert sha256_hex("zoë") == "2752b88686847fa5c86f47b94ce652b7b3f22a91c37617d451a4db9afa431450"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("abc", False),
        ("a" * 64, True),
        ("A" * 64, True),
        ("g" * 64, False),
        ("a" * 63, False),
        ("a" * 65, False),
    ],
)
def test_is_sha256(value: str, expected: bool) -> None:
    assert is_sha256(value) is expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("  x ", "x"),
        ("\ufeffx\u200b", "x"),
        (1001, "1001"),
        (b"caf\xc3\xa9 ", "café"),
        ("Undefined", None),
        ("[object Object]", None),
        ("N/A", None),
        (float("nan"), None),
        (True, None),
        ({"amount": 1}, None),
        ("Na", "Na"),
        (0, "0"),
    ],
)
def test_clean(value: object, expected: str | None) -> None:
    assert clean(value) == expected


# --- phone -----------------------------------------------------------------------------------


def test_phone_uses_default_region_when_event_has_no_country() -> None:
    assert normalize("ph", "(650) 555-1212", None, default_region="US") == "16505551212"
    assert normalize("ph", "(650) 555-1212") is None


def test_phone_prefers_event_country_over_default_region() -> None:
    assert normalize("ph", "07911 123456", "GB", default_region="US") == "447911123456"
    # Read as a British number, a US national number is not valid, so nothing is sent.
    assert normalize("ph", "(650) 555-1212", "GB", default_region="US") is None


def test_phone_unknown_event_country_falls_back_to_default_region() -> None:
    assert normalize("ph", "07911 123456", "Narnia", default_region="GB") == "447911123456"


def test_phone_event_country_as_alpha3_and_name() -> None:
    assert normalize("ph", "07911 123456", "GBR") == "447911123456"
    assert normalize("ph", "07911 123456", "United Kingdom") == "447911123456"


def test_phone_international_form_ignores_region() -> None:
    assert normalize("ph", "+1 650-555-1212", "GB") == "16505551212"
    assert normalize("ph", "0044 7911 123456") == "447911123456"


@pytest.mark.parametrize(
    ("value", "region", "expected"),
    [
        ("+1 (650) 555-1212", None, "+16505551212"),
        ("(650) 555-1212", "US", "+16505551212"),
        (6505551212, "US", "+16505551212"),
        ("0612345678", "FR", "+33612345678"),
        ("+44 7777 777777", None, None),
        ("0000000000", "US", None),
        ("555-1212", "US", None),
        ("call me", "US", None),
        ("", "US", None),
    ],
)
def test_phone_e164(value: object, region: str | None, expected: str | None) -> None:
    assert phone_e164(value, region) == expected


# --- country and state -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("US", "US"),
        ("us", "US"),
        ("USA", "US"),
        ("U.S.", "US"),
        ("United States of America", "US"),
        ("GBR", "GB"),
        ("deu", "DE"),
        ("UK", "GB"),
        ("Great Britain", "GB"),
        ("Germany", "DE"),
        ("Cote d'Ivoire", "CI"),
        ("South Korea", "KR"),
        ("Narnia", None),
        ("XX", None),
        ("840", None),
        (None, None),
    ],
)
def test_country_code(value: object, expected: str | None) -> None:
    assert country_code(value) == expected


def test_country_field_from_alpha3() -> None:
    assert normalize("country", "CAN") == "ca"
    assert hash_field("country", "USA") == sha256_hex("us")


@pytest.mark.parametrize(
    ("value", "country", "expected"),
    [
        ("Ontario", "CA", "on"),
        ("British Columbia", "CA", "bc"),
        ("Québec", "CA", "qc"),
        ("Quebec", "CAN", "qc"),
        ("PQ", "Canada", "qc"),
        ("CA-NS", "CA", "ns"),
        ("Newfoundland and Labrador", "CA", "nl"),
        ("NY", "CA", None),
        ("Ontario", "US", None),
        ("new york", "US", "ny"),
        ("US-TX", None, "tx"),
        ("Texas", None, "tx"),
        ("Alberta", None, "ab"),
        ("DC", "US", "dc"),
        ("BY", "DE", "by"),
        ("DE-BY", "DE", "by"),
        ("Bayern", "DE", None),
    ],
)
def test_state_code(value: str, country: str | None, expected: str | None) -> None:
    assert state_code(value, country) == expected


def test_state_uses_default_region() -> None:
    assert normalize("st", "Ontario", None, default_region="CA") == "on"
    assert hash_field("st", "Ontario", "Canada") == sha256_hex("on")


# --- the other rules -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("mailto:Jane@Example.com", "jane@example.com"),
        ("Jane Doe <jane@example.com>", "jane@example.com"),
        ("jane@example.com.", "jane@example.com"),
        ("j a n e@example.com", "jane@example.com"),
        ("j.a.n.e+tag@gmail.com", "j.a.n.e+tag@gmail.com"),
        ("JÖRG@exämple.de", "jörg@exämple.de"),
        ("a@b", None),
        ("@example.com", None),
        ("a@@example.com", None),
        ("a@example..com", None),
        ("a@1.2", None),
        ("undefined", None),
    ],
)
def test_normalize_email(value: str, expected: str | None) -> None:
    assert normalize_email(value) == expected


def test_email_in_nfc() -> None:
    decomposed = "zoe\u0308@example.com"

    assert normalize("em", decomposed) == "zoë@example.com"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("f", "f"),
        ("woman", "f"),
        ("MALE", "m"),
        ("Man", "m"),
        ("Non Binary", "n"),
        ("nonbinary", "n"),
        ("other", None),
        ("x", None),
    ],
)
def test_gender(value: str, expected: str | None) -> None:
    assert normalize("ge", value) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("1996/03/14", "19960314"),
        ("1996-3-4", "19960304"),
        ("1996-03-14T00:00:00Z", "19960314"),
        ("2000-02-29", "20000229"),
        ("1900-02-29", None),
        ("14/03/1996", None),
        ("19961314", None),
        ("0001-01-01", None),
    ],
)
def test_birth_date(value: str, expected: str | None) -> None:
    assert normalize("db", value) == expected


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        ("fn", "Zoe\u0308", "zoë"),
        ("ln", "  O'Brien ", "o'brien"),
        ("fn", "Mary   Ann", "mary ann"),
        ("ln", "123", None),
        ("ct", "Saint-Étienne", "saintétienne"),
        ("ct", "São Paulo", "sãopaulo"),
        ("ct", "東京", "東京"),
        ("ct", "...", None),
    ],
)
def test_names_and_cities(field: str, value: str, expected: str | None) -> None:
    assert normalize(field, value) == expected


@pytest.mark.parametrize(
    ("value", "country", "expected"),
    [
        ("941051234", "US", "94105"),
        ("94105 1234", "USA", "94105"),
        ("2134", "US", "02134"),
        ("SW1A 1AA", "US", None),
        ("K1A 0B6", "CA", "k1a0b6"),
        ("1234 AB", "NL", "1234ab"),
        ("100-0001", "JP", "1000001"),
        ("94105-1234", None, "94105"),
        ("SW1A 1AA", None, "sw1a1aa"),
    ],
)
def test_zip(value: str, country: str | None, expected: str | None) -> None:
    assert normalize("zp", value, country) == expected


def test_zip_uses_default_region() -> None:
    assert normalize("zp", "94105 1234", None, default_region="US") == "94105"


def test_external_id_keeps_case_and_maids_are_lower_cased() -> None:
    maid = "6D92078A-8246-4BA4-AE5B-76104861E7DC"

    assert normalize("external_id", "  Cust-00042 ") == "Cust-00042"
    assert normalize("hashed_maids", maid) == maid.lower()
    assert hash_field("hashed_maids", maid) == sha256_hex(maid.lower())
