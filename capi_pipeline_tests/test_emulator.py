"""The Pinterest Conversions API emulator, exercised over real HTTP on loopback."""

from __future__ import annotations

import copy
import hashlib
import importlib.util
import random
import re
import time
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from capi_pipeline.pinterest import emulator as emulator_module
from capi_pipeline.pinterest.emulator import (
    DEFAULT_EVENT_FAIL_MESSAGE,
    EmulatorConfig,
    EmulatorProcess,
    EmulatorThread,
    RequestInvalid,
    check_body,
    fault_random,
    judge_event,
    judge_events,
    parse_command_line,
)

TOKEN = "emulator-test-token-5f1c"
ACCOUNT = "549755885175"
CLIENT_IP = "203.0.113.7"
SHARED = Path(__file__).resolve().parents[2] / "shared"
CHECKER_PATH = SHARED / "tools" / "capi_schema.py"
# One client for the whole module: a fresh httpx client per request costs tens of ms.
HTTP = httpx.Client(timeout=10)


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def make_event(event_id: str, /, **changes: Any) -> dict[str, Any]:
    """A fully valid web checkout; a change of None removes that key."""
    event = {
        "event_name": "checkout",
        "action_source": "web",
        "event_time": int(time.time()) - 120,
        "event_id": event_id,
        "event_source_url": "https://shop.example/checkout/thanks",
        "user_data": {
            "em": [sha("jane@example.com")],
            "ph": [sha("15551234567")],
            "client_ip_address": CLIENT_IP,
            "client_user_agent": "Mozilla/5.0 (X11; Linux x86_64)",
            "click_id": "dj0yJnU9b2JDcFFH",
        },
        "custom_data": {
            "currency": "USD",
            "value": "72.39",
            "order_id": "1001",
            "num_items": 2,
            "contents": [{"id": "sku-1", "item_price": "36.20", "quantity": 2}],
        },
    }
    for key, value in changes.items():
        if value is None:
            event.pop(key, None)
        else:
            event[key] = value
    return event


def with_user_data(event_id: str, **user_data: Any) -> dict[str, Any]:
    return make_event(event_id, user_data=user_data)


def post(emulator: Any, body: Any, *, token: str | None = TOKEN, account: str = ACCOUNT,
         params: dict[str, str] | None = None, raw: bytes | None = None) -> httpx.Response:
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    content = raw if raw is not None else orjson.dumps(body)
    return HTTP.post(emulator.events_url(account), content=content, headers=headers,
                     params=params)


def assert_nothing_recorded(emulator: Any) -> None:
    stats = emulator.stats()
    assert stats["events_received"] == 0
    assert stats["processed_by_event_id"] == {}
    assert emulator.bodies() == []


@pytest.fixture(scope="module")
def record_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("emulator") / "accepted.ndjson"


@pytest.fixture(scope="module")
def process(record_file: Path):
    with EmulatorProcess(token=TOKEN, ad_account_ids=(ACCOUNT,), record_path=record_file,
                         log_level="info") as emulator:
        yield emulator


@pytest.fixture
def emulator(process: EmulatorProcess) -> EmulatorProcess:
    process.reset()
    return process


# -- serving --------------------------------------------------------------------------------


def test_listening_line_carries_the_real_port(emulator: EmulatorProcess) -> None:
    match = re.fullmatch(r"http://127\.0\.0\.1:(\d+)", emulator.base_url)
    assert match and int(match.group(1)) > 0
    assert HTTP.get(f"{emulator.base_url}/_emulator/health").status_code == 200


def test_unknown_routes_and_methods_answer_in_the_error_shape(emulator: EmulatorProcess) -> None:
    missing = HTTP.get(f"{emulator.base_url}/v5/nothing")
    wrong_method = HTTP.get(emulator.events_url(ACCOUNT))
    assert (missing.status_code, missing.json()["code"]) == (404, 404)
    assert wrong_method.status_code == 405
    assert wrong_method.headers["allow"] == "POST"


# -- accepted requests ----------------------------------------------------------------------


def test_valid_body_is_processed_counted_and_recorded(emulator: EmulatorProcess,
                                                      record_file: Path) -> None:
    body = {"data": [make_event("order-1"), make_event("order-2", event_name="page_visit")]}
    lines_before = record_file.read_text().splitlines() if record_file.exists() else []

    response = post(emulator, body)

    assert response.status_code == 200
    assert response.json() == {
        "num_events_received": 2,
        "num_events_processed": 2,
        "events": [{"status": "processed", "error_message": None, "warning_message": None}] * 2,
    }
    stats = emulator.stats()
    assert stats["requests_by_status"] == {"200": 1}
    assert (stats["events_received"], stats["events_processed"], stats["events_failed"]) == (
        2, 2, 0)
    assert stats["processed_by_event_id"] == {"order-1": 1, "order-2": 1}
    assert emulator.bodies() == [body]
    lines = record_file.read_text().splitlines()
    assert len(lines) == len(lines_before) + 1
    assert orjson.loads(lines[-1]) == body


def test_nullable_fields_accept_null(emulator: EmulatorProcess) -> None:
    event = make_event("nulls", event_source_url=None, partner_name=None, language=None)
    event["user_data"]["click_id"] = None
    event["custom_data"].update(value=None, currency=None, predicted_ltv=None)
    response = post(emulator, {"data": [event]})
    assert response.status_code == 200
    assert response.json()["num_events_processed"] == 1


def test_app_and_device_info_are_accepted(emulator: EmulatorProcess) -> None:
    event = make_event("app-1", action_source="app_ios", event_name="app_open",
                       app_info={"app_id": "429047995", "window_width": 1320},
                       device_info={"os_family": "ios", "battery_level": 78,
                                    "languages": ["en", "de"]})
    response = post(emulator, {"data": [event]})
    assert response.status_code == 200
    assert response.json()["events"][0]["status"] == "processed"


