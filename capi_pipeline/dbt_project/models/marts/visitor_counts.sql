-- One row per day: how many resolved visitors had Pinterest events, how many of them had an
-- event that could be sent, and how many were first seen that day.
with events as (
    select partition_date as day, visitor_id, eligible
    from {{ source('capi', 'pinterest_events') }}
    where visitor_id is not null
),

profiles as (
    select visitor_id, cast(first_seen as date) as first_seen_day
    from {{ source('identity', 'visitor_profiles') }}
)

select
    e.day,
    count(distinct e.visitor_id) as visitors,
    count(distinct e.visitor_id) filter (where e.eligible) as visitors_with_eligible_events,
    count(distinct e.visitor_id) filter (where p.first_seen_day = e.day) as new_visitors
from events e
left join profiles p using (visitor_id)
group by e.day
