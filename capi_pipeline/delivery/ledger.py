"""The delivery ledger: which events are due, sending them page by page, recording answers.

The events due are streamed once to Arrow spool files beside the database, a page each, and
read back a page at a time while the rest are still being written, so a million-event day is
never held in memory and the connection to the database is held only while the query runs.
Each batch's attempts and outcomes are appended to a journal file (one per page, locked while
written) the moment the batch returns. Journals move into the ledger tables when the run
ends, or at the start of the next run after a crash, so a killed process loses at most the
batches in flight.
"""

from __future__ import annotations

import asyncio
import fcntl
import queue
import re
import tempfile
import threading
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path

import orjson
import pyarrow as pa

from capi_pipeline.delivery.destinations import Destination
from capi_pipeline.delivery.sender import (
    BatchDone,
    Outcomes,
    Progress,
    send_batches,
    write_dry_run,
)
from capi_pipeline.pinterest.client import ConversionsClient, PinterestAuthError

# Which events a run picks up: those without a final outcome, all of them again (resend), or
# those whose latest outcome is a dead letter (replay after a fix).
SELECTIONS = {
    # A final outcome stays final (a replay adds a newer one), so any final row in the history
    # settles an event; an anti-join on the table avoids the view's window over all history.
    "due": """NOT EXISTS (
        SELECT 1 FROM delivery.event_outcomes s
        WHERE s.destination = $destination AND s.event_id = e.event_id
          AND s.outcome IN ('delivered', 'dead_letter', 'dry_run'))""",
    "resend": "$destination IS NOT NULL",
    "dead_letters": """EXISTS (
        SELECT 1 FROM delivery.event_status s
        WHERE s.destination = $destination AND s.event_id = e.event_id
          AND s.outcome = 'dead_letter')""",
}

# An event carrying an identifier someone asked to be erased (privacy/erase.py): the keys are
# salted hashes of the Pinterest hashes the payload holds.
SUPPRESSED = """EXISTS (
    SELECT 1 FROM privacy.suppressions p
    WHERE p.key IN (SELECT sha256($salt || h) FROM unnest(
        coalesce(CAST(json_extract(e.payload, '$.user_data.em') AS VARCHAR[]), [])
        || coalesce(CAST(json_extract(e.payload, '$.user_data.ph') AS VARCHAR[]), [])
        || coalesce(CAST(json_extract(e.payload, '$.user_data.external_id') AS VARCHAR[]), [])
    ) t(h)))"""

# No ORDER BY: sorting a day's payloads would hold them all in memory. The rows come roughly
# in the order enrich wrote them (event time), but not exactly: on several threads DuckDB's
# stream can hand over its chunks in another order from one run to the next, so which events
# share a request varies. Pinterest judges each event alone.
DUE_SQL = """
SELECT e.event_id, encode(e.payload::VARCHAR) AS payload, e.partition_date
FROM capi.pinterest_events e
WHERE ($day IS NULL OR e.partition_date = $day) AND e.eligible
  AND coalesce(e.store, '') IN (SELECT unnest($stores))
  AND {selection} AND NOT {suppressed}
"""

# Each candidate's latest outcome, as delivery.event_status has it, but with the window over the
# candidates' own history only: the view numbers every row the ledger ever had, which grows by
# a day's events every day. Filtering on the window's partition key first gives the same rows.
LATEST_OF_CANDIDATES = """
latest AS (
    SELECT o.event_id, o.outcome, o.error_message
    FROM delivery.event_outcomes o
    WHERE o.destination = $destination AND o.event_id IN (SELECT event_id FROM candidates)
    QUALIFY row_number() OVER (
        PARTITION BY o.destination, o.event_id ORDER BY o.recorded_at DESC, o.attempts DESC
    ) = 1
)"""

