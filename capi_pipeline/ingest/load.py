"""Landing files into raw.events and raw.rejected_lines, once per file version.

`sync_landing` compares the landing folder with the manifest (`raw.landed_files`) and loads
only what is new or changed. A file is read as a stream of blocks (gzip decompressed on the
way), hashed as it is read, split into lines with numpy, and each block's lines go to DuckDB
as one Arrow table: the SQL fast path (`fastpath.FAST_SQL`) accepts the lines it is sure of
and the Python parser (`parse.parse_line`) takes the rest, so every line ends as events or a
rejection with its reason. One file version is one transaction: a truncated gzip or a read
error rolls back everything the file had added and is recorded as `unreadable`.
"""

import hashlib
import json
import queue
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import duckdb
import numpy as np
import orjson
import polars as pl
import pyarrow as pa
from isal import igzip, isal_zlib

from capi_pipeline.ingest.fastpath import BATCH_SQL, FAST_SQL, MACROS
from capi_pipeline.ingest.landing import (
    GZIP_MAGIC,
    UTF8_BOM,
    LandedFile,
    UnreadableFile,
    is_table_file,
    landing_files,
)
from capi_pipeline.ingest.parse import MAX_LINE_BYTES, Message, Rejected, parse_line
from capi_pipeline.ingest.snowplow import load_snowplow
from capi_pipeline.lib.duck import temporary_setting

# A block is one fast-path statement, and planning that statement and reading back what it took
# cost about 50 ms of one thread whatever the block holds: 128 MB blocks plan a day's 560 MB
# pixel file 5 times instead of 9, and took about a tenth off the ingest's CPU. At most three
# blocks are in memory at once (one parsed, one queued, one being read): the benchmark's
# 1M-line file peaks at 1,112 MB RSS with them, 809 MB with 64 MB blocks.
BLOCK_BYTES = 128 << 20
SCAN_BATCH_ROWS = 2048

RAW_SCHEMA = {
    "partition_date": pl.Date,
    "source_file": pl.String,
    "line_no": pl.Int32,
    "msg_index": pl.Int32,
    "source_format": pl.String,
    "topic": pl.String,
    "source_event_name": pl.String,
    "source_event_id": pl.String,
    "event_time": pl.Datetime("us", "UTC"),
    "received_at": pl.Datetime("us", "UTC"),
    "envelope_ip": pl.String,
    "envelope_user_agent": pl.String,
    "envelope_store": pl.String,
    "time_flags": pl.List(pl.String),
    "body": pl.String,
    "file_id": pl.String,
}
REJECTED_SCHEMA = {
    "partition_date": pl.Date,
    "source_file": pl.String,
    "line_no": pl.Int32,
    "reason": pl.String,
    "detail": pl.String,
    "byte_length": pl.Int32,
    "first_bytes": pl.String,
    "file_id": pl.String,
}


@dataclass
class FileResult:
    """What loading one landing file did; lines_read == lines_accepted + lines_rejected."""

    path: str
    status: str
    file_id: str | None = None
    version: int = 0
    lines_read: int = 0
    lines_accepted: int = 0
    lines_rejected: int = 0
    events: int = 0
    fast_lines: int = 0
    fast_events: int = 0
    reasons: Counter = field(default_factory=Counter)
    formats: Counter = field(default_factory=Counter)
    dates: Counter = field(default_factory=Counter)
    detail: str | None = None

    @property
    def partitions(self) -> set[date]:
        """Every UTC day this file added rows (events or rejections) to."""
        return set(self.dates)


@dataclass
class _Known:
    path: str
    version: int
    size: int
    mtime_ns: int
    sha256: str
    status: str


def sync_landing(
    conn: duckdb.DuckDBPyConnection, landing_dir: Path, now: datetime, skew: timedelta,
) -> tuple[list[LandedFile], list[FileResult]]:
    """Load every landing file that is new or changed since the manifest last saw it."""
    files = landing_files(landing_dir)
    known = _known_files(conn)
    results = []
    for landed in files:
        stat = landed.path.stat()
        previous = known.get(landed.name)
        if previous and (previous.size, previous.mtime_ns) == (stat.st_size, stat.st_mtime_ns):
            continue
        results.append(load_file(conn, landed, previous, now, skew))
    if results:
        results += _load_orphaned_duplicates(conn, files, now, skew)
    return files, results


