"""The SQL fast path of ingest: lines DuckDB can read with certainty, in bulk.

A chunk of a landing file's lines arrives as an Arrow table `(line_no, line)` of raw bytes.
One query decodes them, parses the JSON once (`json_transform`), recognises the envelope and
the three JSON shapes by the same rules as `parse.detect_shape`, and reads the event time
when it is one of the plain forms: ISO 8601 with `Z` or an offset and at most microseconds,
or an integer epoch in seconds, milliseconds, microseconds or nanoseconds (seconds may carry a
fraction). Everything else goes to the Python parser (`parse.parse_line`) so that the odd
lines keep exactly its rules and rejection reasons: bad UTF-8, invalid JSON, anything that is
not an object, lines over 1 MB, Segment batches with a message it cannot take, unknown or
ambiguous shapes, naive or odd times, missing times and clocks ahead of the limit.
"""

from capi_pipeline.enrich.normalize import INVISIBLE_EDGES
from capi_pipeline.ingest.parse import ORDER_TOPICS, SEGMENT_TYPES

_SHAPE_FIELDS = (
    # pixel
    "clientId", "name", "id", "timestamp",
    # segment
    "type", "anonymousId", "userId", "messageId", "event", "sentAt", "receivedAt",
    "originalTimestamp",
    # webhook
    "order_number", "checkout_token", "financial_status", "cancelled_at", "processed_at",
    "created_at", "updated_at",
)
_ENVELOPE_FIELDS = ("received_at", "ip", "user_agent", "topic", "shop_domain", "store")


def _structure(fields: tuple[str, ...], extra: dict[str, str]) -> str:
    parts = [f'"{name}":"VARCHAR"' for name in fields]
    parts += [f'"{name}":{kind if kind.startswith("{") else chr(34) + kind + chr(34)}'
              for name, kind in extra.items()]
    return "{" + ",".join(parts) + "}"


BODY_STRUCTURE = _structure(_SHAPE_FIELDS, {"line_items": "JSON", "batch": "JSON"})
# The line's own fields, and an envelope's object body read in the same pass: json_transform
# is lenient, so a body that is a string (or anything but an object) gives a struct of NULLs,
# and the body's JSON text (json_extract) says which it was.
LINE_STRUCTURE = _structure(
    tuple(dict.fromkeys(_SHAPE_FIELDS + _ENVELOPE_FIELDS)),
    {"body": BODY_STRUCTURE, "batch": "JSON", "line_items": "JSON"},
)

_PLACEHOLDERS_SQL = ", ".join(
    f"'{text}'" for text in sorted(
        {"", "-", "--", "?", "undefined", "null", "(null)", "<null>", "nil", "none", "nan",
         "n/a", "#n/a", "unknown", "[object object]"}
    )
)
# What `normalize.clean` strips from both ends, as one SQL literal (the characters
# themselves: a chain of chr() calls in every use made planning the staging queries take
# 0.3 s a day longer): every character str.strip() takes (Unicode's white space, U+3000 and
# U+2028 among them) and the invisible ones clean strips besides.
_SPACES_SQL = "'" + "".join(
    character for character in map(chr, range(0x3001)) if character.isspace()
) + INVISIBLE_EDGES + "'"
_ISO_TIME = (r"[0-9]{4}-[0-9]{2}-[0-9]{2}[T ]([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9]"
             r"(\.[0-9]{1,6})?(Z|[+-]([01][0-9]|2[0-3]):[0-5][0-9])")
_SEGMENT_TYPES_SQL = ", ".join(f"'{kind}'" for kind in sorted(SEGMENT_TYPES))
_ORDER_TOPICS_SQL = ", ".join(f"'{topic}'" for topic in sorted(ORDER_TOPICS))

