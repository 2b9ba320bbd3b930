-- Every table the pipeline writes. Times are TIMESTAMPTZ in UTC; daily tables carry the UTC
-- date of the event as partition_date. Personal data lives only in raw, staging and identity,
-- which sit in the personal-data file attached as `personal` (created by lib/duck.py before
-- this script runs); the pipeline's own file holds capi, delivery, monitoring and marts.

CREATE SCHEMA IF NOT EXISTS capi;
CREATE SCHEMA IF NOT EXISTS delivery;
CREATE SCHEMA IF NOT EXISTS monitoring;

-- One row per accepted message as it landed (a Segment batch line gives one row per message).
CREATE TABLE IF NOT EXISTS raw.events (
    partition_date DATE NOT NULL,
    source_file VARCHAR NOT NULL,
    line_no INTEGER NOT NULL,
    msg_index INTEGER NOT NULL,
    source_format VARCHAR NOT NULL,
    topic VARCHAR,
    source_event_name VARCHAR,
    source_event_id VARCHAR,
    event_time TIMESTAMPTZ NOT NULL,
    received_at TIMESTAMPTZ,
    envelope_ip VARCHAR,
    envelope_user_agent VARCHAR,
    envelope_store VARCHAR,
    time_flags VARCHAR[],
    -- ZSTD: DuckDB's default choice for long text (DICT_FSST) took twice the CPU to write
    -- and made the column three times larger (docs/ingestion.md, "Speed and memory").
    -- Text rather than DuckDB's JSON type: every body was parsed on its way in (the fast
    -- path's json_transform, or the Python parser's orjson), and the JSON type would parse
    -- it once more to check it (0.4 s of a day's 336,000 events).
    body VARCHAR NOT NULL USING COMPRESSION zstd
);

-- Lines that could not become events, with why. raw.events plus this table is every line read.
CREATE TABLE IF NOT EXISTS raw.rejected_lines (
    partition_date DATE NOT NULL,
    source_file VARCHAR NOT NULL,
    line_no INTEGER NOT NULL,
    reason VARCHAR NOT NULL,
    detail VARCHAR,
    byte_length INTEGER,
    first_bytes VARCHAR
);

-- The landed-files manifest: one row per version of a landing file that ingest looked at.
-- A file whose size or modification time changed is hashed again; the same bytes (under any
-- name) add nothing, other bytes under the same name are a new version that replaces the
-- rows of the one before it. lines_read = lines_accepted + lines_rejected for every version.
CREATE TABLE IF NOT EXISTS raw.landed_files (
    file_id VARCHAR NOT NULL,
    path VARCHAR NOT NULL,
    version INTEGER NOT NULL,
    size_bytes BIGINT NOT NULL,
    mtime_ns BIGINT NOT NULL,
    content_sha256 VARCHAR NOT NULL,
    -- loaded, superseded (a later version replaced its rows), duplicate (same bytes as
    -- duplicate_of, nothing added) or unreadable (truncated gzip, I/O error: no rows).
    status VARCHAR NOT NULL,
    duplicate_of VARCHAR,
    detail VARCHAR,
    lines_read BIGINT,
    lines_accepted BIGINT,
    lines_rejected BIGINT,
    events BIGINT,
    first_event_date DATE,
    last_event_date DATE,
    event_dates DATE[],
    landed_at TIMESTAMPTZ NOT NULL,
    load_seconds DOUBLE
);

-- Which landed file version each raw row came from (raw.landed_files.file_id).
ALTER TABLE raw.events ADD COLUMN IF NOT EXISTS file_id VARCHAR;
ALTER TABLE raw.rejected_lines ADD COLUMN IF NOT EXISTS file_id VARCHAR;