def _load_orphaned_duplicates(conn: duckdb.DuckDBPyConnection, files: list[LandedFile],
                              now: datetime, skew: timedelta) -> list[FileResult]:
    """Load the files kept as duplicates whose bytes no loaded file holds any more.

    A duplicate adds no rows because its twin holds them; when the twin changes (or becomes
    a copy of the duplicate), those rows went with it. Each such file is loaded as a new
    version, one at a time, so of several copies of the same bytes only the first is.
    """
    on_disk = {landed.name: landed for landed in files}
    results = []
    while True:
        orphans = [row for row in _known_files(conn).values()
                   if row.status == "duplicate" and row.path in on_disk
                   and _same_content(conn, row.sha256, row.path) is None]
        if not orphans:
            return results
        orphan = min(orphans, key=lambda row: row.path)
        results.append(load_file(conn, on_disk[orphan.path], orphan, now, skew))


def _known_files(conn: duckdb.DuckDBPyConnection) -> dict[str, _Known]:
    rows = conn.execute(
        """SELECT path, version, size_bytes, mtime_ns, content_sha256, status
           FROM raw.landed_files WHERE status <> 'superseded'
           QUALIFY row_number() OVER (PARTITION BY path ORDER BY version DESC) = 1"""
    ).fetchall()
    return {row[0]: _Known(*row) for row in rows}


def load_file(
    conn: duckdb.DuckDBPyConnection, landed: LandedFile, previous: "_Known | None",
    now: datetime, skew: timedelta,
) -> FileResult:
    """Load one file version in one transaction, or record why it could not be loaded."""
    started = time.perf_counter()
    stat = landed.path.stat()
    version = (previous.version + 1) if previous else 1
    file_id = f"{landed.name}@{version}"
    conn.execute("SET TimeZone = 'UTC'")
    conn.execute(MACROS)
    conn.execute("BEGIN TRANSACTION")
    try:
        _retire(conn, landed.name)
        hasher = hashlib.sha256()
        if is_table_file(landed.name):
            result = load_snowplow(conn, landed, file_id, hasher)
        else:
            result = _load_lines(conn, landed, file_id, hasher, now, skew)
        result.version = version
        sha = hasher.hexdigest()
        twin = _same_content(conn, sha, landed.name)
        if previous is not None and previous.sha256 == sha and previous.status == "loaded":
            # Touched but not changed: keep the rows already loaded, note the new stat.
            conn.execute("ROLLBACK")
            conn.execute(
                "UPDATE raw.landed_files SET size_bytes = ?, mtime_ns = ? WHERE file_id = ?",
                [stat.st_size, stat.st_mtime_ns, f"{landed.name}@{previous.version}"],
            )
            return FileResult(landed.name, "unchanged", f"{landed.name}@{previous.version}",
                              previous.version)
        if twin is not None:
            conn.execute("ROLLBACK")
            conn.execute("BEGIN TRANSACTION")
            _retire(conn, landed.name)
            result = FileResult(landed.name, "duplicate", file_id, version,
                                detail=f"same bytes as {twin}")
            _record(conn, result, stat, sha, started, duplicate_of=twin)
            conn.execute("COMMIT")
            return result
        result.status = "loaded"
        _record(conn, result, stat, sha, started)
        conn.execute("COMMIT")
        return result
    except UnreadableFile as error:
        conn.execute("ROLLBACK")
        return _unreadable(conn, landed, file_id, version, str(error), stat, started)
    except BaseException:
        conn.execute("ROLLBACK")
        raise


def _retire(conn: duckdb.DuckDBPyConnection, name: str) -> None:
    """A new version of a file replaces every row the earlier versions of it added."""
    conn.execute("DELETE FROM raw.events WHERE source_file = ?", [name])
    conn.execute("DELETE FROM raw.rejected_lines WHERE source_file = ?", [name])
    conn.execute(
        "UPDATE raw.landed_files SET status = 'superseded' WHERE path = ? "
        "AND status <> 'superseded'", [name],
    )


def _same_content(conn: duckdb.DuckDBPyConnection, sha: str, name: str) -> str | None:
    row = conn.execute(
        "SELECT path FROM raw.landed_files WHERE content_sha256 = ? AND status = 'loaded' "
        "AND path <> ? LIMIT 1", [sha, name],
    ).fetchone()
    return row[0] if row else None