# Macros shared by the ingest and staging queries. `capi_clean` is `normalize.clean` for text:
# stripped, and NULL for the placeholders websites send for a missing value.
MACROS = f"""
CREATE OR REPLACE TEMP MACRO capi_clean_slow(x) AS (
    CASE WHEN lower(trim(x, {_SPACES_SQL})) IN ({_PLACEHOLDERS_SQL}) THEN NULL
         ELSE trim(x, {_SPACES_SQL}) END);
-- Printable ASCII at both ends and a first letter no placeholder starts with (or longer than
-- any placeholder): the text as it is, without the cost of trimming and comparing.
CREATE OR REPLACE TEMP MACRO capi_clean(x) AS (
    CASE WHEN x IS NULL THEN NULL
         WHEN ord(x[1]) BETWEEN 33 AND 126 AND ord(x[-1]) BETWEEN 33 AND 126
              AND (strlen(x) > 15 OR NOT contains('uUnN-?(<#[', x[1]))
         THEN x ELSE capi_clean_slow(x) END);
-- Only the plain form the parser reads the same way (_ISO_TIME): two-digit hours up to 23
-- (DuckDB also takes 24:00, a one-digit hour and a named zone), at most microseconds (DuckDB
-- rounds beyond them, the parser cuts), Z or an offset. Any other time goes to the parser.
CREATE OR REPLACE TEMP MACRO capi_iso_time(x) AS (
    CASE WHEN regexp_full_match(x, '{_ISO_TIME}') THEN try_cast(x AS TIMESTAMPTZ) END);
CREATE OR REPLACE TEMP MACRO capi_epoch_us(n) AS (
    CASE WHEN n < 100000000000 THEN n * 1000000
         WHEN n < 100000000000000 THEN n * 1000
         WHEN n < 100000000000000000 THEN n
         ELSE n // 1000 END);
CREATE OR REPLACE TEMP MACRO capi_epoch_flag(x, n) AS (
    CASE WHEN n IS NULL THEN NULL
         WHEN contains(x, '.') THEN 'epoch_s'
         WHEN n < 100000000000 THEN 'epoch_s'
         WHEN n < 100000000000000 THEN 'epoch_ms'
         WHEN n < 100000000000000000 THEN 'epoch_us'
         ELSE 'epoch_ns' END);
-- An integer epoch (any unit by magnitude) or epoch seconds with a fraction, as microseconds.
CREATE OR REPLACE TEMP MACRO capi_epoch_number(x) AS (
    CASE WHEN x IS NULL OR strlen(x) > 24 OR x[5] = '-' OR NOT (x[1] BETWEEN '0' AND '9')
         THEN NULL
         -- DECIMAL(38, 6): the microseconds of a DECIMAL(18, 6) overflowed it, an error
         -- that try_cast does not catch (a whole file failed on one such time).
         -- Digits only (DuckDB's casts also read '1_764_583_200', '0x691d0000' and '17e8'),
         -- at most six of them after a point, and an integer of at most 19: beyond, the
         -- microseconds out of nanoseconds overflow BIGINT, an error that try_cast does not
         -- catch. Such a line goes to the parser, which rejects it.
         WHEN NOT regexp_full_match(x, '[0-9]{{1,19}}|[0-9]+\\.[0-9]{{1,6}}') THEN NULL
         WHEN contains(x, '.') THEN CASE WHEN try_cast(x AS DECIMAL(38, 6)) < 100000000000
              THEN try_cast(floor(try_cast(x AS DECIMAL(38, 6)) * 1000000) AS HUGEINT) END
         ELSE try_cast(x AS HUGEINT) END);
CREATE OR REPLACE TEMP MACRO capi_time_of(x, n) AS (
    CASE WHEN n IS NULL THEN capi_iso_time(x)
         WHEN contains(x, '.') THEN try_cast(make_timestamp(n::BIGINT) AS TIMESTAMPTZ)
         ELSE try_cast(make_timestamp(capi_epoch_us(n)::BIGINT) AS TIMESTAMPTZ) END);
-- A JSON object's text with one more member in front, unless it has that key already (`keys`,
-- its own) or there is no value to add: how a Segment batch's times join its messages.
CREATE OR REPLACE TEMP MACRO capi_with_member(o, name, value, keys) AS (
    CASE WHEN value IS NULL OR list_contains(keys, name) THEN o
         WHEN o = '{{}}' THEN '{{"' || name || '":' || value || '}}'
         ELSE '{{"' || name || '":' || value || ',' || o[2:] END);
CREATE OR REPLACE TEMP MACRO capi_in_window(t) AS (
    t >= TIMESTAMPTZ '1990-01-01 00:00:00+00' AND t < TIMESTAMPTZ '2101-01-01 00:00:00+00');
"""


