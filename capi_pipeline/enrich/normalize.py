"""The normalization table for every ``user_data`` field we hash for Pinterest.

Pinterest matches on the SHA-256 of a normalized value, so two systems that normalize the same
email differently never match. Every place in the pipeline that hashes a field therefore goes
through :func:`normalize` / :func:`hash_field`, and each field's rule lives in exactly one place:
:data:`RULES`. Pinterest's written rules (``../shared/pinterest/capi.md`` sections 2.3 and 3)
win over its own contradictory examples; the golden cases are in
``../shared/cases/normalization.json``.

A rule returns ``None`` when the value must be left out of ``user_data``: Pinterest should
never receive the hash of a placeholder, an empty string or a value we could not make sense of.

The enrich stage applies the rules through :func:`normalize_distinct`, once per distinct value
of a day (and country, for the rules marked ``uses_country``), and hashes the texts in DuckDB;
:func:`hash_field` is the same rule and hash for one value.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date
from functools import lru_cache

import phonenumbers
import pycountry

PLACEHOLDERS: frozenset[str] = frozenset(
    {
        "",
        "-",
        "--",
        "?",
        "undefined",
        "null",
        "(null)",
        "<null>",
        "nil",
        "none",
        "nan",
        "n/a",
        "#n/a",
        "unknown",
        "[object object]",
    }
)
"""Lower-cased strings that websites send in place of a missing value.

