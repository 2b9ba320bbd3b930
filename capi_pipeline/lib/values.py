"""Parsers for the money, time and count values real pixel data holds.

Pixels send JSON numbers, webhooks send strings, themes send formatted display text
("$1,299.00", "1.299,00 €"), and timestamps arrive as ISO text with any offset or as epoch
numbers in four units (``../shared/data/INPUT_FORMATS.md`` section 4). Each parser here turns
one raw value into a typed value or ``None``; none of them raises on bad input, because one
malformed field must not stop a run.
"""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime, timedelta
from decimal import ROUND_FLOOR, ROUND_HALF_UP, Decimal, InvalidOperation
from email.utils import parsedate_to_datetime

import pycountry

from capi_pipeline.enrich.normalize import clean

# --- money -----------------------------------------------------------------------------------

_CENTS = Decimal("0.01")

# Longest first, so "US$" is found before "$".
_SYMBOLS: tuple[tuple[str, str], ...] = (
    ("US$", "USD"),
    ("CA$", "CAD"),
    ("AU$", "AUD"),
    ("NZ$", "NZD"),
    ("HK$", "HKD"),
    ("MX$", "MXN"),
    ("C$", "CAD"),
    ("A$", "AUD"),
    ("S$", "SGD"),
    ("R$", "BRL"),
    ("zł", "PLN"),
    ("$", "USD"),
    ("€", "EUR"),
    ("£", "GBP"),
    ("₹", "INR"),
    ("¥", "JPY"),
    ("￥", "JPY"),
    ("₩", "KRW"),
    ("₽", "RUB"),
    ("₺", "TRY"),
    ("₪", "ILS"),
    ("₫", "VND"),
    ("฿", "THB"),
    ("₱", "PHP"),
)

# A bare "$" or "¥" is read as USD or JPY unless the hint names another currency written
# with the same sign: a Canadian shop's "$12.00" is 12 CAD.
_SHARED_SYMBOLS: dict[str, frozenset[str]] = {
    "$": frozenset({"ARS", "AUD", "CAD", "CLP", "COP", "HKD", "MXN", "NZD", "SGD", "TWD", "UYU"}),
    "¥": frozenset({"CNY"}),
    "￥": frozenset({"CNY"}),
}

# ISO 4217 lists these, but they mean "no currency" and "testing"; the reference capture has
# "XXX" as a placeholder in a discount.
_NOT_MONEY = frozenset({"XXX", "XTS"})

# Currencies with three minor digits, where "12.345" really is twelve and a bit.
_THREE_DECIMALS = frozenset({"BHD", "IQD", "JOD", "KWD", "LYD", "OMR", "TND"})

_CODE_AT_START = re.compile(r"([A-Za-z]{3})(?![A-Za-z])\s*(.*)", re.DOTALL)
_CODE_AT_END = re.compile(r"(.*?)\s*(?<![A-Za-z])([A-Za-z]{3})", re.DOTALL)
_GROUP_SPACES = re.compile(r"[\s\u00a0\u202f\u2009'’]")
_NUMBER_CHARS = re.compile(r"[0-9.,]*[0-9][0-9.,]*|[.,][0-9]+")


def _is_iso_4217(text: str | None) -> bool:
    return (
        text is not None
        and len(text) == 3
        and text.isalpha()
        and pycountry.currencies.get(alpha_3=text.upper()) is not None
    )


def _currency_code(text: str | None) -> str | None:
    """Return ``text`` as an upper-case ISO 4217 code if it is one that denotes money."""
    if not _is_iso_4217(text) or text.upper() in _NOT_MONEY:
        return None
    return text.upper()


def _hint_currency(hint: object) -> str | None:
    text = clean(hint)
    if text is None:
        return None
    for symbol, code in _SYMBOLS:
        if text == symbol:
            return code
    return _currency_code(text)


