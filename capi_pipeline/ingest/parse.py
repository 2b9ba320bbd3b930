"""From one landed line to accepted messages or one rejection with its reason.

A line is bytes from a collector file. It may hold a Shopify Web Pixels event, a Segment call
(or a Segment `batch` of them), or a Shopify order webhook, each optionally wrapped in our
collector envelope `{"received_at", "ip", "user_agent", "topic", "body"}`. Nothing here raises
on bad input: every line comes back as messages or as a `Rejected` naming why.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

import orjson

from capi_pipeline.enrich.normalize import clean
from capi_pipeline.lib.values import parse_timestamp

MAX_LINE_BYTES = 1_000_000
FIRST_BYTES = 200
SEGMENT_TYPES = frozenset({"track", "page", "screen", "identify", "alias", "group"})
ORDER_TOPICS = frozenset({"orders/create", "orders/paid", "orders/cancelled", "orders/updated"})


@dataclass(frozen=True)
class Message:
    """One event as landed, with the time that decides its partition."""

    source_format: str
    source_event_name: str | None
    source_event_id: str | None
    event_time: datetime
    received_at: datetime | None
    envelope_ip: str | None
    envelope_user_agent: str | None
    envelope_store: str | None
    topic: str | None
    time_flags: tuple[str, ...]
    body: dict
    msg_index: int = 0


@dataclass(frozen=True)
class Rejected:
    """A line, or a message inside it, that cannot become an event."""

    reason: str
    detail: str
    byte_length: int
    first_bytes: str
    event_time: datetime | None = None


@dataclass
class _Envelope:
    received_at: datetime | None = None
    ip: str | None = None
    user_agent: str | None = None
    store: str | None = None
    topic: str | None = None
    extra_flags: list[str] = field(default_factory=list)


def parse_line(raw: bytes, now: datetime, max_skew: timedelta) -> list[Message | Rejected]:
    """Every message a line holds, or a single rejection for the whole line."""
    head = raw[:FIRST_BYTES].decode("utf-8", errors="replace")

    def reject(reason: str, detail: str, event_time: datetime | None = None) -> list[Rejected]:
        return [Rejected(reason, detail, len(raw), head, event_time)]

    if len(raw) > MAX_LINE_BYTES:
        return reject("line_too_long", f"{len(raw)} bytes, limit {MAX_LINE_BYTES}")
    if not raw.strip():
        return reject("empty_line", "nothing but whitespace")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        return reject("bad_utf8", f"invalid UTF-8 at byte {error.start}")
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError as error:
        return reject("bad_json", _json_error(error))
    if isinstance(value, str):
        return reject("json_in_string", "the line is a JSON string, not an object")
    if not isinstance(value, dict):
        return reject("not_object", f"the line is a JSON {type(value).__name__}")

    envelope = _Envelope()
    if "body" in value and any(
        key in value for key in ("received_at", "ip", "user_agent", "topic", "shop_domain")
    ):
        envelope, value = _unwrap(value)
        if isinstance(value, Rejected):
            return [Rejected(value.reason, value.detail, len(raw), head)]

    if value.get("batch") == []:
        return reject("empty_batch", "a Segment batch with no messages")
    if isinstance(value.get("batch"), list):
        # A batch's own send and receipt times belong to every message in it.
        shared = {key: value[key] for key in ("sentAt", "receivedAt") if key in value}
        messages = [
            {**shared, **message} if isinstance(message, dict) else message
            for message in value["batch"]
        ]
    else:
        messages = [value]
    results: list[Message | Rejected] = []
    for index, message in enumerate(messages):
        result = _message(message, envelope, now, max_skew, index)
        if isinstance(result, Rejected):
            result = Rejected(result.reason, result.detail, len(raw), head, result.event_time)
        results.append(result)
    return results


def _json_error(error: orjson.JSONDecodeError) -> str:
    # orjson's message quotes part of the document; keep only its position so that no
    # personal data from the line leaks into the detail column.
    return f"not valid JSON (position {error.pos})"


def _unwrap(value: dict) -> tuple[_Envelope, dict | Rejected]:
    envelope = _Envelope(
        ip=clean(value.get("ip")),
        user_agent=clean(value.get("user_agent")),
        topic=clean(value.get("topic")),
        store=clean(value.get("shop_domain")) or clean(value.get("store")),
    )
    envelope.received_at, flags = parse_timestamp(value.get("received_at"))
    if envelope.received_at is None:
        envelope.extra_flags.append("bad_received_at")
    body = value.get("body")
    if isinstance(body, (str, bytes)):
        try:
            body = orjson.loads(body)
        except orjson.JSONDecodeError as error:
            return envelope, Rejected("bad_json", "envelope body: " + _json_error(error), 0, "")
    if not isinstance(body, dict):
        return envelope, Rejected("not_object", "envelope body is not a JSON object", 0, "")
    return envelope, body


def _message(
    body: object, envelope: _Envelope, now: datetime, max_skew: timedelta, index: int
) -> Message | Rejected:
    if not isinstance(body, dict):
        return Rejected("not_object", "a batch entry is not a JSON object", 0, "")
    shape = detect_shape(body, envelope.topic)
    if shape is None:
        return Rejected("unknown_shape", "neither a Web Pixels event, a Segment call nor an order",
                        0, "")
    source_format, name, event_id, raw_time = shape
    event_time, flags = _event_time(source_format, body, raw_time, envelope)
    flags = set(flags) | set(envelope.extra_flags)
    if event_time is None and envelope.received_at is not None:
        # The collector saw the event arrive; that beats losing it for a broken device clock.
        event_time = envelope.received_at
        flags = (flags - {"bad_time"}) | {"time_from_receipt"}
    if event_time is None:
        return Rejected("missing_time", "no readable event time", 0, "")

    # A client clock far ahead is not trusted: the collector's receipt time stands in for it,
    # and without one the event cannot be placed in time at all.
    limit = (envelope.received_at or now) + max_skew
    if event_time > limit:
        if envelope.received_at is None:
            return Rejected("future_time", "event time is in the future", 0, "", event_time)
        flags.add("future_clock")
        event_time = envelope.received_at

    return Message(
        source_format=source_format,
        source_event_name=name,
        source_event_id=event_id,
        event_time=event_time,
        received_at=envelope.received_at,
        envelope_ip=envelope.ip,
        envelope_user_agent=envelope.user_agent,
        envelope_store=envelope.store,
        topic=envelope.topic,
        time_flags=tuple(sorted(flags)),
        body=body,
        msg_index=index,
    )


def detect_shape(body: dict, topic: str | None) -> tuple[str, str | None, str | None, object]:
    """(format, event name, event id, raw time) for a known shape, else None."""
    if "clientId" in body and "name" in body and ("timestamp" in body or "id" in body):
        return "shopify_pixel", clean(body.get("name")), clean(body.get("id")), body.get(
            "timestamp"
        )
    kind = body.get("type")
    if isinstance(kind, str) and kind in SEGMENT_TYPES and (
        "anonymousId" in body or "userId" in body or "messageId" in body
    ):
        name = clean(body.get("event")) if kind == "track" else kind
        return "segment", name, clean(body.get("messageId")), body.get("timestamp")
    if "line_items" in body and any(
        key in body for key in ("order_number", "checkout_token", "financial_status")
    ):
        if topic not in ORDER_TOPICS:
            topic = "orders/cancelled" if clean(body.get("cancelled_at")) else "orders/create"
        order_id = clean(body.get("id"))
        event_id = f"order-{order_id}-{topic.split('/')[1]}" if order_id else None
        raw_time = (body.get("cancelled_at") if topic == "orders/cancelled" else None) or (
            body.get("processed_at") or body.get("created_at") or body.get("updated_at")
        )
        return "shopify_webhook", topic, event_id, raw_time
    return None


def _event_time(
    source_format: str, body: dict, raw_time: object, envelope: _Envelope
) -> tuple[datetime | None, frozenset[str]]:
    if source_format != "segment":
        return parse_timestamp(raw_time)

    # Segment's own correction for a wrong device clock: shift the device time by the gap
    # between the device's send time and the server's receipt time.
    raw_time = raw_time if raw_time is not None else body.get("originalTimestamp")
    timestamp, flags = parse_timestamp(raw_time)
    if timestamp is None:
        return None, flags
    sent_at, _ = parse_timestamp(body.get("sentAt"))
    received_at, _ = parse_timestamp(body.get("receivedAt"))
    received_at = received_at or envelope.received_at
    if sent_at is None or received_at is None:
        return timestamp, flags
    return received_at - (sent_at - timestamp), flags | {"clock_corrected"}
