"""Loading landing files: the manifest, the SQL fast path against the Python parser, every line
accounted for, Snowplow tables, UTC partitions and the landing sensor."""

import gzip
import json
import os
import random
import shutil
import time
from collections import Counter
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import duckdb
import numpy as np
import orjson
import pyarrow as pa
import pytest

from capi_pipeline.demo.generate import generate
from capi_pipeline.ingest.landing import LandedFile
from capi_pipeline.ingest.load import read_blocks, sync_landing
from capi_pipeline.ingest.parse import Message, parse_line
from capi_pipeline.ingest.sensors import days_to_run
from capi_pipeline.lib.duck import ensure_schema
from capi_pipeline_tests.fixtures import MISSING_SHARED, SHARED, VALMI

NOW = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)
SKEW = timedelta(minutes=10)
SNOWPLOW = SHARED / "data" / "upstream" / "snowplow"
needs_shared = pytest.mark.skipif(not VALMI.exists(), reason=MISSING_SHARED)


@pytest.fixture
def conn():
    with duckdb.connect(":memory:") as connection:
        ensure_schema(connection)
        yield connection


@pytest.fixture(scope="module")
def demo_landing(tmp_path_factory) -> Path:
    landing = tmp_path_factory.mktemp("demo")
    generate(landing, date(2026, 12, 2), days=2, visitors_per_day=60, seed=3)
    return landing


def _sync(conn, landing: Path):
    return sync_landing(conn, landing, NOW, SKEW)[1]


