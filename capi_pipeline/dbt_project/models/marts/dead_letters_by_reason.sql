-- One row per day, destination and Pinterest error message: the events Pinterest refused
-- and why, most frequent first when ordered by events.
select
    partition_date as day,
    destination,
    coalesce(error_message, '(no message)') as error_message,
    count(*) as events,
    min(recorded_at) as first_recorded_at,
    max(recorded_at) as last_recorded_at
from {{ source('delivery', 'event_status') }}
where outcome = 'dead_letter'
group by all
