"""Snowplow enriched events: the canonical wide table, as CSV or TSV with a header row.

Warehouse exports and loaders write one event per row with Snowplow's atomic columns
(`event_id`, `collector_tstamp`, `derived_tstamp`, `domain_userid`, `useragent`, ...) and one
JSON column per context or self-describing event. DuckDB reads the file (gzip included) as
text columns; each row becomes a raw.events row whose body is the row as a JSON object, so
staging reads it like any other body. The event time is Snowplow's own skew-corrected
`derived_tstamp`, else the device's, else the collector's; the collector's time is the
receipt time. A row without any readable time is rejected as `missing_time`.
"""

from pathlib import Path

import duckdb

from capi_pipeline.ingest.landing import LandedFile, UnreadableFile

SNOWPLOW_TIMES = ("derived_tstamp", "dvce_created_tstamp", "collector_tstamp")


def _hash_file(path: Path, hasher) -> None:
    with path.open("rb") as handle:
        while block := handle.read(1 << 24):
            hasher.update(block)


def load_snowplow(conn: duckdb.DuckDBPyConnection, landed: LandedFile, file_id: str, hasher):
    """Load one Snowplow table file; returns its FileResult (lines are data rows)."""
    from capi_pipeline.ingest.load import FileResult

    _hash_file(landed.path, hasher)
    delimiter = "\t" if ".tsv" in landed.name.lower() else ","
    _drop_rejects(conn)
    try:
        # A row DuckDB cannot read (bad bytes, too many or too few columns) is set aside
        # with its line number, and the rest of the table is read.
        conn.execute(
            "CREATE OR REPLACE TEMP TABLE _snowplow_read AS SELECT row_number() OVER () AS "
            "k, * FROM read_csv(?, header = true, all_varchar = true, delim = ?, "
            "quote = '\"', escape = '\"', compression = 'auto', auto_detect = true, "
            "store_rejects = true, rejects_table = '_snowplow_rejects', "
            "rejects_scan = '_snowplow_scans')",
            [str(landed.path), delimiter],
        )
    except duckdb.Error as error:
        raise UnreadableFile(f"{type(error).__name__}: not a readable Snowplow table") from error
    # One rejection per line, however many errors DuckDB found in it.
    conn.execute("""
        CREATE OR REPLACE TEMP TABLE _snowplow_bad AS
        SELECT line::INTEGER AS line_no,
               CASE WHEN bool_or(error_type = 'INVALID ENCODING') THEN 'bad_utf8'
                    ELSE 'bad_row' END AS reason,
               string_agg(DISTINCT error_type, ', ') AS detail,
               max(strlen(csv_line))::INTEGER AS byte_length,
               left(max(csv_line), 200) AS first_bytes
        FROM _snowplow_rejects GROUP BY line
    """)
    _drop_rejects(conn)
    bad_rows = conn.execute("SELECT line_no, reason FROM _snowplow_bad").fetchall()
    # A row is a line (the rows' JSON contexts hold no line feeds): the accepted rows take, in
    # order, the line numbers the rejected ones leave.
    conn.execute(
        "CREATE OR REPLACE TEMP TABLE _snowplow AS SELECT n.line_no, s.* EXCLUDE (k) "
        "FROM _snowplow_read s JOIN (SELECT n AS line_no, row_number() OVER (ORDER BY n) AS k "
        "FROM range(2, (SELECT count(*) FROM _snowplow_read) + ? + 2) r(n) "
        "WHERE n NOT IN (SELECT line_no FROM _snowplow_bad)) n USING (k)",
        [len(bad_rows)])
    conn.execute("DROP TABLE _snowplow_read")
    columns = {row[0] for row in conn.execute("DESCRIBE _snowplow").fetchall()}
    if not {"event_id", "collector_tstamp"} <= columns:
        raise UnreadableFile("not a Snowplow enriched-events table (no event_id, "
                             "collector_tstamp columns)")

    def column(name: str) -> str:
        return f'"{name}"' if name in columns else "NULL::VARCHAR"

    times = ", ".join(f"try_cast(capi_clean({column(name)}) AS TIMESTAMPTZ)"
                      for name in SNOWPLOW_TIMES)
    action = ("unstruct_event_com_snowplowanalytics_snowplow_ecommerce_"
              "snowplow_ecommerce_action_1_0_0")
    name_sql = (f"coalesce(capi_clean(json_extract_string(try_cast({column(action)} AS JSON), "
                f"'$.type')), capi_clean({column('event_name')}), capi_clean({column('event')}))")
    conn.execute(f"""
        CREATE OR REPLACE TEMP TABLE _snowplow_timed AS
        SELECT line_no, coalesce({times}) AS event_time,
               try_cast(capi_clean({column('collector_tstamp')}) AS TIMESTAMPTZ) AS received_at,
               {name_sql} AS source_event_name,
               capi_clean({column('event_id')}) AS source_event_id,
               to_json(s) AS body
        FROM _snowplow AS s
    """)
    conn.execute("""
        INSERT INTO raw.events BY NAME
        SELECT CAST(event_time AS DATE) AS partition_date, ? AS source_file,
               line_no::INTEGER AS line_no, 0 AS msg_index, 'snowplow' AS source_format,
               NULL AS topic, source_event_name, source_event_id, event_time, received_at,
               NULL AS envelope_ip, NULL AS envelope_user_agent, NULL AS envelope_store,
               []::VARCHAR[] AS time_flags, body, ? AS file_id
        FROM _snowplow_timed WHERE event_time IS NOT NULL
    """, [landed.name, file_id])
    result = FileResult(landed.name, "loading", file_id)
    for day, events in conn.execute(
        "SELECT CAST(event_time AS DATE), count(*) FROM _snowplow_timed "
        "WHERE event_time IS NOT NULL GROUP BY ALL"
    ).fetchall():
        result.dates[day] += events
        result.formats["snowplow"] += events
        result.events += events
        result.lines_accepted += events
    missing = conn.execute(
        "SELECT count(*) FROM _snowplow_timed WHERE event_time IS NULL").fetchone()[0]
    # Rows without a time, and rows DuckDB could not read, go to the file's main day.
    home = (min(result.dates, key=lambda d: (-result.dates[d], d)) if result.dates
            else landed.landed_on)
    if missing:
        conn.execute("""
            INSERT INTO raw.rejected_lines BY NAME
            SELECT ?::DATE AS partition_date, ? AS source_file, line_no::INTEGER AS line_no,
                   'missing_time' AS reason, 'no readable derived, device or collector time'
                   AS detail, octet_length(body)::INTEGER AS byte_length,
                   '' AS first_bytes, ? AS file_id
            FROM _snowplow_timed WHERE event_time IS NULL
        """, [home, landed.name, file_id])
        result.reasons["missing_time"] += missing
    if bad_rows:
        conn.execute("""
            INSERT INTO raw.rejected_lines BY NAME
            SELECT ?::DATE AS partition_date, ? AS source_file, *, ? AS file_id
            FROM _snowplow_bad
        """, [home, landed.name, file_id])
        result.reasons.update(reason for _, reason in bad_rows)
    result.lines_rejected += missing + len(bad_rows)
    if result.lines_rejected:
        result.dates[home] += result.lines_rejected
    result.lines_read = result.lines_accepted + result.lines_rejected
    for table in ("_snowplow", "_snowplow_timed", "_snowplow_bad"):
        conn.execute(f"DROP TABLE {table}")
    return result


def _drop_rejects(conn: duckdb.DuckDBPyConnection) -> None:
    """DuckDB's tables of the rows a read set aside (made anew by each read)."""
    for table in ("_snowplow_rejects", "_snowplow_scans"):
        conn.execute(f"DROP TABLE IF EXISTS {table}")
