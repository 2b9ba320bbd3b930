"""A local stand-in for Pinterest's Conversions API (``POST /v5/ad_accounts/{id}/events``).

Pinterest is not reachable from development machines or CI, so the demo and the tests send
their events here instead. The emulator is a real HTTP server on loopback (Starlette served by
uvicorn) that enforces the published contract: bearer-token auth, ad-account access, the strict
request schema (unknown keys and wrong types refuse the whole request with HTTP 400), the
per-event rules Pinterest states in prose (event names, action sources, identifiers, SHA-256
hex digests, event time in seconds and not too old or in the future), and the 200 response
shape with one result per event in request order. It records what it accepted and can inject
faults (429 with ``Retry-After``, random 503s, added latency).

Command line::

    python -m capi_pipeline.pinterest.emulator --host 127.0.0.1 --port 0 --token TOKEN \\
        [--ad-account-id ID ...] [--record FILE.ndjson] [--max-age-days 7] \\
        [--fail-first N] [--retry-after S] [--error-rate R] [--seed N] [--latency-ms MS] \\
        [--log-level warning]

On start it prints exactly one line, ``emulator listening on http://HOST:PORT``, to stdout;
``--port 0`` binds a free port and the line carries the real one.

Every flag may instead come from an environment variable (a flag wins over its variable):

=========================  ==================  ============================================
variable                   flag                meaning
=========================  ==================  ============================================
``EMULATOR_HOST``          ``--host``          interface to bind (default 127.0.0.1)
``EMULATOR_PORT``          ``--port``          port; 0 picks a free one (default 0)
``EMULATOR_TOKEN``         ``--token``         the only bearer token accepted (required)
``EMULATOR_AD_ACCOUNT_ID`` ``--ad-account-id`` comma-separated ids; none means any id
``EMULATOR_RECORD``        ``--record``        NDJSON file that gets one line per accepted body
``EMULATOR_MAX_AGE_DAYS``  ``--max-age-days``  older events fail (default 7)
``EMULATOR_FAIL_FIRST``    ``--fail-first``    answer the first N event requests with 429
``EMULATOR_RETRY_AFTER``   ``--retry-after``   seconds in the 429 ``Retry-After`` header (1)
``EMULATOR_ERROR_RATE``    ``--error-rate``    fraction of event requests answered with 503
``EMULATOR_SEED``          ``--seed``          seed of the error-rate random draws (0)
``EMULATOR_LATENCY_MS``    ``--latency-ms``    delay added before answering event requests
``EMULATOR_LOG_LEVEL``     ``--log-level``     log level of the emulator's stderr log
=========================  ==================  ============================================

Passing the token through ``EMULATOR_TOKEN`` keeps it out of the process list, which is what
:class:`EmulatorProcess` does.

Introspection endpoints, meant for a loopback test tool and therefore without auth:
``GET /_emulator/health``, ``GET /_emulator/stats``, ``GET /_emulator/bodies`` and
``POST /_emulator/reset``.

Where Pinterest's sources are silent the emulator picks the stricter reading so the pipeline
is pushed towards payloads that are safe everywhere; each such choice is marked "not published"
below. Known gaps: no per-minute rate limiting, no 422 ``DetailedError`` answers, no body-size
cap (Pinterest publishes none), and deduplication is only counted, never applied.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hmac
import logging
import math
import os
import queue
import random
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson
import uvicorn
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

_MODULE = "capi_pipeline.pinterest.emulator"
# Named explicitly: under `python -m` __name__ would be "__main__".
logger = logging.getLogger(_MODULE)

LISTENING_PREFIX = "emulator listening on "

EVENT_NAMES = frozenset({
    "add_payment_info", "add_to_cart", "add_to_wishlist", "app_install", "app_open", "checkout",
    "contact", "custom", "customize_product", "find_location", "initiate_checkout", "lead",
    "page_visit", "schedule", "search", "signup", "start_trial", "submit_application",
    "subscribe", "view_category", "view_content", "watch_video",
})
ACTION_SOURCES = frozenset({"web", "app_android", "app_ios", "offline"})
HASHED_USER_FIELDS = ("em", "ph", "ge", "db", "ln", "fn", "ct", "st", "zp", "country",
                      "external_id", "hashed_maids")

MAX_EVENTS = 1000
FUTURE_TOLERANCE_SECONDS = 60
# Unix seconds stay below 10**11 until the year 5138; milliseconds passed it in 1973.
MILLISECONDS_THRESHOLD = 10**11
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1

_AD_ACCOUNT_ID = re.compile(r"^\d{1,18}$")
_SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")
_DECIMAL = re.compile(r"^-?\d+(\.\d+)?$")
_LISTENING_LINE = re.compile(r"^emulator listening on (http://\S+)$")

_MSG_AUTH = "Authentication failed."
_MSG_FORBIDDEN = "You are not permitted to access that resource."
_MSG_RATE_LIMIT = ("This request exceeded a rate limit. This can happen if the client exceeds "
                   "one of the published rate limits within a short time window.")
_MSG_RAMPED_DOWN = ("The endpoint has been ramped down and is currently not accepting any "
                    "traffic.")
_CODE_AUTH, _CODE_FORBIDDEN, _CODE_RATE_LIMIT = 2, 29, 8
_CODE_INVALID, _CODE_RAMPED_DOWN = 4196, 4197


# --------------------------------------------------------------------------------------------
# Configuration


@dataclass(frozen=True)
class EmulatorConfig:
    """Settings of one emulator instance.

    Attributes:
        token: The only bearer token accepted.
        ad_account_ids: Ad accounts the token may send to; empty means any digits-only id.
        max_age_days: Events older than this many days fail.
        record_path: NDJSON file that receives one line per accepted (200, non-test) body.
        fail_first: The first N authorised event requests are answered with 429.
        retry_after: Seconds announced in the 429 ``Retry-After`` header.
        error_rate: Fraction (0..1) of authorised event requests answered with 503.
        latency_ms: Delay added before every event request is answered.
        seed: Seed of the random draws behind ``error_rate``.
    """

    token: str
    ad_account_ids: tuple[str, ...] = ()
    max_age_days: float = 7
    record_path: str | Path | None = None
    fail_first: int = 0
    retry_after: int = 1
    error_rate: float = 0.0
    latency_ms: int = 0
    seed: int = 0

    def __post_init__(self) -> None:
        # Frozen dataclasses need object.__setattr__; callers may pass a list or one string.
        ids = self.ad_account_ids
        object.__setattr__(self, "ad_account_ids", (ids,) if isinstance(ids, str) else tuple(ids))
        problems = _config_problems(self)
        if problems:
            raise ValueError("; ".join(problems))


def _config_problems(config: EmulatorConfig) -> list[str]:
    problems = []
    if not config.token:
        problems.append("token must not be empty")
    problems += [f"ad account id {value!r} is not 1-18 digits"
                 for value in config.ad_account_ids if not _AD_ACCOUNT_ID.match(value)]
    if not config.max_age_days > 0:
        problems.append("max_age_days must be positive")
    if config.fail_first < 0 or config.retry_after < 0 or config.latency_ms < 0:
        problems.append("fail_first, retry_after and latency_ms must not be negative")
    if not 0.0 <= config.error_rate <= 1.0:
        problems.append("error_rate must be between 0 and 1")
    return problems


# --------------------------------------------------------------------------------------------
# Request schema, written from the field tables of Pinterest's API reference


class RequestInvalid(Exception):
    """A body Pinterest refuses as a whole with HTTP 400; the text names the offending path."""


@dataclass(frozen=True)
class Shape:
    """The keys an object may hold.

    Attributes:
        fields: Known keys and their rules.
        required: Keys that must be present.
        closed: Whether unknown keys refuse the request (``additionalProperties: false``).
    """

    fields: Mapping[str, Field]
    required: tuple[str, ...] = ()
    closed: bool = True


@dataclass(frozen=True)
class Field:
    """The rule for one value: its JSON kind and the constraints Pinterest publishes.

    Attributes:
        kind: One of ``string``, ``integer``, ``boolean``, ``strings`` (array of string),
            ``object`` or ``objects`` (array of object).
        nullable: Whether JSON null is allowed.
        max_length: Longest string allowed, in characters.
        minimum: Smallest integer allowed.
        maximum: Largest integer allowed.
        choices: The only strings allowed, when not empty.
        min_items: Shortest array allowed.
        max_items: Longest array allowed.
        shape: Rules for the object, or for each object of an array.
    """

    kind: str
    nullable: bool = False
    max_length: int | None = None
    minimum: int | None = None
    maximum: int | None = None
    choices: frozenset[str] = frozenset()
    min_items: int | None = None
    max_items: int | None = None
    shape: Shape | None = None


def _string(max_length: int | None = None, *, nullable: bool = False) -> Field:
    return Field("string", nullable=nullable, max_length=max_length)


def _nullable_string() -> Field:
    return Field("string", nullable=True)


def _integer(minimum: int | None = None, maximum: int | None = None, *,
             nullable: bool = False) -> Field:
    return Field("integer", nullable=nullable, minimum=minimum, maximum=maximum)


def _choice(*values: str) -> Field:
    return Field("string", choices=frozenset(values))


_BOOLEAN = Field("boolean")
_STRINGS = Field("strings")

_USER_DATA = Shape(
    fields={
        **{key: _STRINGS for key in HASHED_USER_FIELDS},
        "client_ip_address": _string(),
        "client_user_agent": _string(),
        "click_id": _nullable_string(),
        "partner_id": _nullable_string(),
    },
    # Pinterest's user_data schema alone leaves additionalProperties open; unknown keys only
    # earn a warning (see _user_data_warnings).
    closed=False,
)

_CONTENT_ITEM = Shape(fields={
    "id": _string(),
    "item_price": _string(),
    "quantity": _integer(INT64_MIN, INT64_MAX),
    "item_name": _string(),
    "item_category": _string(),
    "item_brand": _string(),
    # Added in API 5.28; the 5.23 OpenAPI file in ../shared predates it.
    "item_brand_id": _string(),
})

_CUSTOM_DATA = Shape(fields={
    "currency": _nullable_string(),
    "value": _nullable_string(),
    "content_ids": _STRINGS,
    "contents": Field("objects", shape=_CONTENT_ITEM),
    "num_items": _integer(INT64_MIN, INT64_MAX),
    "order_id": _nullable_string(),
    "search_string": _nullable_string(),
    "opt_out_type": _nullable_string(),
    "np": _nullable_string(),
    "content_name": _nullable_string(),
    "content_category": _nullable_string(),
    "content_brand": _nullable_string(),
    "external_measurement_id": _nullable_string(),
    "external_measurement_vendor_id": _integer(INT64_MIN, INT64_MAX, nullable=True),
    "predicted_ltv": _nullable_string(),
})

_APP_INFO = Shape(fields={
    "app_id": _string(200),
    "app_name": _string(200),
    "app_package_name": _string(200),
    "app_store": _string(100),
    "app_version": _string(100),
    "install_time": _integer(0, INT64_MAX),
    "user_agent": _string(16384),
    "window_height": _integer(0, 30720),
    "window_width": _integer(0, 30720),
})

_DEVICE_INFO = Shape(fields={
    "battery_level": _integer(0, 100),
    **{key: _string(100) for key in ("brand", "carrier", "model", "type", "kernel_version",
                                     "os_name", "os_release_name", "os_version")},
    "cpu_cores": _integer(0, 1152),
    **{key: _integer(0, 1048576) for key in ("storage_size", "storage_free_space",
                                             "external_storage_size",
                                             "external_storage_free_space")},
    "form_factor": _choice("desktop", "laptop", "cellphone", "tablet", "smartwatch", "tv", "vr",
                           "console", "other"),
    "network_type": _choice("wifi", "cellular_2g", "cellular_3g", "cellular_4g", "cellular_5g",
                            "cellular_6g", "ethernet", "unknown"),
    "os_family": _choice("ios", "android", "macos", "windows", "linux", "bsd", "other"),
    "languages": Field("strings", max_items=100),
    "locale": _string(35),
    "screen_density": _integer(0, 100000),
    "screen_height": _integer(0, 30720),
    "screen_width": _integer(0, 30720),
    "timezone": _string(40),
    "timezone_abbr": _string(5),
})

_EVENT = Shape(
    fields={
        "event_name": _string(),
        "action_source": _string(),
        "event_time": _integer(INT64_MIN, INT64_MAX),
        "event_id": _string(),
        "user_data": Field("object", shape=_USER_DATA),
        "custom_data": Field("object", shape=_CUSTOM_DATA),
        "event_source_url": _nullable_string(),
        "opt_out": _BOOLEAN,
        "partner_name": _nullable_string(),
        **{key: _nullable_string() for key in ("app_id", "app_name", "app_version",
                                               "device_brand", "device_carrier",
                                               "device_model", "device_type", "os_version",
                                               "language")},
        "wifi": _BOOLEAN,
        "app_info": Field("object", shape=_APP_INFO),
        "device_info": Field("object", shape=_DEVICE_INFO),
    },
    required=("event_name", "action_source", "event_time", "event_id", "user_data"),
)

_BODY = Shape(
    fields={"data": Field("objects", min_items=1, max_items=MAX_EVENTS, shape=_EVENT)},
    required=("data",),
)

_KIND_WORDS = {
    "string": "a string", "integer": "an integer", "boolean": "a boolean",
    "strings": "an array of strings", "object": "an object", "objects": "an array of objects",
}


def check_body(body: Any) -> None:
    """Check a parsed request body against the request schema.

    Args:
        body: The parsed JSON body.

    Raises:
        RequestInvalid: On the first violation, in document order.
    """
    _check_shape(body, _BODY, "")


def _json_kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    return "array" if isinstance(value, list) else "object"


def _where(path: str) -> str:
    return f"at {path}" if path else "at the top level"


def _child(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _wrong_kind(path: str, rule: Field, value: Any) -> RequestInvalid:
    expected = _KIND_WORDS[rule.kind] + (" or null" if rule.nullable else "")
    return RequestInvalid(f"{path} must be {expected}, not {_json_kind(value)}")


def _check_shape(value: Any, shape: Shape, path: str) -> None:
    if not isinstance(value, dict):
        raise RequestInvalid(f"{path or 'the body'} must be an object, not {_json_kind(value)}")
    if shape.closed:
        for key in value:
            if key not in shape.fields:
                raise RequestInvalid(f"Additional properties are not allowed ({key!r} was "
                                     f"unexpected) {_where(path)}")
    for key in shape.required:
        if key not in value:
            raise RequestInvalid(f"{key!r} is a required property {_where(path)}")
    for key, rule in shape.fields.items():
        if key in value:
            _check_value(value[key], rule, _child(path, key))


def _check_value(value: Any, rule: Field, path: str) -> None:
    if value is None:
        if rule.nullable:
            return
        raise _wrong_kind(path, rule, value)
    _CHECKERS[rule.kind](value, rule, path)


def _check_string(value: Any, rule: Field, path: str) -> None:
    if not isinstance(value, str):
        raise _wrong_kind(path, rule, value)
    if rule.max_length is not None and len(value) > rule.max_length:
        raise RequestInvalid(f"{path} must be at most {rule.max_length} characters long")
    if rule.choices and value not in rule.choices:
        raise RequestInvalid(f"{path} must be one of {', '.join(sorted(rule.choices))}, "
                             f"not {value!r}")


def _check_integer(value: Any, rule: Field, path: str) -> None:
    # bool is a subclass of int in Python but a different JSON type.
    if not isinstance(value, int) or isinstance(value, bool):
        raise _wrong_kind(path, rule, value)
    if rule.minimum is not None and value < rule.minimum:
        raise RequestInvalid(f"{path} must be at least {rule.minimum}")
    if rule.maximum is not None and value > rule.maximum:
        raise RequestInvalid(f"{path} must be at most {rule.maximum}")


def _check_boolean(value: Any, rule: Field, path: str) -> None:
    if not isinstance(value, bool):
        raise _wrong_kind(path, rule, value)


def _check_array(value: Any, rule: Field, path: str) -> None:
    if not isinstance(value, list):
        raise _wrong_kind(path, rule, value)
    if rule.min_items is not None and len(value) < rule.min_items:
        raise RequestInvalid(f"{path} must hold at least {rule.min_items} item(s), "
                             f"got {len(value)}")
    if rule.max_items is not None and len(value) > rule.max_items:
        raise RequestInvalid(f"{path} must hold at most {rule.max_items} items, "
                             f"got {len(value)}")


def _check_strings(value: Any, rule: Field, path: str) -> None:
    _check_array(value, rule, path)
    for index, item in enumerate(value):
        if not isinstance(item, str):
            raise RequestInvalid(f"{path}[{index}] must be a string, not {_json_kind(item)}")


def _check_object(value: Any, rule: Field, path: str) -> None:
    assert rule.shape is not None
    _check_shape(value, rule.shape, path)


def _check_objects(value: Any, rule: Field, path: str) -> None:
    assert rule.shape is not None
    _check_array(value, rule, path)
    for index, item in enumerate(value):
        _check_shape(item, rule.shape, f"{path}[{index}]")


_CHECKERS: dict[str, Callable[[Any, Field, str], None]] = {
    "string": _check_string,
    "integer": _check_integer,
    "boolean": _check_boolean,
    "strings": _check_strings,
    "object": _check_object,
    "objects": _check_objects,
}


# --------------------------------------------------------------------------------------------
# Per-event rules: a broken event fails alone, its neighbours are still processed


@dataclass(frozen=True)
class EventResult:
    """Pinterest's verdict on one event of a schema-valid request.

    Attributes:
        status: ``processed`` or ``failed``.
        error_message: Why the event failed, or None.
        warning_message: What was ignored in a processed or failed event, or None.
    """

    status: str
    error_message: str | None = None
    warning_message: str | None = None

    @property
    def processed(self) -> bool:
        """Whether the event counts as received by Pinterest."""
        return self.status == "processed"

    def as_json(self) -> dict[str, str | None]:
        """The event's entry in the response's ``events`` array."""
        return {"status": self.status, "error_message": self.error_message,
                "warning_message": self.warning_message}


def judge_event(event: Mapping[str, Any], now: float, max_age_days: float) -> EventResult:
    """Apply the rules Pinterest states in prose to one schema-valid event.

    Args:
        event: One item of ``data``, already checked by :func:`check_body`.
        now: The receiving time, in Unix seconds.
        max_age_days: Older events fail.

    Returns:
        The event's status with every problem found, joined by "; ".
    """
    errors = [*_name_problems(event), *_time_problems(event["event_time"], now, max_age_days),
              *_user_data_problems(event["user_data"])]
    warnings = [*_user_data_warnings(event["user_data"]),
                *_custom_data_warnings(event.get("custom_data") or {})]
    return EventResult(status="failed" if errors else "processed",
                       error_message="; ".join(errors) or None,
                       warning_message="; ".join(warnings) or None)


def _name_problems(event: Mapping[str, Any]) -> list[str]:
    problems = []
    if event["event_name"] not in EVENT_NAMES:
        problems.append(f"event_name {event['event_name']!r} is not a Pinterest event name; "
                        "use 'custom' for other events")
    if event["action_source"] not in ACTION_SOURCES:
        problems.append(f"action_source {event['action_source']!r} must be one of "
                        f"{', '.join(sorted(ACTION_SOURCES))}")
    if not event["event_id"]:
        problems.append("event_id must not be empty")
    return problems


def _time_problems(event_time: int, now: float, max_age_days: float) -> list[str]:
    # Milliseconds are also in the future; naming the unit makes the usual mistake obvious.
    if event_time >= MILLISECONDS_THRESHOLD:
        return [f"event_time {event_time} looks like milliseconds; send Unix seconds"]
    if event_time > now + FUTURE_TOLERANCE_SECONDS:
        return [f"event_time is {int(event_time - now)} s in the future"]
    if event_time < now - max_age_days * 86400:
        return [f"event_time is older than {max_age_days:g} days"]
    return []


def _user_data_problems(user_data: Mapping[str, Any]) -> list[str]:
    problems = []
    for key in HASHED_USER_FIELDS:
        values = user_data.get(key)
        if values is None:
            continue
        # Not published: an empty array carries no match key, so it is treated as a mistake.
        if not values:
            problems.append(f"user_data.{key} is an empty array")
        # The value itself is never echoed: a failed hash may be plain-text personal data.
        problems += [f"user_data.{key}[{index}] is not a SHA-256 digest in lower-case hex"
                     for index, value in enumerate(values) if not _SHA256_HEX.match(value)]
    if not _has_identifier(user_data):
        problems.append("user_data needs em, hashed_maids, or both client_ip_address and "
                        "client_user_agent")
    return problems


def _has_identifier(user_data: Mapping[str, Any]) -> bool:
    pair = user_data.get("client_ip_address") and user_data.get("client_user_agent")
    return bool(user_data.get("em") or user_data.get("hashed_maids") or pair)


def _user_data_warnings(user_data: Mapping[str, Any]) -> list[str]:
    return [f"user_data.{key} is not a Pinterest field and was ignored"
            for key in user_data if key not in _USER_DATA.fields]


def _custom_data_warnings(custom_data: Mapping[str, Any]) -> list[str]:
    # Not published whether Pinterest fails or ignores these, so they only warn.
    warnings = [f"custom_data.{key} is not a decimal number"
                for key in ("value", "predicted_ltv")
                if custom_data.get(key) is not None and not _is_decimal(custom_data[key])]
    warnings += [f"custom_data.contents[{index}].item_price is not a decimal number"
                 for index, item in enumerate(custom_data.get("contents") or [])
                 if "item_price" in item and not _is_decimal(item["item_price"])]
    if custom_data.get("opt_out_type") not in (None, "", "LDP"):
        warnings.append("custom_data.opt_out_type other than 'LDP' is ignored")
    return warnings


def _is_decimal(text: str) -> bool:
    return bool(_DECIMAL.match(text)) and math.isfinite(float(text))


# --------------------------------------------------------------------------------------------
# Faults: each takes the 1-based number of the authorised event request and may answer it


Fault = Callable[[int], Awaitable[Response | None]]


@dataclass
class FailFirst:
    """Answer the first ``count`` requests with 429 and a ``Retry-After`` header."""

    count: int
    retry_after: int

    async def __call__(self, number: int) -> Response | None:
        """Return the 429 answer while the budget lasts, else None."""
        if number > self.count:
            return None
        return _error(429, _CODE_RATE_LIMIT, _MSG_RATE_LIMIT,
                      headers={"Retry-After": str(self.retry_after)})


@dataclass
class RandomOutage:
    """Answer a seeded random fraction of requests with 503 (endpoint ramped down)."""

    rate: float
    rng: random.Random

    async def __call__(self, number: int) -> Response | None:
        """Return the 503 answer when the draw falls under ``rate``, else None."""
        if self.rng.random() >= self.rate:
            return None
        return _error(503, _CODE_RAMPED_DOWN, _MSG_RAMPED_DOWN)


@dataclass
class Latency:
    """Delay every request; answers nothing itself."""

    seconds: float

    async def __call__(self, number: int) -> Response | None:
        """Sleep, then let the request go on."""
        await asyncio.sleep(self.seconds)
        return None


def build_faults(config: EmulatorConfig) -> list[Fault]:
    """The faults a config asks for, in the order they apply; a new fault joins here.

    Args:
        config: The emulator settings.

    Returns:
        Callables that each may answer a request instead of the emulator.
    """
    faults: list[Fault] = []
    if config.latency_ms:
        faults.append(Latency(config.latency_ms / 1000))
    if config.fail_first:
        faults.append(FailFirst(config.fail_first, config.retry_after))
    if config.error_rate:
        faults.append(RandomOutage(config.error_rate, random.Random(config.seed)))
    return faults


# --------------------------------------------------------------------------------------------
# What the emulator saw


@dataclass
class Ledger:
    """Counters and accepted bodies; everything ``/_emulator/reset`` forgets."""

    requests_by_status: Counter[int] = field(default_factory=Counter)
    authorised_requests: int = 0
    events_received: int = 0
    events_processed: int = 0
    events_failed: int = 0
    test_requests: int = 0
    test_events: int = 0
    test_events_processed: int = 0
    test_events_failed: int = 0
    processed_by_event_id: Counter[str] = field(default_factory=Counter)
    bodies: list[Any] = field(default_factory=list)

    def count_events(self, events: Sequence[Mapping[str, Any]],
                     results: Sequence[EventResult], test: bool) -> None:
        """Add one answered request's events to the counters."""
        processed = sum(result.processed for result in results)
        if test:
            self.test_requests += 1
            self.test_events += len(results)
            self.test_events_processed += processed
            self.test_events_failed += len(results) - processed
            return
        self.events_received += len(results)
        self.events_processed += processed
        self.events_failed += len(results) - processed
        self.processed_by_event_id.update(
            event["event_id"] for event, result in zip(events, results, strict=True)
            if result.processed)

    def as_json(self) -> dict[str, Any]:
        """The ``/_emulator/stats`` answer."""
        return {
            "requests_by_status": {str(code): n for code, n in
                                   sorted(self.requests_by_status.items())},
            "requests_total": sum(self.requests_by_status.values()),
            "events_received": self.events_received,
            "events_processed": self.events_processed,
            "events_failed": self.events_failed,
            "test_requests": self.test_requests,
            "test_events": self.test_events,
            "test_events_processed": self.test_events_processed,
            "test_events_failed": self.test_events_failed,
            "bodies_recorded": len(self.bodies),
            "processed_by_event_id": dict(self.processed_by_event_id),
        }