SKIPPED_ERASED_SQL = """
INSERT INTO delivery.event_outcomes
WITH candidates AS (
    SELECT e.partition_date, e.event_id
    FROM capi.pinterest_events e
    WHERE ($day IS NULL OR e.partition_date = $day) AND e.eligible
      AND coalesce(e.store, '') IN (SELECT unnest($stores))
      AND {suppressed}
),""" + LATEST_OF_CANDIDATES + """
SELECT $destination, c.partition_date, c.event_id, 'skipped', 0, NULL, 'erased', NULL, now()
FROM candidates c
WHERE NOT EXISTS (
    SELECT 1 FROM latest s
    WHERE s.event_id = c.event_id AND s.outcome = 'skipped' AND s.error_message = 'erased')
"""


def suppression_salt(conn) -> str | None:
    """The erasure salt when any identifier is suppressed, else None (nothing to check)."""
    if not conn.execute("SELECT count(*) FROM privacy.suppressions").fetchall()[0][0]:
        return None
    return conn.execute("SELECT salt FROM privacy.settings").fetchall()[0][0]


SKIPS_TO_RECORD = """
WITH candidates AS (
    SELECT e.partition_date, e.event_id, e.skip_reason
    FROM capi.pinterest_events e
    WHERE e.partition_date = $day AND NOT e.eligible
      AND coalesce(e.store, '') IN (SELECT unnest($stores)){among}
),""" + LATEST_OF_CANDIDATES + """
SELECT {columns}
FROM candidates c
WHERE NOT EXISTS (
    SELECT 1 FROM latest s
    WHERE s.event_id = c.event_id AND s.outcome = 'skipped'
      AND s.error_message IS NOT DISTINCT FROM c.skip_reason)
"""
SKIP_ROW = ("$destination, c.partition_date, c.event_id, 'skipped', 0, NULL, c.skip_reason, "
            "NULL, now()")
SKIPPED_SQL = "INSERT INTO delivery.event_outcomes" + SKIPS_TO_RECORD.format(
    among="", columns=SKIP_ROW)

# A run's skips are worked out while it sends, by the spool's thread once every page is
# written (delivery_spool_ids holds the ids it spooled), and written at the end like the
# others: the statement reads the ledger's event ids of every day (0.4 to 0.5 s of CPU on the
# 30th day of the load benchmark), time the run waited on after its last answer. An event
# this run does not send gets no ledger row from it, and no other run sends to the
# destination meanwhile (the destination's lock), so the rows are those the statement would
# find at the end; the rare ineligible event sharing its id with one sent in this run is left
# to the statement at the end (SENT_SKIPS_SQL).
EARLY_SKIPS_SQL = SKIPS_TO_RECORD.format(
    among="\n      AND e.event_id NOT IN (SELECT event_id FROM delivery_spool_ids)",
    columns="c.partition_date, c.event_id, c.skip_reason")
EARLY_SKIPS_INSERT_SQL = """
INSERT INTO delivery.event_outcomes
SELECT $destination, partition_date, event_id, 'skipped', 0, NULL, skip_reason, NULL, now()
FROM delivery_early_skips
"""
SENT_SKIPS_SQL = "INSERT INTO delivery.event_outcomes" + SKIPS_TO_RECORD.format(
    among="\n      AND e.event_id IN (SELECT event_id FROM delivery_spool_ids)",
    columns=SKIP_ROW)
SENT_CANDIDATES_SQL = """
SELECT count(*) FROM capi.pinterest_events e
WHERE e.partition_date = $day AND NOT e.eligible
  AND coalesce(e.store, '') IN (SELECT unnest($stores))
  AND e.event_id IN (SELECT event_id FROM delivery_spool_ids)
"""


def partition_stores(conn, day: date | None) -> list[str | None]:
    """The stores a day's Pinterest events came from (every day's when `day` is None)."""
    return [row[0] for row in conn.execute(
        "SELECT DISTINCT store FROM capi.pinterest_events "
        "WHERE $day IS NULL OR partition_date = $day", {"day": day}).fetchall()]


def record_skipped(duckdb, plan: DeliveryPlan) -> int:
    """Write a `skipped` outcome, with its reason, for each ineligible event not yet noted.

    The ledger then answers for every event of the day, sent or not. A skip is not final: an
    event that becomes eligible (identity found its email) is sent by a later run.
    """
    with duckdb.get_connection() as conn:
        return _record_skipped(conn, plan)