def _split_currency(text: str, hint: str | None) -> tuple[str, str | None]:
    """Remove a currency code or symbol from ``text``; return the rest and the currency."""
    # "XXX" is removed like any code but names no currency, so the hint still applies.
    code = None
    match = _CODE_AT_START.fullmatch(text)
    if match and _is_iso_4217(match.group(1)):
        code, text = _currency_code(match.group(1)), match.group(2)
    else:
        match = _CODE_AT_END.fullmatch(text)
        if match and _is_iso_4217(match.group(2)):
            text, code = match.group(1), _currency_code(match.group(2))

    for symbol, symbol_code in _SYMBOLS:
        if symbol in text:
            text = text.replace(symbol, "", 1)
            if hint in _SHARED_SYMBOLS.get(symbol, ()):
                symbol_code = hint
            # An explicit code is more specific than a sign.
            code = code or symbol_code
            break
    return text.strip(), code


def _split_sign(text: str) -> tuple[bool, str]:
    """Return (negative, unsigned text) for "-12", "12-", "(12)" and a Unicode minus."""
    text = text.replace("\u2212", "-").strip()
    for whole in (".-", ",-", ".\u2013", ",\u2013"):
        if text.endswith(whole):
            # "12,-" and "12.–" are how German and Swiss prices say "no cents", not a refund.
            text = text[: -len(whole)].rstrip()
            break
    if text.startswith("(") and text.endswith(")"):
        return True, text[1:-1].strip()
    if text.startswith("-") or text.endswith("-"):
        return True, text.strip("-").strip()
    return False, text.lstrip("+").strip()


def _grouped(integer: str, separator: str) -> str | None:
    """Join an integer written with thousands separators, or ``None`` if badly grouped.

    The last group has three digits; earlier ones two or three, so Indian lakh grouping
    ("1,29,999") passes while "1,2,3" does not.
    """
    groups = integer.split(separator)
    first, middle, last = groups[0], groups[1:-1], groups[-1]
    if not 1 <= len(first) <= 3 or len(last) != 3:
        return None
    if any(len(group) not in (2, 3) for group in middle):
        return None
    return "".join(groups)


def _unsigned_decimal(text: str, decorated: bool, currency: str | None) -> Decimal | None:
    """Read an unsigned number whose decimal and thousands separators are unknown.

    With both "," and "." present, the later one is the decimal mark. A lone separator
    repeated is a thousands mark. A single "," before exactly three digits is a thousands
    mark ("1,299"); a single "." is a decimal mark ("1.5"), except in display text with a
    currency sign before exactly three digits ("€1.299"), because prices shown to people
    carry two decimals unless the currency has three.
    """
    text = _GROUP_SPACES.sub("", text)
    if not _NUMBER_CHARS.fullmatch(text):
        return None
    commas, dots = text.count(","), text.count(".")

    if commas and dots:
        decimal_mark = "," if text.rfind(",") > text.rfind(".") else "."
        thousands = "." if decimal_mark == "," else ","
        if text.count(decimal_mark) > 1:
            return None
        integer, fraction = text.split(decimal_mark)
        integer = _grouped(integer, thousands)
    elif commas or dots:
        mark = "," if commas else "."
        if text.count(mark) > 1:
            integer, fraction = _grouped(text, mark), ""
        else:
            integer, fraction = text.split(mark)
            looks_grouped = len(fraction) == 3 and 1 <= len(integer) <= 3 and integer != "0"
            if mark == "." and (not decorated or currency in _THREE_DECIMALS):
                looks_grouped = False
            if looks_grouped:
                integer, fraction = integer + fraction, ""
    else:
        integer, fraction = text, ""

    if integer is None or not (integer + fraction).isdigit():
        return None
    return Decimal(f"{integer or '0'}.{fraction}" if fraction else integer)


def _to_decimal(value: object) -> Decimal | None:
    """Return a finite Decimal from a JSON number, or ``None``."""
    if isinstance(value, bool):
        return None
    if isinstance(value, Decimal):
        return value if value.is_finite() else None
    if isinstance(value, int):
        return Decimal(value)
    if isinstance(value, float):
        # str() gives the shortest repr, so 749.95 stays 749.95 and not its binary expansion.
        return Decimal(str(value)) if math.isfinite(value) else None
    return None


def _quantize(amount: Decimal | None) -> Decimal | None:
    if amount is None:
        return None
    try:
        return amount.quantize(_CENTS, rounding=ROUND_HALF_UP)
    except InvalidOperation:
        return None


