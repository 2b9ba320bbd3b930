"""The sender against emulators with faults: retries, 400 isolation, 401 stops everything."""

from __future__ import annotations

import asyncio
import json
import time

import pytest

from capi_pipeline.delivery.sender import send_batches
from capi_pipeline.pinterest.client import ConversionsClient, PinterestAuthError
from capi_pipeline.pinterest.emulator import EmulatorProcess

TOKEN = "delivery-token"
ACCOUNT = "123456789"
EM = "a" * 64


def event(event_id: str, **extra) -> tuple[str, bytes]:
    body = {"event_name": "page_visit", "action_source": "web",
            "event_time": int(time.time()) - 60, "event_id": event_id,
            "user_data": {"em": [EM]}, **extra}
    return event_id, json.dumps(body).encode()


def deliver(base_url: str, events, token: str = TOKEN, batch_size: int = 10, **client):
    done = []

    async def run():
        async with ConversionsClient(base_url, ACCOUNT, token, max_attempts=4, **client) as c:
            await send_batches(c, events, batch_size, 2, done.append, lambda _: None)

    asyncio.run(run())
    return done


def test_429_with_retry_after_is_retried_until_processed():
    with EmulatorProcess(token=TOKEN, fail_first=2, retry_after=1) as emulator:
        started = time.monotonic()
        done = deliver(emulator.base_url, [event("e1"), event("e2")])
        elapsed = time.monotonic() - started
        stats = emulator.stats()
    (batch,) = done
    assert [attempt.status_code for attempt in batch.attempts] == [429, 429, 200]
    assert {outcome.outcome for outcome in batch.outcomes} == {"delivered"}
    assert all(outcome.attempts == 3 for outcome in batch.outcomes)
    assert elapsed >= 2.0  # two waits of Retry-After: 1
    assert stats["processed_by_event_id"] == {"e1": 1, "e2": 1}


def test_bad_event_is_isolated_from_its_batch_and_dead_lettered():
    events = [event(f"e{n}") for n in range(8)]
    events[5] = event("e5", custom_data={"category_name": "x"})
    with EmulatorProcess(token=TOKEN) as emulator:
        done = deliver(emulator.base_url, events, batch_size=8)
        stats = emulator.stats()
    outcomes = {o.event_id: o for batch in done for o in batch.outcomes}
    assert outcomes["e5"].outcome == "dead_letter"
    assert "category_name" in outcomes["e5"].error_message
    assert {o.outcome for key, o in outcomes.items() if key != "e5"} == {"delivered"}
    assert sorted(stats["processed_by_event_id"]) == sorted(f"e{n}" for n in range(8) if n != 5)


def test_per_event_failure_is_dead_lettered_with_pinterests_message():
    with EmulatorProcess(token=TOKEN) as emulator:
        done = deliver(emulator.base_url, [event("ok"), event("ms", event_time=int(
            time.time() * 1000))])
    outcomes = {o.event_id: o for o in done[0].outcomes}
    assert outcomes["ok"].outcome == "delivered"
    assert outcomes["ms"].outcome == "dead_letter" and outcomes["ms"].error_message


def test_wrong_token_stops_the_run_and_marks_nothing():
    with EmulatorProcess(token=TOKEN) as emulator:
        with pytest.raises(PinterestAuthError) as raised:
            deliver(emulator.base_url, [event("e1")], token="wrong-token")
    assert "401" in str(raised.value) and "wrong-token" not in str(raised.value)


def test_unreachable_host_leaves_events_pending():
    done = deliver("http://127.0.0.1:9", [event("e1")], timeout_seconds=1.0)
    (outcome,) = done[0].outcomes
    assert outcome.outcome == "pending" and outcome.attempts == 4
    assert "ConnectError" in outcome.error_message
