-- One row per day, destination and Pinterest event: which events reach Pinterest and how
-- well each kind matches ("are purchases matched as well as page visits?").
select
    partition_date as day,
    destination,
    event_name,
    events_seen,
    eligible,
    events_seen - eligible as skipped,
    sent,
    processed,
    dead_lettered,
    pending,
    case when sent > 0 then processed::double / sent end as processed_share,
    match_rate,
    match_score,
    em_share,
    ph_share,
    external_id_share,
    click_id_share,
    ip_ua_share,
    hashed_maids_share
from {{ source('monitoring', 'match_rate') }}
where event_name <> 'all'