def test_thousand_events_is_the_largest_batch(emulator: EmulatorProcess) -> None:
    body = {"data": [make_event(f"bulk-{index}") for index in range(1000)]}
    response = post(emulator, body)
    assert response.status_code == 200
    assert response.json()["num_events_processed"] == 1000


def test_unknown_user_data_key_only_warns(emulator: EmulatorProcess) -> None:
    event = make_event("warned")
    event["user_data"]["advertiser_tracking_enabled"] = True
    result = post(emulator, {"data": [event]}).json()["events"][0]
    assert result["status"] == "processed"
    assert "user_data.advertiser_tracking_enabled" in result["warning_message"]


# -- refused requests -----------------------------------------------------------------------


@pytest.mark.parametrize("authorization", [
    "Bearer wrong-token", None, "Bearer", f"Bearer {TOKEN}x", f"Bearer {TOKEN[:-1]}",
    f"Basic {TOKEN}", TOKEN,
])
def test_bad_token_is_401_and_records_nothing(emulator: EmulatorProcess,
                                              authorization: str | None) -> None:
    headers = {} if authorization is None else {"Authorization": authorization}
    response = HTTP.post(emulator.events_url(ACCOUNT), json={"data": [make_event("a")]},
                        headers=headers)
    assert response.status_code == 401
    assert response.json() == {"code": 2, "message": "Authentication failed."}
    assert emulator.stats()["requests_by_status"] == {"401": 1}
    assert_nothing_recorded(emulator)


def test_bearer_scheme_is_case_insensitive(emulator: EmulatorProcess) -> None:
    response = HTTP.post(emulator.events_url(ACCOUNT), json={"data": [make_event("a")]},
                        headers={"Authorization": f"bearer {TOKEN}"})
    assert response.status_code == 200


def test_other_ad_account_is_403(emulator: EmulatorProcess) -> None:
    response = post(emulator, {"data": [make_event("a")]}, account="1234")
    assert response.status_code == 403
    assert response.json() == {"code": 29,
                               "message": "You are not permitted to access that resource."}
    assert_nothing_recorded(emulator)


@pytest.mark.parametrize("account", ["12ab", "1" * 19, "-5"])
def test_ad_account_id_must_be_up_to_18_digits(emulator: EmulatorProcess, account: str) -> None:
    response = post(emulator, {"data": [make_event("a")]}, account=account)
    assert response.status_code == 400
    assert "ad_account_id" in response.json()["message"]


UNKNOWN_KEYS = [
    (lambda body: body["data"][1]["custom_data"], "category_name", "data[1].custom_data"),
    (lambda body: body, "test", "the top level"),
    (lambda body: body["data"][1], "advertiser_tracking_enabled", "data[1]"),
    (lambda body: body["data"][1]["custom_data"]["contents"][0], "sku",
     "data[1].custom_data.contents[0]"),
    (lambda body: body["data"][1].setdefault("app_info", {}), "app_color", "data[1].app_info"),
    (lambda body: body["data"][1].setdefault("device_info", {}), "ram", "data[1].device_info"),
]


@pytest.mark.parametrize(("target", "key", "where"), UNKNOWN_KEYS,
                         ids=[where for _, _, where in UNKNOWN_KEYS])
def test_unknown_key_refuses_the_whole_request(emulator: EmulatorProcess, target, key: str,
                                               where: str) -> None:
    body = {"data": [make_event("good"), make_event("bad")]}
    target(body)[key] = "x"
    response = post(emulator, body)
    assert response.status_code == 400
    assert response.json() == {
        "code": 4196,
        "message": f"Invalid request: Additional properties are not allowed ('{key}' was "
                   f"unexpected) at {where}",
    }
    assert emulator.stats()["requests_by_status"] == {"400": 1}
    assert_nothing_recorded(emulator)


def _set(*path: Any, value: Any):
    def change(event: dict[str, Any]) -> None:
        target = event
        for part in path[:-1]:
            target = target[part]
        if value is _DELETE:
            del target[path[-1]]
        else:
            target[path[-1]] = value
    return change


_DELETE = object()

TYPE_ERRORS = [
    (_set("custom_data", "value", value=72.39), "data[0].custom_data.value must be a string"),
    (_set("custom_data", "predicted_ltv", value=10), "data[0].custom_data.predicted_ltv"),
    (_set("custom_data", "contents", 0, "item_price", value=36.2),
     "data[0].custom_data.contents[0].item_price must be a string"),
    (_set("custom_data", "num_items", value="2"),
     "data[0].custom_data.num_items must be an integer"),
    (_set("custom_data", "contents", 0, "quantity", value=1.0),
     "data[0].custom_data.contents[0].quantity must be an integer"),
    (_set("event_time", value=True), "data[0].event_time must be an integer, not boolean"),
    (_set("event_time", value="1735689600"), "data[0].event_time must be an integer, not string"),
    (_set("event_time", value=1735689600.0), "data[0].event_time must be an integer, not number"),
    (_set("event_id", value=1001), "data[0].event_id must be a string, not integer"),
    (_set("user_data", "em", value=sha("a@b.c")), "data[0].user_data.em must be an array"),
    (_set("user_data", "ph", value=[15551234567]), "data[0].user_data.ph[0] must be a string"),
    (_set("user_data", "client_ip_address", value=None),
     "data[0].user_data.client_ip_address must be a string, not null"),
    (_set("user_data", value=[]), "data[0].user_data must be an object, not array"),
    (_set("custom_data", value=None), "data[0].custom_data must be an object, not null"),
    (_set("opt_out", value="false"), "data[0].opt_out must be a boolean"),
    (_set("user_data", value=_DELETE), "'user_data' is a required property at data[0]"),
    (_set("event_id", value=_DELETE), "'event_id' is a required property at data[0]"),
    (_set("device_info", value={"form_factor": "phone"}), "data[0].device_info.form_factor"),
    (_set("device_info", value={"battery_level": 101}),
     "data[0].device_info.battery_level must be at most 100"),
    (_set("app_info", value={"app_store": "x" * 101}),
     "data[0].app_info.app_store must be at most 100 characters"),
]