# --------------------------------------------------------------------------------------------
# HTTP layer


def _json(status: int, payload: Any, headers: Mapping[str, str] | None = None) -> Response:
    return Response(orjson.dumps(payload), status_code=status, headers=headers,
                    media_type="application/json")


def _error(status: int, code: int, message: str,
           headers: Mapping[str, str] | None = None) -> Response:
    return _json(status, {"code": code, "message": message}, headers)


def _invalid(message: str) -> Response:
    return _error(400, _CODE_INVALID, f"Invalid request: {message}")


class Emulator:
    """The endpoint logic behind the Starlette app, with its ledger and faults."""

    def __init__(self, config: EmulatorConfig, clock: Callable[[], float] = time.time) -> None:
        """Set up an emulator with empty state.

        Args:
            config: The emulator settings.
            clock: Source of the current Unix time; tests may pin it.
        """
        self.config = config
        self.clock = clock
        self._token = config.token.encode()
        self._record_path = Path(config.record_path) if config.record_path else None
        if self._record_path:
            self._record_path.parent.mkdir(parents=True, exist_ok=True)
        self.reset()

    def reset(self) -> None:
        """Forget everything seen and re-arm the faults; the record file is left as is."""
        self.ledger = Ledger()
        self.faults = build_faults(self.config)

    async def post_events(self, request: Request) -> Response:
        """``POST /v5/ad_accounts/{ad_account_id}/events``."""
        response = await self._answer(request)
        self.ledger.requests_by_status[response.status_code] += 1
        return response

    async def _answer(self, request: Request) -> Response:
        refusal = self._access_refusal(request)
        if refusal is not None:
            return refusal

        # Rate limits and outages are per ad account, so only authorised requests reach them.
        self.ledger.authorised_requests += 1
        for fault in self.faults:
            answer = await fault(self.ledger.authorised_requests)
            if answer is not None:
                return answer

        try:
            test = _test_flag(request.query_params.get("test"))
            body = _parse_json(await request.body())
            check_body(body)
        except RequestInvalid as problem:
            return _invalid(str(problem))
        return self._accept(body, test, request.path_params["ad_account_id"])

    def _access_refusal(self, request: Request) -> Response | None:
        if not self._token_matches(request.headers.get("authorization", "")):
            return _error(401, _CODE_AUTH, _MSG_AUTH)
        account = request.path_params["ad_account_id"]
        if not _AD_ACCOUNT_ID.match(account):
            return _invalid("ad_account_id must be 1 to 18 digits")
        if self.config.ad_account_ids and account not in self.config.ad_account_ids:
            return _error(403, _CODE_FORBIDDEN, _MSG_FORBIDDEN)
        return None

    def _token_matches(self, header: str) -> bool:
        scheme, _, token = header.partition(" ")
        # compare_digest keeps the comparison time independent of how much of the token matched.
        return scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(),
                                                                  self._token)

    def _accept(self, body: dict[str, Any], test: bool, account: str) -> Response:
        events = body["data"]
        now = self.clock()
        results = [judge_event(event, now, self.config.max_age_days) for event in events]
        self.ledger.count_events(events, results, test)
        if not test:
            self._record(body)
        processed = sum(result.processed for result in results)
        logger.info("events accepted: account=%s test=%s received=%d processed=%d",
                    account, test, len(results), processed)
        return _json(200, {"num_events_received": len(results),
                           "num_events_processed": processed,
                           "events": [result.as_json() for result in results]})

    def _record(self, body: dict[str, Any]) -> None:
        self.ledger.bodies.append(body)
        if self._record_path is None:
            return
        # Opening per request flushes each line, so a killed emulator still leaves whole lines.
        with self._record_path.open("ab") as handle:
            handle.write(orjson.dumps(body) + b"\n")

    async def get_stats(self, request: Request) -> Response:
        """``GET /_emulator/stats``."""
        return _json(200, self.ledger.as_json())

    async def get_bodies(self, request: Request) -> Response:
        """``GET /_emulator/bodies``."""
        return _json(200, self.ledger.bodies)

    async def post_reset(self, request: Request) -> Response:
        """``POST /_emulator/reset``."""
        self.reset()
        return _json(200, {"reset": True})

    async def get_health(self, request: Request) -> Response:
        """``GET /_emulator/health``."""
        return _json(200, {"status": "ok"})


