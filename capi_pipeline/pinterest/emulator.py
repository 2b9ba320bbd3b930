"""A local stand-in for Pinterest's Conversions API (``POST /v5/ad_accounts/{id}/events``).

Pinterest is not reachable from development machines or CI, so the demo and the tests send
their events here instead. The emulator is a real HTTP server on loopback (Starlette served by
uvicorn) that enforces the published contract: bearer-token auth, ad-account access, the strict
request schema (unknown keys and wrong types refuse the whole request with HTTP 400), the
per-event rules Pinterest states in prose (event names, action sources, identifiers, SHA-256
hex digests, event time in seconds and not too old or in the future), and the 200 response
shape with one result per event in request order. It records what it accepted, can enforce a
per-ad-account rate limit, and can inject faults: 429 with ``Retry-After`` (the first N
requests or a random fraction), random 503s, added latency, connections closed without an
answer (before or after the events were processed), and single events failed at random.

Command line::

    python -m capi_pipeline.pinterest.emulator --host 127.0.0.1 --port 0 --token TOKEN \\
        [--ad-account-id ID ...] [--record FILE.ndjson] [--no-keep-bodies] [--max-age-days 7] \\
        [--rate-limit-per-minute N] [--rate-limit-per-second N] \\
        [--fail-first N] [--retry-after S] [--error-rate R] [--rate-429 R] \\
        [--drop-rate R] [--drop-after-rate R] [--event-fail-rate R] [--event-fail-message TEXT] \\
        [--seed N] [--latency-ms MS] [--log-level warning]

On start it prints exactly one line, ``emulator listening on http://HOST:PORT``, to stdout;
``--port 0`` binds a free port and the line carries the real one.

Every flag may instead come from an environment variable (a flag wins over its variable):

=================================  ==========================  ===============================
variable                           flag                        meaning
=================================  ==========================  ===============================
``EMULATOR_HOST``                  ``--host``                  interface to bind (127.0.0.1)
``EMULATOR_PORT``                  ``--port``                  port; 0 picks a free one (0)
``EMULATOR_TOKEN``                 ``--token``                 the only bearer token accepted
``EMULATOR_AD_ACCOUNT_ID``         ``--ad-account-id``         comma-separated ids; none: any
``EMULATOR_RECORD``                ``--record``                NDJSON file, a line per body
``EMULATOR_KEEP_BODIES``           ``--[no-]keep-bodies``      keep bodies for ``/bodies`` (1)
``EMULATOR_MAX_AGE_DAYS``          ``--max-age-days``          older events fail (7)
``EMULATOR_RATE_LIMIT_PER_MINUTE`` ``--rate-limit-per-minute`` requests per account per 60 s
``EMULATOR_RATE_LIMIT_PER_SECOND`` ``--rate-limit-per-second`` requests per account per 1 s
``EMULATOR_FAIL_FIRST``            ``--fail-first``            the first N requests get 429
``EMULATOR_RETRY_AFTER``           ``--retry-after``           ``Retry-After`` of fault 429s (1)
``EMULATOR_ERROR_RATE``            ``--error-rate``            fraction of requests given 503
``EMULATOR_RATE_429``              ``--rate-429``              fraction of requests given 429
``EMULATOR_DROP_RATE``             ``--drop-rate``             fraction dropped unprocessed
``EMULATOR_DROP_AFTER_RATE``       ``--drop-after-rate``       fraction dropped once processed
``EMULATOR_EVENT_FAIL_RATE``       ``--event-fail-rate``       fraction of valid events failed
``EMULATOR_EVENT_FAIL_MESSAGE``    ``--event-fail-message``    their ``error_message``
``EMULATOR_SEED``                  ``--seed``                  seed of every random draw (0)
``EMULATOR_LATENCY_MS``            ``--latency-ms``            delay before each answer (0)
``EMULATOR_LOG_LEVEL``             ``--log-level``             level of the stderr log
=================================  ==========================  ===============================

Rates are fractions between 0 and 1; limits and counts of 0 switch their feature off. Boolean
variables take 1/0, true/false, yes/no or on/off.

Passing the token through ``EMULATOR_TOKEN`` keeps it out of the process list, which is what
:class:`EmulatorProcess` does.

The order in which an event request meets these settings: token and ad account (401, 403,
400); the rate limit (429 with the whole seconds until a slot frees; the body is neither read
nor processed, and a refused request takes no slot); latency; ``--fail-first``;
``--error-rate``; ``--rate-429``; then the body is read, and ``--drop-rate`` or
``--drop-after-rate`` may decide the connection's fate (one draw, so the two fractions add
up); the body is validated and its events judged; ``--event-fail-rate`` fails some of those
that would have been processed. A request dropped after processing is counted and recorded
exactly like an answered one; only the client never learns it. A drop aborts the TCP
connection without a byte of response, which httpx reports as ``RemoteProtocolError``
("Server disconnected without sending a response") or, if it was mid-read, ``ReadError``.

Runs of a million events should pass ``--no-keep-bodies`` (and no ``--record``): kept bodies
cost memory and a serialisation per request.

Every random fault draws from its own stream, ``random.Random(f"{seed}:{name}")`` (see
:func:`fault_random`), so switching one fault on leaves the draws of the others unchanged;
``--error-rate`` keeps its historic stream ``random.Random(seed)``. A stream draws once for
each request (or, for ``--event-fail-rate``, each otherwise processed event) that reaches it,
and ``/_emulator/reset`` rewinds them all.

``GET /v5/ad_accounts/{id}/conversion_eqs?lookback_period=1d|14d`` answers Pinterest's Event
Quality Score from the live events it kept (see :func:`event_quality_scores`): the coverage of
each quality component per event name, per source platform, with the same token and account
checks as the events endpoint. With ``--no-keep-bodies`` it has nothing to score and answers
an empty list.

Introspection endpoints, meant for a loopback test tool and therefore without auth:
``GET /_emulator/health``; ``GET /_emulator/stats`` (``?summary=1`` leaves out the map of
event ids, which a million-event run makes megabytes long); ``GET /_emulator/event_counts``
(only that map: event id to the number of times it was processed); ``GET /_emulator/bodies``
and ``POST /_emulator/reset``.

Where Pinterest's sources are silent the emulator picks the stricter reading so the pipeline
is pushed towards payloads that are safe everywhere; each such choice is marked "not published"
below. Known gaps: the rate limit is off unless asked for (Pinterest publishes several figures
and says they change), no 422 ``DetailedError`` answers, no body-size cap (Pinterest publishes
none), and deduplication is only counted, never applied.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import functools
import gc
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
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import chain
from operator import itemgetter, methodcaller
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
from starlette.types import Message, Receive, Scope, Send

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
DEFAULT_EVENT_FAIL_MESSAGE = "Event rejected by emulator fault injection"

# fullmatch with [0-9], not ^\d...$: "$" also matches before a final newline and \d matches
# every Unicode digit, so "123\n" or Arabic-Indic digits would otherwise pass.
_AD_ACCOUNT_ID = re.compile(r"[0-9]{1,18}")
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")
_DECIMAL = re.compile(r"-?[0-9]+(\.[0-9]+)?")
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
        retry_after: Seconds announced in the ``Retry-After`` header of fault 429s.
        error_rate: Fraction (0..1) of authorised event requests answered with 503.
        latency_ms: Delay added before every event request is answered.
        seed: Seed of every random draw (see :func:`fault_random`).
        rate_429: Fraction of authorised event requests answered with 429 and ``Retry-After``.
        drop_rate: Fraction of event requests whose connection is closed, once the body has
            been read, without an answer and without processing anything.
        drop_after_rate: Fraction of event requests processed, counted and recorded as usual
            whose connection is then closed without an answer, as if it was lost in flight.
        event_fail_rate: Fraction of otherwise processed events answered ``failed``.
        event_fail_message: The ``error_message`` of those events.
        rate_limit_per_minute: Requests each ad account may make in any 60 s; 0 is no limit.
        rate_limit_per_second: Requests each ad account may make in any 1 s; 0 is no limit.
        keep_bodies: Whether accepted bodies are kept in memory for ``/_emulator/bodies``.
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
    rate_429: float = 0.0
    drop_rate: float = 0.0
    drop_after_rate: float = 0.0
    event_fail_rate: float = 0.0
    event_fail_message: str = DEFAULT_EVENT_FAIL_MESSAGE
    rate_limit_per_minute: int = 0
    rate_limit_per_second: int = 0
    keep_bodies: bool = True

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
                 for value in config.ad_account_ids if not _AD_ACCOUNT_ID.fullmatch(value)]
    if not config.max_age_days > 0:
        problems.append("max_age_days must be positive")
    if config.fail_first < 0 or config.retry_after < 0 or config.latency_ms < 0:
        problems.append("fail_first, retry_after and latency_ms must not be negative")
    problems += [f"{name} must be between 0 and 1"
                 for name in ("error_rate", "rate_429", "drop_rate", "drop_after_rate",
                              "event_fail_rate")
                 if not 0.0 <= getattr(config, name) <= 1.0]
    if config.drop_rate + config.drop_after_rate > 1.0:
        problems.append("drop_rate and drop_after_rate together must not exceed 1")
    if not config.event_fail_message:
        problems.append("event_fail_message must not be empty")
    if config.rate_limit_per_minute < 0 or config.rate_limit_per_second < 0:
        problems.append("rate_limit_per_minute and rate_limit_per_second must not be negative")
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

    @functools.cached_property
    def keys(self) -> frozenset[str]:
        """The known keys, as a set for quick subset tests."""
        return frozenset(self.fields)


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
    if not _all_fit([body], _BODY):
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


# The checker above walks the rules value by value, building a path string for each, which
# costs about 12 ms per 1,000-event body. The batch form below answers only "valid or not",
# one key at a time across all objects at the same depth, so that most of the work happens
# in C (map, set, min, max) rather than in a Python loop per value. When it says "not",
# check_body runs the walker, whose message names the first violation in document order. It
# may doubt more than the walker refuses (it insists on exact built-in types, which is all a
# JSON parser produces) but never less, so the walker stays the one authority on validity.

_KIND_TYPES = {"string": str, "integer": int, "boolean": bool, "strings": list,
               "object": dict, "objects": list}
_NONE_TYPE = type(None)
_DICT_ONLY = {dict}


def _column(objects: Sequence[dict[str, Any]], key: str) -> tuple[list[Any], bool]:
    """The values of ``key`` in every object holding it, and whether all of them hold it."""
    try:
        return list(map(itemgetter(key), objects)), True
    except KeyError:
        return [item[key] for item in objects if key in item], False


def _all_fit(values: Sequence[Any], shape: Shape) -> bool:
    """Whether every value is an object that ``shape`` accepts."""
    if not values:
        return True
    if set(map(type, values)) != _DICT_ONLY:
        return False
    present = set(chain.from_iterable(values))
    if shape.closed and not present <= shape.keys:
        return False
    if not present.issuperset(shape.required):
        return False
    for key in present:
        rule = shape.fields.get(key)
        if rule is None:
            continue
        column, everywhere = _column(values, key)
        if (key in shape.required and not everywhere) or not _column_fits(column, rule):
            return False
    return True


def _column_fits(column: list[Any], rule: Field) -> bool:
    """Whether every value in ``column`` satisfies ``rule``."""
    types = set(map(type, column))
    if _NONE_TYPE in types:
        if not rule.nullable:
            return False
        types.discard(_NONE_TYPE)
        column = [value for value in column if value is not None]
        if not column:
            return True
    if types != {_KIND_TYPES[rule.kind]}:
        return False
    if rule.kind == "string":
        return ((rule.max_length is None or max(map(len, column)) <= rule.max_length)
                and (not rule.choices or rule.choices.issuperset(column)))
    if rule.kind == "integer":
        return ((rule.minimum is None or min(column) >= rule.minimum)
                and (rule.maximum is None or max(column) <= rule.maximum))
    if rule.kind == "object":
        assert rule.shape is not None
        return _all_fit(column, rule.shape)
    if rule.kind in ("strings", "objects"):
        lengths = set(map(len, column))
        if ((rule.min_items is not None and min(lengths) < rule.min_items)
                or (rule.max_items is not None and max(lengths) > rule.max_items)):
            return False
        items = list(chain.from_iterable(column))
        if rule.kind == "strings":
            return set(map(type, items)) <= {str}
        assert rule.shape is not None
        return _all_fit(items, rule.shape)
    return True


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


# Almost every event of a healthy pipeline gets this verdict; sharing one instance (and its
# JSON) saves building a thousand identical objects per request.
PROCESSED = EventResult("processed")
_PROCESSED_JSON = PROCESSED.as_json()
_USER_DATA_KEYS = _USER_DATA.keys
_HASHED_KEYS = frozenset(HASHED_USER_FIELDS)
_REQUIRED_EVENT_KEYS = itemgetter("event_name", "action_source", "event_id", "event_time",
                                  "user_data")
_GET_CUSTOM_DATA = methodcaller("get", "custom_data")
_HEX_DIGITS = b"0123456789abcdef"
_PLAIN_OPT_OUT_TYPES = frozenset({None, "", "LDP"})
# A decimal whose text is at most this long has under 300 integer digits, so float() of it
# is finite and _is_decimal's isfinite() cannot object.
_SHORT_DECIMAL = 300
# After a batch fails the bulk check, it is retried in chunks this long, so that one broken
# event sends only its own chunk to the event-by-event rules.
_CHUNK = 32


def judge_event(event: Mapping[str, Any], now: float, max_age_days: float) -> EventResult:
    """Apply the rules Pinterest states in prose to one schema-valid event.

    Args:
        event: One item of ``data``, already checked by :func:`check_body`.
        now: The receiving time, in Unix seconds.
        max_age_days: Older events fail.

    Returns:
        The event's status with every problem found, joined by "; "; :data:`PROCESSED` when
        there is nothing to report.
    """
    errors = [*_name_problems(event), *_time_problems(event["event_time"], now, max_age_days),
              *_user_data_problems(event["user_data"])]
    warnings = [*_user_data_warnings(event["user_data"]),
                *_custom_data_warnings(event.get("custom_data") or {})]
    if not errors and not warnings:
        return PROCESSED
    return EventResult(status="failed" if errors else "processed",
                       error_message="; ".join(errors) or None,
                       warning_message="; ".join(warnings) or None)


def judge_events(events: Sequence[Mapping[str, Any]], now: float,
                 max_age_days: float) -> list[EventResult]:
    """:func:`judge_event` for each event of a schema-valid ``data`` array, in order.

    The answers are the same as event by event, only faster: the rules are first checked in
    bulk across the whole batch (see :func:`check_body` for why), and :func:`judge_event`
    only sees the events of a chunk that has something to report.

    Args:
        events: The request's ``data``, already checked by :func:`check_body`.
        now: The receiving time, in Unix seconds.
        max_age_days: Older events fail.

    Returns:
        One verdict per event.
    """
    if _all_clean(events, now, max_age_days):
        return [PROCESSED] * len(events)
    results: list[EventResult] = []
    for start in range(0, len(events), _CHUNK):
        chunk = events[start:start + _CHUNK]
        if _all_clean(chunk, now, max_age_days):
            results += [PROCESSED] * len(chunk)
        else:
            results += [judge_event(event, now, max_age_days) for event in chunk]
    return results


def _all_clean(events: Sequence[Mapping[str, Any]], now: float, max_age_days: float) -> bool:
    # True only where judge_event would return PROCESSED for every event; any doubt is False.
    if not events:
        return True
    names, sources, ids, times, user_data = zip(*map(_REQUIRED_EVENT_KEYS, events), strict=True)
    if not (EVENT_NAMES.issuperset(names) and ACTION_SOURCES.issuperset(sources) and all(ids)):
        return False
    if not (now - max_age_days * 86400 <= min(times)
            and max(times) <= now + FUTURE_TOLERANCE_SECONDS
            and max(times) < MILLISECONDS_THRESHOLD):
        return False
    custom_data = list(filter(None, map(_GET_CUSTOM_DATA, events)))
    return _all_user_data_clean(user_data) and _all_custom_data_clean(custom_data)


def _all_user_data_clean(user_data: Sequence[Mapping[str, Any]]) -> bool:
    present = set(chain.from_iterable(user_data))
    if not present <= _USER_DATA_KEYS:
        return False
    hashes: list[str] = []
    for key in present & _HASHED_KEYS:
        arrays, _ = _column(user_data, key)
        if not all(arrays):
            return False
        hashes += chain.from_iterable(arrays)
    # With every digest exactly 64 long, the joined text is all hex only if each digest is.
    if hashes and not (set(map(len, hashes)) == {64} and _is_hex("".join(hashes))):
        return False
    emails, everyone = _column(user_data, "em")
    return (everyone and all(emails)) or all(map(_has_identifier, user_data))


def _all_custom_data_clean(custom_data: Sequence[Mapping[str, Any]]) -> bool:
    present = set(chain.from_iterable(custom_data))
    for key in ("value", "predicted_ltv"):
        if key in present:
            values, _ = _column(custom_data, key)
            if not _all_short_decimals([value for value in values if value is not None]):
                return False
    if ("opt_out_type" in present
            and not _PLAIN_OPT_OUT_TYPES.issuperset(_column(custom_data, "opt_out_type")[0])):
        return False
    if "contents" in present:
        items = list(chain.from_iterable(_column(custom_data, "contents")[0]))
        if not _all_short_decimals(_column(items, "item_price")[0]):
            return False
    return True


def _is_hex(text: str) -> bool:
    # Deleting the hex digits from the bytes is about six times faster than a regex over them.
    try:
        return not text.encode("ascii").translate(None, _HEX_DIGITS)
    except UnicodeEncodeError:
        return False


def _all_short_decimals(texts: Sequence[str]) -> bool:
    return not texts or (max(map(len, texts)) <= _SHORT_DECIMAL
                         and all(map(_DECIMAL.fullmatch, texts)))


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
                     for index, value in enumerate(values) if not _SHA256_HEX.fullmatch(value)]
    if not _has_identifier(user_data):
        problems.append("user_data needs em, hashed_maids, or both client_ip_address and "
                        "client_user_agent")
    return problems


def _has_identifier(user_data: Mapping[str, Any]) -> bool:
    pair = user_data.get("client_ip_address") and user_data.get("client_user_agent")
    return bool(user_data.get("em") or user_data.get("hashed_maids") or pair)


def _user_data_warnings(user_data: Mapping[str, Any]) -> list[str]:
    return [f"user_data.{key} is not a Pinterest field and was ignored"
            for key in user_data if key not in _USER_DATA_KEYS]


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
    return bool(_DECIMAL.fullmatch(text)) and math.isfinite(float(text))


# --------------------------------------------------------------------------------------------
# Faults: each takes the 1-based number of the authorised event request and may answer it


Fault = Callable[[int], Awaitable[Response | None]]


def fault_random(seed: int, name: str) -> random.Random:
    """The random stream of one named fault.

    Args:
        seed: The configured seed.
        name: ``rate-429``, ``drop`` or ``event-fail``.

    Returns:
        A generator that depends on nothing but the two arguments (string seeds are hashed
        with SHA-512, not with Python's per-process string hash).
    """
    return random.Random(f"{seed}:{name}")


def _rate_limited(retry_after: int) -> Response:
    return _error(429, _CODE_RATE_LIMIT, _MSG_RATE_LIMIT,
                  headers={"Retry-After": str(retry_after)})


@dataclass
class FailFirst:
    """Answer the first ``count`` requests with 429 and a ``Retry-After`` header."""

    count: int
    retry_after: int

    async def __call__(self, number: int) -> Response | None:
        """Return the 429 answer while the budget lasts, else None."""
        if number > self.count:
            return None
        return _rate_limited(self.retry_after)


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
class RandomRateLimit:
    """Answer a seeded random fraction of requests with 429 and a ``Retry-After`` header."""

    rate: float
    retry_after: int
    rng: random.Random

    async def __call__(self, number: int) -> Response | None:
        """Return the 429 answer when the draw falls under ``rate``, else None."""
        if self.rng.random() >= self.rate:
            return None
        return _rate_limited(self.retry_after)


@dataclass
class Latency:
    """Delay every request; answers nothing itself."""

    seconds: float

    async def __call__(self, number: int) -> Response | None:
        """Sleep, then let the request go on."""
        await asyncio.sleep(self.seconds)
        return None


def build_faults(config: EmulatorConfig) -> list[Fault]:
    """The faults answering before the body is read, in the order they apply.

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
    if config.rate_429:
        faults.append(RandomRateLimit(config.rate_429, config.retry_after,
                                      fault_random(config.seed, "rate-429")))
    return faults


DROP_BEFORE, DROP_AFTER = "before processing", "after processing"


@dataclass
class ConnectionDrops:
    """Decide, once per request whose body was read, whether its connection is dropped.

    One draw serves both fractions, so ``before + after`` of the requests are dropped.
    """

    before: float
    after: float
    rng: random.Random

    def draw(self) -> str | None:
        """:data:`DROP_BEFORE`, :data:`DROP_AFTER`, or None to answer normally."""
        value = self.rng.random()
        if value < self.before:
            return DROP_BEFORE
        if value < self.before + self.after:
            return DROP_AFTER
        return None


@dataclass
class EventFailures:
    """Fail a seeded random fraction of the events that would have been processed."""

    rate: float
    message: str
    rng: random.Random

    def apply(self, results: list[EventResult]) -> None:
        """Replace, in place, the verdicts the draws pick; warnings are kept."""
        draw, rate = self.rng.random, self.rate
        for index, result in enumerate(results):
            if result.status == "processed" and draw() < rate:
                results[index] = EventResult("failed", self.message, result.warning_message)


class SlidingWindow:
    """At most ``limit`` admitted requests per key within any ``seconds``-long window.

    aiolimiter, the project's rate-limit library, makes a caller wait for capacity; a server
    must instead refuse at once and say when to come back, which needs the admission times.
    """

    def __init__(self, limit: int, seconds: float) -> None:
        """Start with no admissions.

        Args:
            limit: Admissions allowed per window.
            seconds: Length of the window.
        """
        self.limit = limit
        self.seconds = seconds
        self._admitted: dict[str, deque[float]] = {}

    def wait(self, key: str, now: float) -> float:
        """Seconds until ``key`` may be admitted again; 0 when it may be now."""
        times = self._admitted.get(key)
        if times is None:
            return 0.0
        horizon = now - self.seconds
        while times and times[0] <= horizon:
            times.popleft()
        if len(times) < self.limit:
            return 0.0
        return times[0] - horizon

    def admit(self, key: str, now: float) -> None:
        """Count one request of ``key`` at ``now``."""
        self._admitted.setdefault(key, deque()).append(now)


class RateLimiter:
    """Pinterest's per-ad-account request limits, each a sliding window."""

    def __init__(self, windows: Sequence[SlidingWindow], clock: Callable[[], float]) -> None:
        """Combine windows that must all have room for a request to pass.

        Args:
            windows: The limits, e.g. per minute and per second.
            clock: A monotonic clock in seconds.
        """
        self.windows = tuple(windows)
        self.clock = clock

    def refusal(self, account: str) -> int | None:
        """Admit a request of ``account``, or say in whole seconds when it could be admitted.

        Returns:
            None when admitted; else the ``Retry-After`` seconds, at least 1, after which
            every window has a free slot (if nobody else takes it first).
        """
        now = self.clock()
        wait = max(window.wait(account, now) for window in self.windows)
        if wait > 0:
            return max(1, math.ceil(wait))
        for window in self.windows:
            window.admit(account, now)
        return None


def build_rate_limiter(config: EmulatorConfig,
                       clock: Callable[[], float] = time.monotonic) -> RateLimiter | None:
    """The rate limits a config asks for, or None when there are none.

    Args:
        config: The emulator settings.
        clock: A monotonic clock in seconds; tests may drive it by hand.

    Returns:
        A limiter over the per-minute and per-second windows that are switched on.
    """
    windows = [SlidingWindow(limit, seconds) for limit, seconds in
               ((config.rate_limit_per_minute, 60.0), (config.rate_limit_per_second, 1.0))
               if limit]
    return RateLimiter(windows, clock) if windows else None


# --------------------------------------------------------------------------------------------
# What the emulator saw


@dataclass
class Ledger:
    """Counters and accepted bodies; everything ``/_emulator/reset`` forgets.

    Bodies are kept as JSON bytes: a parsed 1,000-event body costs several times its text in
    Python objects, and every kept object slows the garbage collector's full passes.
    """

    requests_by_status: Counter[int] = field(default_factory=Counter)
    authorised_requests: int = 0
    rate_limited: int = 0
    dropped_before_processing: int = 0
    dropped_after_processing: int = 0
    events_received: int = 0
    events_processed: int = 0
    events_failed: int = 0
    test_requests: int = 0
    test_events: int = 0
    test_events_processed: int = 0
    test_events_failed: int = 0
    processed_by_event_id: Counter[str] = field(default_factory=Counter)
    bodies_recorded: int = 0
    kept_bodies: list[bytes] = field(default_factory=list)

    def count_events(self, events: Sequence[Mapping[str, Any]],
                     results: Sequence[EventResult], test: bool) -> None:
        """Add one answered request's events to the counters."""
        failed = [index for index, result in enumerate(results)
                  if result.status != "processed"]
        processed = len(results) - len(failed)
        if test:
            self.test_requests += 1
            self.test_events += len(results)
            self.test_events_processed += processed
            self.test_events_failed += len(failed)
            return
        self.events_received += len(results)
        self.events_processed += processed
        self.events_failed += len(failed)
        if failed:
            skipped = set(failed)
            self.processed_by_event_id.update(
                event["event_id"] for index, event in enumerate(events) if index not in skipped)
        else:
            # Counter.update counts a plain iterable in C, the bulk of the cost at 1,000 events.
            self.processed_by_event_id.update(event["event_id"] for event in events)

    def summary(self) -> dict[str, Any]:
        """The counters, without the per-event-id map.

        ``requests_total`` counts every event request, answered or dropped, while
        ``requests_by_status`` holds only the answered ones; ``bodies_recorded`` counts the
        accepted live bodies, ``bodies_kept`` those still in memory; ``duplicates`` is the
        number of event ids processed more than once.
        """
        counts = self.processed_by_event_id
        # Each value is at least 1, so the ids seen more than once are all but the ones; both
        # passes run in C, a few milliseconds for a million ids.
        duplicates = len(counts) - list(counts.values()).count(1)
        return {
            "requests_by_status": {str(code): n for code, n in
                                   sorted(self.requests_by_status.items())},
            "requests_total": (sum(self.requests_by_status.values())
                               + self.dropped_before_processing + self.dropped_after_processing),
            "rate_limited": self.rate_limited,
            "dropped_before_processing": self.dropped_before_processing,
            "dropped_after_processing": self.dropped_after_processing,
            "events_received": self.events_received,
            "events_processed": self.events_processed,
            "events_failed": self.events_failed,
            "test_requests": self.test_requests,
            "test_events": self.test_events,
            "test_events_processed": self.test_events_processed,
            "test_events_failed": self.test_events_failed,
            "bodies_recorded": self.bodies_recorded,
            "bodies_kept": len(self.kept_bodies),
            "event_ids_processed": len(counts),
            "duplicates": duplicates,
            "max_processed_per_event": max(counts.values(), default=0),
        }

    def as_json(self) -> dict[str, Any]:
        """The ``/_emulator/stats`` answer: :meth:`summary` plus ``processed_by_event_id``."""
        return {**self.summary(), "processed_by_event_id": dict(self.processed_by_event_id)}


# --------------------------------------------------------------------------------------------
# Event quality score

EQS_LOOKBACK_DAYS = {"1d": 1, "14d": 14}
EQS_SOURCE_PLATFORMS = ("WEB", "MOBILE", "MOBILE_ANDROID", "MOBILE_IOS", "OFFLINE",
                        "PINTEREST_WEB", "PINTEREST_ANDROID", "PINTEREST_IOS", "POINT_OF_SALE")
EQS_INGESTION_SOURCES = ("TAG", "MMP", "FILE_UPLOAD", "CONVERSIONS_API", "NATIVE")
_PLATFORM_OF_SOURCE = {"web": "WEB", "app_android": "MOBILE_ANDROID", "app_ios": "MOBILE_IOS",
                       "offline": "OFFLINE"}


def _has(value: Any) -> bool:
    return value not in (None, "", [], {})


# Pinterest's quality components (schema QualityComponents) and what in an event carries each.
EQS_COMPONENTS: dict[str, Callable[[Mapping[str, Any]], bool]] = {
    "hashed_email": lambda event: _has(event["user_data"].get("em")),
    "hashed_maid": lambda event: _has(event["user_data"].get("hashed_maids")),
    "ip_address": lambda event: _has(event["user_data"].get("client_ip_address")),
    "user_agent": lambda event: _has(event["user_data"].get("client_user_agent")),
    "click_id_epik": lambda event: _has(event["user_data"].get("click_id")),
    "advertiser_external_id": lambda event: _has(event["user_data"].get("external_id")),
    "external_event_id": lambda event: _has(event.get("event_id")),
    "order_id": lambda event: _has((event.get("custom_data") or {}).get("order_id")),
    "order_value": lambda event: _has((event.get("custom_data") or {}).get("value")),
    "product_id": lambda event: _has((event.get("custom_data") or {}).get("content_ids"))
    or any(_has(item.get("id")) for item in (event.get("custom_data") or {}).get("contents")
           or ()),
    "source_url": lambda event: _has(event.get("event_source_url")),
}
# Not published: how Pinterest turns coverages into its rating. The emulator rates the mean
# coverage of the five web user-matching components: 60% or more GOOD, 30% or more FAIR.
_RATED_COMPONENTS = ("hashed_email", "ip_address", "user_agent", "click_id_epik",
                     "advertiser_external_id")


def event_quality_scores(events: Sequence[Mapping[str, Any]], now: float,
                         lookback_period: str) -> list[dict[str, Any]]:
    """The ``EventQualityScore`` list for events that happened within the lookback window.

    One entry per source platform the events came from (ingestion source CONVERSIONS_API, the
    only one the emulator receives), each with the percentage of each event name's events that
    carry each quality component.
    """
    since = now - EQS_LOOKBACK_DAYS[lookback_period] * 86_400
    by_platform: dict[str, dict[str, list[Mapping[str, Any]]]] = {}
    for event in events:
        if event.get("event_time", 0) < since:
            continue
        platform = _PLATFORM_OF_SOURCE.get(event.get("action_source"), "WEB")
        by_platform.setdefault(platform, {}).setdefault(event["event_name"], []).append(event)
    scores = []
    for platform, by_name in sorted(by_platform.items()):
        components: dict[str, dict[str, dict[str, Any]]] = {}
        for component, present in EQS_COMPONENTS.items():
            components[component] = {
                name: {"coverage": round(100 * sum(map(present, named)) / len(named), 2)}
                for name, named in sorted(by_name.items())
            }
        everything = [event for named in by_name.values() for event in named]
        rated = sum(sum(map(EQS_COMPONENTS[name], everything)) for name in _RATED_COMPONENTS)
        mean = 100 * rated / (len(everything) * len(_RATED_COMPONENTS))
        status = "GOOD" if mean >= 60 else "FAIR" if mean >= 30 else "NEEDS_IMPROVEMENT"
        scores.append({"overall_status": status, "quality_components": components,
                       "ingestion_source": "CONVERSIONS_API", "source_platform": platform,
                       "lookback_period": lookback_period})
    return scores


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


# ASGI has no message for "hang up without answering"; this private one travels from the
# endpoint through Starlette's middleware (which passes unknown types on) to _EmulatorApp.
_DROP_MESSAGE = "capi_emulator.drop_connection"


class DroppedConnection(Response):
    """An answer that is never sent: the connection is closed instead."""

    def __init__(self, when: str) -> None:
        """Remember whether the events were processed, for the ledger.

        Args:
            when: :data:`DROP_BEFORE` or :data:`DROP_AFTER`.
        """
        # The status is never sent; 599 only keeps it apart from every real answer.
        super().__init__(status_code=599)
        self.when = when

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Ask the application wrapper to close the connection."""
        await send({"type": _DROP_MESSAGE})


class _EmulatorApp(Starlette):
    """Starlette, plus the means to close a connection without an HTTP answer."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await super().__call__(scope, receive, send)
            return
        dropped = False

        async def send_or_drop(message: Message) -> None:
            nonlocal dropped
            if message["type"] == _DROP_MESSAGE:
                dropped = True
                await _abort_connection(send)
            elif not dropped:
                await send(message)

        await super().__call__(scope, receive, send_or_drop)


async def _abort_connection(send: Send) -> None:
    # uvicorn's send is a method of its request cycle, which holds the asyncio transport. Raising
    # instead would not do: uvicorn answers an exception with a 500, which is a response. This
    # leans on uvicorn internals (the same in its h11 and httptools cycles, 0.30 to 0.55); ASGI
    # has no way to abort a connection, and should one appear it would replace this.
    cycle = getattr(send, "__self__", None)
    transport = getattr(cycle, "transport", None)
    if not callable(getattr(transport, "abort", None)):
        raise RuntimeError("the ASGI server offers no transport, so the emulator cannot drop "
                           "a connection; serve it with uvicorn")
    transport.abort()
    # uvicorn learns of the loss on a later loop turn; until then it would find the response
    # missing and try to write a 500 to the closed transport.
    for _ in range(100):
        if getattr(cycle, "disconnected", True):
            break
        await asyncio.sleep(0)


class Emulator:
    """The endpoint logic behind the Starlette app, with its ledger and faults."""

    def __init__(self, config: EmulatorConfig, clock: Callable[[], float] = time.time,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        """Set up an emulator with empty state.

        Args:
            config: The emulator settings.
            clock: Source of the current Unix time; tests may pin it.
            monotonic: Clock of the rate-limit windows; tests may drive it by hand.
        """
        self.config = config
        self.clock = clock
        self.monotonic = monotonic
        self._token = config.token.encode()
        self._record_path = Path(config.record_path) if config.record_path else None
        if self._record_path:
            self._record_path.parent.mkdir(parents=True, exist_ok=True)
        self.reset()

    def reset(self) -> None:
        """Forget everything seen and re-arm the faults; the record file is left as is."""
        config = self.config
        self.ledger = Ledger()
        self.faults = build_faults(config)
        self.rate_limiter = build_rate_limiter(config, self.monotonic)
        self.drops = (ConnectionDrops(config.drop_rate, config.drop_after_rate,
                                      fault_random(config.seed, "drop"))
                      if config.drop_rate or config.drop_after_rate else None)
        self.event_failures = (EventFailures(config.event_fail_rate, config.event_fail_message,
                                             fault_random(config.seed, "event-fail"))
                               if config.event_fail_rate else None)

    async def post_events(self, request: Request) -> Response:
        """``POST /v5/ad_accounts/{ad_account_id}/events``."""
        response = await self._answer(request)
        if isinstance(response, DroppedConnection):
            if response.when == DROP_BEFORE:
                self.ledger.dropped_before_processing += 1
            else:
                self.ledger.dropped_after_processing += 1
            logger.info("connection dropped without an answer %s: account=%s", response.when,
                        request.path_params["ad_account_id"])
        else:
            self.ledger.requests_by_status[response.status_code] += 1
        return response

    async def _answer(self, request: Request) -> Response:
        refusal = self._access_refusal(request)
        if refusal is not None:
            return refusal
        account = request.path_params["ad_account_id"]

        # Limits, rate limits and outages are per ad account, so only authorised requests
        # reach them; a refused request takes no slot, or a busy client could never get in.
        if self.rate_limiter is not None:
            retry_after = self.rate_limiter.refusal(account)
            if retry_after is not None:
                self.ledger.rate_limited += 1
                return _rate_limited(retry_after)

        self.ledger.authorised_requests += 1
        for fault in self.faults:
            answer = await fault(self.ledger.authorised_requests)
            if answer is not None:
                return answer

        raw = await request.body()
        # A drop is only realistic once the client has sent everything and waits for the answer.
        fate = self.drops.draw() if self.drops is not None else None
        if fate == DROP_BEFORE:
            return DroppedConnection(DROP_BEFORE)
        try:
            test = _test_flag(request.query_params.get("test"))
            body = _parse_json(raw)
            check_body(body)
        except RequestInvalid as problem:
            response = _invalid(str(problem))
        else:
            response = self._accept(body, test, account)
        return DroppedConnection(DROP_AFTER) if fate == DROP_AFTER else response

    def _access_refusal(self, request: Request) -> Response | None:
        if not self._token_matches(request.headers.get("authorization", "")):
            return _error(401, _CODE_AUTH, _MSG_AUTH)
        account = request.path_params["ad_account_id"]
        if not _AD_ACCOUNT_ID.fullmatch(account):
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
        max_age_days = self.config.max_age_days
        results = judge_events(events, now, max_age_days)
        if self.event_failures is not None:
            self.event_failures.apply(results)
        self.ledger.count_events(events, results, test)
        if not test:
            self._record(body)
        processed = sum(result.status == "processed" for result in results)
        logger.info("events accepted: account=%s test=%s received=%d processed=%d",
                    account, test, len(results), processed)
        return _json(200, {"num_events_received": len(results),
                           "num_events_processed": processed,
                           "events": [_PROCESSED_JSON if result is PROCESSED
                                      else result.as_json() for result in results]})

    def _record(self, body: dict[str, Any]) -> None:
        self.ledger.bodies_recorded += 1
        if not self.config.keep_bodies and self._record_path is None:
            return
        line = orjson.dumps(body)
        if self.config.keep_bodies:
            self.ledger.kept_bodies.append(line)
        if self._record_path is None:
            return
        # Opening per request flushes each line, so a killed emulator still leaves whole lines.
        with self._record_path.open("ab") as handle:
            handle.write(line + b"\n")

    async def get_conversion_eqs(self, request: Request) -> Response:
        """``GET /v5/ad_accounts/{ad_account_id}/conversion_eqs``: the event quality score."""
        refusal = self._access_refusal(request)
        if refusal is not None:
            return refusal
        params = request.query_params
        lookback = params.get("lookback_period")
        if lookback not in EQS_LOOKBACK_DAYS:
            return _invalid("query parameter lookback_period must be 1d or 14d")
        platform = params.get("source_platform")
        if platform is not None and platform not in EQS_SOURCE_PLATFORMS:
            return _invalid(f"query parameter source_platform must be one of "
                            f"{', '.join(EQS_SOURCE_PLATFORMS)}")
        ingestion = params.get("ingestion_source")
        if ingestion is not None and ingestion not in EQS_INGESTION_SOURCES:
            return _invalid(f"query parameter ingestion_source must be one of "
                            f"{', '.join(EQS_INGESTION_SOURCES)}")
        events = [event for body in self.ledger.kept_bodies
                  for event in orjson.loads(body)["data"]]
        scores = event_quality_scores(events, self.clock(), lookback)
        return _json(200, [score for score in scores
                           if platform in (None, score["source_platform"])
                           and ingestion in (None, score["ingestion_source"])])

    async def get_stats(self, request: Request) -> Response:
        """``GET /_emulator/stats``; ``?summary=1`` leaves out ``processed_by_event_id``."""
        summary = request.query_params.get("summary", "0").lower()
        if summary not in ("0", "1", "true", "false"):
            return _invalid("query parameter summary must be 0, 1, true or false")
        if summary in ("1", "true"):
            return _json(200, self.ledger.summary())
        return _json(200, self.ledger.as_json())

    async def get_event_counts(self, request: Request) -> Response:
        """``GET /_emulator/event_counts``: event id to the times it was processed."""
        # orjson writes the Counter (a dict) directly, sparing a copy of a million entries.
        return _json(200, self.ledger.processed_by_event_id)

    async def get_bodies(self, request: Request) -> Response:
        """``GET /_emulator/bodies``."""
        return Response(b"[" + b",".join(self.ledger.kept_bodies) + b"]",
                        media_type="application/json")

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


def create_app(config: EmulatorConfig, clock: Callable[[], float] = time.time,
               monotonic: Callable[[], float] = time.monotonic) -> Starlette:
    """Build the emulator's ASGI app.

    Args:
        config: The emulator settings.
        clock: Source of the current Unix time; tests may pin it.
        monotonic: Clock of the rate-limit windows; tests may drive it by hand.

    Returns:
        A Starlette app; its ``state.emulator`` holds the :class:`Emulator`.
    """
    emulator = Emulator(config, clock, monotonic)
    app = _EmulatorApp(
        routes=[
            Route("/v5/ad_accounts/{ad_account_id}/events", emulator.post_events,
                  methods=["POST"]),
            Route("/v5/ad_accounts/{ad_account_id}/conversion_eqs",
                  emulator.get_conversion_eqs, methods=["GET"]),
            Route("/_emulator/stats", emulator.get_stats, methods=["GET"]),
            Route("/_emulator/event_counts", emulator.get_event_counts, methods=["GET"]),
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


_TRUE_WORDS, _FALSE_WORDS = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


def _env_flag(name: str, default: bool) -> bool:
    raw = _env(name)
    if raw is None or not raw.strip():
        return default
    word = raw.strip().lower()
    if word not in _TRUE_WORDS + _FALSE_WORDS:
        raise ValueError(f"{name} must be one of {', '.join(_TRUE_WORDS + _FALSE_WORDS)}, "
                         f"not {raw!r}")
    return word in _TRUE_WORDS


def _parser() -> argparse.ArgumentParser:
    # argparse converts string defaults with `type`, so env values are checked like flags.
    parser = argparse.ArgumentParser(prog="python -m capi_pipeline.pinterest.emulator",
                                     description="Local Pinterest Conversions API emulator.")
    parser.add_argument("--host", default=_env("EMULATOR_HOST", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=_env("EMULATOR_PORT", "0"))
    parser.add_argument("--token", default=_env("EMULATOR_TOKEN"))
    parser.add_argument("--ad-account-id", action="append", dest="ad_account_ids")
    parser.add_argument("--record", default=_env("EMULATOR_RECORD"))
    # None until parse_command_line reads EMULATOR_KEEP_BODIES, whose bad values argparse
    # cannot report on its own.
    parser.add_argument("--keep-bodies", action=argparse.BooleanOptionalAction, default=None,
                        help="keep accepted bodies in memory for /_emulator/bodies (default)")
    parser.add_argument("--max-age-days", type=float, default=_env("EMULATOR_MAX_AGE_DAYS", "7"))
    parser.add_argument("--rate-limit-per-minute", type=int,
                        default=_env("EMULATOR_RATE_LIMIT_PER_MINUTE", "0"))
    parser.add_argument("--rate-limit-per-second", type=int,
                        default=_env("EMULATOR_RATE_LIMIT_PER_SECOND", "0"))
    parser.add_argument("--fail-first", type=int, default=_env("EMULATOR_FAIL_FIRST", "0"))
    parser.add_argument("--retry-after", type=int, default=_env("EMULATOR_RETRY_AFTER", "1"))
    parser.add_argument("--error-rate", type=float, default=_env("EMULATOR_ERROR_RATE", "0"))
    parser.add_argument("--rate-429", type=float, default=_env("EMULATOR_RATE_429", "0"))
    parser.add_argument("--drop-rate", type=float, default=_env("EMULATOR_DROP_RATE", "0"))
    parser.add_argument("--drop-after-rate", type=float,
                        default=_env("EMULATOR_DROP_AFTER_RATE", "0"))
    parser.add_argument("--event-fail-rate", type=float,
                        default=_env("EMULATOR_EVENT_FAIL_RATE", "0"))
    parser.add_argument("--event-fail-message",
                        default=_env("EMULATOR_EVENT_FAIL_MESSAGE", DEFAULT_EVENT_FAIL_MESSAGE))
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
        keep_bodies = (_env_flag("EMULATOR_KEEP_BODIES", True) if options.keep_bodies is None
                       else options.keep_bodies)
        config = EmulatorConfig(
            token=options.token or "", ad_account_ids=tuple(ids),
            max_age_days=options.max_age_days, record_path=options.record,
            fail_first=options.fail_first, retry_after=options.retry_after,
            error_rate=options.error_rate, latency_ms=options.latency_ms, seed=options.seed,
            rate_429=options.rate_429, drop_rate=options.drop_rate,
            drop_after_rate=options.drop_after_rate, event_fail_rate=options.event_fail_rate,
            event_fail_message=options.event_fail_message,
            rate_limit_per_minute=options.rate_limit_per_minute,
            rate_limit_per_second=options.rate_limit_per_second, keep_bodies=keep_bodies)
    except ValueError as problem:
        parser.error(f"{problem} (token comes from --token or EMULATOR_TOKEN)")
    return CommandLine(config, options.host, options.port, options.log_level)


def _describe(config: EmulatorConfig) -> str:
    """The active limits and faults, for the start-up log line."""
    names = ("rate_limit_per_minute", "rate_limit_per_second", "fail_first", "error_rate",
             "rate_429", "drop_rate", "drop_after_rate", "event_fail_rate", "latency_ms")
    active = [f"{name}={getattr(config, name)}" for name in names if getattr(config, name)]
    return ", ".join(active) or "none"


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
    logger.info("serving ad accounts: %s; limits and faults: %s; keeping bodies: %s", accounts,
                _describe(command.config), command.config.keep_bodies)
    server = _Server(_uvicorn_config(create_app(command.config), command.log_level), announce)
    _tune_garbage_collector()
    server.run(sockets=[sock])
    return 0


def _tune_garbage_collector() -> None:
    """Keep the cyclic collector from walking every parsed body several times.

    A 1,000-event body parses into some 30,000 containers that stay alive while the request
    is judged, so the collector's default thresholds run it tens of times per request and
    promote the body into the old generation, whose full passes also walk every object of the
    imported libraries; those full passes alone cost 1.5 to 2 ms of a request's 12 ms. The
    bodies are trees, freed by reference counting the moment a request ends, so freezing what
    start-up created and collecting less often loses nothing. Only the standalone process
    does this: a threaded emulator shares its collector with the host.
    """
    gc.freeze()
    gc.set_threshold(50_000, 20, 20)


# --------------------------------------------------------------------------------------------
# Python handles for tests and the demo


class _Introspection:
    """Calls to the introspection endpoints of a running emulator at ``base_url``."""

    base_url: str
    _http: httpx.Client | None = None

    def events_url(self, ad_account_id: str) -> str:
        """The events endpoint of one ad account on this emulator."""
        return f"{self.base_url}/v5/ad_accounts/{ad_account_id}/events"

    def stats(self, summary: bool = False) -> dict[str, Any]:
        """The counters of ``GET /_emulator/stats``.

        Args:
            summary: Leave out ``processed_by_event_id``, which grows with every event id.
        """
        return self._call("GET", "/_emulator/stats?summary=1" if summary else "/_emulator/stats")

    def event_counts(self) -> dict[str, int]:
        """How many times each event id was processed (``GET /_emulator/event_counts``)."""
        return self._call("GET", "/_emulator/event_counts")

    def bodies(self) -> list[Any]:
        """The accepted request bodies, oldest first; empty unless bodies are kept."""
        return self._call("GET", "/_emulator/bodies")

    def reset(self) -> None:
        """Forget all counters and bodies and re-arm the faults."""
        self._call("POST", "/_emulator/reset")

    def _call(self, method: str, path: str) -> Any:
        # One client per handle: building an httpx client per call costs tens of milliseconds.
        if self._http is None:
            self._http = httpx.Client(timeout=30)
        response = self._http.request(method, f"{self.base_url}{path}")
        response.raise_for_status()
        return orjson.loads(response.content)

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
                 startup_timeout: float = 30.0, *, rate_429: float = 0.0,
                 drop_rate: float = 0.0, drop_after_rate: float = 0.0,
                 event_fail_rate: float = 0.0,
                 event_fail_message: str = DEFAULT_EVENT_FAIL_MESSAGE,
                 rate_limit_per_minute: int = 0, rate_limit_per_second: int = 0,
                 keep_bodies: bool = True) -> None:
        """Prepare, without starting, an emulator subprocess.

        Args:
            token: See :class:`EmulatorConfig`, as are all but ``host``, ``log_level`` and
                ``startup_timeout``.
            ad_account_ids: Ad accounts the token may send to; empty means any.
            max_age_days: Older events fail.
            record_path: NDJSON file that receives each accepted body.
            fail_first: The first N authorised event requests get 429.
            retry_after: Seconds in the ``Retry-After`` header of fault 429s.
            error_rate: Fraction of authorised event requests answered with 503.
            latency_ms: Delay added to every event request.
            seed: Seed of every random draw.
            host: Interface to bind.
            log_level: Level of the subprocess's stderr log, readable with :meth:`log_text`.
            startup_timeout: Seconds to wait for the "listening on" line.
            rate_429: Fraction of authorised event requests answered with 429.
            drop_rate: Fraction of event requests dropped, unprocessed, once the body is read.
            drop_after_rate: Fraction of event requests processed, then dropped unanswered.
            event_fail_rate: Fraction of otherwise processed events answered ``failed``.
            event_fail_message: Their ``error_message``.
            rate_limit_per_minute: Requests per ad account in any 60 s; 0 is no limit.
            rate_limit_per_second: Requests per ad account in any 1 s; 0 is no limit.
            keep_bodies: Keep accepted bodies in memory for :meth:`bodies`.
        """
        self.config = EmulatorConfig(
            token=token, ad_account_ids=tuple(ad_account_ids), max_age_days=max_age_days,
            record_path=record_path, fail_first=fail_first, retry_after=retry_after,
            error_rate=error_rate, latency_ms=latency_ms, seed=seed, rate_429=rate_429,
            drop_rate=drop_rate, drop_after_rate=drop_after_rate,
            event_fail_rate=event_fail_rate, event_fail_message=event_fail_message,
            rate_limit_per_minute=rate_limit_per_minute,
            rate_limit_per_second=rate_limit_per_second, keep_bodies=keep_bodies)
        self.host = host
        self.log_level = log_level
        self.startup_timeout = startup_timeout
        self.base_url = ""
        self._process: subprocess.Popen[str] | None = None
        self._log: Any = None

    def command(self) -> list[str]:
        """The subprocess's argv; the token travels in the environment instead."""
        config = self.config
        argv = [sys.executable, "-m", _MODULE, "--host", self.host, "--port", "0",
                "--log-level", self.log_level,
                "--keep-bodies" if config.keep_bodies else "--no-keep-bodies"]
        for name in ("max_age_days", "fail_first", "retry_after", "error_rate", "seed",
                     "latency_ms", "rate_429", "drop_rate", "drop_after_rate",
                     "event_fail_rate", "event_fail_message", "rate_limit_per_minute",
                     "rate_limit_per_second"):
            # repr keeps every digit of a float, so the child draws exactly the same fractions.
            value = getattr(config, name)
            text = repr(value) if isinstance(value, float) else str(value)
            # "--flag=value" keeps a message that starts with "-" from reading as a flag.
            argv.append(f"--{name.replace('_', '-')}={text}")
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

    def __init__(self, config: EmulatorConfig | None = None, host: str = "127.0.0.1",
                 clock: Callable[[], float] = time.time, *,
                 monotonic: Callable[[], float] = time.monotonic, **settings: Any) -> None:
        """Prepare, without starting, a threaded emulator.

        Args:
            config: The emulator settings; None builds them from ``settings`` alone.
            host: Interface to bind; the port is always a free one.
            clock: Source of the current Unix time; tests may pin it.
            monotonic: Clock of the rate-limit windows; tests may drive it by hand.
            **settings: :class:`EmulatorConfig` fields, overriding those of ``config``
                (``token`` is needed when there is no config).
        """
        if config is None:
            config = EmulatorConfig(**settings)
        elif settings:
            config = dataclasses.replace(config, **settings)
        self.config = config
        self.host = host
        self.app = create_app(config, clock, monotonic)
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