@pytest.mark.parametrize(("change", "expected"), TYPE_ERRORS,
                         ids=[expected for _, expected in TYPE_ERRORS])
def test_type_errors_refuse_the_whole_request(emulator: EmulatorProcess, change,
                                              expected: str) -> None:
    event = make_event("typed")
    change(event)
    response = post(emulator, {"data": [event, make_event("fine")]})
    assert response.status_code == 400
    assert response.json()["code"] == 4196
    assert response.json()["message"].startswith("Invalid request: ")
    assert expected in response.json()["message"]
    assert_nothing_recorded(emulator)


@pytest.mark.parametrize(("body", "raw", "expected"), [
    (None, b'{"data": [', "not valid JSON"),
    (None, b"", "not valid JSON"),
    (None, b'{"data": [{"event_time": NaN}]}', "not valid JSON"),
    ([], None, "the body must be an object, not array"),
    ({}, None, "'data' is a required property at the top level"),
    ({"data": []}, None, "data must hold at least 1 item(s), got 0"),
    ({"data": {}}, None, "data must be an array of objects, not object"),
    ({"data": [make_event("x")] * 1001}, None, "data must hold at most 1000 items, got 1001"),
])
def test_malformed_bodies_are_400(emulator: EmulatorProcess, body: Any, raw: bytes | None,
                                  expected: str) -> None:
    response = post(emulator, body, raw=raw)
    assert response.status_code == 400
    assert response.json()["code"] == 4196
    assert expected in response.json()["message"]
    assert_nothing_recorded(emulator)


# -- per-event failures ---------------------------------------------------------------------


def test_event_without_identifiers_fails_alone(emulator: EmulatorProcess) -> None:
    body = {"data": [make_event("kept"), with_user_data("lost", ph=[sha("15551234567")])]}
    response = post(emulator, body)
    assert response.status_code == 200
    answer = response.json()
    assert (answer["num_events_received"], answer["num_events_processed"]) == (2, 1)
    assert answer["events"][0] == {"status": "processed", "error_message": None,
                                   "warning_message": None}
    assert answer["events"][1]["status"] == "failed"
    assert "em, hashed_maids, or both client_ip_address" in answer["events"][1]["error_message"]
    stats = emulator.stats()
    assert (stats["events_processed"], stats["events_failed"]) == (1, 1)
    assert stats["processed_by_event_id"] == {"kept": 1}


NOW = int(time.time())
EVENT_FAILURES = [
    (make_event("ms", event_time=NOW * 1000), "looks like milliseconds"),
    (make_event("future", event_time=NOW + 3600), "in the future"),
    (make_event("old", event_time=NOW - 8 * 86400), "older than 7 days"),
    (make_event("name", event_name="purchase"), "event_name 'purchase' is not"),
    (make_event("name-case", event_name="Checkout"), "event_name 'Checkout' is not"),
    (make_event("source", action_source="website"), "action_source 'website'"),
    (make_event("no-id", event_id=""), "event_id must not be empty"),
    (with_user_data("upper", em=[sha("a@b.c").upper()]), "user_data.em[0] is not a SHA-256"),
    (with_user_data("plain", em=["jane@example.com"]), "user_data.em[0] is not a SHA-256"),
    (with_user_data("short", hashed_maids=[sha("x")[:63]]), "user_data.hashed_maids[0]"),
    (with_user_data("empty-em", em=[], ph=[sha("1")]), "user_data.em is an empty array"),
    (with_user_data("ip-only", client_ip_address=CLIENT_IP), "user_data needs em"),
    (with_user_data("blank-ua", client_ip_address=CLIENT_IP, client_user_agent=""),
     "user_data needs em"),
]


@pytest.mark.parametrize(("event", "expected"), EVENT_FAILURES,
                         ids=[expected for _, expected in EVENT_FAILURES])
def test_broken_event_fails_while_neighbour_is_processed(emulator: EmulatorProcess,
                                                         event: dict[str, Any],
                                                         expected: str) -> None:
    response = post(emulator, {"data": [make_event("neighbour"), event]})
    assert response.status_code == 200
    first, second = response.json()["events"]
    assert first["status"] == "processed"
    assert second["status"] == "failed"
    assert expected in second["error_message"]
    assert emulator.stats()["processed_by_event_id"] == {"neighbour": 1}


def test_failure_messages_never_echo_a_rejected_identifier(emulator: EmulatorProcess) -> None:
    response = post(emulator, {"data": [with_user_data("plain", em=["jane@example.com"])]})
    assert "jane@example.com" not in response.text


@pytest.mark.parametrize("event", [
    make_event("near-future", event_time=NOW + 30),
    make_event("six-days", event_time=NOW - 6 * 86400),
    make_event("custom", event_name="custom", action_source="offline"),
    with_user_data("maid", hashed_maids=[sha("38400000-8cf0-11bd-b23e-10b96e40000d")]),
    with_user_data("ip-ua", client_ip_address="2001:db8::1", client_user_agent="curl/8"),
], ids=lambda event: event["event_id"])
def test_events_inside_the_rules_are_processed(emulator: EmulatorProcess,
                                               event: dict[str, Any]) -> None:
    response = post(emulator, {"data": [event]})
    assert response.json()["events"][0] == {"status": "processed", "error_message": None,
                                            "warning_message": None}


# -- test mode, counting, logs --------------------------------------------------------------


def test_test_mode_answers_alike_but_records_nothing(emulator: EmulatorProcess) -> None:
    body = {"data": [make_event("t-1"), make_event("t-2", event_time=NOW * 1000)]}

    test_answer = post(emulator, body, params={"test": "true"})

    assert test_answer.status_code == 200
    assert test_answer.json()["num_events_processed"] == 1
    stats = emulator.stats()
    assert (stats["test_requests"], stats["test_events"], stats["test_events_processed"],
            stats["test_events_failed"]) == (1, 2, 1, 1)
    assert_nothing_recorded(emulator)

    live_answer = post(emulator, body, params={"test": "false"})
    assert live_answer.json() == test_answer.json()
    assert emulator.stats()["processed_by_event_id"] == {"t-1": 1}