def _record_skipped(conn, plan: DeliveryPlan, early: EarlySkips | None = None) -> int:
    """The day's skips, found now or, when the spool found them while the run sent, as it
    found them (with the statement run now for candidates sharing an id with a sent event)."""
    params = {"destination": plan.destination.ledger_name, "day": plan.day,
              "stores": plan.stores}
    if early is None:
        count = conn.execute(SKIPPED_SQL, params).fetchall()[0][0]
    else:
        skips, spooled_ids, shared = early
        conn.register("delivery_early_skips", skips)
        try:
            count = conn.execute(EARLY_SKIPS_INSERT_SQL,
                                 {"destination": params["destination"]}).fetchall()[0][0]
        finally:
            conn.unregister("delivery_early_skips")
        if shared:
            conn.register("delivery_spool_ids", spooled_ids)
            try:
                count += conn.execute(SENT_SKIPS_SQL, params).fetchall()[0][0]
            finally:
                conn.unregister("delivery_spool_ids")
    salt = suppression_salt(conn)
    if salt is not None:
        count += conn.execute(SKIPPED_ERASED_SQL.format(suppressed=SUPPRESSED),
                              {**params, "salt": salt}).fetchall()[0][0]
    return count


@dataclass
class DeliveryTotals:
    """What one destination's run did, for metadata and logs."""

    to_send: int = 0
    requests: int = 0
    outcomes: Counter = field(default_factory=Counter)
    # Skipped outcomes written, when the run was asked to record them (record_skips).
    skipped_recorded: int | None = None


@dataclass(frozen=True)
class DeliveryPlan:
    """Which events of which destination a run sends, and how."""

    destination: Destination
    stores: list[str]
    selection: str = "due"
    day: date | None = None
    page_size: int = 20_000
    batch_size: int = 1000
    max_concurrency: int = 8
    calls_per_minute: int = 5000
    timeout_seconds: float = 30.0
    max_attempts: int = 5
    dry_run_dir: Path | None = None


def deliver(duckdb, plan: DeliveryPlan, log: Callable[[str], None], *,
            record_skips: bool = False) -> DeliveryTotals:
    """Send every event the plan selects and record each answer in the ledger.

    With `record_skips`, a run that ends without an error also records the skips of the
    plan's day (:func:`record_skipped`), in the transaction that imports the run's journals
    when there is one: each connection that writes to the ledger pays a checkpoint when it
    closes, about 0.5 s for a day's few thousand skips after the day's outcomes.
    """
    totals = DeliveryTotals()
    with destination_lock(duckdb, plan.destination, log):
        # A crashed run's journal holds outcomes the ledger must know before choosing what to
        # send.
        import_journals(duckdb)
        with Spool(duckdb, plan, skips=record_skips) as spool:
            if spool.has_events():
                _deliver_spooled(duckdb, plan, spool, totals, log, record_skips)
            totals.to_send = spool.count()
        if record_skips and totals.skipped_recorded is None:
            totals.skipped_recorded = record_skipped(duckdb, plan)
    return totals


