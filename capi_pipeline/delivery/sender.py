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


class Outcomes:
    """A batch's outcomes as columns, one list per field of :class:`Outcome`.

    A batch makes a thousand outcomes, nearly always all alike (delivered, one request): as
    columns they cost a few list repetitions instead of a thousand tuples, and the journal
    writes the columns as they are. Iterating yields :class:`Outcome` tuples.
    """

    __slots__ = ("event_id", "outcome", "attempts", "request_id", "error_message",
                 "warning_message")

    def __init__(self, event_id: list[str], outcome: list[str], attempts: list[int],
                 request_id: list[str | None], error_message: list[str | None],
                 warning_message: list[str | None]) -> None:
        self.event_id = event_id
        self.outcome = outcome
        self.attempts = attempts
        self.request_id = request_id
        self.error_message = error_message
        self.warning_message = warning_message

    @classmethod
    def alike(cls, event_ids: list[str], outcome: str, attempts: int,
              request_id: str | None, error_message: str | None = None) -> Outcomes:
        """The same outcome for every event."""
        n = len(event_ids)
        return cls(event_ids, [outcome] * n, [attempts] * n, [request_id] * n,
                   [error_message] * n, [None] * n)

    @classmethod
    def of(cls, rows: list[Outcome]) -> Outcomes:
        if not rows:
            return cls([], [], [], [], [], [])
        return cls(*(list(column) for column in zip(*rows, strict=True)))

    def columns(self) -> tuple[list, ...]:
        """The six columns, in :class:`Outcome`'s field order."""
        return (self.event_id, self.outcome, self.attempts, self.request_id,
                self.error_message, self.warning_message)

    def __add__(self, other: Outcomes) -> Outcomes:
        return Outcomes(*(mine + theirs for mine, theirs in
                          zip(self.columns(), other.columns(), strict=True)))

    def __len__(self) -> int:
        return len(self.event_id)

    def __iter__(self):
        return (Outcome(*row) for row in zip(*self.columns(), strict=True))

    def __getitem__(self, index: int) -> Outcome:
        return Outcome(*(column[index] for column in self.columns()))


@dataclass(frozen=True)
class BatchDone:
    """A batch's attempts and outcomes, ready for the ledger."""

    batch_no: int
    attempts: list[Attempt]
    outcomes: Outcomes


class Progress:
    """Counts a person can follow during a long send, logged every few seconds.

    `total` is a number, or a function giving it once known (None before): the delivery's
    spool counts the events due while the first pages are already being sent.
    """

    def __init__(self, total: int | Callable[[], int | None], log: Callable[[str], None],
                 every: float = 5.0) -> None:
        self._total = total
        self.done = 0
        self.batches = 0
        self._log = log
        self._every = every
        self._started = self._last = time.monotonic()

    @property
    def total(self) -> int | None:
        return self._total() if callable(self._total) else self._total

    def add(self, events: int) -> None:
        self.done += events
        self.batches += 1
        now = time.monotonic()
        if now - self._last >= self._every:
            self._last = now
            self._log(self.line())

    def line(self) -> str:
        rate = self.done / max(time.monotonic() - self._started, 1e-9)
        total = self.total
        if total is None:
            return f"{self.batches} batches, {self.done} events sent ({rate:,.0f} events/s)"
        return (f"{self.batches} batches, {self.done}/{total} events sent "
                f"({rate:,.0f} events/s), {total - self.done} left")


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
) -> Outcomes:
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
    return Outcomes.alike([event_id for event_id, _ in batch], outcome, tries, request_id,
                          response.error)


def _per_event(
    batch: list[tuple[str, bytes]], body: dict, tries: int, request_id: str | None
) -> Outcomes:
    results = body.get("events")
    if not isinstance(results, list) or len(results) != len(batch):
        # Pinterest answered 200 without one result per event: without it nothing can be
        # called delivered, so the events wait for the next run.
        message = "200 without one result per event"
        return Outcomes.alike([event_id for event_id, _ in batch], "pending", tries,
                              request_id, message)
    if body.get("num_events_processed") == len(batch) and not _any_warning(results):
        # The common answer: everything processed, nothing to say about any one event.
        return Outcomes.alike([event_id for event_id, _ in batch], "delivered", tries,
                              request_id)
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
    return Outcomes.of(outcomes)


def _any_warning(results: list) -> bool:
    """Whether any result carries a warning (a list comprehension: a thousand results)."""
    try:
        return any([result.get("warning_message") for result in results])
    except AttributeError:
        # A result that is not an object: the careful path reads each one.
        return any(isinstance(result, dict) and result.get("warning_message")
                   for result in results)


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
        done.append(BatchDone(number, [], Outcomes.alike(
            [event_id for event_id, _ in batch], "dry_run", 0, None)))
    return done
