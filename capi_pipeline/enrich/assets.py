"""Enrich: the day's events as Pinterest will receive them, hashed, with eligibility."""

import re
from datetime import UTC, datetime
from functools import lru_cache

import orjson
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
# The capi tables with a partition_date column: a partitioned run reads the day's rows of
# those only, as it reads the day's payloads.
PARTITIONED_SQL = """
SELECT DISTINCT table_name FROM information_schema.columns
WHERE table_schema = 'capi' AND column_name = 'partition_date'
"""


# Which payloads the check walks leaf by leaf. json_tree costs some 60 µs a payload (20 s for
# a 330,000-event day), so payloads are screened first, in two tiers, each by rules stricter
# than PAYLOAD_LEAKS_SQL's: DuckDB clears, on all cores, each payload whose text matches
# SCREEN_GRAMMAR (below) and holds no @ or %40; the rest are read into Python and cleared by
# _certainly_clean; every payload neither clears (any doubt at all) is walked by the SQL as
# before. The counts are therefore the SQL's own.
SCREEN_SQL = """
SELECT rowid, encode(text) FROM (
    SELECT rowid, payload::VARCHAR AS text FROM capi.pinterest_events
    WHERE $day IS NULL OR partition_date = $day
)
WHERE NOT (NOT contains(text, '@') AND NOT contains(text, '%40')
           AND regexp_full_match(text, $grammar))
"""
DOUBTFUL_SQL = """
CREATE OR REPLACE TEMP TABLE doubtful_payloads AS
SELECT payload FROM capi.pinterest_events WHERE rowid IN (SELECT unnest($rowids))
"""
PAYLOAD_LEAKS_OF_DOUBTFUL_SQL = PAYLOAD_LEAKS_SQL.replace(
    "FROM capi.pinterest_events e, json_tree(e.payload) t",
    "FROM doubtful_payloads e, json_tree(e.payload) t").replace(
    "AND ($day IS NULL OR e.partition_date = $day)", "")
_SHA256 = re.compile(r"[0-9a-f]{64}")
_DIGITS = str.maketrans("", "", "0123456789")
_TOP_UNHASHED = frozenset(path.removeprefix("$.") for path in UNHASHED_PATHS
                          if path.count(".") == 1)
_USER_UNHASHED = frozenset(path.removeprefix("$.user_data.") for path in UNHASHED_PATHS
                           if path.startswith("$.user_data."))
_CUSTOM_UNHASHED = frozenset(path.removeprefix("$.custom_data.") for path in UNHASHED_PATHS
                             if path.startswith("$.custom_data.") and "[" not in path)
_CUSTOM_FREE_TEXT = frozenset(path.removeprefix("$.custom_data.") for path in FREE_TEXT_PATHS
                              if "[" not in path)
_ITEM_UNHASHED = frozenset(path.removeprefix("$.custom_data.contents[*].")
                           for path in UNHASHED_PATHS if path.startswith("$.custom_data.contents"))
_ITEM_FREE_TEXT = frozenset(path.removeprefix("$.custom_data.contents[*].")
                            for path in FREE_TEXT_PATHS
                            if path.startswith("$.custom_data.contents"))
_HASHED = frozenset(HASHED_FIELDS)


_TOP_KEYS = _TOP_UNHASHED | {"user_data", "custom_data"}
_USER_KEYS = _USER_UNHASHED | _HASHED
_CUSTOM_KEYS = _CUSTOM_UNHASHED | _CUSTOM_FREE_TEXT | {"content_ids", "contents"}
_ITEM_KEYS = _ITEM_UNHASHED | _ITEM_FREE_TEXT
_SCALARS = (str, int)  # bool is an int; null, floats, lists and objects go to the SQL