def _record(conn, result: FileResult, stat, sha: str, started: float,
            duplicate_of: str | None = None) -> None:
    dates = sorted(result.dates)
    conn.execute(
        """INSERT INTO raw.landed_files (file_id, path, version, size_bytes, mtime_ns,
               content_sha256, status, duplicate_of, detail, lines_read, lines_accepted,
               lines_rejected, events, first_event_date, last_event_date, event_dates,
               landed_at, load_seconds)
           VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)""",
        [result.file_id, result.path, result.version, stat.st_size, stat.st_mtime_ns, sha,
         result.status, duplicate_of, result.detail, result.lines_read, result.lines_accepted,
         result.lines_rejected, result.events, dates[0] if dates else None,
         dates[-1] if dates else None, dates, datetime.now(UTC),
         time.perf_counter() - started],
    )


def _unreadable(conn, landed: LandedFile, file_id: str, version: int, detail: str, stat,
                started: float) -> FileResult:
    """Record a file that cannot be read to its end; none of its lines are kept."""
    day = landed.landed_on
    result = FileResult(landed.name, "unreadable", file_id, version, lines_rejected=0,
                        detail=detail[:200])
    result.reasons["unreadable_file"] += 1
    result.dates[day] += 1
    conn.execute("BEGIN TRANSACTION")
    try:
        # The rows of an earlier, readable version stay: a file caught half-written is read
        # again when it changes, and only then replaces them.
        conn.execute(
            "DELETE FROM raw.rejected_lines WHERE source_file = ? AND reason = 'unreadable_file'",
            [landed.name],
        )
        _insert_rows(conn, [], [{
            "partition_date": day, "source_file": landed.name, "line_no": 0,
            "reason": "unreadable_file", "detail": result.detail,
            "byte_length": min(stat.st_size, 2**31 - 1), "first_bytes": "", "file_id": file_id,
        }])
        conn.execute(
            "UPDATE raw.landed_files SET status = 'superseded' WHERE path = ? "
            "AND status = 'unreadable'", [landed.name],
        )
        _record(conn, result, stat, _sha256_if_readable(landed.path), started)
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return result


def _sha256_if_readable(path: Path) -> str:
    """The file's hash, or "" when it cannot be read even once to its end."""
    try:
        return _sha256(path)
    except OSError:
        return ""


def _sha256(path: Path) -> str:
    hasher = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(BLOCK_BYTES):
            hasher.update(block)
    return hasher.hexdigest()


def read_blocks(landed: LandedFile, hasher) -> Iterator[bytearray]:
    """The file's content in blocks that end at a line end (the last one may not).

    The raw bytes go through `hasher` as they are read. A file named .gz that is not gzip (a
    collector that forgot to compress) is read as it is rather than lost.
    """

    try:
        with landed.path.open("rb") as handle:
            source = _Hashing(handle, hasher)
            head = source.read(2)
            stream = _Prefixed(source, head)
            if landed.name.lower().endswith(".gz") and head == GZIP_MAGIC:
                # ISA-L's inflate: the same gzip reader as the standard library's, in about
                # half the CPU (1.2 s -> 0.7 s for a day's 560 MB of pixel events).
                stream = igzip.IGzipFile(fileobj=stream)
            carry = b""
            first = True
            while True:
                # Each block is read into a buffer of its own, behind the previous block's
                # unfinished line, and cut at its last line end in place: joining the two and
                # slicing off the block's lines each copied the whole block (about 1.1 s of
                # CPU per GB read).
                data = bytearray(len(carry) + BLOCK_BYTES)
                data[:len(carry)] = carry
                read = _read_into(stream, memoryview(data)[len(carry):])
                if not read:
                    break
                del data[len(carry) + read:]
                if first:
                    if data.startswith(UTF8_BOM):
                        del data[:len(UTF8_BOM)]
                    first = False
                end = data.rfind(b"\n")
                if end < 0:
                    carry = bytes(data)
                    continue
                carry = bytes(data[end + 1:])
                del data[end + 1:]
                yield data
            if carry:
                yield bytearray(carry)
    except (OSError, EOFError, isal_zlib.error) as error:
        raise UnreadableFile(f"{type(error).__name__}: {error}") from error