@contextmanager
def destination_lock(duckdb, destination: Destination, log: Callable[[str], None]):
    """One sender per destination at a time, across processes.

    Two runs choosing what is due at once would both send it. The second waits until the
    first has sent and recorded everything, then finds nothing left to send. It also keeps
    two runs from sharing one ad account's rate limit without knowing of each other.
    """
    folder = journal_folder(duckdb)
    folder.mkdir(parents=True, exist_ok=True)
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", destination.ledger_name)
    with open(folder / f"{name}.lock", "w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log(f"another run is sending to {destination.ledger_name}; waiting for it")
            fcntl.flock(handle, fcntl.LOCK_EX)
        yield


# The skips a spool found while the run sent: the rows (partition_date, event_id,
# skip_reason), the ids it spooled, and how many candidates share an id with a spooled event.
EarlySkips = tuple[pa.Table, pa.Table, int]


class Spool:
    """The events due, streamed from DuckDB to Arrow files a page each, while pages are sent.

    A thread runs the query and writes each page of `page_size` rows, in sending order, to
    an Arrow IPC file of its own beside the database as soon as it is complete, then closes
    the connection; the sender reads the pages back (memory-mapped) in order as they appear.
    Sending the first pages while the rest are spooled takes the spool (0.3 to 0.7 s for a
    330,000-event day) off the delivery's wall time: the sending waits mostly on Pinterest's
    rate limit, so the cores have room for the query beside it. The connection is held no
    longer than before, and memory stays at a page or two whatever the day's size, since a
    page lives in memory only while it is written and while it is sent. Arrow's own format is
    the batches' memory written out, where Parquet encoded every page (1 s of CPU for a
    330,000-event day's 200 MB of payloads, even uncompressed).
    """

    def __init__(self, duckdb, plan: DeliveryPlan, skips: bool = False) -> None:
        self._duckdb = duckdb
        self._plan = plan
        # Whether to work out the day's skips once every page is written (EARLY_SKIPS_SQL).
        self._skips = skips and plan.day is not None
        self._early: EarlySkips | None = None
        self._folder = journal_folder(duckdb)
        self._prefix = f"due-{uuid.uuid4()}"
        self._ready: queue.Queue[Path | BaseException | None] = queue.Queue()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="delivery-spool", daemon=True)
        self._count: int | None = None
        self._head: list[Path | BaseException | None] = []
        self._ended = False

    def __enter__(self) -> Spool:
        self._folder.mkdir(parents=True, exist_ok=True)
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def close(self) -> None:
        """Stop writing pages, wait for the query's connection to close, remove what is left."""
        self._stop.set()
        self._thread.join()
        for path in self._folder.glob(f"{self._prefix}-*.arrow"):
            path.unlink(missing_ok=True)

    def _run(self) -> None:
        try:
            with self._duckdb.get_connection() as conn:
                spooled = self._write_pages(conn)
                # The last page is out before the skips are worked out: the sender need not
                # wait for them.
                self._ready.put(None)
                if self._skips and not self._stop.is_set():
                    try:
                        self._early = self._find_skips(conn, spooled)
                    except Exception:  # noqa: BLE001
                        # Left to the statement at the end, which finds the same rows (and
                        # raises there if the failure was not this thread's alone).
                        self._early = None
        except BaseException as error:  # handed to the sender, which raises it
            self._ready.put(error)

    def _find_skips(self, conn, spooled: list[pa.Array]) -> EarlySkips:
        plan = self._plan
        ids = pa.table({"event_id": pa.chunked_array(spooled, pa.string())})
        params = {"day": plan.day, "stores": plan.stores,
                  "destination": plan.destination.ledger_name}
        conn.register("delivery_spool_ids", ids)
        try:
            skips = conn.sql(EARLY_SKIPS_SQL, params=params).to_arrow_table()
            shared = conn.execute(SENT_CANDIDATES_SQL,
                                  {"day": plan.day, "stores": plan.stores}).fetchall()[0][0]
        finally:
            conn.unregister("delivery_spool_ids")
        return skips, ids, int(shared)

    def early_skips(self) -> EarlySkips | None:
        """The skips the spool found, once its thread is done; None when it did not look (or
        failed to: the statement then runs at the end, as it would without the spool)."""
        self._thread.join()
        return self._early

    def _write_pages(self, conn) -> list[pa.Array]:
        plan = self._plan
        count = 0
        spooled: list[pa.Array] = []
        params = {"day": plan.day, "stores": plan.stores,
                  "destination": plan.destination.ledger_name}
        salt = suppression_salt(conn)
        if salt is not None:
            params["salt"] = salt
        sql = DUE_SQL.format(selection=SELECTIONS[plan.selection],
                             suppressed=SUPPRESSED if salt is not None else "false")
        reader = conn.sql(sql, params=params).to_arrow_reader(plan.page_size)
        for number, page in enumerate(cut_pages(reader, plan.page_size)):
            if self._stop.is_set():
                break
            path = self._folder / f"{self._prefix}-{number:06d}.arrow"
            with pa.OSFile(str(path), "wb") as sink, \
                    pa.ipc.new_file(sink, page.schema) as writer:
                writer.write_table(page)
            count += page.num_rows
            if self._skips:
                spooled.extend(page.column("event_id").chunks)
            self._ready.put(path)
        self._count = count
        return spooled

    def _next(self) -> Path | None:
        """The next page's file, waiting for it; None once every page was given."""
        if self._ended:
            return None
        item = self._head.pop(0) if self._head else self._ready.get()
        if isinstance(item, BaseException):
            self._ended = True
            raise item
        if item is None:
            self._ended = True
        return item

    def has_events(self) -> bool:
        """Whether any event is due (waits for the first page or the query's end)."""
        if not self._head:
            self._head.append(self._ready.get())
        head = self._head[0]
        if isinstance(head, BaseException):
            self._head.clear()
            self._ended = True
            raise head
        return head is not None

    def counted(self) -> int | None:
        """How many events were due, once the query has ended; None before."""
        return self._count

    def count(self) -> int:
        """How many events were due (waits for the query's end)."""
        self._thread.join()
        return self._count or 0

    def pages(self) -> Iterator[tuple[list[tuple[str, bytes]], PageDays]]:
        """Pages of (event id, payload) in sending order, each with its events' days."""
        while (path := self._next()) is not None:
            with pa.memory_map(str(path)) as source:
                # Mapped, not read: the columns point into the file, and the rows are copied
                # out as Python objects only here.
                page = _page(pa.ipc.open_file(source).read_all())
            path.unlink(missing_ok=True)
            yield page