-- One typed event per row. Rows with duplicate_of set repeat an earlier event and are not sent.
CREATE TABLE IF NOT EXISTS staging.events (
    partition_date DATE NOT NULL,
    event_key VARCHAR NOT NULL,
    source_format VARCHAR NOT NULL,
    source_event_name VARCHAR,
    event_type VARCHAR NOT NULL,
    action_source VARCHAR NOT NULL,
    event_time TIMESTAMPTZ NOT NULL,
    received_at TIMESTAMPTZ,
    event_id VARCHAR NOT NULL,
    store VARCHAR,
    client_id VARCHAR,
    customer_id VARCHAR,
    email VARCHAR,
    phone VARCHAR,
    first_name VARCHAR,
    last_name VARCHAR,
    city VARCHAR,
    state VARCHAR,
    zip VARCHAR,
    country VARCHAR,
    ip VARCHAR,
    user_agent VARCHAR,
    page_url VARCHAR,
    click_id VARCHAR,
    order_id VARCHAR,
    cart_token VARCHAR,
    checkout_token VARCHAR,
    gender VARCHAR,
    date_of_birth VARCHAR,
    -- The device's advertising id (IDFA, AAID) on app events.
    advertising_id VARCHAR,
    -- Consent as the source reported it; NULL when it said nothing.
    ad_tracking_allowed BOOLEAN,
    marketing_allowed BOOLEAN,
    sale_of_data_allowed BOOLEAN,
    value DECIMAL(18, 2),
    currency VARCHAR,
    search_string VARCHAR,
    items STRUCT(
        id VARCHAR, name VARCHAR, price DECIMAL(18, 2), quantity INTEGER, brand VARCHAR,
        category VARCHAR
    )[],
    num_items INTEGER,
    is_bot BOOLEAN NOT NULL,
    is_test BOOLEAN NOT NULL,
    time_flags VARCHAR[],
    duplicate_of VARCHAR
);

-- Erasure requests (capi_pipeline/privacy/erase.py). A suppression key is sha256(salt || the
-- Pinterest hash of an erased identifier): neither the value nor the hash Pinterest receives.
CREATE TABLE IF NOT EXISTS privacy.settings (
    salt VARCHAR NOT NULL
);

CREATE TABLE IF NOT EXISTS privacy.suppressions (
    key VARCHAR NOT NULL,
    field VARCHAR NOT NULL,
    suppressed_at TIMESTAMPTZ NOT NULL
);

-- Days the retention asset purged from raw and staging: identity keeps what it derived from them.
CREATE TABLE IF NOT EXISTS privacy.purged_days (
    partition_date DATE NOT NULL,
    purged_at TIMESTAMPTZ NOT NULL
);

-- When erasures ran and how much they removed; never who.
CREATE TABLE IF NOT EXISTS privacy.erasures (
    erased_at TIMESTAMPTZ NOT NULL,
    events INTEGER NOT NULL,
    visitors INTEGER NOT NULL
);

-- Identity: all history, kept per staged day and brought up to date incrementally: a run reads
-- only the staged days that are new or changed since the last one (identity.graph_days).
-- One row per identifier ever seen; node_id is assigned at first sight and never reused.
CREATE TABLE IF NOT EXISTS identity.identifiers (
    node_key VARCHAR NOT NULL,
    identifier_type VARCHAR NOT NULL,
    identifier_value VARCHAR NOT NULL,
    visitor_id VARCHAR NOT NULL,
    events INTEGER NOT NULL,
    first_seen TIMESTAMPTZ,
    last_seen TIMESTAMPTZ,
    node_id BIGINT NOT NULL,
    -- Why this identifier joins nothing (a hub or a configured junk value); NULL when it joins.
    hub_reason VARCHAR
);

-- Every pair of identifiers seen on one event, over all history. An edge joins visitors unless
-- refused: by a hub at either end (identity.refused_edges) or by the size guard (refused_reason).
CREATE TABLE IF NOT EXISTS identity.edges (
    node_a VARCHAR NOT NULL,
    node_b VARCHAR NOT NULL,
    events INTEGER NOT NULL,
    first_seen TIMESTAMPTZ,
    last_seen TIMESTAMPTZ,
    a_id BIGINT NOT NULL,
    b_id BIGINT NOT NULL,
    a_type VARCHAR NOT NULL,
    b_type VARCHAR NOT NULL,
    first_day DATE NOT NULL,
    refused_reason VARCHAR
);

