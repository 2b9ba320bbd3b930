"""What decides the event Pinterest receives: the event mapping and the payload settings.

Everything here speaks Pinterest's field names (`em`, `ph`, `click_id`, ...). The settings
come from `PipelineSettings`; :class:`PayloadConfig` checks them once, so a mistyped event
name or policy fails the run with a clear message instead of a batch refused by Pinterest.
The payload itself is assembled in DuckDB by :mod:`capi_pipeline.enrich.build`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import pycountry

from capi_pipeline.enrich.normalize import HASHED_FIELDS, country_code

# Pinterest's standard event names (capi.md 2.2, the spec's nine plus the later additions).
PINTEREST_EVENT_NAMES: frozenset[str] = frozenset({
    "add_to_cart", "checkout", "custom", "lead", "page_visit", "search", "signup",
    "view_category", "watch_video", "add_payment_info", "add_to_wishlist", "initiate_checkout",
    "subscribe", "view_content", "app_install", "app_open", "contact", "customize_product",
    "find_location", "schedule", "start_trial", "submit_application",
})

# Source event names as they land (Shopify Web Pixels names, Segment's e-commerce spec and
# page/screen calls, Shopify order webhook topics) to Pinterest's. Names not listed (cart
# views, checkout steps, identify calls...) are never sent under any name. Shopify fires
# page_viewed and product_viewed on a product page, so both reach Pinterest as page_visit
# with their own event ids; `event_map` can stop one of them.
DEFAULT_EVENT_MAP: dict[str, str] = {
    # Shopify Web Pixels
    "page_viewed": "page_visit",
    "product_viewed": "page_visit",
    "collection_viewed": "view_category",
    "search_submitted": "search",
    "product_added_to_cart": "add_to_cart",
    "checkout_completed": "checkout",
    # Segment e-commerce spec and standard calls
    "page": "page_visit",
    "screen": "page_visit",
    "Product Viewed": "page_visit",
    "Product List Viewed": "view_category",
    "Category Viewed": "view_category",
    "Products Searched": "search",
    "Product Added": "add_to_cart",
    "Order Completed": "checkout",
    "Signed Up": "signup",
    "Lead Generated": "lead",
    "Video Playback Started": "watch_video",
    # Shopify order webhooks: one order's pixel and webhook reports become one checkout.
    "orders/create": "checkout",
    "orders/paid": "checkout",
}

CONSENT_POLICIES = ("skip", "opt_out")
VALUE_SOURCES = ("merchandise", "items")
_PARTNER_NAME = re.compile(r"ss-[a-z0-9][a-z0-9_.-]{0,98}")
_REGION = re.compile(r"([A-Z]{2})(?:-([A-Z0-9]{1,3}))?")

CURRENCIES: tuple[str, ...] = tuple(sorted(currency.alpha_3 for currency in pycountry.currencies))
"""ISO 4217 codes from pycountry; any other currency text is left out of custom_data."""


class PayloadConfigError(ValueError):
    """A payload setting that would make Pinterest refuse events, or send the wrong ones."""


@dataclass(frozen=True)
class PayloadConfig:
    """The checked settings that decide eligibility, mapping and how values are read."""

    now: datetime
    default_region: str = "US"
    max_event_age: timedelta = timedelta(days=7)
    max_future_skew: timedelta = timedelta(minutes=10)
    attribution_window: timedelta = timedelta(days=30)
    event_map: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_EVENT_MAP))
    consent_policy: str = "skip"
    ldp_regions: tuple[str, ...] = ("US-CA", "US-CO", "US-CT", "US-UT", "US-VA")
    partner_name: str | None = None
    value_source: str = "merchandise"
    hashed_on_arrival: frozenset[str] = frozenset()
    junk_emails: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        unknown = sorted({name for name in self.event_map.values()} - PINTEREST_EVENT_NAMES)
        if unknown:
            raise PayloadConfigError(
                f"event_map sends {', '.join(unknown)}, which Pinterest does not know; use one "
                f"of {', '.join(sorted(PINTEREST_EVENT_NAMES))} (or 'custom')"
            )
        if self.consent_policy not in CONSENT_POLICIES:
            raise PayloadConfigError(
                f"consent_policy must be one of {', '.join(CONSENT_POLICIES)}")
        if self.value_source not in VALUE_SOURCES:
            raise PayloadConfigError(f"value_source must be one of {', '.join(VALUE_SOURCES)}")
        if self.partner_name is not None and not _PARTNER_NAME.fullmatch(self.partner_name):
            raise PayloadConfigError(
                "partner_name must be Pinterest's form ss-<name>, lower case (e.g. ss-shopify)")
        bad = sorted(set(self.hashed_on_arrival) - set(HASHED_FIELDS))
        if bad:
            raise PayloadConfigError(
                f"hashed_on_arrival names {', '.join(bad)}; hashed fields are "
                f"{', '.join(HASHED_FIELDS)}")
        for region in self.ldp_regions:
            match = _REGION.fullmatch(region)
            if not match or country_code(match.group(1)) is None:
                raise PayloadConfigError(
                    "ldp_regions holds entries that are neither an ISO country (US) nor an "
                    "ISO subdivision (US-CA)")
        if country_code(self.default_region) is None:
            raise PayloadConfigError("default_region is not a country ISO 3166 knows")

    @classmethod
    def from_settings(cls, settings, now: datetime) -> PayloadConfig:
        """The config of a run from `PipelineSettings`: defaults, then the overrides."""
        event_map = dict(DEFAULT_EVENT_MAP)
        event_map.update(settings.event_map)
        event_map = {source: name for source, name in event_map.items() if name}
        if settings.send_events:
            unknown = sorted(set(settings.send_events) - PINTEREST_EVENT_NAMES)
            if unknown:
                raise PayloadConfigError(
                    f"send_events names {', '.join(unknown)}, which Pinterest does not know")
            event_map = {source: name for source, name in event_map.items()
                         if name in settings.send_events}
        return cls(
            now=now,
            default_region=settings.default_region,
            max_event_age=timedelta(days=settings.max_event_age_days),
            max_future_skew=timedelta(seconds=settings.max_future_skew_seconds),
            attribution_window=timedelta(days=settings.attribution_window_days),
            event_map=event_map,
            consent_policy=settings.consent_policy,
            ldp_regions=tuple(region.strip().upper() for region in settings.ldp_regions),
            partner_name=settings.partner_name or None,
            value_source=settings.value_source,
            hashed_on_arrival=frozenset(settings.hashed_on_arrival),
            junk_emails=frozenset(email.strip().lower() for email in settings.junk_emails),
        )