def _screen_grammar() -> str:
    """A regular expression (RE2, as DuckDB runs it) for payload text PAYLOAD_LEAKS_SQL finds
    nothing in, once the text is known to hold no @ or %40.

    It reads the text as JSON itself: objects whose every member is a key allowed at its
    place with a value of the kind allowed there; hashed fields arrays of lower-case SHA-256
    digests; other values strings, integers or booleans; no whitespace between tokens. Every
    member is matched where it stands, so a duplicate key is judged like any other. Strings
    hold no escape that could spell an @ or a digit (\\u0040, \\u0031), so what the text shows
    is what json_tree reads: values no backslash at all, free text only an escaped quote or
    backslash (a store's `Skillet 10\\"`), which json_tree writes back as it is. Free text is
    printable ASCII, Latin letters with accents and the common dashes and quotes, with at most
    six ASCII digits: it cannot be phone-shaped (RE2's \\d is ASCII, and a backslash or a
    letter breaks a run of digits), and it cannot be email-shaped without an @ or %40.
    """
    def one_of(names) -> str:
        return "(?:" + "|".join(re.escape(name) for name in sorted(names)) + ")"

    def obj(member: str) -> str:
        return rf"\{{(?:{member}(?:,{member})*)?\}}"

    def arr(item: str) -> str:
        return rf"\[(?:{item}(?:,{item})*)?\]"

    text = r'"[^"\\\x00-\x1f]*"'
    value = rf"(?:{text}|-?(?:0|[1-9][0-9]*)|true|false)"
    # Printable ASCII but the quote, the backslash and digits; printable characters from
    # U+00A1 to U+017F (not the soft hyphen, U+00AD) and from U+2010 to U+2027 (dashes,
    # quotes, bullets), which json_tree writes as they are and RE2 reads as no digit and no
    # space; an escaped quote or backslash. Item names like `Café Cups` or `Skillet 10"`
    # were 6% of a day's payloads, left to _certainly_clean one by one in Python; ranges of
    # code points keep the expression as fast as the ASCII class (a Unicode letter class
    # made it several times slower). Text with any other character is left to that screen.
    letter = r'(?:[ !#-/:-\[\]-~\x{A1}-\x{AC}\x{AE}-\x{17F}\x{2010}-\x{2027}]|\\["\\])'
    free_text = f'"{letter}*(?:[0-9]{letter}*){{0,6}}"'
    digest = r'"[0-9a-f]{64}"'
    item = (f'(?:"{one_of(_ITEM_UNHASHED)}":{value}'
            f'|"{one_of(_ITEM_FREE_TEXT)}":{free_text})')
    custom = (f'(?:"{one_of(_CUSTOM_UNHASHED)}":{value}'
              f'|"{one_of(_CUSTOM_FREE_TEXT)}":{free_text}'
              f'|"content_ids":{arr(value)}|"contents":{arr(obj(item))})')
    user = f'(?:"{one_of(_HASHED)}":{arr(digest)}|"{one_of(_USER_UNHASHED)}":{value})'
    top = (f'(?:"{one_of(_TOP_UNHASHED)}":{value}'
           f'|"user_data":{obj(user)}|"custom_data":{obj(custom)})')
    return obj(top)


SCREEN_GRAMMAR = _screen_grammar()


@lru_cache(maxsize=1 << 16)
def _safe_free_text(value: str) -> bool:
    """Free text that cannot be phone-shaped as the SQL reads it (its JSON text): fewer than
    seven digits, printable, so that escaping adds no digit (a quote or backslash gains a
    backslash, which only breaks a run of digits; DuckDB writes other characters as they
    are), and no digit but ASCII ones. (No @ or %40 is checked on the whole payload.)

    Takes a str only (callers test the type). Cached: a store's item names, brands and
    categories repeat from one event to the next.
    """
    return (value.isprintable()
            and len(value) - len(value.translate(_DIGITS)) < 7
            and (value.isascii() or not any(c.isdigit() for c in value if not c.isascii())))