def _read_into(stream, view: memoryview) -> int:
    """Fill `view` from `stream` as far as the stream goes; how many bytes were read."""
    filled = 0
    while filled < len(view):
        read = stream.readinto(view[filled:])
        if not read:
            break
        filled += read
    return filled


class _Hashing:
    """A file read through a hash, so the content hash costs no second read."""

    def __init__(self, handle, hasher):
        self.handle, self.hasher = handle, hasher

    def read(self, size=-1):
        data = self.handle.read(size)
        self.hasher.update(data)
        return data

    def readinto(self, buffer) -> int:
        read = self.handle.readinto(buffer)
        self.hasher.update(memoryview(buffer)[:read])
        return read


class _Prefixed:
    """A stream that first gives back the bytes already read from it."""

    def __init__(self, source, head: bytes):
        self.source, self.head = source, head

    def read(self, size=-1):
        if self.head:
            head, self.head = self.head, b""
            return head + self.source.read(size - len(head) if size > len(head) else
                                           (-1 if size < 0 else 0))
        return self.source.read(size)

    def readinto(self, buffer) -> int:
        if not self.head:
            return self.source.readinto(buffer)
        data = self.read(len(buffer))
        buffer[:len(data)] = data
        return len(data)


def _load_lines(conn, landed: LandedFile, file_id: str, hasher, now: datetime,
                skew: timedelta) -> FileResult:
    result = FileResult(landed.name, "loading", file_id)
    skew_us = int(skew.total_seconds() * 1_000_000)
    line_no = 0
    undated: list[tuple[int, Rejected]] = []
    # The next block is read, hashed and split while DuckDB parses this one.
    for block in _prefetched(_line_blocks(landed, hasher)):
        count = len(block.offsets) - 1
        numbers = np.arange(line_no + 1, line_no + count + 1, dtype=np.int64)
        # Read by name in FAST_SQL (DuckDB's replacement scan of a local variable), never
        # registered: a view registered and dropped inside the file's transaction keeps its
        # table alive until the commit, so every block of the file stayed in memory.
        chunk_lines = pa.Table.from_batches(  # noqa: F841
            pa.table({"line_no": numbers, "line": block.lines,
                      "fast_candidate": block.candidate, "has_cut": block.has_cut,
                      "cut_prefix": block.cut_prefix, "cut_body": block.cut_body})
            .to_batches(max_chunksize=SCAN_BATCH_ROWS))
        params = [file_id, landed.name, now, skew_us]
        with _filters_in_place(conn):
            conn.execute(f"INSERT INTO raw.events BY NAME {FAST_SQL}", params)
        del chunk_lines
        first, last = line_no + 1, line_no + count
        fast = conn.sql(
            "SELECT line_no, partition_date, source_format FROM raw.events "
            "WHERE file_id = ? AND line_no BETWEEN ? AND ?", params=[file_id, first, last],
        ).to_arrow_table()
        taken = np.zeros(count, dtype=bool)
        taken[fast.column("line_no").to_numpy() - first] = True
        batches = [index for index in np.flatnonzero(~taken & block.candidate)
                   if block.data.find(b'"batch', block.offsets[index],
                                      block.offsets[index + 1]) >= 0]
        if batches:
            spread = _load_batches(conn, block, np.array(batches), first, params)
            taken[spread.column("line_no").to_numpy() - first] = True
            fast = pa.concat_tables([fast, spread])
        result.fast_lines += int(taken.sum())
        fast_rows = fast  # noqa: F841 - read by name below
        for day, source_format, events in conn.execute(
            "SELECT partition_date, source_format, count(*) FROM fast_rows GROUP BY ALL"
        ).fetchall():
            result.dates[day] += events
            result.formats[source_format] += events
            result.fast_events += events
        slow = np.flatnonzero(~taken)
        accepted, rejected = [], []
        for index in slow:
            raw = block.data[block.offsets[index]:block.offsets[index + 1]]
            raw = raw[:-1] if raw.endswith(b"\n") else raw
            raw = raw[:-1] if raw.endswith(b"\r") else raw
            _python_line(result, landed.name, file_id, first + int(index), bytes(raw), now,
                         skew, accepted, rejected, undated)
        _insert_rows(conn, accepted, rejected)
        line_no += count
    result.lines_read = line_no
    result.lines_accepted += result.fast_lines
    result.events += result.fast_events
    # A line without a time belongs to the day most of its file's events fall on (the earliest
    # such day on a tie); the path's date or the file's modification day when nothing in the
    # file has a time.
    home = min(result.dates, key=lambda d: (-result.dates[d], d)) if result.dates else (
        landed.landed_on)
    rows = [_rejection(home, landed.name, file_id, number, item) for number, item in undated]
    for _ in rows:
        result.dates[home] += 1
    _insert_rows(conn, [], rows)
    return result