-- Every edge that does not join visitors, with why (hub limits, size guard): no values, keys only.
CREATE TABLE IF NOT EXISTS identity.refused_edges (
    node_a VARCHAR NOT NULL,
    node_b VARCHAR NOT NULL,
    reason VARCHAR NOT NULL,
    events INTEGER NOT NULL
);

-- Which visitor each staged event belongs to (bots, test traffic and duplicates have none), with
-- the event's identifiers (node ids), the one that decides its visitor (anchor: the most personal
-- that is not a hub) and the normalized facts it carried,
-- from which profiles are rebuilt without rereading staging.
CREATE TABLE IF NOT EXISTS identity.event_visitors (
    event_key VARCHAR NOT NULL,
    partition_date DATE NOT NULL,
    visitor_id VARCHAR NOT NULL,
    event_time TIMESTAMPTZ NOT NULL,
    node_ids BIGINT[] NOT NULL,
    anchor_node_id BIGINT NOT NULL,
    action_source VARCHAR,
    email VARCHAR,
    phone VARCHAR,
    first_name VARCHAR,
    last_name VARCHAR,
    city VARCHAR,
    state VARCHAR,
    zip VARCHAR,
    country VARCHAR,
    customer_id VARCHAR,
    ip VARCHAR,
    user_agent VARCHAR,
    click_id VARCHAR,
    gender VARCHAR,
    date_of_birth VARCHAR,
    advertising_id VARCHAR,
    -- The Pinterest click id this event is attributed to: its own, else its visitor's latest
    -- click before it within the attribution window (settings.attribution_window_days).
    attributed_click_id VARCHAR,
    attributed_click_at TIMESTAMPTZ
);

-- Per staged day: each identifier's events, and each pair's events (node ids).
CREATE TABLE IF NOT EXISTS identity.identifier_days (
    partition_date DATE NOT NULL,
    node_id BIGINT NOT NULL,
    events INTEGER NOT NULL,
    first_seen TIMESTAMPTZ,
    last_seen TIMESTAMPTZ
);

CREATE TABLE IF NOT EXISTS identity.edge_days (
    partition_date DATE NOT NULL,
    a_id BIGINT NOT NULL,
    b_id BIGINT NOT NULL,
    events INTEGER NOT NULL,
    first_seen TIMESTAMPTZ,
    last_seen TIMESTAMPTZ
);

-- The staged days identity has read: a day whose rows staging rewrote (row_signature) is
-- fingerprinted again, and read again when its content (fingerprint) changed.
CREATE TABLE IF NOT EXISTS identity.graph_days (
    partition_date DATE NOT NULL,
    staged_events BIGINT NOT NULL,
    fingerprint UBIGINT NOT NULL,
    row_signature UBIGINT NOT NULL,
    processed_at TIMESTAMPTZ NOT NULL
);

-- One row per identity run: what it read, whether it recomputed everything, what changed.
CREATE TABLE IF NOT EXISTS identity.graph_runs (
    run_at TIMESTAMPTZ NOT NULL,
    mode VARCHAR NOT NULL,
    days_read INTEGER NOT NULL,
    rules VARCHAR NOT NULL,
    visitors BIGINT NOT NULL,
    visitors_merged BIGINT NOT NULL,
    visitors_split BIGINT NOT NULL,
    seconds DOUBLE NOT NULL
);

-- When visitors merge, the ids that stopped being used point to the one kept (always the
-- current id: a later merge rewrites older rows). A visitor split off gets a row too.
CREATE TABLE IF NOT EXISTS identity.visitor_id_map (
    old_visitor_id VARCHAR NOT NULL,
    visitor_id VARCHAR NOT NULL,
    reason VARCHAR NOT NULL,
    mapped_at TIMESTAMPTZ NOT NULL
);