def test_test_flag_must_be_a_boolean(emulator: EmulatorProcess) -> None:
    response = post(emulator, {"data": [make_event("a")]}, params={"test": "yes"})
    assert response.status_code == 400
    assert "test must be true or false" in response.json()["message"]


def test_processed_by_event_id_counts_every_delivery(emulator: EmulatorProcess) -> None:
    pair = {"data": [make_event("a"), make_event("b")]}
    post(emulator, pair)
    post(emulator, pair)
    post(emulator, {"data": [make_event("a"), make_event("c", event_name="buy")]})
    post(emulator, {"data": [make_event("d")]}, params={"test": "true"})

    stats = emulator.stats()
    assert stats["processed_by_event_id"] == {"a": 3, "b": 2}
    assert (stats["events_received"], stats["events_processed"], stats["events_failed"]) == (
        6, 5, 1)
    assert stats["bodies_recorded"] == len(emulator.bodies()) == 3


def test_reset_forgets_everything(emulator: EmulatorProcess) -> None:
    post(emulator, {"data": [make_event("a")]})
    emulator.reset()
    assert emulator.stats()["requests_total"] == 0
    assert_nothing_recorded(emulator)


def test_logs_hold_no_token_ip_or_identifier(emulator: EmulatorProcess) -> None:
    post(emulator, {"data": [make_event("logged")]})
    post(emulator, {"data": [make_event("logged")]}, token="a-wrong-token")
    time.sleep(0.2)
    log = emulator.log_text()
    assert "events accepted: account=549755885175" in log
    for secret in (TOKEN, "a-wrong-token", CLIENT_IP, sha("jane@example.com"), "Mozilla"):
        assert secret not in log


# -- faults ---------------------------------------------------------------------------------


