"""What may become a node of the identity graph, and the thresholds of its guards."""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass

from capi_pipeline.enrich.normalize import country_code, normalize_email, phone_e164

# Local parts and domains that people type when a form insists on an address.
JUNK_LOCAL_PARTS = frozenset({
    "test", "tester", "testing", "noreply", "no-reply", "none", "null", "na", "nobody", "asdf",
    "abc", "email", "user", "customer", "unknown", "xxx", "fake",
})
JUNK_DOMAINS = frozenset({"test.com", "test.test", "email.com", "domain.com", "fake.com"})
# Ids that collectors and apps send when they have none: never a person's.
JUNK_IDS = (
    "undefined", "null", "none", "nil", "nan", "unknown", "anonymous", "guest", "test", "n/a",
    "na", "false", "true", "[object object]", "0", "-1",
)
# Identifier kinds, most personal first: an event belongs to the visitor of the first of its
# identifiers that is not a hub.
KINDS = ("customer", "email", "phone", "device", "client", "checkout", "cart")
@dataclass(frozen=True)
class GraphRules:
    """Thresholds for the guards, from PipelineSettings."""

    default_region: str
    hub_max_clients: int
    hub_max_people_per_client: int
    junk_emails: frozenset[str]
    max_visitor_identifiers: int = 200
    attribution_window_days: int = 30

    def fingerprint(self) -> str:
        """The rules that decide nodes, edges and attribution; a change makes the next run
        reread every staged day."""
        rules = asdict(self)
        rules["junk_emails"] = sorted(self.junk_emails)
        return json.dumps(rules, sort_keys=True)


def is_junk_email(email: str | None, junk_emails: frozenset[str]) -> bool:
    """Whether a normalized address is a placeholder that many people share."""
    if email is None:
        return True
    if email in junk_emails:
        return True
    local, _, domain = email.partition("@")
    return local in JUNK_LOCAL_PARTS or domain in JUNK_DOMAINS


_REPEATED = re.compile(r"^(\d)\1+$")


def is_junk_phone(e164: str | None) -> bool:
    """Whether an E.164 number is a placeholder: one digit repeated, or a counting run."""
    if e164 is None:
        return True
    national = e164.lstrip("+")[-10:]
    return bool(_REPEATED.match(national)) or national in {"1234567890", "0123456789"}


def email_node(value: str | None, rules: GraphRules) -> str | None:
    """The email node's value: normalized like the payload, None for junk."""
    email = normalize_email(value) if value else None
    return None if is_junk_email(email, rules.junk_emails) else email


def phone_node(value: str | None, country: str | None, rules: GraphRules) -> str | None:
    """The phone node's value: E.164 in the event's country (else the default), None for junk."""
    if not value:
        return None
    region = country_code(country) if country else None
    e164 = phone_e164(value, region or rules.default_region)
    return None if is_junk_phone(e164) else e164