def _write(path: Path, lines: list[bytes]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


def _pixel(event_id: str, timestamp: str, **extra) -> bytes:
    body = {"id": event_id, "name": "page_viewed", "clientId": "c-1", "timestamp": timestamp,
            "context": {"document": {"location": {"href": "https://shop.example.com/"}}},
            **extra}
    return orjson.dumps(body)


def _counts(conn) -> tuple[int, int]:
    return (conn.execute("SELECT count(*) FROM raw.events").fetchone()[0],
            conn.execute("SELECT count(*) FROM raw.rejected_lines").fetchone()[0])


# --- the manifest ----------------------------------------------------------------------------

def test_landing_the_same_file_twice_or_under_another_name_adds_nothing(conn, tmp_path):
    landing = tmp_path / "landing"
    first = _write(landing / "a.ndjson", [_pixel("e-1", "2026-12-01T10:00:00Z"),
                                          _pixel("e-2", "2026-12-02T10:00:00Z")])
    (result,) = _sync(conn, landing)
    assert (result.status, result.lines_read, result.events) == ("loaded", 2, 2)
    assert _sync(conn, landing) == []
    shutil.copy(first, landing / "copy.ndjson")
    (copy,) = _sync(conn, landing)
    assert (copy.status, copy.detail) == ("duplicate", "same bytes as a.ndjson")
    assert _counts(conn) == (2, 0)
    os.utime(first, ns=(time.time_ns(), time.time_ns() + 10**9))
    (touched,) = _sync(conn, landing)
    assert touched.status == "unchanged" and _counts(conn) == (2, 0)


def test_copies_of_a_file_that_changes_keep_its_old_lines(conn, tmp_path):
    """Two copies were kept as duplicates of a.ndjson; when a.ndjson is rewritten, its old
    lines live on in the copies, so the first copy is loaded and the second stays its twin."""
    landing = tmp_path / "landing"
    first = _write(landing / "a.ndjson", [_pixel("e-1", "2026-12-01T10:00:00Z"),
                                          _pixel("e-2", "2026-12-01T11:00:00Z")])
    _sync(conn, landing)
    shutil.copy(first, landing / "b.ndjson")
    shutil.copy(first, landing / "c.ndjson")
    assert [result.status for result in _sync(conn, landing)] == ["duplicate", "duplicate"]
    _write(first, [_pixel("e-3", "2026-12-01T12:00:00Z")])
    results = _sync(conn, landing)
    assert [(result.path, result.status, result.version) for result in results] == [
        ("a.ndjson", "loaded", 2), ("b.ndjson", "loaded", 2)]
    assert conn.execute("SELECT source_file, source_event_id FROM raw.events "
                        "ORDER BY ALL").fetchall() == [
        ("a.ndjson", "e-3"), ("b.ndjson", "e-1"), ("b.ndjson", "e-2")]
    assert conn.execute("SELECT status, duplicate_of FROM raw.landed_files "
                        "WHERE path = 'c.ndjson'").fetchall() == [("duplicate", "a.ndjson")]
    assert _sync(conn, landing) == []


def test_lines_and_files_that_once_stopped_a_sync_are_accounted_for(conn, tmp_path):
    """Each of these raised out of sync_landing, so no file after it was ever loaded: a time
    of 22 digits (its microseconds overflowed BIGINT in the fast path), a body nested 300
    deep on the parser's path (orjson writes at most 254 levels), a file that fails every
    read, and a file name that is not UTF-8."""
    landing = tmp_path / "landing"
    deep = b'{"id":"e-deep","name":"page_viewed","clientId":"c-1","timestamp":' \
        b'"2026-12-01T10:00:00","x":' + b"[" * 300 + b"]" * 300 + b"}"
    _write(landing / "a.ndjson", [_pixel("e-digits", "9999999999999999999999"),
                                  b'{"type":"track","event":"x","anonymousId":"a",'
                                  b'"timestamp":99999999999999999999999}',
                                  deep, _pixel("e-1", "2026-12-01T10:00:00Z")])
    os.symlink("/proc/self/mem", landing / "b.ndjson")
    (landing / os.fsdecode(b"caf\xe9.ndjson")).write_bytes(
        _pixel("e-cafe", "2026-12-01T10:00:00Z") + b"\n")
    _write(landing / "z.ndjson", [_pixel("e-last", "2026-12-01T10:00:00Z")])
    results = {result.path: result for result in _sync(conn, landing)}
    assert {path: result.status for path, result in results.items()} == {
        "a.ndjson": "loaded", "b.ndjson": "unreadable", "caf\\xe9.ndjson": "loaded",
        "z.ndjson": "loaded"}
    assert dict(results["a.ndjson"].reasons) == {"missing_time": 2}
    events = dict(conn.execute("SELECT source_event_id, body FROM raw.events").fetchall())
    assert set(events) == {"e-deep", "e-1", "e-cafe", "e-last"}
    assert orjson.loads(events["e-deep"].encode()) == json.loads(deep)
    assert conn.execute("SELECT current_setting('disabled_optimizers')").fetchone()[0] == ""
    assert _sync(conn, landing) == []


def test_a_changed_file_is_a_new_version_that_replaces_its_rows(conn, tmp_path):
    landing = tmp_path / "landing"
    path = _write(landing / "a.ndjson", [_pixel("e-1", "2026-12-01T10:00:00Z")])
    _sync(conn, landing)
    _write(path, [_pixel("e-1", "2026-12-01T10:00:00Z"), _pixel("e-2", "2026-12-01T11:00:00Z"),
                  b"{broken"])
    (result,) = _sync(conn, landing)
    assert (result.version, result.lines_read, result.events, result.lines_rejected) == (
        2, 3, 2, 1)
    assert conn.execute("SELECT file_id, count(*) FROM raw.events GROUP BY ALL").fetchall() == [
        ("a.ndjson@2", 2)]
    assert conn.execute(
        "SELECT version, status, lines_read, lines_accepted, lines_rejected "
        "FROM raw.landed_files ORDER BY version").fetchall() == [
        (1, "superseded", 1, 1, 0), (2, "loaded", 3, 2, 1)]


def test_truncated_gzip_is_recorded_unreadable_and_keeps_no_rows(conn, tmp_path):
    landing = tmp_path / "landing" / "2026-12-01"
    content = b"\n".join(_pixel(f"e-{i}", "2026-12-01T10:00:00Z") for i in range(2000)) + b"\n"
    path = landing / "big.ndjson.gz"
    path.parent.mkdir(parents=True)
    path.write_bytes(gzip.compress(content)[:-40])
    (result,) = _sync(conn, tmp_path / "landing")
    assert result.status == "unreadable"
    assert _counts(conn) == (0, 1)
    assert conn.execute("SELECT partition_date, reason, line_no FROM raw.rejected_lines"
                        ).fetchall() == [(date(2026, 12, 1), "unreadable_file", 0)]
    path.write_bytes(gzip.compress(content))
    (fixed,) = _sync(conn, tmp_path / "landing")
    assert (fixed.status, fixed.events) == ("loaded", 2000)
    assert _counts(conn) == (2000, 0)


@pytest.mark.parametrize("damage", ["deflate", "crc"])
def test_a_corrupt_gzip_is_unreadable_and_keeps_no_rows(conn, tmp_path, damage):
    """A compressed block the inflater cannot decode, or a wrong checksum at the end: the file
    is recorded unreadable, whichever error the gzip reader raises for it."""
    content = b"\n".join(_pixel(f"e-{i}", "2026-12-01T10:00:00Z") for i in range(2000)) + b"\n"
    data = bytearray(gzip.compress(content))
    if damage == "deflate":
        data[10] = 0b111  # the first block's header (after gzip's 10 bytes): a reserved type
    else:
        data[-8] ^= 0xFF
    path = tmp_path / "landing" / "2026-12-01" / "bad.ndjson.gz"
    path.parent.mkdir(parents=True)
    path.write_bytes(bytes(data))
    (result,) = _sync(conn, tmp_path / "landing")
    assert result.status == "unreadable"
    assert _counts(conn) == (0, 1)


def test_blocks_split_only_at_line_ends(tmp_path, monkeypatch):
    from capi_pipeline.ingest import load

    monkeypatch.setattr(load, "BLOCK_BYTES", 7)
    path = tmp_path / "x.ndjson"
    path.write_bytes(b"\xef\xbb\xbfabc\ndefghijklmnop\nq")
    import hashlib
    blocks = list(read_blocks(LandedFile(path, "x.ndjson"), hashlib.sha256()))
    assert b"".join(blocks) == b"abc\ndefghijklmnop\nq"
    assert all(block.endswith(b"\n") for block in blocks[:-1])



def test_a_file_is_held_in_memory_a_few_blocks_at_a_time(conn, tmp_path, monkeypatch):
    """Loading a file keeps only the blocks in hand, not every block of the file until its
    transaction commits (as a view registered inside the transaction did): the Python memory
    traced while loading a 6 MB file read in 256 KB blocks stays far below the file's size."""
    import tracemalloc

    from capi_pipeline.ingest import load

    monkeypatch.setattr(load, "BLOCK_BYTES", 256 << 10)
    padding = "x" * 900
    lines = [_pixel(f"e-{n}", "2026-12-01T10:00:00Z", note=padding) for n in range(6000)]
    path = _write(tmp_path / "landing" / "big.ndjson", lines)
    assert path.stat().st_size > 6 << 20
    tracemalloc.start()
    try:
        (result,) = _sync(conn, tmp_path / "landing")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert result.events == 6000 and result.fast_lines == 6000
    assert peak < 2 << 20, f"{peak:,} bytes traced at the peak"

# --- every line accounted for ----------------------------------------------------------------

BAD_LINES = {
    b"\xff\xfe not utf-8": "bad_utf8",
    b'{"id": "e-9", "name": "page_viewed", "clientId"': "bad_json",
    b"[1, 2]": "not_object",
    b'"{\\"id\\": 1}"': "json_in_string",
    b'{"hello": "world"}': "unknown_shape",
    b'{"id": "e-8", "name": "page_viewed", "clientId": "c"}': "missing_time",
    b"   ": "empty_line",
    b'{"id": "e-7", "name": "page_viewed", "clientId": "c", "timestamp": "2099-01-01T00:00:00Z"}':
        "future_time",
    b'{"x": "' + b"a" * 1_000_001 + b'"}': "line_too_long",
}


def test_exactly_the_lines_that_do_not_decode_alone_are_rejected_as_bad_utf8(conn, tmp_path):
    """DuckDB's decode picks the lines the Python parser gets; they must be exactly the lines
    Python cannot decode (stray continuation bytes, truncated sequences, surrogates, overlong
    forms), whatever sits on the lines around them, and either line end."""
    pieces = [b"plain", "caf\u00e9 \u2013 \U0001f600".encode(), b"\xff", b"\xc3", b"\xe2\x80",
              b"\xed\xa0\x80", b"\xc0\xaf", b"\x80", b"\xf4\x90\x80\x80",
              "\u00e9".encode()]
    generator = random.Random(5)
    lines, expected = [], {}
    for number in range(1, 401):
        value = b"".join(generator.choices(pieces, k=generator.randint(0, 4)))
        lines.append(b'{"id": "e-%d", "name": "page_viewed", "clientId": "c-%s", '
                     b'"timestamp": "2026-12-01T10:00:00Z"}' % (number, value))
        try:
            value.decode("utf-8")
            expected[number] = "event"
        except UnicodeDecodeError:
            expected[number] = "bad_utf8"
    path = tmp_path / "l" / "mixed.ndjson"
    path.parent.mkdir()
    path.write_bytes(b"".join(line + generator.choice([b"\n", b"\r\n"]) for line in lines))
    (result,) = _sync(conn, tmp_path / "l")
    assert set(expected.values()) == {"event", "bad_utf8"}
    outcome = dict(conn.execute("SELECT line_no, 'event' FROM raw.events").fetchall())
    outcome.update(conn.execute("SELECT line_no, reason FROM raw.rejected_lines").fetchall())
    assert outcome == expected
    assert result.fast_lines == list(expected.values()).count("event")
    # The line end is not part of what is kept.
    bodies = [body for (body,) in conn.execute("SELECT body FROM raw.events").fetchall()]
    assert all(body.endswith("}") for body in bodies)


def test_each_kind_of_bad_line_is_rejected_with_its_reason_and_first_bytes(conn, tmp_path):
    good = [_pixel("e-1", "2026-12-01T10:00:00Z")]
    _write(tmp_path / "l" / "mixed.ndjson", good + list(BAD_LINES))
    (result,) = _sync(conn, tmp_path / "l")
    assert result.lines_read == 1 + len(BAD_LINES)
    assert result.lines_read == result.lines_accepted + result.lines_rejected
    rows = conn.execute(
        "SELECT line_no, reason, first_bytes FROM raw.rejected_lines ORDER BY line_no").fetchall()
    assert [reason for _, reason, _ in rows] == list(BAD_LINES.values())
    assert rows[1][2].startswith('{"id": "e-9"')
    assert len(rows[-1][2]) == 200


def test_the_length_limit_and_fractional_epochs_are_the_parsers_on_the_fast_path(
        conn, tmp_path):
    """Found by trying the fast path with bad input: a line of one byte over the limit with a
    bare line feed was taken by the fast path, and epoch seconds with a fraction overflowed
    a decimal there, which failed the whole file."""
    def sized(size: int) -> bytes:
        line = _pixel(f"e-{size}", "2026-12-01T10:00:00Z", pad="")
        return line.replace(b'"pad":""', b'"pad":"' + b"a" * (size - len(line)) + b'"')

    lines = [sized(1_000_000), sized(1_000_001), sized(999_999) + b"\r",
             sized(1_000_000) + b"\r", _pixel("e-f", 1764669600.5), _pixel("e-g", 1764669600),
             _pixel("e-h", "1764669600.123456")]
    _write(tmp_path / "l" / "edges.ndjson", lines)
    (result,) = _sync(conn, tmp_path / "l")
    assert result.lines_read == result.lines_accepted + result.lines_rejected == len(lines)
    loaded = _loaded_rows(conn)
    for number, raw in enumerate(lines, start=1):
        assert loaded.get(number, []) == _parser_rows(raw.removesuffix(b"\r")), number
    outcome = dict(conn.execute("SELECT line_no, reason FROM raw.rejected_lines").fetchall())
    assert outcome == {2: "line_too_long"}
    times = dict(conn.execute("SELECT source_event_id, event_time FROM raw.events").fetchall())
    assert times["e-f"] == datetime(2025, 12, 2, 10, 0, 0, 500000, tzinfo=UTC)
    assert times["e-h"] == datetime(2025, 12, 2, 10, 0, 0, 123456, tzinfo=UTC)


def _parser_rows(raw: bytes) -> list[tuple]:
    """What the Python parser alone makes of a line, in raw.events terms."""
    rows = []
    for item in parse_line(raw, NOW, SKEW):
        if isinstance(item, Message):
            rows.append((item.msg_index, item.source_format, item.source_event_name,
                         item.source_event_id, item.event_time, item.received_at,
                         item.envelope_ip, item.envelope_user_agent, item.envelope_store,
                         item.topic, list(item.time_flags), item.body))
    return rows


def _loaded_rows(conn) -> dict[int, list[tuple]]:
    found: dict[int, list[tuple]] = {}
    for row in conn.execute(
        "SELECT line_no, msg_index, source_format, source_event_name, source_event_id, "
        "event_time, received_at, envelope_ip, envelope_user_agent, envelope_store, topic, "
        "time_flags, body FROM raw.events ORDER BY line_no, msg_index"
    ).fetchall():
        found.setdefault(row[0], []).append((*row[1:-1], json.loads(row[-1])))
    return found


def test_fast_path_gives_what_the_python_parser_gives_on_demo_lines(conn, demo_landing):
    results = _sync(conn, demo_landing)
    fast = sum(result.fast_lines for result in results)
    assert fast > 0.9 * sum(result.lines_read for result in results)
    for result in results:
        path = demo_landing / result.path
        data = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
        loaded = {}
        for row in conn.execute(
            "SELECT line_no, msg_index, source_format, source_event_name, source_event_id, "
            "event_time, received_at, envelope_ip, envelope_user_agent, envelope_store, topic, "
            "time_flags, body FROM raw.events WHERE source_file = ? ORDER BY ALL",
            [result.path],
        ).fetchall():
            loaded.setdefault(row[0], []).append((*row[1:-1], json.loads(row[-1])))
        for number, raw in enumerate(data.split(b"\n")[:-1], start=1):
            assert loaded.get(number, []) == _parser_rows(raw.removesuffix(b"\r")), (
                result.path, number)


def test_fast_path_matches_the_parser_on_odd_envelope_bodies(conn, tmp_path):
    """The fast path reads an envelope's object body in the line's own parse: every other
    kind of body (null, array, number, a string holding JSON or not) must still end as the
    parser says, and a bare event that merely has a `body` field is not an envelope."""
    pixel = json.loads(_pixel("p-1", "2026-12-02T10:00:00Z"))
    envelope = {"received_at": "2026-12-02T10:00:01Z", "ip": "203.0.113.9"}
    bodies = [pixel, None, [pixel], 7, "not json", orjson.dumps(pixel).decode(),
              orjson.dumps([pixel]).decode(), '"{}"', {}, {"body": pixel},
              dict(pixel, body={"x": 1}), {"name": "page_viewed"}]
    lines = [orjson.dumps({**envelope, "body": body}) for body in bodies]
    lines += [orjson.dumps(dict(pixel, body=pixel)), orjson.dumps({"body": pixel}),
              orjson.dumps({"user_agent": "Mozilla/5.0", "body": pixel})]
    _write(tmp_path / "l" / "odd.ndjson", lines)
    (result,) = _sync(conn, tmp_path / "l")
    assert result.lines_read == result.lines_accepted + result.lines_rejected == len(lines)
    # The envelopes with an object body; a line with a "body" and no envelope field set
    # goes to the parser, which also takes an envelope field that is there but null.
    assert result.fast_lines >= 3
    loaded = _loaded_rows(conn)
    for number, raw in enumerate(lines, start=1):
        assert loaded.get(number, []) == _parser_rows(raw), number


def test_an_envelope_body_is_cut_from_the_line_only_where_it_is_the_body(conn, tmp_path):
    """The reader proposes a compact envelope's last `"body":{...}` as the body without
    parsing the line; the fast path takes it only if the text before it and the value both
    parse. Every line whose `"body"` is not simply the last member must still load (or be
    rejected) as the Python parser says, and a taken cut keeps the body as it was written."""
    pixel = _pixel("p-1", "2026-12-02T10:00:00Z", data={"price": 1.5}).replace(
        b'"price":1.5', b'"price":1.50')
    head = b'{"received_at":"2026-12-02T10:00:01Z","ip":"203.0.113.9"'
    lines = [
        head + b',"body":' + pixel + b"}",  # the plain case: cut
        head + b',"body":' + pixel + b',"user_agent":"Mozilla/5.0"}',  # not the last member
        head + b',"body":{"id":"x"},"extra":' + pixel + b"}",  # a value after the body
        head + b',"body":"x","body":' + pixel + b"}",  # a duplicate key before it
        b'{"received_at":"2026-12-02T10:00:01Z","user_agent":"a \\"body\\":{ b","body":'
        + pixel + b"}",  # the word inside a string first
        b'{"received_at": "2026-12-02T10:00:01Z", "body": ' + pixel + b"}",  # not compact
        head + b',,"body":' + pixel + b"}",  # not JSON before the body
        head + b',"body":' + pixel[:-2] + b'"\xff"}}',  # bad UTF-8 in the body
        head + b',"body":' + pixel + b"}\r",  # a carriage return before the line feed
        b'{"x":1,"body":' + pixel + b"}",  # a bare event with a body field: no envelope
        head + b',"body":{"id":"p-2"}}',  # a body too short to cut (12 bytes or fewer)
        head + b',"body":' + pixel + b"} ",  # whitespace after the envelope
    ]
    _write(tmp_path / "l" / "cuts.ndjson", lines)
    (result,) = _sync(conn, tmp_path / "l")
    assert result.lines_read == result.lines_accepted + result.lines_rejected == len(lines)
    loaded = _loaded_rows(conn)
    for number, raw in enumerate(lines, start=1):
        assert loaded.get(number, []) == _parser_rows(raw), number
    # The cut body is the line's own text (a re-serialization would write 1.5).
    (body,) = conn.execute("SELECT body FROM raw.events WHERE line_no = 1").fetchone()
    assert body == pixel.decode() and '"price":1.50}' in body
    assert result.fast_lines >= 5


def test_a_cut_body_is_what_reading_the_whole_line_gives(conn, tmp_path, monkeypatch):
    """DuckDB's JSON reader allows a trailing comma and NaN or Infinity, which the Python
    parser rejects; a bare line with them was always taken as DuckDB reads it. A cut
    envelope body must give the rows that reading the whole envelope line gives (the body
    then re-serialized, the cut keeping the text as written)."""
    from capi_pipeline.ingest import load

    pixel = _pixel("p-1", "2026-12-02T10:00:00Z", data={"a": [1, 2]})
    head = b'{"received_at":"2026-12-02T10:00:01Z","ip":"203.0.113.9","body":'
    lines = [head + pixel[:-1] + b",}}", head + pixel.replace(b"[1,2]", b"[1,2,]") + b"}",
             head + pixel.replace(b"[1,2]", b"[NaN,-Infinity]") + b"}", head + pixel + b"}"]
    _write(tmp_path / "l" / "lenient.ndjson", lines)

    def rows(folder: str, cut: bool) -> list[tuple]:
        db = duckdb.connect(str(tmp_path / f"{folder}.duckdb"))
        ensure_schema(db)
        if not cut:
            monkeypatch.setattr(load, "_envelope_cuts", lambda data, offsets, candidate: (
                np.zeros(len(offsets) - 1, dtype=bool),
                *[pa.nulls(len(offsets) - 1, pa.binary_view())] * 2))
        (result,) = _sync(db, tmp_path / "l")
        monkeypatch.undo()
        found = db.execute(
            "SELECT line_no, source_event_id, event_time, envelope_ip, json(body)::VARCHAR "
            "FROM raw.events ORDER BY line_no").fetchall()
        db.close()
        return result.fast_lines, found

    cut_fast, cut_rows = rows("cut", cut=True)
    whole_fast, whole_rows = rows("whole", cut=False)
    assert cut_rows == whole_rows and len(cut_rows) == len(lines) == cut_fast == whole_fast


def _segment(message_id: str | None, timestamp, **extra) -> dict:
    call = {"type": "track", "event": "Product Viewed", "anonymousId": "a-1",
            "timestamp": timestamp, "properties": {"price": 1.50, "name": "caf\u00e9"}, **extra}
    if message_id is not None:
        call["messageId"] = message_id
    return call


def test_fast_path_matches_the_parser_on_segment_batches(conn, tmp_path):
    """A batch is spread into its messages by SQL only when every message becomes an event;
    the batch's own sentAt and receivedAt go to the messages that lack them, whatever they
    hold (a string, a number, null). Each line must load as the Python parser alone says."""
    t = "2026-12-02T10:00:00.000Z"
    sent, received = "2026-12-02T10:00:05.000Z", "2026-12-02T10:00:06.000Z"
    batches = [
        {"batch": [_segment("m-1", t), _segment("m-2", t, sentAt=t)], "sentAt": sent},
        {"batch": [_segment("m-3", t)], "sentAt": sent, "receivedAt": received},
        {"receivedAt": received, "batch": [_segment("m-4", t, receivedAt=sent),
                                           _segment(None, t)]},
        {"batch": [_segment("m-5", t)], "sentAt": None},
        {"batch": [_segment("m-6", 1764669600000)], "sentAt": 1764669605000},
        {"batch": [_segment("m-7", t, sentAt=None)], "sentAt": sent},
        {"batch": [_segment("m-8", t), {"type": "unknown"}], "sentAt": sent},
        {"batch": [_segment("m-9", t), 7], "sentAt": sent},
        {"batch": [_segment("m-10", t), {}]},
        {"batch": [_segment("m-11", "2031-01-01T00:00:00Z")]},
        {"batch": [_segment("m-12", t), _segment("m-13", t, sentAt="not a time")],
         "sentAt": sent},
        {"batch": []},
        {"batch": {"not": "a list"}},
        {"batch": [{"batch": [_segment("m-14", t)]}]},
    ]
    lines = [orjson.dumps(line) for line in batches]
    lines.append(orjson.dumps({"received_at": received, "ip": "203.0.113.9",
                               "body": batches[0]}))
    lines.append(orjson.dumps({"received_at": received, "body": orjson.dumps(batches[1])
                               .decode()}))
    lines.append(json.dumps(batches[2], indent=1).replace("\n", " ").encode())
    _write(tmp_path / "l" / "batches.ndjson", lines)
    (result,) = _sync(conn, tmp_path / "l")
    assert result.lines_read == result.lines_accepted + result.lines_rejected == len(lines)
    # Lines 1-6 and the three wrapped or spaced copies are whole batches of events.
    assert result.fast_lines == 9
    loaded = _loaded_rows(conn)
    for number, raw in enumerate(lines, start=1):
        assert loaded.get(number, []) == _parser_rows(raw), number
    expected = Counter(item.reason for raw in lines for item in parse_line(raw, NOW, SKEW)
                       if not isinstance(item, Message))
    assert result.reasons == expected
    assert dict(conn.execute("SELECT reason, count(*) FROM raw.rejected_lines GROUP BY ALL")
                .fetchall()) == dict(expected)


@needs_shared
def test_fast_path_matches_the_parser_on_the_real_pixel_capture(conn, tmp_path):
    lines = (VALMI / "pixel_events.ndjson").read_bytes().splitlines()
    enveloped = [orjson.dumps({"received_at": json.loads(line)["timestamp"], "ip": "203.0.113.9",
                               "user_agent": "Mozilla/5.0", "body": json.loads(line)})
                 for line in lines]
    stringly = [orjson.dumps({"received_at": json.loads(line)["timestamp"],
                              "body": line.decode()}) for line in lines]
    _write(tmp_path / "l" / "valmi.ndjson", lines + enveloped + stringly)
    (result,) = _sync(conn, tmp_path / "l")
    assert (result.lines_read, result.events, result.fast_lines) == (39, 39, 39)
    loaded = _loaded_rows(conn)
    for number, raw in enumerate(lines + enveloped + stringly, start=1):
        assert loaded[number] == _parser_rows(raw), number
    earliest = min(json.loads(line)["timestamp"] for line in lines)
    assert conn.execute(
        "SELECT count(DISTINCT partition_date), strftime(min(event_time), '%Y-%m-%dT%H:%M:%S.%g')"
        " || 'Z' FROM raw.events").fetchone() == (3, earliest)


@needs_shared
def test_mutated_real_lines_are_all_accounted_for_and_nothing_raises(conn, tmp_path):
    """Property: whatever happens to real lines, accepted + rejected lines == lines read."""
    rng = random.Random(20261203)
    real = (VALMI / "pixel_events.ndjson").read_bytes().splitlines()
    real += [orjson.dumps(json.loads(path.read_text()))
             for path in sorted((VALMI / "webhooks").iterdir())]
    mutated = []
    for _ in range(600):
        line = bytearray(rng.choice(real))
        kind = rng.randrange(6)
        if kind == 0:
            line = line[: rng.randrange(len(line))]
        elif kind == 1:
            for _ in range(rng.randint(1, 4)):
                line[rng.randrange(len(line))] = rng.choice(b"\xff\xc3\x80\x00\"{}[],:")
        elif kind == 2:
            value = json.loads(bytes(line))
            key = rng.choice(list(value))
            value[key] = rng.choice([None, "", "undefined", 1e300, -1, True, [], {},
                                     "[object Object]", "1733011200000", "2026-12-01 10:00:00"])
            line = bytearray(orjson.dumps(value))
        elif kind == 3:
            line = bytearray(orjson.dumps({"received_at": rng.choice(
                ["2026-12-01T10:00:00Z", "bogus", 1764583200, None]), "body": line.decode(
                    "utf-8", "replace")}))
        elif kind == 4:
            line = bytearray(orjson.dumps({"batch": [json.loads(rng.choice(real)), 3, "x"],
                                           "sentAt": "2026-12-01T10:00:00Z"}))
        mutated.append(bytes(line).replace(b"\n", b" "))
    _write(tmp_path / "l" / "fuzz.ndjson", mutated)
    (result,) = _sync(conn, tmp_path / "l")
    assert result.lines_read == len(mutated) == result.lines_accepted + result.lines_rejected
    rejected_lines = conn.execute(
        "SELECT count(DISTINCT line_no) FROM raw.rejected_lines WHERE line_no NOT IN "
        "(SELECT line_no FROM raw.events)").fetchone()[0]
    accepted_lines = conn.execute("SELECT count(DISTINCT line_no) FROM raw.events").fetchone()[0]
    assert accepted_lines + rejected_lines == len(mutated)
    assert 50 < result.lines_rejected < 550
    assert set(result.reasons) >= {"bad_json", "bad_utf8"}
    # staging reads whatever ingest accepted without raising, one row per raw row
    from capi_pipeline.staging.sql import build_staging

    for day, events in conn.execute(
        "SELECT partition_date, count(*) FROM raw.events GROUP BY ALL").fetchall():
        assert build_staging(conn, day).num_rows == events


# --- UTC partitions --------------------------------------------------------------------------

def test_partitions_are_utc_dates_whatever_the_machine_zone(tmp_path, monkeypatch):
    lines = [_pixel("e-1", "2026-12-01T23:30:00-05:00"), _pixel("e-2", "1796126400000"),
             _pixel("e-3", "2026-12-01T01:00:00+09:00")]
    _write(tmp_path / "l" / "a.ndjson", lines)
    monkeypatch.setenv("TZ", "Asia/Kolkata")
    time.tzset()
    try:
        with duckdb.connect(":memory:") as conn:
            conn.execute("SET TimeZone = 'America/Los_Angeles'")
            ensure_schema(conn)
            _sync(conn, tmp_path / "l")
            rows = conn.execute("SELECT source_event_id, partition_date, time_flags "
                                "FROM raw.events ORDER BY 1").fetchall()
    finally:
        monkeypatch.delenv("TZ")
        time.tzset()
    assert rows == [("e-1", date(2026, 12, 2), []), ("e-2", date(2026, 12, 1), ["epoch_ms"]),
                    ("e-3", date(2026, 11, 30), [])]


# --- Snowplow --------------------------------------------------------------------------------

@needs_shared
def test_snowplow_enriched_events_load_and_stage(conn, tmp_path):
    from capi_pipeline.staging.sql import build_staging

    landing = tmp_path / "l"
    landing.mkdir()
    shutil.copy(SNOWPLOW / "dbt_snowplow_ecommerce__snowplow_ecommerce_events.csv.gz", landing)
    (result,) = _sync(conn, landing)
    assert (result.status, result.lines_read, result.events) == ("loaded", 834, 834)
    days = [row[0] for row in conn.execute(
        "SELECT DISTINCT partition_date FROM raw.events ORDER BY 1").fetchall()]
    staged = [build_staging(conn, day).to_pylist() for day in days]
    rows = [row for day in staged for row in day]
    assert len(rows) == 834
    # 29 rows carry a transaction context, 15 of them are the transaction action itself
    purchases = [row for row in rows if row["event_type"] == "purchase"]
    assert len(purchases) == 15
    assert all(row["order_id"] and row["value"] is not None and row["currency"]
               for row in purchases)
    assert {row["event_type"] for row in rows} >= {"product_view", "add_to_cart",
                                                   "collection_view", "checkout_step"}
    with_cookie = conn.execute(
        "SELECT count(*) FROM read_csv(?, all_varchar = true) WHERE domain_userid IS NOT NULL",
        [str(landing / "dbt_snowplow_ecommerce__snowplow_ecommerce_events.csv.gz")]).fetchone()[0]
    assert sum(1 for row in rows if row["client_id"]) == with_cookie > 700
    # the IPs are pseudonymised to hashes: never taken as addresses
    assert all(row["ip"] is None for row in rows)


@needs_shared
def test_a_bad_snowplow_row_is_rejected_alone(conn, tmp_path):
    """A row with bad bytes, one with a column too many and one cut short are rejected with
    their line numbers; every other row of the real sample loads, on its own line number."""
    sample = SNOWPLOW / "dbt_snowplow_ecommerce__snowplow_ecommerce_events.csv.gz"
    lines = gzip.decompress(sample.read_bytes()).split(b"\n")
    assert lines[-1] == b"" and len(lines) == 836  # the header, 834 rows
    ids = [line.split(b",")[6] for line in lines[1:-1]]  # event_id, the seventh column
    lines[5] = lines[5][:60] + b"\xff" + lines[5][60:]
    lines[9] = lines[9] + b",extra"
    lines[20] = lines[20][:40]
    landing = tmp_path / "l"
    landing.mkdir()
    (landing / "events.csv").write_bytes(b"\n".join(lines))
    (result,) = _sync(conn, landing)
    assert (result.status, result.lines_read, result.events) == ("loaded", 834, 831)
    assert dict(result.reasons) == {"bad_utf8": 1, "bad_row": 2}
    assert conn.execute("SELECT line_no, reason FROM raw.rejected_lines ORDER BY 1"
                        ).fetchall() == [(6, "bad_utf8"), (10, "bad_row"), (21, "bad_row")]
    loaded = dict(conn.execute("SELECT line_no, source_event_id FROM raw.events").fetchall())
    assert loaded == {number: ids[number - 2].decode() for number in range(2, 836)
                      if number not in (6, 10, 21)}


# --- the sensor -------------------------------------------------------------------------------

def test_sensor_asks_for_exactly_the_days_new_lines_fall_on(tmp_path):
    landing = tmp_path / "l"
    _write(landing / "today.ndjson", [_pixel("e-1", "2026-12-02T10:00:00Z"),
                                      _pixel("e-2", "2026-12-03T00:10:00Z"), b"{bad"])
    days, cursor, changed = days_to_run(landing, {}, 600)
    assert (sorted(days), changed) == (["2026-12-02", "2026-12-03"], 1)
    assert days_to_run(landing, cursor, 600)[2] == 0
    _write(landing / "late.ndjson", [_pixel("e-3", "2026-11-28T09:00:00Z")])
    days, cursor, changed = days_to_run(landing, cursor, 600)
    assert (sorted(days), changed) == (["2026-11-28"], 1)


def test_sensor_run_requests_name_the_partitions_and_skip_when_nothing_changed(tmp_path):
    from dagster import SkipReason, build_sensor_context

    from capi_pipeline.ingest.sensors import landing_sensor
    from capi_pipeline.resources import PipelineSettings

    landing = tmp_path / "l"
    _write(landing / "a.ndjson", [_pixel("e-1", "2026-12-02T10:00:00Z"),
                                  _pixel("e-2", "1999-12-31T10:00:00Z")])
    settings = PipelineSettings(landing_dir=str(landing))
    result = landing_sensor(build_sensor_context(resources={"settings": settings}))
    # 1999 is before the partitions start: kept in raw, but no run is asked for it
    assert [request.partition_key for request in result.run_requests] == ["2026-12-02"]
    again = landing_sensor(build_sensor_context(cursor=result.cursor,
                                                resources={"settings": settings}))
    assert isinstance(again, SkipReason)


def test_a_temporary_setting_is_put_back_even_when_the_statement_fails():
    """The fast path, enrich and identity each change an instance-wide DuckDB setting around
    their own statements only."""
    from capi_pipeline.lib.duck import temporary_setting

    with duckdb.connect(":memory:") as db:
        db.execute("SET threads = 2")

        def setting(name):
            return db.execute(f"SELECT current_setting('{name}')").fetchall()[0][0]

        with temporary_setting(db, "threads", 1):
            assert setting("threads") == 1
        assert setting("threads") == 2
        with pytest.raises(duckdb.Error):
            with temporary_setting(db, "disabled_optimizers", "filter_pushdown"):
                assert setting("disabled_optimizers") == "filter_pushdown"
                db.execute("SELECT * FROM no_such_table")
        assert setting("disabled_optimizers") == ""
        db.execute("SET disabled_optimizers = 'join_order'")
        with temporary_setting(db, "disabled_optimizers", "top_n"):
            assert setting("disabled_optimizers") == "top_n"
        assert setting("disabled_optimizers") == "join_order"
        # Inside a transaction, a failed statement makes DuckDB refuse the SET that puts the
        # setting back: the statement's own error is the one raised, not that refusal.
        db.execute("BEGIN TRANSACTION")
        with pytest.raises(duckdb.ConversionException):
            with temporary_setting(db, "threads", 1):
                db.execute("SELECT CAST('x' AS INTEGER)")
        db.execute("ROLLBACK")
