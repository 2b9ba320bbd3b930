-- One row per day: how many resolved visitors had Pinterest events, how many of them had an
-- event that could be sent, and how many had their first Pinterest event that day. Only the
-- warehouse file is read: the identity graph lives in the personal-data file, which analysts
-- are not given.
with events as (
    select partition_date as day, visitor_id, eligible
    from {{ source('capi', 'pinterest_events') }}
    where visitor_id is not null
),

first_days as (
    select visitor_id, min(day) as first_day
    from events
    group by visitor_id
)

select
    e.day,
    count(distinct e.visitor_id) as visitors,
    count(distinct e.visitor_id) filter (where e.eligible) as visitors_with_eligible_events,
    count(distinct e.visitor_id) filter (where f.first_day = e.day) as new_visitors
from events e
left join first_days f using (visitor_id)
group by e.day
