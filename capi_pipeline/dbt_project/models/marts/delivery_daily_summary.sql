-- One row per day and destination: what became of the day's events (their latest outcome in
-- the ledger) and what the requests to Pinterest looked like.
with outcomes as (
    select
        partition_date as day,
        destination,
        count(*) as events,
        count(*) filter (where outcome = 'delivered') as delivered,
        count(*) filter (where outcome = 'dead_letter') as dead_lettered,
        count(*) filter (where outcome = 'pending') as pending,
        count(*) filter (where outcome = 'skipped') as skipped,
        count(*) filter (where outcome = 'dry_run') as dry_run
    from {{ source('delivery', 'event_status') }}
    group by all
),

requests as (
    select
        partition_date as day,
        destination,
        count(*) as requests,
        count(*) filter (where status_code is distinct from 200) as failed_requests,
        median(latency_ms) as median_latency_ms,
        max(sent_at) as last_sent_at
    from {{ source('delivery', 'requests') }}
    group by all
)

select
    o.day,
    o.destination,
    o.events,
    o.delivered,
    o.dead_lettered,
    o.pending,
    o.skipped,
    o.dry_run,
    case when o.delivered + o.dead_lettered + o.pending > 0
        then o.delivered::double / (o.delivered + o.dead_lettered + o.pending) end
        as delivered_share,
    coalesce(r.requests, 0) as requests,
    coalesce(r.failed_requests, 0) as failed_requests,
    r.median_latency_ms,
    r.last_sent_at
from outcomes o
left join requests r using (day, destination)
