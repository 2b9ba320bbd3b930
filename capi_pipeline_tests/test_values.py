"""Money, time and count parsers against the shapes real pixel data holds."""

from __future__ import annotations

import os
import time
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal

import pytest

from capi_pipeline.lib.values import parse_decimal, parse_int, parse_money, parse_timestamp


@pytest.mark.parametrize(
    ("value", "hint", "amount", "currency"),
    [
        ("$1,299.00", None, "1299.00", "USD"),
        ("1.299,00 EUR", None, "1299.00", "EUR"),
        ("EUR 1.299,00", None, "1299.00", "EUR"),
        ("1 299,00 €", None, "1299.00", "EUR"),
        ("1\u00a0299,00\u00a0€", None, "1299.00", "EUR"),
        ("€12", None, "12.00", "EUR"),
        ("12.5 usd", None, "12.50", "USD"),
        ("£9.99", None, "9.99", "GBP"),
        ("₹1,29,999.00", None, "129999.00", "INR"),
        ("¥1,500", None, "1500.00", "JPY"),
        ("¥1,500", "CNY", "1500.00", "CNY"),
        ("$12.00", "CAD", "12.00", "CAD"),
        ("C$12.00", "USD", "12.00", "CAD"),
        ("12.00 EUR", "USD", "12.00", "EUR"),
        ("1'299.50 CHF", None, "1299.50", "CHF"),
        ("12,- €", None, "12.00", "EUR"),
        ({"amount": 749.95, "currencyCode": "INR"}, None, "749.95", "INR"),
        ({"amount": "3256.56", "currency_code": "INR"}, "USD", "3256.56", "INR"),
        ({"shop_money": {"amount": "3.50", "currency_code": "USD"}}, None, "3.50", "USD"),
        ({"amount": 10}, "eur", "10.00", "EUR"),
        (749.95, None, "749.95", None),
        (48, "usd", "48.00", "USD"),
        (0.1 + 0.2, None, "0.30", None),
        (Decimal("19.999"), None, "20.00", None),
        ("3256.56", "INR", "3256.56", "INR"),
        ("1,299", None, "1299.00", None),
        ("1.299,00", None, "1299.00", None),
        ("12,50", None, "12.50", None),
        ("1.5", None, "1.50", None),
        ("1.299", None, "1.30", None),
        ("€1.299", None, "1299.00", "EUR"),
        ("1.234.567,89", None, "1234567.89", None),
        ("-12.50", "USD", "-12.50", "USD"),
        ("-$12.00", None, "-12.00", "USD"),
        ("(12.00)", "EUR", "-12.00", "EUR"),
        ("USD -12", None, "-12.00", "USD"),
        (-5, None, "-5.00", None),
        ("12 XXX", "EUR", "12.00", "EUR"),
        ("12", "XXX", "12.00", None),
        ("12", "ABC", "12.00", None),
    ],
)
def test_parse_money(value: object, hint: str | None, amount: str, currency: str | None) -> None:
    assert parse_money(value, hint) == (Decimal(amount), currency)


@pytest.mark.parametrize(
    ("value", "hint", "currency"),
    [
        ("undefined", "usd", "USD"),
        ("", None, None),
        (None, "EUR", "EUR"),
        (True, "USD", "USD"),
        (False, None, None),
        ("abc", None, None),
        ("USD", None, "USD"),
        ("$", None, "USD"),
        ("1,2,3", None, None),
        ("12 apples", "GBP", "GBP"),
        ({}, None, None),
        ({"amount": None, "currencyCode": "INR"}, None, "INR"),
        (float("nan"), None, None),
        (float("inf"), None, None),
        ([1, 2], None, None),
    ],
)
def test_parse_money_garbage(value: object, hint: str | None, currency: str | None) -> None:
    assert parse_money(value, hint) == (None, currency)


def test_parse_money_amounts_are_quantized_to_cents() -> None:
    amount, _ = parse_money("12")

    assert amount is not None and amount.as_tuple().exponent == -2


def _utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


