"""No token, personal value, hash of one, or IP address reaches Dagster's logs or metadata.

The pipeline runs on a persistent Dagster instance (event log in SQLite, captured step logs on
disk) over a day holding known personal values in every source shape, once with the right
token and once with a wrong one, so that failures and their exception messages are covered
too. Then every byte the instance wrote, everything printed, and every event's message and
metadata are searched for those values.
"""

from __future__ import annotations

import hashlib
import json
from datetime import timedelta
from pathlib import Path

import pytest
from dagster import DagsterInstance, materialize

from capi_pipeline import definitions
from capi_pipeline_tests.conftest import TOKEN, Pipeline
from capi_pipeline_tests.test_cases import NOON, iso, pixel, segment

EMAIL = "Leak.Canary77@Example.org"
PHONE = "(415) 555-0172"
FIRST, LAST = "Zebulonia", "Quartermaine"
CITY, ZIP = "Xyzzyville", "94107"
CUSTOMER = "cust-canary-7781"
IP = "203.0.113.77"
WRONG_TOKEN = "wrong-token-canary-5512"
ORDER = "8800771"


def _landing_lines() -> list[dict]:
    address = {"firstName": FIRST, "lastName": LAST, "city": CITY, "zip": ZIP,
               "countryCode": "US", "provinceCode": "CA", "phone": PHONE}
    money = {"currencyCode": "USD"}
    checkout = {"checkout": {
        "token": "tok-canary", "currencyCode": "USD", "email": EMAIL, "phone": PHONE,
        "billingAddress": address, "subtotalPrice": {**money, "amount": 30},
        "order": {"id": ORDER, "customer": {"id": CUSTOMER}},
        "lineItems": [{"quantity": 1, "variant": {"id": "v-1", "price": {**money, "amount": 30},
                                                  "product": {"id": "p-1", "title": "Mug"}}}],
    }}
    order = {
        "id": int(ORDER), "order_number": 1077, "email": EMAIL, "phone": PHONE,
        "browser_ip": IP, "created_at": iso(NOON + timedelta(minutes=2)),
        "currency": "USD", "subtotal_price": "30.00", "total_price": "34.00",
        "customer": {"id": CUSTOMER, "email": EMAIL, "first_name": FIRST, "last_name": LAST},
        "billing_address": {"first_name": FIRST, "last_name": LAST, "city": CITY, "zip": ZIP,
                            "country_code": "US", "province_code": "CA", "phone": PHONE},
        "line_items": [{"product_id": 1, "title": "Mug", "price": "30.00", "quantity": 1}],
    }
    view = pixel("page_viewed", "canary-view", "client-canary", NOON - timedelta(hours=1),
                 "https://shop.example.com/")
    view["ip"] = IP
    purchase = pixel("checkout_completed", "canary-checkout", "client-canary", NOON,
                     "https://shop.example.com/thank_you", checkout)
    purchase["ip"] = IP
    identify = segment("identify", "canary-identify", "anon-canary", NOON, userId=CUSTOMER,
                       traits={"email": EMAIL, "phone": PHONE, "firstName": FIRST,
                               "lastName": LAST, "address": {"city": CITY, "postalCode": ZIP}},
                       context={"ip": IP})
    return [view, purchase, identify,
            {"received_at": iso(NOON + timedelta(minutes=3)), "topic": "orders/create",
             "body": order},
            # A line that is rejected, whose first bytes hold the email.
            {"bad": f'{{"email": "{EMAIL}", "phone": "{PHONE}"'}]


def _forbidden() -> dict[str, str]:
    normalized = EMAIL.strip().lower()
    values = {
        "token": TOKEN, "wrong token": WRONG_TOKEN, "email": EMAIL, "email normalized":
        normalized, "phone": PHONE, "phone E.164": "+14155550172", "phone digits": "4155550172",
        "first name": FIRST, "last name": LAST, "city": CITY, "customer id": CUSTOMER,
        "IP address": IP,
    }
    for label, value in [("email", normalized), ("phone", "14155550172"),
                         ("first name", FIRST.lower()), ("last name", LAST.lower()),
                         ("customer id", CUSTOMER)]:
        values[f"sha256 of {label}"] = hashlib.sha256(value.encode()).hexdigest()
    return values


@pytest.fixture(scope="module")
def runs(tmp_path_factory, emulator):
    folder = tmp_path_factory.mktemp("secrets")
    pipeline = Pipeline(folder, emulator.base_url)
    lines = _landing_lines()
    text = "\n".join(json.dumps(line) for line in lines[:-1])
    text += "\n" + lines[-1]["bad"] + "\n"
    (pipeline.landing / "day.ndjson").write_text(text)
    home = folder / "dagster_home"
    home.mkdir()
    results = []
    with DagsterInstance.local_temp(tempdir=str(home)) as instance:
        for token in (TOKEN, WRONG_TOKEN):
            results.append(materialize(
                list(definitions.defs.assets), partition_key=str(NOON.date()),
                resources=pipeline.resources(access_token=token, resend=True),
                instance=instance, raise_on_error=False))
    return {"pipeline": pipeline, "home": home, "results": results}


def test_the_runs_did_what_the_search_relies_on(runs):
    ok, refused = runs["results"]
    assert ok.success and not refused.success
    pipeline = runs["pipeline"]
    # The personal values reached the pipeline, so their absence below means something.
    assert pipeline.scalar("SELECT count(*) FROM staging.events WHERE lower(email) = ?",
                           EMAIL.lower()) >= 3
    assert pipeline.scalar("SELECT count(*) FROM raw.rejected_lines") == 1
    assert pipeline.scalar(
        "SELECT count(*) FROM capi.pinterest_events WHERE contains(payload::VARCHAR, ?)",
        hashlib.sha256(EMAIL.lower().encode()).hexdigest()) >= 1
    failure = next(e for e in refused.all_events if e.is_step_failure)
    assert "401" in str(failure.step_failure_data.error)


def test_no_secret_or_personal_value_in_anything_dagster_stored(runs):
    stored = [path for path in Path(runs["home"]).rglob("*") if path.is_file()]
    # The event log and the steps' captured output (the run logs the UI shows) are there.
    assert any(path.suffix == ".db" for path in stored)
    assert any(path.suffix == ".err" and path.stat().st_size for path in stored)
    found = {}
    for path in stored:
        data = path.read_bytes()
        for label, value in _forbidden().items():
            if value.encode() in data or value.lower().encode() in data:
                found.setdefault(label, path.name)
    assert found == {}


def test_no_secret_or_personal_value_in_event_messages_or_metadata(runs):
    found = {}
    for result in runs["results"]:
        for event in result.all_events:
            text = json.dumps([event.message, str(event.event_specific_data)], default=str)
            for label, value in _forbidden().items():
                if value.lower() in text.lower():
                    found.setdefault(label, event.event_type_value)
    assert found == {}