def _load_batches(conn, block: "_LineBlock", indexes: np.ndarray, first: int,
                  params: list) -> pa.Table:
    """The fast path over a block's Segment batch lines: a line whose every message becomes
    an event is inserted whole; any other is left to the Python parser. Returns the line
    number, day and format of each event inserted."""
    lines = [block.data[block.offsets[i]:block.offsets[i + 1]] for i in indexes]
    # Both tables are read by name (replacement scans), not registered: see _load_lines.
    chunk_lines = pa.table({  # noqa: F841
        "line_no": pa.array(indexes + first, pa.int64()),
        "line": pa.array([bytes(line) for line in lines], pa.binary()),
        "fast_candidate": pa.array(np.ones(len(lines), dtype=bool)),
        "has_cut": pa.array(np.zeros(len(lines), dtype=bool)),
        "cut_prefix": pa.nulls(len(lines), pa.binary_view()),
        "cut_body": pa.nulls(len(lines), pa.binary_view()),
    })
    with _filters_in_place(conn):
        batch_rows = conn.sql(BATCH_SQL, params=params).to_arrow_table()  # noqa: F841
    whole_batches = conn.sql(
        "SELECT * EXCLUDE (n_messages) FROM batch_rows WHERE line_no IN (SELECT line_no "
        "FROM batch_rows GROUP BY line_no HAVING count(*) = max(n_messages))").to_arrow_table()
    conn.execute("INSERT INTO raw.events BY NAME SELECT * FROM whole_batches")
    return whole_batches.select(["line_no", "partition_date", "source_format"])


def _filters_in_place(conn: duckdb.DuckDBPyConnection):
    """Run the fast path with DuckDB's filter pushdown off.

    Its filters test columns that earlier steps computed with the costliest expressions of the
    query (the JSON parses); pushed down, each filter computes its expression again below the
    step that computes it for the rows, which made the statement take 1.6 times as long.
    """
    return temporary_setting(conn, "disabled_optimizers", "filter_pushdown")


@dataclass
class _LineBlock:
    """A block of a file split into lines, each with its line end still on."""

    data: bytearray
    offsets: np.ndarray  # line i is data[offsets[i]:offsets[i + 1]]
    lines: pa.Array  # the same lines as an Arrow binary array, without a copy
    candidate: np.ndarray  # short enough for the SQL fast path
    has_cut: np.ndarray  # an envelope whose body could be cut out of the line (below)
    cut_prefix: pa.Array  # the line up to the body's value, as views into `data`
    cut_body: pa.Array  # the body's value, as views into `data`


_BODY_KEY = b'"body"'
# Both parts of a cut are at least this long, so that every view points into the block (an
# Arrow view of up to 12 bytes holds its bytes itself).
_VIEW_INLINE = 12


