-- One row per day and destination: the headline delivery and match figures a marketer asks
-- for ("did yesterday's purchases reach Pinterest, and how well did they match?").
select
    partition_date as day,
    destination,
    events_seen,
    eligible,
    sent,
    processed,
    dead_lettered,
    pending,
    case when sent > 0 then processed::double / sent end as processed_share,
    match_rate,
    match_score,
    em_share,
    click_id_share,
    ip_ua_share
from {{ source('monitoring', 'match_rate') }}
where event_name = 'all'