# Where a Segment `batch` is spread into its messages. A batch's own `sentAt` and `receivedAt`
# belong to every message that lacks them (as `parse.parse_line` merges them); the line is
# taken only if every message becomes an event (`n_messages` lets the caller check), so that a
# batch with one odd message goes whole to the Python parser and keeps its rules.
_BATCH_CTES = f"""
batch_lines AS (
    SELECT *, json_transform(body, '{{"sentAt":"JSON","receivedAt":"JSON","batch":["JSON"]}}')
                  AS w,
           json_keys(body) AS keys
    FROM bodies WHERE b IS NOT NULL AND starts_with(b.batch, '[')
),
batch_messages AS (
    SELECT line_no, is_envelope, raw_received_at, envelope_ip, envelope_user_agent,
           envelope_store, topic,
           CASE WHEN list_contains(keys, 'sentAt') THEN coalesce(w.sentAt, 'null') END
               AS shared_sent,
           CASE WHEN list_contains(keys, 'receivedAt') THEN coalesce(w.receivedAt, 'null') END
               AS shared_received,
           len(w.batch) AS n_messages,
           unnest(w.batch) AS message, unnest(range(len(w.batch))) AS msg_index
    FROM batch_lines WHERE len(w.batch) > 0
),
batch_keyed AS (
    SELECT *, json_keys(message) AS keys FROM batch_messages WHERE starts_with(message, '{{')
),
batch_bodies AS (
    SELECT line_no, is_envelope, raw_received_at, envelope_ip, envelope_user_agent,
           envelope_store, topic, msg_index, n_messages, merged AS body,
           json_transform(merged, '{BODY_STRUCTURE}') AS b
    -- One member at a time: a macro repeats its argument.
    FROM (SELECT *, capi_with_member(received, 'sentAt', shared_sent, keys) AS merged
          FROM (SELECT *, capi_with_member(message, 'receivedAt', shared_received, keys)
                          AS received
                FROM batch_keyed))
),
"""
_SINGLE_CTES = """
single_bodies AS (SELECT *, 0 AS msg_index, 1 AS n_messages FROM bodies),
"""


def _fast_sql(batches: bool) -> str:
    """The fast path's statement: for lines holding one message, or for Segment batch lines."""
    ctes = _BATCH_CTES if batches else _SINGLE_CTES
    source = "batch_bodies" if batches else "single_bodies"
    extra = ",\n    n_messages" if batches else ""
    return (_FAST_HEAD + ctes + _FAST_TAIL.replace("{source}", source)
            .replace("{extra}", extra))


_ENVELOPE_STRUCTURE = _structure(_ENVELOPE_FIELDS, {})
_ENVELOPE_SEEN = " OR ".join(f"{{e}}.{name} IS NOT NULL" for name in _ENVELOPE_FIELDS[:5])