def _test_flag(raw: str | None) -> bool:
    if raw is None:
        return False
    if raw.lower() in ("true", "false"):
        return raw.lower() == "true"
    raise RequestInvalid("query parameter test must be true or false")


def _parse_json(raw: bytes) -> Any:
    try:
        # orjson refuses NaN, Infinity and integers beyond 64 bits, as a JSON parser should.
        return orjson.loads(raw)
    except orjson.JSONDecodeError as problem:
        raise RequestInvalid(f"the body is not valid JSON ({problem})") from None


async def _http_error(request: Request, exc: Exception) -> Response:
    # Pinterest publishes no body for its 404/405; the generic Error shape keeps clients simple.
    assert isinstance(exc, HTTPException)
    return _error(exc.status_code, exc.status_code, f"{exc.detail}.", headers=exc.headers)


def create_app(config: EmulatorConfig, clock: Callable[[], float] = time.time) -> Starlette:
    """Build the emulator's ASGI app.

    Args:
        config: The emulator settings.
        clock: Source of the current Unix time; tests may pin it.

    Returns:
        A Starlette app; its ``state.emulator`` holds the :class:`Emulator`.
    """
    emulator = Emulator(config, clock)
    app = Starlette(
        routes=[
            Route("/v5/ad_accounts/{ad_account_id}/events", emulator.post_events,
                  methods=["POST"]),
            Route("/_emulator/stats", emulator.get_stats, methods=["GET"]),
            Route("/_emulator/bodies", emulator.get_bodies, methods=["GET"]),
            Route("/_emulator/reset", emulator.post_reset, methods=["POST"]),
            Route("/_emulator/health", emulator.get_health, methods=["GET"]),
        ],
        exception_handlers={HTTPException: _http_error},
    )
    app.state.emulator = emulator
    return app