@pytest.mark.parametrize(
    ("value", "expected", "flags"),
    [
        ("2024-01-12T05:35:25.263Z", _utc(2024, 1, 12, 5, 35, 25, 263000), set()),
        ("2024-01-12T05:35:25Z", _utc(2024, 1, 12, 5, 35, 25), set()),
        ("2024-01-12T02:42:45-05:00", _utc(2024, 1, 12, 7, 42, 45), set()),
        ("2024-01-12T11:05:25.5+05:30", _utc(2024, 1, 12, 5, 35, 25, 500000), set()),
        ("2024-01-12T05:35:25.123456789Z", _utc(2024, 1, 12, 5, 35, 25, 123456), set()),
        ("2024-01-12 05:35:25.263+00:00", _utc(2024, 1, 12, 5, 35, 25, 263000), set()),
        ("2019-10-01 00:00:00 UTC", _utc(2019, 10, 1), set()),
        ("Fri, 12 Jan 2024 05:35:25 GMT", _utc(2024, 1, 12, 5, 35, 25), set()),
        ("2024-01-12 05:35:25", _utc(2024, 1, 12, 5, 35, 25), {"naive_time"}),
        ("2024-01-12", _utc(2024, 1, 12), {"naive_time", "date_only"}),
        (1704994525, _utc(2024, 1, 11, 17, 35, 25), {"epoch_s"}),
        ("1704994525", _utc(2024, 1, 11, 17, 35, 25), {"epoch_s"}),
        (1704994525.263, _utc(2024, 1, 11, 17, 35, 25, 263000), {"epoch_s"}),
        (1704994525263, _utc(2024, 1, 11, 17, 35, 25, 263000), {"epoch_ms"}),
        ("1704994525263", _utc(2024, 1, 11, 17, 35, 25, 263000), {"epoch_ms"}),
        (1704994525263123, _utc(2024, 1, 11, 17, 35, 25, 263123), {"epoch_us"}),
        (1704994525263123456, _utc(2024, 1, 11, 17, 35, 25, 263123), {"epoch_ns"}),
        (
            datetime(2024, 1, 12, 2, 42, 45, tzinfo=timezone(timedelta(hours=-5))),
            _utc(2024, 1, 12, 7, 42, 45),
            set(),
        ),
        (datetime(2024, 1, 12, 5, 35, 25), _utc(2024, 1, 12, 5, 35, 25), {"naive_time"}),
    ],
)
def test_parse_timestamp(value: object, expected: datetime, flags: set[str]) -> None:
    moment, got_flags = parse_timestamp(value)

    assert moment == expected
    assert moment is not None and moment.utcoffset() == timedelta(0)
    assert got_flags == frozenset(flags)


@pytest.mark.parametrize(
    "value",
    [
        None,
        "",
        "undefined",
        "null",
        "garbage",
        True,
        0,
        "0",
        -1704994525,
        float("nan"),
        "1989-12-31T23:59:59Z",
        "2101-01-01T00:00:00Z",
        "2101-01-01T00:00:00+01:00x",
        "14/03/2024 10:00:00",
        4133980800,
        {"timestamp": 1704994525},
    ],
)
def test_parse_timestamp_garbage(value: object) -> None:
    assert parse_timestamp(value) == (None, frozenset({"bad_time"}))


def test_parse_timestamp_window_edges() -> None:
    assert parse_timestamp("1990-01-01T00:00:00Z")[0] == _utc(1990, 1, 1)
    assert parse_timestamp("2100-12-31T23:59:59Z")[0] == _utc(2100, 12, 31, 23, 59, 59)
    # 2101-01-01T00:00:00Z as epoch seconds, the first moment outside the window.
    assert parse_timestamp(4133980800) == (None, frozenset({"bad_time"}))
    assert parse_timestamp(4133980799)[0] == _utc(2100, 12, 31, 23, 59, 59)


@pytest.fixture(params=["America/New_York", "Asia/Kolkata", "Pacific/Kiritimati", "UTC"])
def machine_zone(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("TZ", request.param)
    time.tzset()
    yield request.param
    monkeypatch.undo()
    time.tzset()


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2024-01-12 05:35:25", _utc(2024, 1, 12, 5, 35, 25)),
        ("2024-01-12T02:42:45-05:00", _utc(2024, 1, 12, 7, 42, 45)),
        (1704994525263, _utc(2024, 1, 11, 17, 35, 25, 263000)),
        ("1704994525", _utc(2024, 1, 11, 17, 35, 25)),
        (datetime(2024, 1, 12, 5, 35, 25), _utc(2024, 1, 12, 5, 35, 25)),
    ],
)
def test_parse_timestamp_ignores_machine_time_zone(
    machine_zone: str, value: object, expected: datetime
) -> None:
    assert os.environ["TZ"] == machine_zone
    moment, _ = parse_timestamp(value)

    assert moment == expected
    assert moment is not None and moment.tzinfo is UTC


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2", 2),
        (2, 2),
        (2.0, 2),
        (" 3 ", 3),
        ("3.0", 3),
        ("+4", 4),
        ("-1", -1),
        (Decimal("5"), 5),
        ("2.5", None),
        (2.5, None),
        ("1,000", None),
        ("two", None),
        ("", None),
        ("undefined", None),
        (None, None),
        (True, None),
        (False, None),
        (float("inf"), None),
    ],
)
def test_parse_int(value: object, expected: int | None) -> None:
    result = parse_int(value)

    assert result == expected
    assert result is None or type(result) is int


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2", Decimal("2")),
        (" 1.25 ", Decimal("1.25")),
        (0.1, Decimal("0.1")),
        (7, Decimal("7")),
        ("1,299", Decimal("1299")),
        ("12,50", Decimal("12.50")),
        ("-0.5", Decimal("-0.5")),
        ("$3", None),
        ("abc", None),
        (True, None),
        (None, None),
        (float("nan"), None),
    ],
)
def test_parse_decimal(value: object, expected: Decimal | None) -> None:
    result = parse_decimal(value)

    assert result == expected
    if expected is not None:
        assert str(result) == str(expected)