_FAST_HEAD = f"""
WITH cuts AS (
    -- An envelope the reader cut in two (`load._envelope_cuts`: the text up to its last
    -- member's `"body":`, and that member's object value). The cut is the body if the text
    -- before it, closed with `null}}`, parses as an object and the value parses too: the
    -- line is then the first part, a complete value and the closing brace, so it is valid
    -- JSON and the value is its body's, as reading the whole line would find. The body is
    -- then kept as it was written, without the cost of re-serializing it out of the line.
    SELECT line_no, line, e, cut_text,
           CASE WHEN cut_text IS NOT NULL AND ({_ENVELOPE_SEEN.format(e="e")})
                THEN try(json_transform(cut_text, '{BODY_STRUCTURE}')) END AS cut_b
    FROM (SELECT line_no, line,
                 CASE WHEN has_cut THEN try(json_transform(decode(cut_prefix) || 'null}}',
                                                           '{_ENVELOPE_STRUCTURE}')) END AS e,
                 CASE WHEN has_cut THEN try(decode(cut_body)) END AS cut_text
          FROM chunk_lines WHERE fast_candidate)
),
parsed AS (
    -- try(): a line that is not JSON gives a NULL parse (and goes to the Python parser) at
    -- the cost of one parse, where json_valid first would be a second.
    -- The body's text is read only where an envelope field says the line is an envelope.
    SELECT line_no, text, v, cut_b, e,
           CASE WHEN cut_b IS NOT NULL THEN cut_text
                WHEN v IS NOT NULL AND ({_ENVELOPE_SEEN.format(e="v")})
                THEN nullif(json_extract(text, '$.body')::VARCHAR, 'null') END AS body_json
    FROM (SELECT line_no, text, cut_b, e, cut_text,
                 CASE WHEN cut_b IS NULL THEN try(json_transform(text, '{LINE_STRUCTURE}'))
                      END AS v
          FROM (SELECT line_no, cut_b, e, cut_text,
                       CASE WHEN cut_b IS NULL THEN try(decode(line)) END AS text
                FROM cuts)
          WHERE cut_b IS NOT NULL OR starts_with(text, '{{'))
),
enveloped AS (
    SELECT line_no, text, v, body_json, cut_b,
           CASE WHEN cut_b IS NOT NULL THEN e
                ELSE struct_pack({", ".join(f"{n} := v.{n}" for n in _ENVELOPE_FIELDS)}) END
               AS env,
           cut_b IS NOT NULL OR (body_json IS NOT NULL AND ({_ENVELOPE_SEEN.format(e="v")}))
               AS is_envelope
    FROM parsed
    -- A line read whole with a "body" and no envelope field set may still name one as null,
    -- which makes it an envelope to the parser: such lines go to the parser.
    WHERE cut_b IS NOT NULL OR (v IS NOT NULL AND (body_json IS NOT NULL
                                                   OR NOT contains(text, '"body"')))
),
unwrapped AS (
    SELECT *,
        -- An envelope's body may be an object or a JSON string holding one.
        -- A line keeps its line end in `text`: a line feed, and a carriage return before it.
        CASE WHEN NOT is_envelope THEN
                  CASE WHEN ends_with(text, chr(13) || chr(10)) THEN text[:-3]
                       WHEN ends_with(text, chr(10)) OR ends_with(text, chr(13)) THEN text[:-2]
                       ELSE text END
             WHEN cut_b IS NOT NULL THEN body_json
             WHEN starts_with(body_json, '"') THEN body_json ->> '$'
             ELSE body_json END AS body
    FROM enveloped
),
bodies AS (
    SELECT line_no, is_envelope, body,
           CASE WHEN is_envelope THEN env.received_at END AS raw_received_at,
           CASE WHEN is_envelope THEN capi_clean(env.ip) END AS envelope_ip,
           CASE WHEN is_envelope THEN capi_clean(env.user_agent) END AS envelope_user_agent,
           CASE WHEN is_envelope THEN coalesce(capi_clean(env.shop_domain), capi_clean(env.store))
                END AS envelope_store,
           CASE WHEN is_envelope THEN capi_clean(env.topic) END AS topic,
           CASE WHEN cut_b IS NOT NULL THEN cut_b
                WHEN NOT is_envelope
                THEN struct_pack({", ".join(f'"{n}" := v."{n}"' for n in _SHAPE_FIELDS)},
                                 line_items := v.line_items, batch := v.batch)
                WHEN starts_with(body_json, '{{') THEN v.body
                WHEN starts_with(body_json, '"') AND starts_with(body, '{{') AND json_valid(body)
                THEN json_transform(body, '{BODY_STRUCTURE}')
           END AS b
    FROM unwrapped
),
"""
_FAST_TAIL = f"""
shaped AS (
    SELECT *,
        (b.clientId IS NOT NULL AND b.name IS NOT NULL
            AND (b.timestamp IS NOT NULL OR b.id IS NOT NULL)) AS is_pixel,
        (b.type IN ({_SEGMENT_TYPES_SQL})
            AND (b.anonymousId IS NOT NULL OR b.userId IS NOT NULL OR b.messageId IS NOT NULL))
            AS is_segment,
        (b.line_items IS NOT NULL AND (b.order_number IS NOT NULL
            OR b.checkout_token IS NOT NULL OR b.financial_status IS NOT NULL)) AS is_webhook,
        capi_epoch_number(raw_received_at) AS received_number
    FROM {{source}} WHERE b IS NOT NULL AND b.batch IS NULL
),
-- A time's number is a column of its own before capi_time_of reads it: a macro repeats its
-- argument, and the number is read several times.
received AS (
    SELECT *, capi_time_of(raw_received_at, received_number) AS received_at FROM shaped
),
typed AS (
    SELECT *,
        CASE WHEN is_pixel THEN 'shopify_pixel' WHEN is_segment THEN 'segment'
             ELSE 'shopify_webhook' END AS source_format,
        CASE WHEN is_webhook THEN
            CASE WHEN topic IN ({_ORDER_TOPICS_SQL}) THEN topic
                 WHEN capi_clean(b.cancelled_at) IS NOT NULL THEN 'orders/cancelled'
                 ELSE 'orders/create' END
        END AS webhook_topic
    FROM received
    WHERE is_pixel::INT + is_segment::INT + is_webhook::INT = 1
      AND (NOT is_envelope OR received_at IS NOT NULL)
),
raw_timed AS (
    SELECT *,
        CASE source_format
            WHEN 'shopify_pixel' THEN b.timestamp
            WHEN 'segment' THEN coalesce(b.timestamp, b.originalTimestamp)
            ELSE coalesce(
                CASE WHEN webhook_topic = 'orders/cancelled' THEN nullif(b.cancelled_at, '') END,
                nullif(b.processed_at, ''), nullif(b.created_at, ''), nullif(b.updated_at, ''))
        END AS raw_time,
        CASE WHEN source_format = 'segment' THEN capi_epoch_number(b.receivedAt) END
            AS body_received_number,
        CASE WHEN source_format = 'segment' THEN capi_epoch_number(b.sentAt) END
            AS segment_sent_number
    FROM typed
),
segment_clocks AS (
    SELECT * EXCLUDE (body_received_number, segment_sent_number),
        CASE WHEN source_format = 'segment'
             THEN capi_time_of(b.receivedAt, body_received_number) END AS body_received,
        CASE WHEN source_format = 'segment'
             THEN capi_time_of(b.sentAt, segment_sent_number) END AS segment_sent
    FROM raw_timed
),
numbered AS (
    SELECT *, capi_epoch_number(raw_time) AS raw_number,
           coalesce(body_received, received_at) AS segment_received
    FROM segment_clocks
    WHERE (b.sentAt IS NULL OR segment_sent IS NOT NULL)
      AND (b.receivedAt IS NULL OR body_received IS NOT NULL)
),
clocked AS (
    SELECT *, capi_time_of(raw_time, raw_number) AS device_time,
           segment_sent IS NOT NULL AND segment_received IS NOT NULL AS corrected
    FROM numbered
),
final AS (
    SELECT *,
        CASE WHEN corrected THEN segment_received - (segment_sent - device_time)
             ELSE device_time END AS event_time,
        list_sort(list_filter([capi_epoch_flag(raw_time, raw_number),
              CASE WHEN corrected THEN 'clock_corrected' END], lambda f: f IS NOT NULL))
              AS time_flags
    FROM clocked
    WHERE device_time IS NOT NULL AND capi_in_window(device_time)
)
SELECT
    CAST(event_time AS DATE) AS partition_date,
    $2 AS source_file,
    line_no::INTEGER AS line_no,
    msg_index,
    source_format,
    topic,
    CASE source_format
        WHEN 'shopify_pixel' THEN capi_clean(b.name)
        WHEN 'segment' THEN CASE WHEN b.type = 'track' THEN capi_clean(b.event) ELSE b.type END
        ELSE webhook_topic END AS source_event_name,
    CASE source_format
        WHEN 'shopify_pixel' THEN capi_clean(b.id)
        WHEN 'segment' THEN capi_clean(b.messageId)
        ELSE CASE WHEN capi_clean(b.id) IS NOT NULL
                  THEN 'order-' || capi_clean(b.id) || '-' || split_part(webhook_topic, '/', 2)
                  END
    END AS source_event_id,
    event_time,
    received_at,
    envelope_ip,
    envelope_user_agent,
    envelope_store,
    time_flags,
    body,
    $1 AS file_id{{extra}}
FROM final
WHERE capi_in_window(event_time)
  AND (received_at IS NULL OR capi_in_window(received_at))
  AND event_time <= coalesce(received_at, $3::TIMESTAMPTZ) + to_microseconds($4::BIGINT)
"""

# $1: file_id, $2: source file name, $3: now, $4: allowed skew in microseconds.
FAST_SQL = _fast_sql(batches=False)
# The same over lines that hold a Segment batch: one row per message, with `n_messages`.
BATCH_SQL = _fast_sql(batches=True)