def cut_pages(batches: Iterable[pa.RecordBatch], page_size: int) -> Iterator[pa.Table]:
    """Tables of exactly `page_size` rows (the last one fewer) from batches of any size, so
    the requests are cut the same way whatever batches DuckDB streamed."""
    pending: list[pa.RecordBatch] = []
    rows = 0
    for batch in batches:
        pending.append(batch)
        rows += batch.num_rows
        while rows >= page_size:
            table = pa.Table.from_batches(pending)
            yield table.slice(0, page_size)
            rest = table.slice(page_size)
            pending, rows = rest.to_batches(), rest.num_rows
    if rows:
        yield pa.Table.from_batches(pending)


def _deliver_spooled(duckdb, plan: DeliveryPlan, spool: Spool, totals, log,
                     record_skips: bool = False) -> None:
    # The total is known when the spool's query ends, long before the first progress line.
    progress = Progress(spool.counted, log)
    journal = Journal(journal_folder(duckdb))

    def record(batch: BatchDone, days: PageDays) -> None:
        journal.append(plan.destination.ledger_name, batch, days)
        totals.outcomes.update(batch.outcomes.outcome)
        totals.requests += len(batch.attempts)

    try:
        if plan.dry_run_dir is not None:
            batch_no = 1
            for page, days in spool.pages():
                for batch in write_dry_run(plan.dry_run_dir, page, plan.batch_size, batch_no):
                    record(batch, days)
                    batch_no += 1
                journal.rotate()
        else:
            try:
                asyncio.run(_send_pages(duckdb, plan, spool, record, progress, journal))
            except PinterestAuthError as error:
                # The refused request is part of the history too, with no event outcome.
                if error.attempt is not None:
                    any_day = plan.day or datetime.now(UTC).date()
                    journal.append(plan.destination.ledger_name,
                                   BatchDone(0, [error.attempt], Outcomes.of([])), any_day)
                raise
            log(progress.line())
    except BaseException:
        journal.close()
        # The spool's connection is closed first, so the import does not run beside it.
        spool.close()
        import_journals(duckdb)
        raise
    journal.close()
    # Waits for the spool's thread (and its connection) to end before the import opens one.
    early = spool.early_skips()

    def skips(conn) -> None:
        totals.skipped_recorded = _record_skipped(conn, plan, early)

    import_journals(duckdb, then=skips if record_skips else None)