def parse_money(
    value: object, currency_hint: str | None = None
) -> tuple[Decimal | None, str | None]:
    """Parse a price or total into an amount and a currency.

    Accepts JSON numbers, numeric strings, display text ("$1,299.00", "1.299,00 EUR",
    "EUR 1.299,00", "1 299,00 €", "€12", "12.5 usd", "(12.00)" for a refund) and Shopify
    MoneyV2 objects (``{"amount": 749.95, "currencyCode": "INR"}``, also the webhooks'
    ``currency_code`` and ``price_set.shop_money``). The currency comes from the value's own
    code or sign, then from ``currency_hint``; only real ISO 4217 codes are returned, so
    "XXX" and unknown codes give ``None``.

    Args:
        value: The raw amount.
        currency_hint: The currency known from elsewhere in the event (code or sign).

    Returns:
        ``(amount, currency)``: the amount rounded half-up to two places (negative for refunds)
        or ``None`` for placeholders, booleans and garbage; the upper-case currency or
        ``None``.
    """
    hint = _hint_currency(currency_hint)

    if isinstance(value, dict):
        if "amount" not in value and isinstance(value.get("shop_money"), dict):
            # Webhook price sets: the shop's currency is the one reports are kept in.
            return parse_money(value["shop_money"], currency_hint)
        own = value.get("currencyCode") or value.get("currency_code") or value.get("currency")
        return parse_money(value.get("amount"), _hint_currency(own) or hint)

    number = _to_decimal(value)
    if number is not None or isinstance(value, bool | int | float | Decimal):
        return _quantize(number), hint

    text = clean(value)
    if text is None:
        return None, hint
    rest, own = _split_currency(text, hint)
    negative, digits = _split_sign(rest)
    if own is None:
        # The sign can stand before the code as well as after it: "-USD 12" and "USD -12".
        rest, own = _split_currency(digits, hint)
        digits = rest if own is not None else digits
    currency = own or hint
    amount = _unsigned_decimal(digits, decorated=own is not None, currency=currency)
    if amount is not None and negative:
        amount = -amount
    return _quantize(amount), currency


def parse_decimal(value: object) -> Decimal | None:
    """Parse a plain number without rounding it.

    Accepts JSON numbers and numeric strings, including thousands separators and a decimal
    comma as :func:`parse_money` reads them ("1,299" is 1299, "12,50" is 12.50); text with a
    currency sign or code is refused, because this is for quantities and rates, not prices.

    Args:
        value: The raw number.

    Returns:
        A finite Decimal, or ``None`` for booleans, placeholders and garbage.
    """
    number = _to_decimal(value)
    if number is not None or isinstance(value, bool | int | float | Decimal):
        return number
    text = clean(value)
    if text is None:
        return None
    negative, digits = _split_sign(text)
    amount = _unsigned_decimal(digits, decorated=False, currency=None)
    if amount is None:
        return None
    return -amount if negative else amount


_INT_TEXT = re.compile(r"[+-]?\d+(?:\.0*)?")


def parse_int(value: object) -> int | None:
    """Parse a count such as a quantity.

    Args:
        value: ``2``, ``2.0``, ``"2"``, ``" 3 "`` or ``"3.0"``.

    Returns:
        The integer, or ``None`` for booleans, fractions ("2.5"), placeholders and garbage.
    """
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float | Decimal):
        number = _to_decimal(value)
    else:
        text = clean(value)
        if text is None or not _INT_TEXT.fullmatch(text):
            return None
        number = Decimal(text)
    if number is None or number != number.to_integral_value():
        return None
    return int(number)


# --- time ------------------------------------------------------------------------------------

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_EARLIEST = datetime(1990, 1, 1, tzinfo=UTC)
_LATEST = datetime(2101, 1, 1, tzinfo=UTC)
_EARLIEST_S = Decimal(int(_EARLIEST.timestamp()))
_LATEST_S = Decimal(int(_LATEST.timestamp()))
_BAD = frozenset({"bad_time"})