def _envelope_cuts(data: bytes, offsets: np.ndarray,
                   candidate: np.ndarray) -> tuple[np.ndarray, pa.Array, pa.Array]:
    """Where a line looks like a compact envelope whose last member is an object `"body"`:
    `{...,"body":{...}}`. Such a line is handed to SQL as two views into the block, the text
    before the body's value and the value itself, so that the fast path reads the body as it
    was written rather than re-serializing it out of the parsed line (which cost as much as
    the parse). A cut is only a proposal: the fast path takes it only if both parts parse
    (`fastpath.FAST_SQL`, which says why that proves the cut), and reads the line whole
    otherwise. The first `"body"` of the line must be the key: any earlier one (a duplicate
    key, or the word inside a string) leaves the line to the whole-line reading."""
    count = len(offsets) - 1
    has_cut = np.zeros(count, dtype=bool)
    prefix_views = np.zeros((count, 4), dtype=np.int32)
    body_views = np.zeros((count, 4), dtype=np.int32)
    found = []
    at = data.find(_BODY_KEY)
    while at >= 0:  # the first `"body"` of each line that has one
        found.append(at)
        end = data.find(b"\n", at)
        at = data.find(_BODY_KEY, end) if end >= 0 else -1
    if found:
        key = np.array(found, dtype=np.int64)
        lines = np.searchsorted(offsets, key, side="right") - 1
        starts = offsets[lines].astype(np.int64)
        ends = offsets[lines + 1].astype(np.int64)
        byte = np.frombuffer(data, dtype=np.uint8)
        last = len(byte) - 1
        # The line without its line end: a line feed, and a carriage return before it.
        stop = np.where(byte[ends - 1] == 10, ends - 1, ends)
        stop = np.where((stop > starts) & (byte[np.clip(stop - 1, 0, last)] == 13),
                        stop - 1, stop)
        value = key + 7  # after `"body":`
        ok = ((key > starts) & (value + _VIEW_INLINE < stop - 1) & candidate[lines]
              & (byte[starts] == ord("{"))
              & (byte[np.clip(key - 1, 0, last)] == ord(","))
              & (byte[np.clip(key + 6, 0, last)] == ord(":"))
              & (byte[np.clip(value, 0, last)] == ord("{"))
              & (byte[np.clip(stop - 1, 0, last)] == ord("}"))
              & (byte[np.clip(stop - 2, 0, last)] == ord("}"))
              & (value - starts > _VIEW_INLINE))
        lines, starts, value, stop = lines[ok], starts[ok], value[ok], stop[ok]
        has_cut[lines] = True
        for views, begin, end in ((prefix_views, starts, value), (body_views, value, stop - 1)):
            views[lines, 0] = end - begin
            # An Arrow view repeats the first four bytes of its value.
            views[lines, 1] = np.ascontiguousarray(
                byte[begin[:, None] + np.arange(4)]).view(np.int32).ravel()
            views[lines, 3] = begin  # buffer 0: the block itself
    buffer = pa.py_buffer(data)
    prefix = pa.Array.from_buffers(pa.binary_view(), count,
                                   [None, pa.py_buffer(prefix_views), buffer])
    body = pa.Array.from_buffers(pa.binary_view(), count,
                                 [None, pa.py_buffer(body_views), buffer])
    return has_cut, prefix, body


def _line_blocks(landed: LandedFile, hasher) -> Iterator[_LineBlock]:
    for data in read_blocks(landed, hasher):
        array = np.frombuffer(data, dtype=np.uint8)
        ends = _line_ends(array)
        if not data.endswith(b"\n"):
            ends = np.append(ends, len(data))
        offsets = np.concatenate(([0], ends)).astype(np.int32)
        # The line ends stay in the values: JSON allows whitespace after a document, and the
        # fast path takes them off the text it keeps. Lines that are not UTF-8 fail DuckDB's
        # decode there and go to the Python parser, which rejects them with their reason.
        lines = pa.Array.from_buffers(
            pa.binary(), len(ends), [None, pa.py_buffer(offsets), pa.py_buffer(data)])
        candidate = _short_enough(data, offsets)
        yield _LineBlock(data, offsets, lines, candidate,
                         *_envelope_cuts(data, offsets, candidate))


# Line ends are looked for a megabyte at a time: the comparison's mask then stays in the CPU's
# cache, which halves the cost of the search over a block.
_SCAN_BYTES = 1 << 20


def _line_ends(array: np.ndarray) -> np.ndarray:
    """The offsets just after each line feed of `array`."""
    ends = [np.flatnonzero(array[start:start + _SCAN_BYTES] == 10) + (start + 1)
            for start in range(0, len(array), _SCAN_BYTES)]
    return np.concatenate(ends) if ends else np.zeros(0, dtype=np.int64)


def _short_enough(data: bytes, offsets: np.ndarray) -> np.ndarray:
    """The lines within the parser's length limit once their line end (a line feed, and a
    carriage return before it) is off, as the parser measures them."""
    lengths = np.diff(offsets)
    short = lengths <= MAX_LINE_BYTES
    for index in np.flatnonzero(~short & (lengths <= MAX_LINE_BYTES + 2)):
        line = data[offsets[index]:offsets[index + 1]].removesuffix(b"\n").removesuffix(b"\r")
        short[index] = len(line) <= MAX_LINE_BYTES
    return short