async def _send_pages(
    duckdb, plan: DeliveryPlan, spool: Spool, record, progress: Progress, journal: Journal
) -> None:
    """Send page after page; the next page is read while one sends."""
    destination = plan.destination
    pages = spool.pages()
    async with ConversionsClient(
        destination.base_url,
        destination.ad_account_id,
        destination.token(),
        test_mode=destination.test_mode,
        timeout_seconds=plan.timeout_seconds,
        max_attempts=plan.max_attempts,
        calls_per_minute=plan.calls_per_minute,
        max_concurrency=plan.max_concurrency,
    ) as client:
        batch_no = 1
        current = await asyncio.to_thread(next, pages, None)
        while current is not None:
            following = asyncio.create_task(asyncio.to_thread(next, pages, None))
            page, days = current
            batch_no += await send_batches(
                client, page, plan.batch_size, plan.max_concurrency,
                lambda batch, days=days: record(batch, days), progress, first_batch_no=batch_no,
            )
            # One journal file per page keeps each import small; they are moved into DuckDB
            # when the run ends (or by the next run), not while requests are in flight.
            journal.rotate()
            current = await following


# The partition day of a page's events, for the ledger: one date when the page holds one day's
# events (a daily run's always do), else each event id's day.
PageDays = date | dict[str, date]


def _page(batch: pa.Table) -> tuple[list[tuple[str, bytes]], PageDays]:
    ids = batch.column("event_id").to_pylist()
    payloads = batch.column("payload").to_pylist()
    day_column = batch.column("partition_date")
    distinct = day_column.unique()
    days: PageDays = (distinct[0].as_py() if len(distinct) == 1
                      else dict(zip(ids, day_column.to_pylist(), strict=True)))
    return list(zip(ids, payloads, strict=True)), days


def journal_folder(duckdb) -> Path:
    """Where a database's delivery journals live: beside the file, so they move with it."""
    if duckdb.database == ":memory:":
        return Path(tempfile.gettempdir()) / "capi_pipeline-journal"
    return Path(f"{duckdb.database}.journal")


class Journal:
    """This run's outcomes on disk as each batch returns, locked while being written.

    The lock tells other runs' importers that the file is live; a crashed run's lock is
    released by the operating system, which makes its journal importable.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.folder.mkdir(parents=True, exist_ok=True)
        self._file = None

    def append(self, destination: str, batch: BatchDone, days: PageDays) -> None:
        """One line per batch, flushed to the operating system before the next batch.

        A flush survives the process being killed; an fsync per batch would also survive the
        machine losing power, at several milliseconds a batch, and a batch lost that way is
        only sent again under the same event ids.
        """
        if self._file is None:
            self._file = open(self.folder / f"{uuid.uuid4()}.ndjson", "ab")  # noqa: SIM115
            fcntl.flock(self._file, fcntl.LOCK_EX)
        now = datetime.now(UTC).isoformat()
        # Outcomes as columns, so that DuckDB's JSON reader unnests them on import.
        columns = batch.outcomes.columns()
        if isinstance(days, date):
            first_day = days
            event_days = [days.isoformat()] * len(columns[0])
        else:
            first_day = days[columns[0][0]] if columns[0] else next(iter(days.values()))
            day_text: dict[date, str] = {}

            def iso(day: date) -> str:
                text = day_text.get(day)
                if text is None:
                    text = day_text[day] = day.isoformat()
                return text

            event_days = [iso(days.get(event_id, first_day)) for event_id in columns[0]]
        entry = {
            "destination": destination,
            "recorded_at": now,
            "requests": [
                {"request_id": attempt.request_id, "partition_date": first_day.isoformat(),
                 "batch_no": batch.batch_no, "attempt": attempt.attempt,
                 "events": attempt.events, "status_code": attempt.status_code,
                 "latency_ms": attempt.latency_ms, "error": attempt.error}
                for attempt in batch.attempts
            ],
            "partition_date": event_days,
            **dict(zip(OUTCOME_COLUMNS, columns, strict=True)),
        }
        self._file.write(orjson.dumps(entry) + b"\n")
        self._file.flush()

    def rotate(self) -> None:
        """Close the current file so it can be imported; the next batch starts another."""
        self.close()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


OUTCOME_COLUMNS = ("event_id", "outcome", "attempts", "request_id", "error_message",
                   "warning_message")
JOURNAL_COLUMNS = {
    "destination": "VARCHAR",
    "recorded_at": "TIMESTAMPTZ",
    "requests": "STRUCT(request_id VARCHAR, partition_date DATE, batch_no INTEGER, "
                "attempt INTEGER, events INTEGER, status_code INTEGER, latency_ms DOUBLE, "
                "error VARCHAR)[]",
    "partition_date": "DATE[]",
    "event_id": "VARCHAR[]",
    "outcome": "VARCHAR[]",
    "attempts": "INTEGER[]",
    "request_id": "VARCHAR[]",
    "error_message": "VARCHAR[]",
    "warning_message": "VARCHAR[]",
}
_COLUMNS_SPEC = ", ".join(f"'{name}': '{kind}'" for name, kind in JOURNAL_COLUMNS.items())
# DuckDB reads the journals itself, all of a run's in one statement; a line cut short by a kill
# is skipped (its batch has no outcome and is sent again).
JOURNAL_SQL = f"""
CREATE OR REPLACE TEMP TABLE journal AS
SELECT * FROM read_json($paths, format = 'newline_delimited', ignore_errors = true,
                        columns = {{{_COLUMNS_SPEC}}})