CREATE TABLE IF NOT EXISTS identity.visitor_profiles (
    visitor_id VARCHAR NOT NULL,
    identifiers INTEGER NOT NULL,
    events INTEGER NOT NULL,
    first_seen TIMESTAMPTZ,
    last_seen TIMESTAMPTZ,
    email VARCHAR,
    email_seen_at TIMESTAMPTZ,
    phone VARCHAR,
    phone_seen_at TIMESTAMPTZ,
    first_name VARCHAR,
    last_name VARCHAR,
    city VARCHAR,
    state VARCHAR,
    zip VARCHAR,
    country VARCHAR,
    address_seen_at TIMESTAMPTZ,
    customer_id VARCHAR,
    ip VARCHAR,
    user_agent VARCHAR,
    web_seen_at TIMESTAMPTZ,
    click_id VARCHAR,
    click_id_seen_at TIMESTAMPTZ,
    name_seen_at TIMESTAMPTZ,
    customer_id_seen_at TIMESTAMPTZ,
    gender VARCHAR,
    gender_seen_at TIMESTAMPTZ,
    date_of_birth VARCHAR,
    date_of_birth_seen_at TIMESTAMPTZ,
    advertising_id VARCHAR,
    advertising_id_seen_at TIMESTAMPTZ,
    first_name_seen_at TIMESTAMPTZ,
    last_name_seen_at TIMESTAMPTZ
);

-- What Pinterest is sent: hashes, and the fields Pinterest takes unhashed, nothing else.
CREATE TABLE IF NOT EXISTS capi.pinterest_events (
    partition_date DATE NOT NULL,
    event_id VARCHAR NOT NULL,
    event_name VARCHAR NOT NULL,
    action_source VARCHAR NOT NULL,
    event_time BIGINT NOT NULL,
    source_event_type VARCHAR NOT NULL,
    store VARCHAR,
    visitor_id VARCHAR,
    eligible BOOLEAN NOT NULL,
    skip_reason VARCHAR,
    has_em BOOLEAN NOT NULL,
    has_ph BOOLEAN NOT NULL,
    has_external_id BOOLEAN NOT NULL,
    has_click_id BOOLEAN NOT NULL,
    has_ip_ua BOOLEAN NOT NULL,
    has_hashed_maids BOOLEAN NOT NULL,
    click_id_from_profile BOOLEAN NOT NULL,
    value DECIMAL(18, 2),
    currency VARCHAR,
    -- Stored uncompressed: DuckDB's string compression cost more CPU than building the
    -- payloads and halved their size at best (docs/payload.md, "How it is built").
    payload JSON NOT NULL USING COMPRESSION uncompressed,
    -- The source's own event name, whether the event is sent opted out or under LDP, and the
    -- fields that arrived but were left out (invalid, placeholder, contact-shaped text).
    source_event_name VARCHAR,
    opt_out BOOLEAN,
    ldp BOOLEAN,
    dropped_fields VARCHAR[]
);
-- Files written before these columns existed gain them.
ALTER TABLE capi.pinterest_events ADD COLUMN IF NOT EXISTS source_event_name VARCHAR;
ALTER TABLE capi.pinterest_events ADD COLUMN IF NOT EXISTS opt_out BOOLEAN;
ALTER TABLE capi.pinterest_events ADD COLUMN IF NOT EXISTS ldp BOOLEAN;
ALTER TABLE capi.pinterest_events ADD COLUMN IF NOT EXISTS dropped_fields VARCHAR[];

-- The delivery ledger: append-only. One row per HTTP request sent.
CREATE TABLE IF NOT EXISTS delivery.requests (
    request_id VARCHAR NOT NULL,
    destination VARCHAR NOT NULL,
    partition_date DATE NOT NULL,
    batch_no INTEGER NOT NULL,
    attempt INTEGER NOT NULL,
    events INTEGER NOT NULL,
    status_code INTEGER,
    latency_ms DOUBLE,
    error VARCHAR,
    sent_at TIMESTAMPTZ NOT NULL
);

-- One row per event per outcome recorded; the latest row for an event is its state.
CREATE TABLE IF NOT EXISTS delivery.event_outcomes (
    destination VARCHAR NOT NULL,
    partition_date DATE NOT NULL,
    event_id VARCHAR NOT NULL,
    outcome VARCHAR NOT NULL,
    attempts INTEGER NOT NULL,
    request_id VARCHAR,
    error_message VARCHAR,
    warning_message VARCHAR,
    recorded_at TIMESTAMPTZ NOT NULL
);

-- Delivery journals already moved into the two tables above, so none is imported twice.
CREATE TABLE IF NOT EXISTS delivery.imported_journals (
    journal_id VARCHAR NOT NULL,
    imported_at TIMESTAMPTZ NOT NULL
);