def _certainly_clean(text: bytes) -> bool:
    """True only when PAYLOAD_LEAKS_SQL would find nothing in this payload.

    Every key must be one the SQL allows at its place, with a value of the kind it allows
    there; hashed fields lists of lower-case SHA-256 digests; free text not phone-shaped; and
    no @ or %40 anywhere, so nothing is email-shaped (escaping cannot make either). Written as
    plain loops: it runs once per payload of the day, and generator expressions inside all()
    cost a third of its time.
    """
    if b"@" in text or b"%40" in text:
        return False
    try:
        payload = orjson.loads(text)
    except orjson.JSONDecodeError:
        return False
    # Re-serialized to the same bytes: no duplicate key hides a value json_tree would see.
    if type(payload) is not dict or not payload.keys() <= _TOP_KEYS:
        return False
    if orjson.dumps(payload) != text:
        return False
    user = payload.get("user_data", {})
    custom = payload.get("custom_data", {})
    if type(user) is not dict or type(custom) is not dict:
        return False
    if not (user.keys() <= _USER_KEYS and custom.keys() <= _CUSTOM_KEYS):
        return False
    for key, value in payload.items():
        if key != "user_data" and key != "custom_data" and not isinstance(value, _SCALARS):
            return False
    is_digest = _SHA256.fullmatch
    for field, value in user.items():
        if field in _HASHED:
            if type(value) is not list:
                return False
            for digest in value:
                if type(digest) is not str or not is_digest(digest):
                    return False
        elif not isinstance(value, _SCALARS):
            return False
    for key, value in custom.items():
        if key == "contents":
            if type(value) is not list:
                return False
            for item in value:
                if type(item) is not dict or not item.keys() <= _ITEM_KEYS:
                    return False
                for name, leaf in item.items():
                    if name in _ITEM_FREE_TEXT:
                        if type(leaf) is not str or not _safe_free_text(leaf):
                            return False
                    elif not isinstance(leaf, _SCALARS):
                        return False
        elif key == "content_ids":
            if type(value) is not list:
                return False
            for content_id in value:
                if not isinstance(content_id, _SCALARS):
                    return False
        elif key in _CUSTOM_FREE_TEXT:
            if type(value) is not str or not _safe_free_text(value):
                return False
        elif not isinstance(value, _SCALARS):
            return False
    return True


def payload_problems(conn, day=None) -> dict[str, int]:
    """PAYLOAD_LEAKS_SQL's counts, walking only the payloads the screen could not clear."""
    doubtful = []
    reader = conn.sql(SCREEN_SQL, params={"day": day, "grammar": SCREEN_GRAMMAR}
                      ).to_arrow_reader(50_000)
    for batch in reader:
        rowids, texts = batch.column(0).to_pylist(), batch.column(1).to_pylist()
        doubtful.extend(rowid for rowid, text in zip(rowids, texts, strict=True)
                        if not _certainly_clean(text))
    if not doubtful:
        return {}
    conn.execute(DOUBTFUL_SQL, {"rowids": doubtful})
    try:
        return {problem: int(n) for problem, n in conn.execute(PAYLOAD_LEAKS_OF_DOUBTFUL_SQL, {
            "hashed": HASHED_PATHS, "unhashed": UNHASHED_PATHS, "free_text": FREE_TEXT_PATHS,
        }).fetchall()}
    finally:
        conn.execute("DROP TABLE doubtful_payloads")


def personal_data_problems(conn, day=None) -> dict[str, int]:
    """What in the capi schema is neither a hash nor a field Pinterest takes unhashed.

    Args:
        conn: A connection to the pipeline's DuckDB file.
        day: Only this partition's rows (the run's): its payloads and, in every capi table
            with a partition_date, its other text columns; a table without one is read
            whole. Every row of every day when None. Old days need no re-screen: a day's
            rows are written only by enrich, whose blocking check screened them before
            anything of that day was sent, and are otherwise only deleted (erasure, retention).

    Returns:
        Counts by problem (and, for plain columns, by table and column); empty when clean.
        Never the values themselves: they may be the personal data the check is looking for.
    """
    problems = payload_problems(conn, day)
    partitioned = {row[0] for row in conn.execute(PARTITIONED_SQL).fetchall()}
    columns: dict[str, list[str]] = {}
    for table, column in conn.execute(TEXT_COLUMNS_SQL).fetchall():
        columns.setdefault(table, []).append(column)
    for table, names in columns.items():
        # One pass over the table for all its columns. EMAIL_SHAPED needs an @ or a %40, so
        # the regular expression only runs on text holding one: the same matches. In a
        # CASE, as DuckDB does not cut an AND short inside an aggregate's FILTER: it ran
        # the expression on every value, 0.2 s of CPU for a 330,000-event day's ten columns.
        texts = [f'CAST("{column}" AS VARCHAR)' for column in names]
        counts = ", ".join(
            f"count(*) FILTER (WHERE CASE WHEN contains({text}, '@') OR contains({text}, '%40') "
            f"THEN regexp_matches({text}, '{EMAIL_SHAPED}') ELSE false END)" for text in texts)
        where = " WHERE partition_date = $day" if day is not None and table in partitioned else ""
        found = conn.execute(f'SELECT {counts} FROM capi."{table}"{where}',
                             {"day": day} if where else {}).fetchall()[0]
        for column, leaks in zip(names, found, strict=True):
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