def test_fail_first_gives_429s_with_retry_after_then_200(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    # Another working directory proves the subprocess does not depend on the repository one.
    monkeypatch.chdir(tmp_path)
    body = {"data": [make_event("retried")]}
    with EmulatorProcess(token=TOKEN, fail_first=2, retry_after=3) as emulator:
        unauthorised = post(emulator, body, token="wrong")
        answers = [post(emulator, body) for _ in range(3)]
        stats = emulator.stats()

    assert unauthorised.status_code == 401
    assert [answer.status_code for answer in answers] == [429, 429, 200]
    for answer in answers[:2]:
        assert answer.headers["retry-after"] == "3"
        assert answer.json()["code"] == 8
        assert answer.json()["message"].startswith("This request exceeded a rate limit")
    assert stats["requests_by_status"] == {"200": 1, "401": 1, "429": 2}
    assert stats["processed_by_event_id"] == {"retried": 1}


def test_error_rate_follows_the_seeded_draws() -> None:
    config = EmulatorConfig(token=TOKEN, error_rate=0.5, seed=7)
    draws = random.Random(7)
    expected = [503 if draws.random() < 0.5 else 200 for _ in range(12)]
    body = {"data": [make_event("maybe")]}

    with EmulatorThread(config) as emulator:
        first_run = [post(emulator, body) for _ in range(12)]
        emulator.reset()
        second_run = [post(emulator, body).status_code for _ in range(12)]

    assert [answer.status_code for answer in first_run] == expected == second_run
    assert {200, 503} <= set(expected)
    outage = next(answer for answer in first_run if answer.status_code == 503)
    assert outage.json()["code"] == 4197


def test_latency_delays_event_requests() -> None:
    with EmulatorThread(EmulatorConfig(token=TOKEN, latency_ms=300)) as emulator:
        started = time.perf_counter()
        response = post(emulator, {"data": [make_event("slow")]}, account="42")
        elapsed = time.perf_counter() - started
    assert response.status_code == 200
    assert elapsed >= 0.3


def test_max_age_days_is_configurable() -> None:
    config = EmulatorConfig(token=TOKEN, max_age_days=1)
    with EmulatorThread(config, clock=lambda: 1_750_000_000.0) as emulator:
        body = {"data": [make_event("day-old", event_time=1_750_000_000 - 2 * 86400),
                         make_event("hour-old", event_time=1_750_000_000 - 3600)]}
        events = post(emulator, body, account="42").json()["events"]
    assert [event["status"] for event in events] == ["failed", "processed"]
    assert "older than 1 days" in events[0]["error_message"]


# -- configuration --------------------------------------------------------------------------


def test_command_line_falls_back_to_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EMULATOR_TOKEN", "from-env")
    monkeypatch.setenv("EMULATOR_AD_ACCOUNT_ID", "11, 22")
    monkeypatch.setenv("EMULATOR_FAIL_FIRST", "3")
    monkeypatch.setenv("EMULATOR_ERROR_RATE", "0.25")

    command = parse_command_line(["--port", "8123", "--fail-first", "5"])

    assert command.config == EmulatorConfig(token="from-env", ad_account_ids=("11", "22"),
                                            fail_first=5, error_rate=0.25)
    assert (command.host, command.port) == ("127.0.0.1", 8123)


def test_command_line_ad_account_ids_repeat(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EMULATOR_AD_ACCOUNT_ID", "99")
    command = parse_command_line(["--token", "t", "--ad-account-id", "1",
                                  "--ad-account-id", "2"])
    assert command.config.ad_account_ids == ("1", "2")


@pytest.mark.parametrize("argv", [[], ["--token", "t", "--ad-account-id", "12x"],
                                  ["--token", "t", "--error-rate", "1.5"],
                                  ["--token", "t", "--fail-first", "many"]])
def test_command_line_refuses_bad_settings(monkeypatch: pytest.MonkeyPatch,
                                           argv: list[str]) -> None:
    monkeypatch.delenv("EMULATOR_TOKEN", raising=False)
    with pytest.raises(SystemExit) as exit_info:
        parse_command_line(argv)
    assert exit_info.value.code == 2


# -- agreement with ../shared/tools/capi_schema.py ------------------------------------------


@pytest.fixture(scope="module")
def checker():
    if not CHECKER_PATH.exists():
        pytest.skip("../shared/tools/capi_schema.py not present")
    spec = importlib.util.spec_from_file_location("capi_schema", CHECKER_PATH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module, module.load_validator()


def test_fully_processed_body_passes_the_checker(emulator: EmulatorProcess, checker) -> None:
    module, validator = checker
    app_event = make_event("app-2", action_source="app_android", event_name="add_to_cart",
                           app_info={"app_package_name": "com.shop.app", "install_time": 0},
                           device_info={"network_type": "wifi", "screen_height": 2400})
    body = {"data": [make_event("c-1"), app_event,
                     with_user_data("c-3", hashed_maids=[sha("gaid")], ge=[sha("f")])]}

    answer = post(emulator, body).json()

    assert answer["num_events_processed"] == len(body["data"])
    assert module.body_problems(emulator.bodies()[0], validator) == []


def _rejected_bodies() -> list[tuple[str, dict[str, Any]]]:
    unknown_key = make_event("k")
    unknown_key["custom_data"]["category_name"] = "shirts"
    numeric_value = make_event("v")
    numeric_value["custom_data"]["value"] = 72.39
    return [
        ("unknown custom_data key", {"data": [unknown_key]}),
        ("numeric value", {"data": [numeric_value]}),
        ("no identifiers", {"data": [with_user_data("n", fn=[sha("jane")])]}),
        ("upper-case hash", {"data": [with_user_data("u", em=[sha("x").upper()])]}),
        ("milliseconds", {"data": [make_event("m", event_time=NOW * 1000)]}),
        ("future", {"data": [make_event("f", event_time=NOW + 7200)]}),
        ("unknown event name", {"data": [make_event("e", event_name="purchase")]}),
        ("unknown action source", {"data": [make_event("s", action_source="email")]}),
        ("1001 events", {"data": [make_event("x")] * 1001}),
        ("empty data", {"data": []}),
    ]


@pytest.mark.parametrize(("label", "body"), _rejected_bodies(),
                         ids=[label for label, _ in _rejected_bodies()])
def test_bodies_the_checker_rejects_are_refused_or_failed(emulator: EmulatorProcess, checker,
                                                          label: str,
                                                          body: dict[str, Any]) -> None:
    module, validator = checker
    assert module.body_problems(copy.deepcopy(body), validator), label

    response = post(emulator, body)

    if response.status_code == 200:
        statuses = {event["status"] for event in response.json()["events"]}
        assert "failed" in statuses, label
    else:
        assert response.status_code == 400, label


# -- fault injection: random 429s, dropped connections, failed events -----------------------

# What a client sees when the emulator hangs up: httpx names it by how far the read had got.
TRANSPORT_ERRORS = (httpx.RemoteProtocolError, httpx.ReadError)


def outcome(emulator: Any, body: Any, **options: Any) -> int | str:
    """The status code of one request, or "dropped" when no answer came back."""
    try:
        return post(emulator, body, **options).status_code
    except TRANSPORT_ERRORS:
        return "dropped"


def test_rate_429_answers_the_seeded_fraction_with_retry_after() -> None:
    draws = fault_random(11, "rate-429")
    expected = [429 if draws.random() < 0.5 else 200 for _ in range(16)]

    with EmulatorThread(token=TOKEN, rate_429=0.5, seed=11, retry_after=4) as emulator:
        answers = [post(emulator, {"data": [make_event(f"r-{n}")]}) for n in range(16)]
        stats = emulator.stats()
        emulator.reset()
        replay = [post(emulator, {"data": [make_event("again")]}).status_code
                  for _ in range(16)]

    assert [answer.status_code for answer in answers] == expected == replay
    assert {200, 429} <= set(expected)
    for answer in answers:
        if answer.status_code == 429:
            assert answer.headers["retry-after"] == "4"
            assert answer.json()["code"] == 8
            assert answer.json()["message"].startswith("This request exceeded a rate limit")
    accepted = {f"r-{n}": 1 for n, status in enumerate(expected) if status == 200}
    assert stats["processed_by_event_id"] == accepted
    assert stats["requests_by_status"] == {"200": len(accepted), "429": 16 - len(accepted)}
    assert stats["rate_limited"] == 0


def test_random_faults_draw_from_streams_of_their_own() -> None:
    # Switching the 429s on must not change which requests the 503s hit.
    draws = random.Random(5)
    outages = [draws.random() < 0.4 for _ in range(12)]
    with EmulatorThread(token=TOKEN, error_rate=0.4, rate_429=0.3, seed=5) as emulator:
        codes = [post(emulator, {"data": [make_event("s")]}).status_code for _ in range(12)]
    assert [code == 503 for code in codes] == outages


def test_drop_rate_closes_without_answer_and_processes_nothing() -> None:
    with EmulatorThread(token=TOKEN, drop_rate=1.0) as emulator:
        with pytest.raises(TRANSPORT_ERRORS):
            post(emulator, {"data": [make_event("never")]})
        stats = emulator.stats()
        bodies = emulator.bodies()

    assert stats["dropped_before_processing"] == 1
    assert stats["dropped_after_processing"] == 0
    assert stats["requests_by_status"] == {}
    assert stats["requests_total"] == 1
    assert (stats["events_received"], stats["processed_by_event_id"], bodies) == (0, {}, [])


def test_drop_after_rate_processes_and_records_then_hangs_up(tmp_path: Path) -> None:
    # A real subprocess: the drop must work through the same uvicorn set-up the demo runs.
    record = tmp_path / "received.ndjson"
    body = {"data": [make_event("lost-answer"), make_event("also-lost")]}
    with EmulatorProcess(token=TOKEN, drop_after_rate=1.0, record_path=record,
                         log_level="info") as emulator:
        with pytest.raises(TRANSPORT_ERRORS):
            post(emulator, body)
        with pytest.raises(TRANSPORT_ERRORS):
            post(emulator, body)
        stats = emulator.stats()
        bodies = emulator.bodies()
        time.sleep(0.2)
        log = emulator.log_text()

    assert stats["processed_by_event_id"] == {"lost-answer": 2, "also-lost": 2}
    assert (stats["events_processed"], stats["dropped_after_processing"]) == (4, 2)
    assert (stats["duplicates"], stats["max_processed_per_event"]) == (2, 2)
    assert stats["requests_by_status"] == {}
    assert bodies == [body, body]
    assert [orjson.loads(line) for line in record.read_text().splitlines()] == [body, body]
    assert "connection dropped without an answer after processing" in log
    assert "Exception" not in log and "500" not in log


def test_drop_fractions_share_one_seeded_draw() -> None:
    draws = fault_random(2, "drop")
    expected = []
    for _ in range(20):
        value = draws.random()
        expected.append("before" if value < 0.3 else "after" if value < 0.6 else "answered")

    with EmulatorThread(token=TOKEN, drop_rate=0.3, drop_after_rate=0.3, seed=2) as emulator:
        seen = [outcome(emulator, {"data": [make_event(f"d-{n}")]}) for n in range(20)]
        stats = emulator.stats()

    assert [status == "dropped" for status in seen] == [fate != "answered" for fate in expected]
    assert {"before", "after", "answered"} == set(expected)
    assert stats["dropped_before_processing"] == expected.count("before")
    assert stats["dropped_after_processing"] == expected.count("after")
    assert stats["processed_by_event_id"] == {
        f"d-{n}": 1 for n, fate in enumerate(expected) if fate != "before"}


def test_event_fail_rate_one_fails_every_valid_event_with_the_message() -> None:
    warned = make_event("warned")
    warned["user_data"]["advertiser_tracking_enabled"] = True
    body = {"data": [make_event("a"), warned, make_event("ms", event_time=NOW * 1000)]}

    with EmulatorThread(token=TOKEN, event_fail_rate=1.0) as emulator:
        answer = post(emulator, body).json()
        stats = emulator.stats()
    with EmulatorThread(token=TOKEN, event_fail_rate=1.0,
                        event_fail_message="synthetic rejection") as emulator:
        custom = post(emulator, {"data": [make_event("b")]}).json()

    assert answer["num_events_received"] == 3
    assert answer["num_events_processed"] == 0
    first, second, third = answer["events"]
    assert first == {"status": "failed", "error_message": DEFAULT_EVENT_FAIL_MESSAGE,
                     "warning_message": None}
    assert second["error_message"] == DEFAULT_EVENT_FAIL_MESSAGE
    assert "advertiser_tracking_enabled" in second["warning_message"]
    # An event that already failed keeps its own reason.
    assert "looks like milliseconds" in third["error_message"]
    assert (stats["events_failed"], stats["processed_by_event_id"]) == (3, {})
    assert custom["events"][0]["error_message"] == "synthetic rejection"


def test_event_fail_rate_draws_once_per_otherwise_processed_event() -> None:
    events = [make_event(f"e-{n}") for n in range(30)]
    events[4] = make_event("bad", event_name="purchase")
    draws = fault_random(9, "event-fail")
    expected = ["failed" if event["event_id"] == "bad" or draws.random() < 0.5 else "processed"
                for event in events]

    with EmulatorThread(token=TOKEN, event_fail_rate=0.5, seed=9) as emulator:
        answer = post(emulator, {"data": events}).json()

    assert [result["status"] for result in answer["events"]] == expected
    assert {"failed", "processed"} == set(expected)
    assert answer["num_events_processed"] == expected.count("processed")


# -- the per-ad-account rate limit ----------------------------------------------------------


class ManualClock:
    """A monotonic clock that only moves when told to."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_rate_limit_per_minute_refuses_the_fourth_request(tmp_path: Path) -> None:
    record = tmp_path / "received.ndjson"
    with EmulatorProcess(token=TOKEN, rate_limit_per_minute=3, record_path=record) as emulator:
        answers = [post(emulator, {"data": [make_event(f"m-{n}")]}) for n in range(4)]
        other_account = post(emulator, {"data": [make_event("other")]}, account="42")
        stats = emulator.stats()
        bodies = emulator.bodies()

    assert [answer.status_code for answer in answers] == [200, 200, 200, 429]
    refused = answers[3]
    assert 1 <= int(refused.headers["retry-after"]) <= 60
    assert refused.json() == {"code": 8, "message": refused.json()["message"]}
    assert refused.json()["message"].startswith("This request exceeded a rate limit")
    assert other_account.status_code == 200
    assert stats["rate_limited"] == 1
    assert stats["requests_by_status"] == {"200": 4, "429": 1}
    assert "m-3" not in stats["processed_by_event_id"]
    assert [body["data"][0]["event_id"] for body in bodies] == ["m-0", "m-1", "m-2", "other"]
    assert len(record.read_text().splitlines()) == 4


def test_rate_limit_retry_after_says_when_a_slot_frees() -> None:
    clock = ManualClock()
    body = {"data": [make_event("w")]}
    with EmulatorThread(token=TOKEN, rate_limit_per_minute=2, monotonic=clock) as emulator:
        first = post(emulator, body).status_code
        clock.now += 20.5
        second = post(emulator, body).status_code
        clock.now += 10
        refused = post(emulator, body)
        clock.now += 29.4
        almost = post(emulator, body)
        clock.now += 0.2
        freed = post(emulator, body).status_code
        stats = emulator.stats()

    assert (first, second, freed) == (200, 200, 200)
    # The first slot frees 60 s after it was taken: 29.5 s after the refusal, so 30 whole s.
    assert (refused.status_code, refused.headers["retry-after"]) == (429, "30")
    # Refused requests take no slot, and a wait under a second still says 1.
    assert (almost.status_code, almost.headers["retry-after"]) == (429, "1")
    assert stats["rate_limited"] == 2
    assert stats["processed_by_event_id"] == {"w": 3}


def test_rate_limit_per_second_caps_bursts() -> None:
    clock = ManualClock()
    body = {"data": [make_event("burst")]}
    with EmulatorThread(token=TOKEN, rate_limit_per_second=2, rate_limit_per_minute=100,
                        monotonic=clock) as emulator:
        burst = [post(emulator, body) for _ in range(3)]
        clock.now += 1.0
        after = post(emulator, body).status_code

    assert [answer.status_code for answer in burst] == [200, 200, 429]
    assert burst[2].headers["retry-after"] == "1"
    assert after == 200


def test_rate_limit_only_counts_authorised_requests() -> None:
    with EmulatorThread(token=TOKEN, rate_limit_per_minute=1,
                        monotonic=ManualClock()) as emulator:
        unauthorised = [post(emulator, {"data": [make_event("x")]}, token="wrong").status_code
                        for _ in range(3)]
        allowed = post(emulator, {"data": [make_event("x")]}).status_code
    assert (unauthorised, allowed) == ([401] * 3, 200)


# -- counting deliveries --------------------------------------------------------------------


def test_duplicates_count_event_ids_processed_more_than_once(emulator: EmulatorProcess) -> None:
    post(emulator, {"data": [make_event("twice"), make_event("once")]})
    post(emulator, {"data": [make_event("twice"), make_event("thrice")]})
    post(emulator, {"data": [make_event("thrice")]})
    post(emulator, {"data": [make_event("thrice"), make_event("failed", event_name="x")]})
    post(emulator, {"data": [make_event("failed", event_name="x")]})

    stats = emulator.stats()
    summary = emulator.stats(summary=True)
    counts = emulator.event_counts()

    assert counts == stats["processed_by_event_id"] == {"twice": 2, "once": 1, "thrice": 3}
    assert (stats["duplicates"], stats["max_processed_per_event"]) == (2, 3)
    assert stats["event_ids_processed"] == 3
    assert "processed_by_event_id" not in summary
    assert summary == {key: value for key, value in stats.items()
                       if key != "processed_by_event_id"}


def test_empty_stats_have_no_duplicates(emulator: EmulatorProcess) -> None:
    summary = emulator.stats(summary=True)
    assert (summary["duplicates"], summary["max_processed_per_event"]) == (0, 0)
    assert emulator.event_counts() == {}


def test_stats_summary_flag_must_be_a_boolean(emulator: EmulatorProcess) -> None:
    response = HTTP.get(f"{emulator.base_url}/_emulator/stats", params={"summary": "maybe"})
    assert response.status_code == 400
    assert HTTP.get(f"{emulator.base_url}/_emulator/stats",
                    params={"summary": "true"}).json()["requests_total"] == 0


def test_no_keep_bodies_still_records_to_file(tmp_path: Path) -> None:
    record = tmp_path / "received.ndjson"
    body = {"data": [make_event("file-only")]}
    with EmulatorThread(token=TOKEN, keep_bodies=False, record_path=record) as emulator:
        post(emulator, body)
        post(emulator, body, params={"test": "true"})
        stats = emulator.stats()
        bodies = emulator.bodies()
    assert bodies == []
    assert (stats["bodies_recorded"], stats["bodies_kept"]) == (1, 0)
    assert [orjson.loads(line) for line in record.read_text().splitlines()] == [body]


# -- stricter digit and digest matching -----------------------------------------------------


def test_trailing_newline_is_no_digest_and_no_account(emulator: EmulatorProcess) -> None:
    event = with_user_data("newline", em=[sha("a@b.c") + "\n"])
    result = post(emulator, {"data": [event]}).json()["events"][0]
    assert result["status"] == "failed"
    assert "user_data.em[0] is not a SHA-256" in result["error_message"]
    assert post(emulator, {"data": [make_event("a")]}, account="123%0A").status_code == 400


# -- the bulk checks agree with the rule-by-rule ones ---------------------------------------


def _walker_refuses(body: Any) -> bool:
    try:
        emulator_module._check_shape(body, emulator_module._BODY, "")
    except RequestInvalid:
        return True
    return False


MUTATIONS = [
    lambda event: event.update(event_time=True),
    lambda event: event.update(event_time=2**64 - 1),
    lambda event: event.update(event_id=None),
    lambda event: event.update(partner_name=None),
    lambda event: event.update(opt_out=1),
    lambda event: event.update(surprise="x"),
    lambda event: event.pop("user_data"),
    lambda event: event.pop("custom_data"),
    lambda event: event["user_data"].update(em=[]),
    lambda event: event["user_data"].update(em=[1]),
    lambda event: event["user_data"].update(em="x"),
    lambda event: event["user_data"].update(unknown="kept"),
    lambda event: event["user_data"].update(click_id=None),
    lambda event: event["custom_data"].update(contents=[]),
    lambda event: event["custom_data"].update(contents=[{"sku": "1"}]),
    lambda event: event["custom_data"].update(contents=[{"quantity": -(2**63) - 1}]),
    lambda event: event["custom_data"].update(num_items=2**63),
    lambda event: event["custom_data"].update(value=None),
    lambda event: event.update(device_info={"battery_level": 100, "form_factor": "tv"}),
    lambda event: event.update(device_info={"languages": ["en"] * 101}),
    lambda event: event.update(device_info={"os_family": "ios2"}),
    lambda event: event.update(app_info={"app_store": "x" * 100}),
    lambda event: event.update(app_info={"app_store": "x" * 101}),
    lambda event: event.update(app_info=[]),
]


def test_bulk_schema_check_never_passes_what_the_walker_refuses() -> None:
    draws = random.Random(1)
    for _ in range(300):
        events = [make_event(f"p-{n}") for n in range(draws.randint(1, 6))]
        for event in draws.sample(events, draws.randint(0, len(events))):
            draws.choice(MUTATIONS)(event)
        body = {"data": events}
        bulk_passes = emulator_module._all_fit([body], emulator_module._BODY)
        assert not (bulk_passes and _walker_refuses(body)), body
        try:
            check_body(body)
        except RequestInvalid:
            assert _walker_refuses(body)
        else:
            assert not _walker_refuses(body)


EVENT_CHANGES = [
    lambda event: event.update(event_name="purchase"),
    lambda event: event.update(action_source="email"),
    lambda event: event.update(event_id=""),
    lambda event: event.update(event_time=NOW + 3600),
    lambda event: event.update(event_time=NOW * 1000),
    lambda event: event.update(event_time=NOW - 30 * 86400),
    lambda event: event["user_data"].update(em=[sha("x").upper()]),
    lambda event: event["user_data"].update(ph=[]),
    lambda event: event["user_data"].update(ph=[sha("x")[:63] + "é"]),
    lambda event: event["user_data"].update(hashed_maids=[sha("m")[1:], sha("m") + "0"]),
    lambda event: event["user_data"].pop("em"),
    lambda event: event["user_data"].update(client_user_agent=""),
    lambda event: event["user_data"].update(surplus="warn"),
    lambda event: event.setdefault("custom_data", {}).update(value="1e3"),
    lambda event: event.setdefault("custom_data", {}).update(predicted_ltv="9" * 400),
    lambda event: event.setdefault("custom_data", {}).update(opt_out_type="OTHER"),
    lambda event: event.setdefault("custom_data", {}).update(contents=[{"item_price": "1."}]),
    lambda event: event.pop("custom_data"),
    lambda event: event.update(custom_data={}),
]


def test_bulk_judgement_matches_event_by_event() -> None:
    draws = random.Random(2)
    for _ in range(60):
        events = [make_event(f"j-{n}") for n in range(draws.randint(1, 80))]
        for event in draws.sample(events, draws.randint(0, min(4, len(events)))):
            for _ in range(draws.randint(1, 2)):
                draws.choice(EVENT_CHANGES)(event)
        now = time.time()
        assert judge_events(events, now, 7) == [judge_event(event, now, 7) for event in events]


# -- configuration of the new settings ------------------------------------------------------


def test_new_settings_come_from_flags_and_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EMULATOR_TOKEN", "from-env")
    monkeypatch.setenv("EMULATOR_RATE_429", "0.1")
    monkeypatch.setenv("EMULATOR_DROP_RATE", "0.2")
    monkeypatch.setenv("EMULATOR_DROP_AFTER_RATE", "0.3")
    monkeypatch.setenv("EMULATOR_EVENT_FAIL_RATE", "0.4")
    monkeypatch.setenv("EMULATOR_EVENT_FAIL_MESSAGE", "from env")
    monkeypatch.setenv("EMULATOR_RATE_LIMIT_PER_MINUTE", "5000")
    monkeypatch.setenv("EMULATOR_RATE_LIMIT_PER_SECOND", "100")
    monkeypatch.setenv("EMULATOR_KEEP_BODIES", "no")

    from_env = parse_command_line([]).config
    from_flags = parse_command_line(["--rate-429", "0.5", "--drop-after-rate", "0",
                                     "--event-fail-message", "-from flag",
                                     "--rate-limit-per-second", "0", "--keep-bodies"]).config

    assert from_env == EmulatorConfig(
        token="from-env", rate_429=0.1, drop_rate=0.2, drop_after_rate=0.3,
        event_fail_rate=0.4, event_fail_message="from env", rate_limit_per_minute=5000,
        rate_limit_per_second=100, keep_bodies=False)
    assert (from_flags.rate_429, from_flags.drop_after_rate, from_flags.event_fail_message,
            from_flags.rate_limit_per_second, from_flags.keep_bodies) == (
        0.5, 0.0, "-from flag", 0, True)


@pytest.mark.parametrize(("argv", "env"), [
    (["--rate-429", "1.5"], {}),
    (["--drop-rate", "0.6", "--drop-after-rate", "0.5"], {}),
    (["--event-fail-rate", "-0.1"], {}),
    (["--event-fail-message", ""], {}),
    (["--rate-limit-per-minute", "-1"], {}),
    (["--rate-limit-per-second", "lots"], {}),
    ([], {"EMULATOR_KEEP_BODIES": "maybe"}),
    ([], {"EMULATOR_DROP_RATE": "nan"}),
])
def test_bad_new_settings_are_refused(monkeypatch: pytest.MonkeyPatch, argv: list[str],
                                      env: dict[str, str]) -> None:
    monkeypatch.setenv("EMULATOR_TOKEN", "t")
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(SystemExit) as exit_info:
        parse_command_line(argv)
    assert exit_info.value.code == 2


def test_process_command_carries_every_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    process = EmulatorProcess(token="t", ad_account_ids=("7",), fail_first=1, retry_after=2,
                              error_rate=0.1, latency_ms=3, seed=4, rate_429=1 / 3,
                              drop_rate=0.25, drop_after_rate=0.5, event_fail_rate=0.75,
                              event_fail_message="--odd message", rate_limit_per_minute=9,
                              rate_limit_per_second=8, keep_bodies=False)
    monkeypatch.setenv("EMULATOR_TOKEN", "t")
    assert parse_command_line(process.command()[3:]).config == process.config


def test_thread_settings_override_a_config() -> None:
    base = EmulatorConfig(token=TOKEN, seed=3)
    thread = EmulatorThread(base, rate_429=0.5)
    assert thread.config == EmulatorConfig(token=TOKEN, seed=3, rate_429=0.5)
    with pytest.raises(ValueError, match="rate_429 must be between 0 and 1"):
        EmulatorThread(token=TOKEN, rate_429=2.0)