CREATE OR REPLACE VIEW delivery.event_status AS
SELECT *
FROM delivery.event_outcomes
QUALIFY row_number() OVER (
    PARTITION BY destination, event_id ORDER BY recorded_at DESC, attempts DESC
) = 1;

CREATE TABLE IF NOT EXISTS monitoring.match_rate (
    partition_date DATE NOT NULL,
    destination VARCHAR NOT NULL,
    event_name VARCHAR NOT NULL,
    events_seen INTEGER NOT NULL,
    eligible INTEGER NOT NULL,
    skipped_bot INTEGER NOT NULL,
    skipped_test INTEGER NOT NULL,
    skipped_too_old INTEGER NOT NULL,
    skipped_future INTEGER NOT NULL,
    skipped_no_identifier INTEGER NOT NULL,
    sent INTEGER NOT NULL,
    processed INTEGER NOT NULL,
    dead_lettered INTEGER NOT NULL,
    pending INTEGER NOT NULL,
    em_share DOUBLE,
    ph_share DOUBLE,
    external_id_share DOUBLE,
    click_id_share DOUBLE,
    ip_ua_share DOUBLE,
    hashed_maids_share DOUBLE,
    match_rate DOUBLE,
    match_score DOUBLE,
    computed_at TIMESTAMPTZ NOT NULL,
    -- Every skip reason with its count, whatever reasons enrich gives (bot, consent, ...).
    skipped_by_reason MAP(VARCHAR, INTEGER),
    -- Events a dry run wrote to files instead of sending.
    dry_run INTEGER
);

-- Files written before these columns existed get them; inserts name their columns.
ALTER TABLE monitoring.match_rate ADD COLUMN IF NOT EXISTS skipped_by_reason MAP(VARCHAR, INTEGER);
ALTER TABLE monitoring.match_rate ADD COLUMN IF NOT EXISTS dry_run INTEGER;

-- The same skips in long form, one row per day, destination, event (plus 'all') and reason.
CREATE TABLE IF NOT EXISTS monitoring.skipped_by_reason (
    partition_date DATE NOT NULL,
    destination VARCHAR NOT NULL,
    event_name VARCHAR NOT NULL,
    skip_reason VARCHAR NOT NULL,
    events INTEGER NOT NULL
);

-- Pinterest's own Event Quality Score (GET /v5/ad_accounts/{id}/conversion_eqs), as read on
-- the day after partition_date: one row per component (hashed_email, click_id_epik, ...) and
-- Pinterest event, with the coverage in percent Pinterest reports.
CREATE TABLE IF NOT EXISTS monitoring.pinterest_eqs (
    partition_date DATE NOT NULL,
    destination VARCHAR NOT NULL,
    lookback_period VARCHAR NOT NULL,
    source_platform VARCHAR,
    ingestion_source VARCHAR,
    overall_status VARCHAR NOT NULL,
    component VARCHAR NOT NULL,
    event_name VARCHAR NOT NULL,
    coverage DOUBLE,
    overlap DOUBLE,
    issues JSON,
    fetched_at TIMESTAMPTZ NOT NULL
);

-- Our identifier coverage beside Pinterest's, per day, destination, event and component.
CREATE OR REPLACE VIEW monitoring.eqs_comparison AS
SELECT e.partition_date, e.destination, e.event_name, e.component, e.overall_status,
       e.coverage / 100 AS pinterest_coverage,
       CASE e.component
           WHEN 'hashed_email' THEN m.em_share
           WHEN 'click_id_epik' THEN m.click_id_share
           WHEN 'ip_address' THEN m.ip_ua_share
           WHEN 'user_agent' THEN m.ip_ua_share
           WHEN 'advertiser_external_id' THEN m.external_id_share
           WHEN 'hashed_maid' THEN m.hashed_maids_share
       END AS our_coverage
FROM monitoring.pinterest_eqs e
LEFT JOIN monitoring.match_rate m
  ON m.partition_date = e.partition_date AND m.destination = e.destination
 AND m.event_name = e.event_name