WHERE destination IS NOT NULL
"""
IMPORT_SQL = (
    """
    INSERT INTO delivery.requests
    SELECT r.request_id, destination, r.partition_date, r.batch_no, r.attempt, r.events,
           r.status_code, r.latency_ms, r.error, recorded_at
    FROM (SELECT destination, recorded_at, unnest(requests) AS r FROM journal)
    """,
    """
    INSERT INTO delivery.event_outcomes
    SELECT destination, unnest(partition_date), unnest(event_id), unnest(outcome),
           unnest(attempts), unnest(request_id), unnest(error_message),
           unnest(warning_message), recorded_at
    FROM journal
    """,
)
# A journal may be imported twice (a crash between the insert and the file's removal): each
# journal's id is recorded in the same transaction as its rows, and a known id is skipped.
JOURNALS_SEEN_SQL = """
SELECT journal_id FROM delivery.imported_journals WHERE journal_id IN (SELECT unnest($ids))
"""


def import_journals(duckdb, then: Callable | None = None) -> int:
    """Move every journal no run is writing into the ledger tables; returns outcomes moved.

    All of them in one connection and one transaction: a run leaves a journal per page, and
    opening the files, and checkpointing them on closing, once per journal cost more than
    the import itself. `then(conn)`, when given, runs in that transaction after the import
    (not at all when there was nothing to import).
    """
    folder = journal_folder(duckdb)
    with ExitStack() as stack:
        ready: list[Path] = []
        for path in sorted(folder.glob("*.ndjson")) if folder.is_dir() else []:
            try:
                handle = stack.enter_context(open(path, "rb"))
            except FileNotFoundError:
                continue
            try:
                # Held until the import is over, so that no other importer takes it too.
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue
            ready.append(path)
        if not ready:
            return 0
        moved = _import(duckdb, ready, then)
        for path in ready:
            path.unlink(missing_ok=True)
    return moved


def _import(duckdb, paths: list[Path], then: Callable | None = None) -> int:
    with duckdb.get_connection() as conn:
        seen = {row[0] for row in conn.execute(
            JOURNALS_SEEN_SQL, {"ids": [path.stem for path in paths]}).fetchall()}
        new = [path for path in paths if path.stem not in seen]
        if not new:
            return 0
        conn.execute(JOURNAL_SQL, {"paths": [str(path) for path in new]})
        conn.execute("BEGIN TRANSACTION")
        try:
            for statement in IMPORT_SQL:
                conn.execute(statement)
            conn.execute("INSERT INTO delivery.imported_journals "
                         "SELECT unnest($ids), now()", {"ids": [path.stem for path in new]})
            moved = conn.execute("SELECT count(*) FROM (SELECT unnest(event_id) FROM journal)"
                                 ).fetchall()[0][0]
            if then is not None:
                then(conn)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("DROP TABLE journal")
    return moved
