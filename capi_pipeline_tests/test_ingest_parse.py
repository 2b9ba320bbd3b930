"""Every landed line becomes messages or one rejection with its reason."""

from __future__ import annotations

import gzip
import json
from datetime import UTC, datetime, timedelta

import pytest

from capi_pipeline.ingest.landing import LandedFile, UnreadableFile, landing_files, read_lines
from capi_pipeline.ingest.parse import Message, Rejected, parse_line

NOW = datetime(2026, 12, 2, 12, tzinfo=UTC)
SKEW = timedelta(minutes=10)
PIXEL = {"id": "sh-1", "name": "page_viewed", "clientId": "c-1",
         "timestamp": "2026-12-02T10:00:00.000Z"}


def parse(value) -> list:
    raw = value if isinstance(value, bytes) else json.dumps(value).encode()
    return parse_line(raw, NOW, SKEW)


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"\xff\xfe not utf-8", "bad_utf8"),
        (b'{"id": "sh-1", "name": "page_vie', "bad_json"),
        (json.dumps(json.dumps(PIXEL)).encode(), "json_in_string"),
        (b"[1, 2, 3]", "not_object"),
        (b"   ", "empty_line"),
        (b'{"hello": "world"}', "unknown_shape"),
        (json.dumps({**PIXEL, "timestamp": "undefined"}).encode(), "missing_time"),
        (json.dumps({**PIXEL, "timestamp": "2027-06-01T00:00:00Z"}).encode(), "future_time"),
        (b'{"a": "' + b"x" * 1_000_001 + b'"}', "line_too_long"),
    ],
)
def test_bad_lines_are_rejected_with_their_reason(raw, reason):
    results = parse_line(raw, NOW, SKEW)
    assert len(results) == 1 and isinstance(results[0], Rejected)
    assert results[0].reason == reason
    assert results[0].byte_length == len(raw)


def test_rejection_detail_never_quotes_the_line():
    rejected = parse(b'{"email": "jane@example.com", "trunc')[0]
    assert "jane" not in rejected.detail


def test_envelope_with_string_body_gives_envelope_ip_and_receipt_time():
    line = {"received_at": "2026-12-02T10:00:01Z", "ip": "203.0.113.5", "user_agent": "UA",
            "body": json.dumps(PIXEL)}
    (message,) = parse(line)
    assert isinstance(message, Message)
    assert (message.source_format, message.source_event_id, message.envelope_ip) == (
        "shopify_pixel", "sh-1", "203.0.113.5")
    assert message.received_at == datetime(2026, 12, 2, 10, 0, 1, tzinfo=UTC)


def test_future_client_clock_is_replaced_by_receipt_time_and_flagged():
    line = {"received_at": "2026-12-02T10:00:01Z", "ip": "203.0.113.5",
            "body": {**PIXEL, "timestamp": "2027-01-01T00:00:00Z"}}
    (message,) = parse(line)
    assert message.event_time == datetime(2026, 12, 2, 10, 0, 1, tzinfo=UTC)
    assert "future_clock" in message.time_flags


def test_segment_batch_gives_one_message_each_with_clock_correction():
    batch = {"batch": [
        {"type": "track", "event": "Product Added", "messageId": "m1", "anonymousId": "a",
         "timestamp": "2026-12-02T09:00:00Z", "sentAt": "2026-12-02T09:00:10Z"},
        {"type": "page", "messageId": "m2", "anonymousId": "a",
         "timestamp": "2026-12-02T09:00:05Z", "sentAt": "2026-12-02T09:00:10Z"},
    ], "receivedAt": "2026-12-02T10:00:10Z"}
    first, second = parse(batch)
    # The device clock ran an hour slow: receivedAt - (sentAt - timestamp).
    assert first.event_time == datetime(2026, 12, 2, 10, 0, 0, tzinfo=UTC)
    assert second.event_time == datetime(2026, 12, 2, 10, 0, 5, tzinfo=UTC)
    assert (first.source_event_name, second.source_event_name) == ("Product Added", "page")
    assert (first.msg_index, second.msg_index) == (0, 1)


def test_order_webhook_topic_and_store_offset():
    order = {"id": 5, "order_number": 1005, "line_items": [],
             "processed_at": "2026-12-02T02:42:45-05:00"}
    (message,) = parse({"received_at": "2026-12-02T07:43:00Z", "ip": None,
                        "topic": "orders/paid", "body": order})
    assert (message.source_format, message.source_event_name, message.source_event_id) == (
        "shopify_webhook", "orders/paid", "order-5-paid")
    assert message.event_time == datetime(2026, 12, 2, 7, 42, 45, tzinfo=UTC)


def test_landing_lists_ndjson_and_gzip_and_reads_every_line(tmp_path):
    day = tmp_path / "pixel" / "2026-12-02"
    day.mkdir(parents=True)
    (day / "a.ndjson").write_bytes(b'{"x": 1}\r\n{"x": 2}\n')
    (day / "b.ndjson.gz").write_bytes(gzip.compress(b'{"x": 3}\n\n{"x": 4}'))
    (day / "notes.txt").write_text("ignored")
    files = landing_files(tmp_path)
    assert [f.name for f in files] == ["pixel/2026-12-02/a.ndjson", "pixel/2026-12-02/b.ndjson.gz"]
    assert list(read_lines(files[0])) == [(1, b'{"x": 1}'), (2, b'{"x": 2}')]
    assert list(read_lines(files[1])) == [(1, b'{"x": 3}'), (2, b""), (3, b'{"x": 4}')]
    assert files[0].landed_on.isoformat() == "2026-12-02"


def test_truncated_gzip_is_unreadable_not_half_read(tmp_path):
    path = tmp_path / "broken.ndjson.gz"
    path.write_bytes(gzip.compress(b'{"x": 1}\n' * 1000)[:-20])
    with pytest.raises(UnreadableFile):
        list(read_lines(LandedFile(path, "broken.ndjson.gz")))
