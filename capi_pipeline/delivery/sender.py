"""Sending a partition's pending events in batches, and what became of each event.

The sender turns Pinterest's answers into outcomes: `delivered` when Pinterest reports an
event processed, `dead_letter` when Pinterest refused it for a reason that retrying cannot
change, `pending` when the retry budget ran out on a failure that can pass. A whole batch
refused with 400 is split in halves until the events at fault are alone, so one bad event
does not sink a thousand good ones.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from capi_pipeline.pinterest.client import Attempt, ConversionsClient


class Outcome(NamedTuple):
    """What happened to one event in one request (a tuple: a batch makes a thousand)."""

    event_id: str
    outcome: str
    attempts: int
    request_id: str | None
    error_message: str | None
    warning_message: str | None


@dataclass(frozen=True)
class BatchDone:
    """A batch's attempts and outcomes, ready for the ledger."""

    batch_no: int
    attempts: list[Attempt]
    outcomes: list[Outcome]


class Progress:
    """Counts a person can follow during a long send, logged every few seconds."""

    def __init__(self, total: int, log: Callable[[str], None], every: float = 5.0) -> None:
        self.total = total
        self.done = 0
        self.batches = 0
        self._log = log
        self._every = every
        self._started = self._last = time.monotonic()

    def add(self, events: int) -> None:
        self.done += events
        self.batches += 1
        now = time.monotonic()
        if now - self._last >= self._every:
            self._last = now
            self._log(self.line())

    def line(self) -> str:
        rate = self.done / max(time.monotonic() - self._started, 1e-9)
        return (f"{self.batches} batches, {self.done}/{self.total} events sent "
                f"({rate:,.0f} events/s), {self.total - self.done} left")


async def send_batches(
    client: ConversionsClient,
    events: list[tuple[str, bytes]],
    batch_size: int,
    max_concurrency: int,
    on_batch: Callable[[BatchDone], None],
    progress: Progress | Callable[[str], None],
    first_batch_no: int = 1,
) -> int:
    """Send events, at most `max_concurrency` requests at once, reporting each batch.

    Returns the number of batches sent.
    """
    if not isinstance(progress, Progress):
        progress = Progress(len(events), progress)
    batches = [events[start:start + batch_size] for start in range(0, len(events), batch_size)]
    semaphore = asyncio.Semaphore(max_concurrency)

    async def run(batch_no: int, batch: list[tuple[str, bytes]]) -> None:
        async with semaphore:
            attempts: list[Attempt] = []
            outcomes = await _send_splitting(client, batch, attempts)
        on_batch(BatchDone(batch_no, attempts, outcomes))
        progress.add(len(batch))

    tasks = [asyncio.create_task(run(number, batch))
             for number, batch in enumerate(batches, first_batch_no)]
    try:
        await asyncio.gather(*tasks)
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise
    return len(batches)


async def _send_splitting(
    client: ConversionsClient, batch: list[tuple[str, bytes]], attempts: list[Attempt]
) -> list[Outcome]:
    response = await client.send([payload for _, payload in batch])
    attempts.extend(response.attempts)
    tries = len(response.attempts)
    request_id = response.request_id

    if response.status_code == 200 and response.body is not None:
        return _per_event(batch, response.body, tries, request_id)
    if response.status_code in (400, 413) and len(batch) > 1:
        middle = len(batch) // 2
        first = await _send_splitting(client, batch[:middle], attempts)
        second = await _send_splitting(client, batch[middle:], attempts)
        return first + second
    final = response.status_code is not None and response.status_code < 500 and (
        response.status_code != 429
    )
    outcome = "dead_letter" if final else "pending"
    return [Outcome(event_id, outcome, tries, request_id, response.error, None)
            for event_id, _ in batch]


def _per_event(
    batch: list[tuple[str, bytes]], body: dict, tries: int, request_id: str | None
) -> list[Outcome]:
    results = body.get("events")
    if not isinstance(results, list) or len(results) != len(batch):
        # Pinterest answered 200 without one result per event: without it nothing can be
        # called delivered, so the events wait for the next run.
        message = "200 without one result per event"
        return [Outcome(event_id, "pending", tries, request_id, message, None)
                for event_id, _ in batch]
    if body.get("num_events_processed") == len(batch) and not any(
        isinstance(result, dict) and result.get("warning_message") for result in results
    ):
        # The common answer: everything processed, nothing to say about any one event.
        return [Outcome(event_id, "delivered", tries, request_id, None, None)
                for event_id, _ in batch]
    outcomes = []
    for (event_id, _), result in zip(batch, results, strict=True):
        result = result if isinstance(result, dict) else {}
        processed = result.get("status") == "processed"
        warning = result.get("warning_message")
        outcomes.append(Outcome(
            event_id,
            "delivered" if processed else "dead_letter",
            tries,
            request_id,
            None if processed else str(result.get("error_message"))[:500],
            str(warning)[:500] if warning else None,
        ))
    return outcomes


def write_dry_run(
    folder: Path, events: list[tuple[str, bytes]], batch_size: int, first_batch_no: int = 1
) -> list[BatchDone]:
    """Write the request bodies that would be sent, one JSON file per batch."""
    folder.mkdir(parents=True, exist_ok=True)
    done = []
    for number, start in enumerate(range(0, len(events), batch_size), first_batch_no):
        batch = events[start:start + batch_size]
        path = folder / f"batch-{number:05d}.json"
        path.write_bytes(b'{"data":[' + b",".join(payload for _, payload in batch) + b"]}")
        done.append(BatchDone(number, [], [
            Outcome(event_id, "dry_run", 0, None, None, None) for event_id, _ in batch
        ]))
    return done
