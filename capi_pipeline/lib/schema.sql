-- Every table the pipeline writes. Times are TIMESTAMPTZ in UTC; daily tables carry the UTC
-- date of the event as partition_date. Personal data lives only in raw, staging and identity.

CREATE SCHEMA IF NOT EXISTS raw;
CREATE SCHEMA IF NOT EXISTS staging;
CREATE SCHEMA IF NOT EXISTS identity;
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
    body JSON NOT NULL
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

-- Identity: all history, rebuilt by each identity run.
CREATE TABLE IF NOT EXISTS identity.identifiers (
    node_key VARCHAR NOT NULL,
    identifier_type VARCHAR NOT NULL,
    identifier_value VARCHAR NOT NULL,
    visitor_id VARCHAR NOT NULL,
    events INTEGER NOT NULL,
    first_seen TIMESTAMPTZ,
    last_seen TIMESTAMPTZ
);

CREATE TABLE IF NOT EXISTS identity.edges (
    node_a VARCHAR NOT NULL,
    node_b VARCHAR NOT NULL,
    events INTEGER NOT NULL,
    first_seen TIMESTAMPTZ,
    last_seen TIMESTAMPTZ
);

CREATE TABLE IF NOT EXISTS identity.refused_edges (
    node_a VARCHAR NOT NULL,
    node_b VARCHAR NOT NULL,
    reason VARCHAR NOT NULL,
    events INTEGER NOT NULL
);

-- Which visitor each staged event belongs to (bots, test traffic and duplicates have none).
CREATE TABLE IF NOT EXISTS identity.event_visitors (
    event_key VARCHAR NOT NULL,
    partition_date DATE NOT NULL,
    visitor_id VARCHAR NOT NULL
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
    click_id_seen_at TIMESTAMPTZ
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
    payload JSON NOT NULL,
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
    computed_at TIMESTAMPTZ NOT NULL
)