# --------------------------------------------------------------------------------------------
# Serving


class _Server(uvicorn.Server):
    """A uvicorn server that reports once it accepts connections."""

    def __init__(self, config: uvicorn.Config, on_started: Callable[[], None]) -> None:
        super().__init__(config)
        self._on_started = on_started

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started:
            self._on_started()


def _uvicorn_config(app: Starlette, log_level: str) -> uvicorn.Config:
    # Access logs would carry client addresses and query strings; log_config=None leaves the
    # host's logging setup (pytest's, or main()'s) alone.
    return uvicorn.Config(app, access_log=False, log_config=None, log_level=log_level,
                          lifespan="off", server_header=False, timeout_graceful_shutdown=2)


def _bind(host: str, port: int) -> socket.socket:
    # Binding before uvicorn starts is what lets --port 0 report the port the kernel chose.
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    return sock


def _base_url(host: str, port: int) -> str:
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def _env(name: str, default: str | None = None) -> str | None:
    return os.environ.get(name, default)


def _parser() -> argparse.ArgumentParser:
    # argparse converts string defaults with `type`, so env values are checked like flags.
    parser = argparse.ArgumentParser(prog="python -m capi_pipeline.pinterest.emulator",
                                     description="Local Pinterest Conversions API emulator.")
    parser.add_argument("--host", default=_env("EMULATOR_HOST", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=_env("EMULATOR_PORT", "0"))
    parser.add_argument("--token", default=_env("EMULATOR_TOKEN"))
    parser.add_argument("--ad-account-id", action="append", dest="ad_account_ids")
    parser.add_argument("--record", default=_env("EMULATOR_RECORD"))
    parser.add_argument("--max-age-days", type=float, default=_env("EMULATOR_MAX_AGE_DAYS", "7"))
    parser.add_argument("--fail-first", type=int, default=_env("EMULATOR_FAIL_FIRST", "0"))
    parser.add_argument("--retry-after", type=int, default=_env("EMULATOR_RETRY_AFTER", "1"))
    parser.add_argument("--error-rate", type=float, default=_env("EMULATOR_ERROR_RATE", "0"))
    parser.add_argument("--seed", type=int, default=_env("EMULATOR_SEED", "0"))
    parser.add_argument("--latency-ms", type=int, default=_env("EMULATOR_LATENCY_MS", "0"))
    parser.add_argument("--log-level", default=_env("EMULATOR_LOG_LEVEL", "warning"),
                        choices=("debug", "info", "warning", "error"))
    return parser


@dataclass(frozen=True)
class CommandLine:
    """What the command line asks for."""

    config: EmulatorConfig
    host: str
    port: int
    log_level: str


def parse_command_line(argv: Sequence[str] | None = None) -> CommandLine:
    """Read flags, falling back to the ``EMULATOR_*`` environment variables.

    Args:
        argv: Arguments without the program name; None reads ``sys.argv``.

    Returns:
        The parsed settings. Exits with status 2 on a bad flag, like any argparse program.
    """
    parser = _parser()
    options = parser.parse_args(argv)
    ids = options.ad_account_ids
    if ids is None:
        ids = [part.strip() for part in (_env("EMULATOR_AD_ACCOUNT_ID") or "").split(",")
               if part.strip()]
    try:
        config = EmulatorConfig(
            token=options.token or "", ad_account_ids=tuple(ids),
            max_age_days=options.max_age_days, record_path=options.record,
            fail_first=options.fail_first, retry_after=options.retry_after,
            error_rate=options.error_rate, latency_ms=options.latency_ms, seed=options.seed)
    except ValueError as problem:
        parser.error(f"{problem} (token comes from --token or EMULATOR_TOKEN)")
    return CommandLine(config, options.host, options.port, options.log_level)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the emulator until SIGINT or SIGTERM.

    Args:
        argv: Arguments without the program name; None reads ``sys.argv``.

    Returns:
        The process exit status.
    """
    command = parse_command_line(argv)
    logging.basicConfig(stream=sys.stderr, level=command.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        sock = _bind(command.host, command.port)
    except OSError as error:
        print(f"emulator: cannot listen on {command.host}:{command.port} ({error.strerror}); "
              "choose another --port, or --port 0 for a free one", file=sys.stderr)
        return 2
    url = _base_url(command.host, sock.getsockname()[1])

    def announce() -> None:
        # The parent process reads this single stdout line to learn the port.
        print(f"{LISTENING_PREFIX}{url}", flush=True)

    accounts = ", ".join(command.config.ad_account_ids) or "any"
    logger.info("serving ad accounts: %s; faults: %d", accounts,
                len(build_faults(command.config)))
    server = _Server(_uvicorn_config(create_app(command.config), command.log_level), announce)
    server.run(sockets=[sock])
    return 0


# --------------------------------------------------------------------------------------------
# Python handles for tests and the demo


class _Introspection:
    """Calls to the introspection endpoints of a running emulator at ``base_url``."""

    base_url: str
    _http: httpx.Client | None = None

    def events_url(self, ad_account_id: str) -> str:
        """The events endpoint of one ad account on this emulator."""
        return f"{self.base_url}/v5/ad_accounts/{ad_account_id}/events"

    def stats(self) -> dict[str, Any]:
        """The counters of ``GET /_emulator/stats``."""
        return self._call("GET", "/_emulator/stats")

    def bodies(self) -> list[Any]:
        """The accepted request bodies, oldest first."""
        return self._call("GET", "/_emulator/bodies")

    def reset(self) -> None:
        """Forget all counters and bodies and re-arm the faults."""
        self._call("POST", "/_emulator/reset")

    def _call(self, method: str, path: str) -> Any:
        # One client per handle: building an httpx client per call costs tens of milliseconds.
        if self._http is None:
            self._http = httpx.Client(timeout=10)
        response = self._http.request(method, f"{self.base_url}{path}")
        response.raise_for_status()
        return response.json()

    def _close_http(self) -> None:
        if self._http is not None:
            self._http.close()
            self._http = None


class EmulatorProcess(_Introspection):
    """The emulator as a real subprocess, for tests and the demo.

    Example::

        with EmulatorProcess(token="t", ad_account_ids=("123",)) as emulator:
            httpx.post(emulator.events_url("123"), json=body, headers=auth)
            assert emulator.stats()["events_processed"] == len(body["data"])
    """

    def __init__(self, token: str, ad_account_ids: Sequence[str] = (), max_age_days: float = 7,
                 record_path: str | Path | None = None, fail_first: int = 0,
                 retry_after: int = 1, error_rate: float = 0.0, latency_ms: int = 0,
                 seed: int = 0, host: str = "127.0.0.1", log_level: str = "warning",
                 startup_timeout: float = 30.0) -> None:
        """Prepare, without starting, an emulator subprocess.

        Args:
            token: See :class:`EmulatorConfig`, as are the arguments up to ``seed``.
            ad_account_ids: Ad accounts the token may send to; empty means any.
            max_age_days: Older events fail.
            record_path: NDJSON file that receives each accepted body.
            fail_first: The first N authorised event requests get 429.
            retry_after: Seconds in the 429 ``Retry-After`` header.
            error_rate: Fraction of authorised event requests answered with 503.
            latency_ms: Delay added to every event request.
            seed: Seed of the error-rate draws.
            host: Interface to bind.
            log_level: Level of the subprocess's stderr log, readable with :meth:`log_text`.
            startup_timeout: Seconds to wait for the "listening on" line.
        """
        self.config = EmulatorConfig(
            token=token, ad_account_ids=tuple(ad_account_ids), max_age_days=max_age_days,
            record_path=record_path, fail_first=fail_first, retry_after=retry_after,
            error_rate=error_rate, latency_ms=latency_ms, seed=seed)
        self.host = host
        self.log_level = log_level
        self.startup_timeout = startup_timeout
        self.base_url = ""
        self._process: subprocess.Popen[str] | None = None
        self._log: Any = None

    def command(self) -> list[str]:
        """The subprocess's argv; the token travels in the environment instead."""
        config = self.config
        argv = [sys.executable, "-m", _MODULE,
                "--host", self.host, "--port", "0", "--max-age-days", str(config.max_age_days),
                "--fail-first", str(config.fail_first), "--retry-after", str(config.retry_after),
                "--error-rate", str(config.error_rate), "--seed", str(config.seed),
                "--latency-ms", str(config.latency_ms), "--log-level", self.log_level]
        for account in config.ad_account_ids:
            argv += ["--ad-account-id", account]
        if config.record_path:
            argv += ["--record", str(Path(config.record_path).resolve())]
        return argv

    def _environment(self) -> dict[str, str]:
        # Inherited EMULATOR_* variables would silently change the settings given here.
        env = {key: value for key, value in os.environ.items()
               if not key.startswith("EMULATOR_")}
        env["EMULATOR_TOKEN"] = self.config.token
        # Lets `-m` find the package from any working directory, even without an install.
        root = str(Path(__file__).resolve().parents[2])
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
        return env

    def start(self) -> EmulatorProcess:
        """Start the subprocess and wait until it listens.

        Returns:
            Itself, with ``base_url`` set.

        Raises:
            RuntimeError: If the emulator exits or stays silent past ``startup_timeout``.
        """
        self._log = tempfile.TemporaryFile(mode="w+", encoding="utf-8")
        self._process = subprocess.Popen(self.command(), env=self._environment(),
                                         stdout=subprocess.PIPE, stderr=self._log, text=True)
        line = self._first_line(self._process)
        match = _LISTENING_LINE.match(line.strip())
        if match is None:
            self.stop()
            raise RuntimeError(f"emulator did not start: {line.strip()!r}\n{self.log_text()}")
        self.base_url = match.group(1)
        return self

    def _first_line(self, process: subprocess.Popen[str]) -> str:
        # A reader thread gives a timeout that works on every platform's pipes.
        lines: queue.Queue[str] = queue.Queue()
        assert process.stdout is not None
        threading.Thread(target=lambda: lines.put(process.stdout.readline()),
                         daemon=True).start()
        try:
            return lines.get(timeout=self.startup_timeout)
        except queue.Empty:
            return ""

    def stop(self) -> None:
        """Terminate the subprocess, killing it if it does not exit within 5 s."""
        self._close_http()
        process, self._process = self._process, None
        if process is None:
            return
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)
        if process.stdout:
            process.stdout.close()

    def log_text(self) -> str:
        """Everything the subprocess wrote to stderr so far."""
        if self._log is None:
            return ""
        self._log.flush()
        self._log.seek(0)
        return self._log.read()

    def __enter__(self) -> EmulatorProcess:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
        if self._log is not None:
            self._log.close()
            self._log = None