# Seconds for 1990..2100 run from 6.3e8 to 4.1e9; each later unit is a thousand times more,
# so these cut-offs leave a wide gap on both sides of every unit's range.
_EPOCH_UNITS: tuple[tuple[Decimal, int, str], ...] = (
    (Decimal("1e11"), 0, "epoch_s"),
    (Decimal("1e14"), 3, "epoch_ms"),
    (Decimal("1e17"), 6, "epoch_us"),
    (Decimal("Infinity"), 9, "epoch_ns"),
)

_EPOCH_TEXT = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)")
_DATE_ONLY = re.compile(r"\d{4}-?\d{2}-?\d{2}")
_UTC_SUFFIX = re.compile(r"\s*(?:UTC|GMT|Z)$")
_SPACED_OFFSET = re.compile(r"\s+([+-]\d{2}(?::?\d{2})?)$")


def _in_window(moment: datetime) -> bool:
    return _EARLIEST <= moment < _LATEST


def _from_epoch(number: Decimal) -> tuple[datetime | None, frozenset[str]]:
    magnitude = abs(number)
    digits, flag = next((d, f) for limit, d, f in _EPOCH_UNITS if magnitude < limit)
    seconds = number.scaleb(-digits)
    if not _EARLIEST_S <= seconds < _LATEST_S:
        return None, _BAD
    micros = int(seconds.scaleb(6).to_integral_value(rounding=ROUND_FLOOR))
    return _EPOCH + timedelta(microseconds=micros), frozenset({flag})


def _from_datetime(
    moment: datetime, flags: frozenset[str] = frozenset()
) -> tuple[datetime | None, frozenset[str]]:
    if moment.tzinfo is None or moment.utcoffset() is None:
        # Naive means "no offset given", taken as UTC; never the machine's local zone.
        moment, flags = moment.replace(tzinfo=UTC), flags | {"naive_time"}
    try:
        moment = moment.astimezone(UTC)
    except (OverflowError, ValueError):
        return None, _BAD
    return (moment, flags) if _in_window(moment) else (None, _BAD)


def _from_text(text: str) -> tuple[datetime | None, frozenset[str]]:
    if _EPOCH_TEXT.fullmatch(text):
        return _from_epoch(Decimal(text))

    iso = _SPACED_OFFSET.sub(r"\1", _UTC_SUFFIX.sub("+00:00", text.upper()))
    try:
        moment = datetime.fromisoformat(iso)
    except ValueError:
        moment = None
    if moment is not None:
        flags = frozenset({"date_only"}) if _DATE_ONLY.fullmatch(text) else frozenset()
        return _from_datetime(moment, flags)

    try:
        # HTTP and email dates ("Fri, 12 Jan 2024 05:35:25 GMT") show up in headers.
        moment = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None, _BAD
    return _from_datetime(moment)


def parse_timestamp(value: object) -> tuple[datetime | None, frozenset[str]]:
    """Parse an event time into an aware UTC datetime.

    Accepts ISO 8601 with ``Z`` or any offset, with or without fractional seconds (beyond
    microseconds they are cut), a space instead of ``T``, a trailing ``UTC``; RFC 2822 dates;
    and epoch numbers or numeric strings in seconds, milliseconds, microseconds or
    nanoseconds, the unit chosen by magnitude. The result never depends on the machine's
    time zone.

    Args:
        value: The raw timestamp, or a ``datetime``.

    Returns:
        ``(moment, flags)``. Flags: ``naive_time`` when no offset was given and UTC was
        assumed, ``date_only`` when there was no time of day either, ``epoch_s`` /
        ``epoch_ms`` / ``epoch_us`` / ``epoch_ns`` for the unit read, and ``bad_time`` (with
        ``None``) for garbage, placeholders, booleans and years outside 1990..2100.
    """
    if isinstance(value, bool):
        return None, _BAD
    if isinstance(value, datetime):
        return _from_datetime(value)
    if isinstance(value, int | float | Decimal):
        number = _to_decimal(value)
        return _from_epoch(number) if number is not None else (None, _BAD)
    text = clean(value)
    if text is None:
        return None, _BAD
    return _from_text(text)