"na" is deliberately absent: it is a real surname.
"""

HASHED_FIELDS: tuple[str, ...] = (
    "em",
    "ph",
    "ge",
    "db",
    "ln",
    "fn",
    "ct",
    "st",
    "zp",
    "country",
    "external_id",
    "hashed_maids",
)

# str.strip() leaves these alone, yet copy-pasted form input often carries them.
INVISIBLE_EDGES = "\ufeff\u200b\u200c\u200d\u2060"

_SHA256_RE = re.compile(r"[0-9a-fA-F]{64}")


def clean(value: object) -> str | None:
    """Return a raw field as stripped text, or ``None`` when it carries no value.

    Booleans and containers (dicts, lists, ...) give ``None``: their ``str()`` is never a
    meaningful identifier, and hashing ``"True"`` or ``"{}"`` would only add noise. Bytes are
    decoded as UTF-8 with replacement characters, because bad bytes must not crash a run.

    Args:
        value: Anything read from an event.

    Returns:
        The stripped text, or ``None`` for ``None``, empty text and :data:`PLACEHOLDERS`.
    """
    if value is None or isinstance(value, bool | dict | list | tuple | set | frozenset):
        return None
    if isinstance(value, bytes | bytearray):
        text = bytes(value).decode("utf-8", errors="replace")
    else:
        text = str(value)
    text = text.strip().strip(INVISIBLE_EDGES).strip()
    if text.lower() in PLACEHOLDERS:
        return None
    return text


def is_sha256(value: str) -> bool:
    """Tell whether ``value`` is a SHA-256 hex digest (64 hex characters, either case).

    Args:
        value: Text to test.

    Returns:
        True for exactly 64 hex characters.
    """
    return isinstance(value, str) and _SHA256_RE.fullmatch(value) is not None


def sha256_hex(text: str) -> str:
    """Return the lower-case hex SHA-256 of ``text`` encoded as UTF-8, as Pinterest asks.

    Args:
        text: The normalized value.

    Returns:
        64 lower-case hex characters.
    """
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _fold(text: str) -> str:
    """Reduce a name to a lookup key: no accents, no case, letters and digits only.

    Used only to look names up (countries, states), never for a value that gets hashed, so
    "Québec", "quebec" and "QUEBEC." all find the same province.
    """
    decomposed = unicodedata.normalize("NFKD", text)
    return "".join(ch for ch in decomposed if ch.isalnum() and ch.isascii()).lower()


# --- countries -------------------------------------------------------------------------------

# Names people type that ISO 3166 does not list. "UK" is reserved by ISO but not assigned.
_COUNTRY_ALIASES: dict[str, str] = {
    "uk": "GB",
    "greatbritain": "GB",
    "britain": "GB",
    "england": "GB",
    "scotland": "GB",
    "wales": "GB",
    "northernireland": "GB",
    "us": "US",
    "usa": "US",
    "america": "US",
    "unitedstatesofamerica": "US",
    "russia": "RU",
    "korea": "KR",
    "southkorea": "KR",
    "northkorea": "KP",
    "turkey": "TR",
    "macedonia": "MK",
    "ivorycoast": "CI",
    "holland": "NL",
    "thenetherlands": "NL",
    "uae": "AE",
    "czechia": "CZ",
    "vatican": "VA",
    "burma": "MM",
    "capeverde": "CV",
    "easttimor": "TL",
    "swaziland": "SZ",
    "palestine": "PS",
    "deutschland": "DE",
}


def _build_country_names() -> dict[str, str]:
    names: dict[str, str] = {}
    for country in pycountry.countries:
        for attr in ("name", "official_name", "common_name"):
            label = getattr(country, attr, None)
            if label:
                names.setdefault(_fold(label), country.alpha_2)
    names.update(_COUNTRY_ALIASES)
    return names


_COUNTRY_NAMES = _build_country_names()


@lru_cache(maxsize=4096)
def _country_code_text(text: str) -> str | None:
    key = _fold(text)
    if not key or key.isdigit():
        # ISO numeric codes are refused: a stray zip or id in a country field would map to
        # some random country.
        return None
    if key in _COUNTRY_NAMES:
        return _COUNTRY_NAMES[key]
    if len(key) == 2:
        found = pycountry.countries.get(alpha_2=key.upper())
    elif len(key) == 3:
        found = pycountry.countries.get(alpha_3=key.upper())
    else:
        found = None
    return found.alpha_2 if found is not None else None


def country_code(value: object) -> str | None:
    """Return the ISO 3166-1 alpha-2 code (upper case) for a code, alpha-3 code or name.

    Accepts what ISO and pycountry know (``"GB"``, ``"gbr"``, ``"United Kingdom"``,
    ``"Cote d'Ivoire"`` without its accent) plus common aliases (``"UK"``, ``"USA"``,
    ``"U.S."``, ``"Russia"``). Numeric ISO codes are refused.

    Args:
        value: Raw country text.

    Returns:
        Two upper-case letters, or ``None`` when the country is unknown.
    """
    text = clean(value)
    return _country_code_text(text) if text is not None else None


# --- phone -----------------------------------------------------------------------------------


@lru_cache(maxsize=65536)
def _phone_e164_text(text: str, region: str | None) -> str | None:
    if region is None and text.startswith("00"):
        # Outside North America "00" is the international prefix; without a region to parse
        # against, reading it as "+" is the only way to recover the country code.
        text = "+" + text[2:]
    try:
        number = phonenumbers.parse(text, region)
    except phonenumbers.NumberParseException:
        return None
    if not phonenumbers.is_valid_number(number):
        return None
    national = str(number.national_number)
    if len(set(national)) == 1:
        # Repeated digits are what forms get when a visitor types anything to pass a check.
        return None
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


def phone_e164(value: object, region: str | None) -> str | None:
    """Return a phone number in E.164 form (``"+16505551212"``), or ``None``.

    National numbers need ``region`` to know their country code; a number written with ``+``
    (or, without a region, a leading ``00``) carries its own. Only numbers libphonenumber
    considers valid are kept, so junk such as ``"0000000000"`` and too-short numbers drop out.
    Parsing is the slow part of normalization, so results are cached.

    Args:
        value: Raw phone text.
        region: The country to read national numbers in: alpha-2, alpha-3 or a name.

    Returns:
        ``"+"`` followed by the country code and national number, or ``None``.
    """
    text = clean(value)
    if text is None:
        return None
    return _phone_e164_text(text, country_code(region) if region is not None else None)


# --- states ----------------------------------------------------------------------------------

# Abbreviations still in use that ISO 3166-2 dropped or never had.
_STATE_ALIASES: dict[str, dict[str, str]] = {
    "US": {"washingtondc": "dc", "dc": "dc"},
    "CA": {"pq": "qc", "nf": "nl", "newfoundland": "nl", "yukonterritory": "yt"},
}


def _build_states(country: str) -> tuple[frozenset[str], dict[str, str]]:
    codes: set[str] = set()
    names: dict[str, str] = {}
    for sub in pycountry.subdivisions.get(country_code=country) or ():
        code = sub.code.split("-", 1)[1].lower()
        codes.add(code)
        names[_fold(sub.name)] = code
    names.update(_STATE_ALIASES.get(country, {}))
    return frozenset(codes), names


_STATES: dict[str, tuple[frozenset[str], dict[str, str]]] = {
    country: _build_states(country) for country in ("US", "CA")
}

_SHORT_CODE_RE = re.compile(r"[0-9a-z]{1,3}")
_ISO_SUBDIVISION_RE = re.compile(r"[A-Za-z]{2}-[0-9A-Za-z]{1,3}")


def _north_american_state(key: str, country: str) -> str | None:
    codes, names = _STATES[country]
    if key.startswith(country.lower()) and key[2:] in codes and len(key) == 4:
        # ISO 3166-2 form such as "US-CA", folded to "usca".
        return key[2:]
    if key in codes:
        return key
    return names.get(key)


def state_code(value: object, country: str | None) -> str | None:
    """Return the lower-case state or province code Pinterest hashes as ``st``.

    For the US and Canada, codes (``"NY"``, ``"US-NY"``) and names (``"California"``,
    ``"Québec"``) become the two-letter postal code, and anything else gives ``None``. When the
    country is unknown, US then Canadian names are tried, because a full state name is
    unambiguous and most of our shops sell there. For every other country there is no list to
    check against: a short alphanumeric code (one to three characters, the length of ISO 3166-2
    subdivision codes, an ISO ``"DE-BY"`` prefix removed) is lower-cased and kept, and names
    give ``None`` rather than a guess.

    Args:
        value: Raw state text.
        country: The event's country: alpha-2, alpha-3 or a name, or ``None``.

    Returns:
        The lower-case code, or ``None``.
    """
    text = clean(value)
    if text is None:
        return None
    key = _fold(text)
    if not key:
        return None
    alpha2 = country_code(country) if country is not None else None
    if alpha2 is None and _ISO_SUBDIVISION_RE.fullmatch(text):
        # An ISO 3166-2 code names its own country.
        alpha2 = country_code(text[:2])

    if alpha2 in _STATES:
        return _north_american_state(key, alpha2)
    if alpha2 is None:
        for _, names in _STATES.values():
            if len(key) > 3 and key in names:
                return names[key]

    short = text.lower()
    if alpha2 is not None and short.startswith(alpha2.lower() + "-"):
        short = short[3:]
    short = short.replace(".", "").strip()
    return short if _SHORT_CODE_RE.fullmatch(short) else None


# --- field rules -----------------------------------------------------------------------------

_EMAIL_LOCAL_FORBIDDEN = set('<>()[]\\,;:"@')
_DOMAIN_LABEL_RE = re.compile(r"[^\W_](?:[\w-]*[^\W_])?")


def normalize_email(value: object) -> str | None:
    """Return an email address trimmed, without whitespace, lower-cased and in NFC form.

    Plus tags and Gmail dots are kept: Pinterest asks only for lower case, and stripping them
    would merge addresses their owners keep apart. A ``mailto:`` prefix, angle brackets around
    the address and a trailing dot after the domain are removed because they are transport
    noise, not part of the address.

    Args:
        value: Raw email text.

    Returns:
        The normalized address, or ``None`` when the text is not shaped like one
        (one ``@``, a non-empty local part, a domain with a dot).
    """
    text = clean(value)
    if text is None:
        return None
    text = unicodedata.normalize("NFC", "".join(text.split())).lower()
    if "<" in text and text.endswith(">"):
        text = text[text.rindex("<") + 1 : -1]
    text = text.removeprefix("mailto:").rstrip(".")

    local, at, domain = text.partition("@")
    if not at or not local or "@" in domain or len(local) > 64:
        return None
    if _EMAIL_LOCAL_FORBIDDEN & set(local) or local.startswith(".") or local.endswith("."):
        return None
    labels = domain.split(".")
    if len(labels) < 2 or not all(_DOMAIN_LABEL_RE.fullmatch(label) for label in labels):
        return None
    if len(labels[-1]) < 2 or labels[-1].isdigit():
        return None
    return text


def _phone(value: str, country: str | None) -> str | None:
    e164 = phone_e164(value, country)
    return e164[1:] if e164 is not None else None


_GENDERS: dict[str, str] = {
    **dict.fromkeys(
        ("f", "female", "woman", "women", "feminine", "weiblich", "frau", "femme", "mujer"), "f"
    ),
    **dict.fromkeys(
        ("m", "male", "man", "men", "masculine", "mannlich", "mann", "homme", "hombre"), "m"
    ),
    **dict.fromkeys(("n", "nonbinary", "nb", "enby"), "n"),
}


def _gender(value: str, country: str | None) -> str | None:
    return _GENDERS.get(_fold(value))


_DOB_COMPACT_RE = re.compile(r"(\d{4})(\d{2})(\d{2})")
_DOB_SEPARATED_RE = re.compile(r"(\d{4})([-/.])(\d{1,2})\2(\d{1,2})(?:[T ].*)?")


def _birth_date(value: str, country: str | None) -> str | None:
    match = _DOB_COMPACT_RE.fullmatch(value)
    if match:
        year, month, day = match.groups()
    else:
        match = _DOB_SEPARATED_RE.fullmatch(value)
        if not match:
            # Day-first and month-first forms are refused: "03/04/1996" has two readings.
            return None
        year, _, month, day = match.groups()
    try:
        born = date(int(year), int(month), int(day))
    except ValueError:
        return None
    # A fixed window keeps the rule pure; it only has to catch "0001-01-01"-style junk.
    if not 1900 <= born.year <= 2100:
        return None
    return born.strftime("%Y%m%d")


def _person_name(value: str, country: str | None) -> str | None:
    text = " ".join(unicodedata.normalize("NFC", value).split()).lower()
    if not any(unicodedata.category(ch).startswith("L") for ch in text):
        return None
    return text


def _city(value: str, country: str | None) -> str | None:
    # NFC first, so a decomposed "e" plus diaeresis becomes one letter before the filter;
    # combining marks without a precomposed form are kept too.
    text = unicodedata.normalize("NFC", value).lower()
    kept = "".join(ch for ch in text if unicodedata.category(ch)[0] in "LM" or ch.isdigit())
    if not any(unicodedata.category(ch).startswith("L") for ch in kept):
        return None
    return kept


def _state(value: str, country: str | None) -> str | None:
    return state_code(value, country)


_US_ZIP_RE = re.compile(r"(\d{5})(\d{4})?")
_LOCAL_POSTCODE_RE = re.compile(r"[0-9a-z]{2,10}")


def _zip(value: str, country: str | None) -> str | None:
    compact = re.sub(r"[\s\-]", "", value).lower()
    if country == "US":
        match = _US_ZIP_RE.fullmatch(compact)
        if match:
            return match.group(1)
        if len(compact) == 4 and compact.isdigit():
            # Spreadsheets and JSON numbers drop the leading zero of New England ZIPs.
            return "0" + compact
        return None
    if country is None and re.fullmatch(r"\d{5}-\d{4}", value):
        # ZIP+4 is a US-only shape, so the country is not needed to cut it.
        return value[:5]
    return compact if _LOCAL_POSTCODE_RE.fullmatch(compact) else None


def _country(value: str, country: str | None) -> str | None:
    code = country_code(value)
    return code.lower() if code is not None else None


def _external_id(value: str, country: str | None) -> str:
    return value


def _mobile_ad_id(value: str, country: str | None) -> str | None:
    text = value.lower()
    # A device with ad tracking limited reports the all-zero id: it names nobody.
    if set(text) <= {"0", "-"}:
        return None
    return text


@dataclass(frozen=True)
class Rule:
    """How one ``user_data`` field is normalized before hashing.

    Attributes:
        field: Pinterest's key in ``user_data``.
        description: The rule in words, for documentation and the UI.
        normalize: Takes the cleaned value and the event's alpha-2 country (or ``None``) and
            returns the text to hash, or ``None`` to leave the field out.
    """

    field: str
    description: str
    normalize: Callable[[str, str | None], str | None]
    uses_country: bool = False


RULES: dict[str, Rule] = {
    rule.field: rule
    for rule in (
        Rule(
            "em",
            "Whitespace removed, lower case, NFC; must be shaped like an address. Plus tags "
            "and dots kept.",
            lambda value, country: normalize_email(value),
        ),
        Rule(
            "ph",
            "E.164 digits without '+': country code from the number, else the event's "
            "country, else the default region; only valid, non-repeated numbers.",
            _phone,
            uses_country=True,
        ),
        Rule("ge", "'f', 'm' or 'n' from common words; anything else left out.", _gender),
        Rule(
            "db",
            "YYYYMMDD from YYYYMMDD, YYYY-MM-DD, YYYY/MM/DD or YYYY.MM.DD; a real date, "
            "years 1900-2100.",
            _birth_date,
        ),
        Rule("ln", "Trimmed, lower case, NFC, inner whitespace collapsed.", _person_name),
        Rule("fn", "Trimmed, lower case, NFC, inner whitespace collapsed.", _person_name),
        Rule("ct", "Lower case, letters (any script) and digits only.", _city),
        Rule(
            "st",
            "Two-letter lower-case code for US states and Canadian provinces; elsewhere a "
            "short alphanumeric code.",
            _state,
            uses_country=True,
        ),
        Rule(
            "zp",
            "US: the first five digits. Elsewhere the local code, lower case, without spaces "
            "or hyphens; letters kept.",
            _zip,
            uses_country=True,
        ),
        Rule("country", "ISO 3166-1 alpha-2, lower case.", _country),
        Rule(
            "external_id",
            "Trimmed only: advertisers' ids are case-sensitive.",
            _external_id,
        ),
        Rule(
            "hashed_maids",
            "Lower case: GAIDs are lower-case UUIDs and IDFAs the same UUIDs in upper case, "
            "so one form makes them comparable; the all-zero id of a limited device left out.",
            _mobile_ad_id,
        ),
    )
}


def normalize(
    field: str,
    value: object,
    country: str | None = None,
    default_region: str | None = None,
    arrives_hashed: bool = False,
) -> str | None:
    """Normalize one value of a ``user_data`` field, ready to hash.

    A value that is already a SHA-256 hex digest is passed through lower-cased, because
    hashing it again would never match.

    Args:
        field: A key of :data:`RULES`, e.g. ``"em"``.
        value: The raw value.
        country: The event's country (alpha-2, alpha-3 or name), used by phone, state and zip.
        default_region: The configured country used when the event's is missing or unknown.
        arrives_hashed: The source is configured to send this field hashed: anything but a
            digest is left out, because hashing a hash-shaped mistake would never match.

    Returns:
        The normalized text, or ``None`` when the field must be left out.

    Raises:
        KeyError: If ``field`` has no rule.
    """
    rule = RULES[field]
    text = clean(value)
    if text is None:
        return None
    if is_sha256(text):
        return text.lower()
    if arrives_hashed:
        return None
    region = country_code(country) if country is not None else None
    if region is None and default_region is not None:
        region = country_code(default_region)
    return rule.normalize(text, region) or None


def hash_field(
    field: str,
    value: object,
    country: str | None = None,
    default_region: str | None = None,
    arrives_hashed: bool = False,
) -> str | None:
    """Return what Pinterest receives for one value: its SHA-256 hex digest.

    Args:
        field: A key of :data:`RULES`, e.g. ``"em"``.
        value: The raw value.
        country: The event's country (alpha-2, alpha-3 or name).
        default_region: The configured country used when the event's is missing or unknown.
        arrives_hashed: Leave out anything that is not already a digest (see :func:`normalize`).

    Returns:
        The hex digest of the normalized value, the value itself (lower-cased) when it was
        already a digest, or ``None`` when the field must be left out. Never the digest of an
        empty string.
    """
    text = clean(value)
    if text is not None and is_sha256(text):
        return text.lower()
    normalized = normalize(field, text, country, default_region, arrives_hashed)
    return sha256_hex(normalized) if normalized else None


def normalize_distinct(
    field: str,
    values: list[object],
    countries: list[str | None] | None = None,
    default_region: str | None = None,
    arrives_hashed: bool = False,
) -> tuple[list[str | None], list[bool]]:
    """Normalize many distinct values of one field: the texts to hash, and which are digests.

    The fast path of enrich calls this once per field over the day's distinct values (and,
    for fields whose rule reads the country, distinct value and country pairs), then hashes
    the texts in DuckDB. A value flagged as a digest is sent as it is, never hashed again.

    Args:
        field: A key of :data:`RULES`.
        values: Raw values, each once.
        countries: The country of each value, for the rules that read it; ``None`` otherwise.
        default_region: The configured country used when the event's is missing or unknown.
        arrives_hashed: Leave out anything that is not already a digest.

    Returns:
        ``(texts, is_digest)``, both in the order of ``values``; a text is ``None`` when the
        value must be left out.
    """
    countries = countries if countries is not None else [None] * len(values)
    texts: list[str | None] = []
    digests: list[bool] = []
    for value, country in zip(values, countries, strict=True):
        text = normalize(field, value, country, default_region, arrives_hashed)
        texts.append(text)
        digests.append(text is not None and is_sha256(text) and is_sha256(clean(value) or ""))
    return texts, digests