class EmulatorThread(_Introspection):
    """The emulator served by uvicorn in a background thread of this process.

    Faster to start than :class:`EmulatorProcess`; the app is the same.
    """

    def __init__(self, config: EmulatorConfig, host: str = "127.0.0.1",
                 clock: Callable[[], float] = time.time) -> None:
        """Prepare, without starting, a threaded emulator.

        Args:
            config: The emulator settings.
            host: Interface to bind; the port is always a free one.
            clock: Source of the current Unix time; tests may pin it.
        """
        self.config = config
        self.host = host
        self.app = create_app(config, clock)
        self.base_url = ""
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    def start(self, timeout: float = 10.0) -> EmulatorThread:
        """Serve in a daemon thread and wait until connections are accepted."""
        started = threading.Event()
        sock = _bind(self.host, 0)
        self.base_url = _base_url(self.host, sock.getsockname()[1])
        self._server = _Server(_uvicorn_config(self.app, "warning"), started.set)
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [sock]},
                                        name="pinterest-emulator", daemon=True)
        self._thread.start()
        if not started.wait(timeout):
            self.stop()
            raise RuntimeError("emulator thread did not start")
        return self

    def stop(self) -> None:
        """Ask uvicorn to exit and wait for the thread."""
        self._close_http()
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._server = self._thread = None

    def __enter__(self) -> EmulatorThread:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