_DONE = object()


def _prefetched(blocks: Iterator[_LineBlock]) -> Iterator[_LineBlock]:
    """The blocks of `blocks`, each made in a thread while the caller works on the one before.

    An error making a block (an unreadable file) is raised here, in the caller's thread; a
    caller that stops early stops the thread.
    """
    handoff: queue.Queue = queue.Queue(maxsize=1)
    stop = threading.Event()

    def produce() -> None:
        try:
            for block in blocks:
                while not stop.is_set():
                    try:
                        handoff.put((block, None), timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            handoff.put((_DONE, None))
        except BaseException as error:  # noqa: BLE001 - handed to the caller's thread
            handoff.put((_DONE, error))

    worker = threading.Thread(target=produce, name="ingest-blocks", daemon=True)
    worker.start()
    try:
        while True:
            block, error = handoff.get()
            if error is not None:
                raise error
            if block is _DONE:
                return
            yield block
    finally:
        stop.set()
        while worker.is_alive():
            try:
                handoff.get(timeout=0.1)
            except queue.Empty:
                pass
        worker.join()


def _python_line(result: FileResult, name: str, file_id: str, number: int, raw: bytes,
                 now: datetime, skew: timedelta, accepted: list, rejected: list,
                 undated: list) -> None:
    outcomes = parse_line(raw, now, skew)
    messages = [item for item in outcomes if isinstance(item, Message)]
    if messages:
        result.lines_accepted += 1
    else:
        result.lines_rejected += 1
    for item in outcomes:
        if isinstance(item, Message):
            day = item.event_time.date()
            accepted.append(_row(day, name, file_id, number, item))
            result.dates[day] += 1
            result.formats[item.source_format] += 1
            result.events += 1
        else:
            result.reasons[item.reason] += 1
            if item.event_time is not None:
                day = item.event_time.date()
                rejected.append(_rejection(day, name, file_id, number, item))
                result.dates[day] += 1
            else:
                undated.append((number, item))


def _insert_rows(conn, accepted: list[dict], rejected: list[dict]) -> None:
    for table, rows, schema in (("raw.events", accepted, RAW_SCHEMA),
                                ("raw.rejected_lines", rejected, REJECTED_SCHEMA)):
        if rows:
            # Read by name, not registered: see _load_lines.
            python_rows = pl.DataFrame(rows, schema=schema, orient="row")  # noqa: F841
            conn.execute(f"INSERT INTO {table} BY NAME SELECT * FROM python_rows")


def _body_text(body) -> str:
    """A parsed body as JSON text. orjson writes at most 254 levels of nesting, where it reads
    1,023: a deeper body is written by the standard library, with room for its recursion."""
    try:
        return orjson.dumps(body).decode()
    except orjson.JSONEncodeError:
        limit = sys.getrecursionlimit()
        sys.setrecursionlimit(max(limit, 4000))
        try:
            return json.dumps(body, ensure_ascii=False, separators=(",", ":"))
        finally:
            sys.setrecursionlimit(limit)


def _row(day, source_file: str, file_id: str, line_no: int, message: Message) -> dict:
    return {
        "partition_date": day,
        "source_file": source_file,
        "line_no": line_no,
        "msg_index": message.msg_index,
        "source_format": message.source_format,
        "topic": message.topic,
        "source_event_name": message.source_event_name,
        "source_event_id": message.source_event_id,
        "event_time": message.event_time,
        "received_at": message.received_at,
        "envelope_ip": message.envelope_ip,
        "envelope_user_agent": message.envelope_user_agent,
        "envelope_store": message.envelope_store,
        "time_flags": list(message.time_flags),
        "body": _body_text(message.body),
        "file_id": file_id,
    }


def _rejection(day, source_file: str, file_id: str, line_no: int, rejected: Rejected) -> dict:
    return {
        "partition_date": day,
        "source_file": source_file,
        "line_no": line_no,
        "reason": rejected.reason,
        "detail": rejected.detail,
        "byte_length": rejected.byte_length,
        "first_bytes": rejected.first_bytes,
        "file_id": file_id,
    }
