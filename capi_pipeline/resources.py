"""The resources every stage shares: the DuckDB file, the pipeline's settings, Pinterest.

Each setting has a safe default and can be set from the environment (see README.md,
"Configuration"). Secrets are read through `EnvVar`, so Dagster never shows their values.
"""

from __future__ import annotations

import os
import re
import time
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from urllib.parse import urlsplit

import duckdb
from dagster import ConfigurableResource, EnvVar, Failure
from dagster_duckdb import DuckDBResource
from pydantic import Field

from capi_pipeline.delivery.destinations import (
    CATCH_ALL,
    Destination,
    DestinationsError,
    load_destinations,
)
from capi_pipeline.lib.duck import attach_personal, ensure_schema, personal_path

DEFAULT_API_BASE_URL = "https://api.pinterest.com"
SCHEMAS = ("raw", "staging", "identity", "capi", "delivery", "monitoring", "marts")


_SCHEMA_READY: set[str] = set()


class WarehouseBusy(Failure):
    """The DuckDB file stayed locked by another process for longer than the run would wait."""


class WarehouseResource(DuckDBResource):
    """The pipeline's two DuckDB files, folders created and schema in place.

    `database` is the warehouse file analysts are given (hashes, ledger, aggregates);
    `personal_database` holds raw events, staging and identity, and is attached to every
    connection as `personal` (see lib/duck.py). A file held by another process (an analyst's
    session, another run's writer) is waited for up to `lock_wait_seconds`, then the step fails
    with a message that says so, and Dagster's retry policy may run it again.
    """

    personal_database: str | None = Field(
        default=None,
        description="The personal-data DuckDB file; by default <warehouse>.personal.duckdb "
        "beside the warehouse file.",
    )
    encryption_key: str | None = Field(
        default=None,
        description="Key to encrypt the personal-data file with (needs DuckDB's httpfs).",
    )
    lock_wait_seconds: float = Field(
        default=120.0, ge=0, description="How long to wait for a file another process holds."
    )

    @property
    def personal_path(self) -> str:
        return self.personal_database or personal_path(self.database)

    @contextmanager
    def get_connection(self):
        if self.database != ":memory:":
            for path in (self.database, self.personal_path):
                # DuckDB names a file's catalog after its stem, and a catalog called like one
                # of our schemas makes every `capi.x` or `raw.x` ambiguous.
                if Path(path).stem in SCHEMAS:
                    raise ValueError(
                        f"the DuckDB file {Path(path).name} is named like a schema: choose a "
                        f"name other than {', '.join(SCHEMAS)} (for example "
                        "capi_pipeline.duckdb)"
                    )
            Path(self.database).parent.mkdir(parents=True, exist_ok=True)
        conn = self._connect()
        try:
            # The schema is checked once per process and file; the delivery stage opens
            # connections often and should not pay for it each time.
            key = str(Path(self.database).resolve()) if self.database != ":memory:" else ""
            if key not in _SCHEMA_READY or not key:
                ensure_schema(conn)
                _SCHEMA_READY.add(key)
            else:
                conn.execute("SET TimeZone = 'UTC'")
            yield conn
        finally:
            conn.close()

    def _connect(self) -> duckdb.DuckDBPyConnection:
        config = {"custom_user_agent": "capi_pipeline", **self.connection_config}
        deadline = time.monotonic() + self.lock_wait_seconds
        delay = 0.05
        while True:
            try:
                conn = duckdb.connect(self.database, read_only=False, config=config)
                try:
                    attach_personal(conn, self.personal_path, encryption_key=self.encryption_key)
                except BaseException:
                    conn.close()
                    raise
                return conn
            except duckdb.IOException as error:
                if "lock" not in str(error).lower():
                    raise
                if time.monotonic() + delay > deadline:
                    raise WarehouseBusy(
                        description=_busy_message(error, self.lock_wait_seconds),
                        allow_retries=True,
                    ) from None
                time.sleep(delay)
                delay = min(delay * 2, 5.0)


def _busy_message(error: duckdb.IOException, waited: float) -> str:
    text = str(error)
    holder = re.search(r"held in (.+?) \(PID (\d+)\)", text)
    who = f"{Path(holder.group(1)).name} (PID {holder.group(2)})" if holder else "another process"
    file = re.search(r'on file "([^"]+)"', text)
    name = Path(file.group(1)).name if file else "the warehouse file"
    return (
        f"DuckDB file {name} is held by {who}, and DuckDB lets one process open a file for "
        f"writing: waited {waited:.0f} s. If it is an analyst's session, have it closed (and "
        "have analysts work on a copy: README, 'For analysts'); if it is another run, let it "
        "finish. Then re-run or let the retry policy run this step again."
    )


class PipelineSettings(ConfigurableResource):
    """Where events land and the rules that decide what reaches Pinterest."""

    landing_dir: str = Field(description="Folder of NDJSON (.ndjson, .jsonl, optionally .gz).")
    default_region: str = Field(
        default="US", description="ISO country used for phone numbers that carry no country."
    )
    max_event_age_days: int = Field(
        default=7, description="Events older than this when processed are skipped as too_old."
    )
    max_future_skew_seconds: int = Field(
        default=600, description="Client clocks further ahead of the server than this are wrong."
    )
    attribution_window_days: int = Field(
        default=30, description="How long a Pinterest click id is carried to later conversions."
    )
    hub_max_clients: int = Field(
        default=25,
        description="An email, phone or customer id seen with more client ids stops joining.",
    )
    hub_max_people_per_client: int = Field(
        default=4,
        description="A client id seen with more emails, phones or customer ids stops joining.",
    )
    junk_emails: list[str] = Field(
        default_factory=list, description="Addresses that never join visitors (support inboxes)."
    )
    retention_days: int = Field(
        default=180, ge=0,
        description="Raw and staging rows older than this many days are purged; 0 keeps all.",
    )
    max_visitor_identifiers: int = Field(
        default=200,
        description="A merge that would give one visitor more identifiers than this is refused.",
    )
    event_map: dict[str, str] = Field(
        default_factory=dict,
        description="Source event name -> Pinterest event name, over the defaults for Shopify "
        "Web Pixels, Segment e-commerce and order webhooks; an empty name stops an event.",
    )
    send_events: list[str] = Field(
        default_factory=list,
        description="The Pinterest events to send (e.g. checkout, add_to_cart); empty: all "
        "that the mapping produces.",
    )
    consent_policy: str = Field(
        default="skip",
        description="When a visitor refused marketing: 'skip' (not sent, reason no_consent) "
        "or 'opt_out' (sent with opt_out: true).",
    )
    ldp_regions: list[str] = Field(
        default_factory=lambda: ["US-CA", "US-CO", "US-CT", "US-UT", "US-VA"],
        description="Countries (US) or states (US-CA) whose residents who refused the sale of "
        "their data are sent with opt_out_type LDP.",
    )
    partner_name: str | None = Field(
        default=None, description="Sent as partner_name when set (Pinterest's ss-<name> form)."
    )
    value_source: str = Field(
        default="merchandise",
        description="custom_data.value: 'merchandise' (items after discounts, before shipping "
        "and tax, as the source reports it) or 'items' (sum of item price x quantity).",
    )
    hashed_on_arrival: list[str] = Field(
        default_factory=list,
        description="user_data fields (em, ph...) the sources send already hashed; a value "
        "that is not a SHA-256 is then dropped with a warning.",
    )


class PinterestResource(ConfigurableResource):
    """Pinterest's Conversions API: one ad account, or one per store from a destinations file.

    The emulator stands in for Pinterest through `base_url`; nothing else changes.
    """

    base_url: str = Field(default=DEFAULT_API_BASE_URL)
    ad_account_id: str | None = Field(default=None, description="Digits; unused with a file.")
    access_token: str | None = Field(default=None, description="Conversion access token.")
    destinations_file: str | None = Field(
        default=None, description="TOML file routing stores to ad accounts (see README)."
    )
    destination_name: str | None = Field(
        default=None,
        description="The ledger's name for the single destination; by default pinterest:<id> "
        "at Pinterest and <host>:<id> anywhere else, so an emulator's ledger is its own.",
    )
    test_mode: bool = Field(default=False, description="Send ?test=true: Pinterest records none.")
    dry_run_dir: str | None = Field(
        default=None, description="Write request bodies to this folder instead of sending."
    )
    resend: bool = Field(
        default=False, description="Send events again even when they already have an outcome."
    )
    batch_size: int = Field(default=1000, ge=1, le=1000)
    max_concurrency: int = Field(default=8, ge=1)
    calls_per_minute: int = Field(default=5000, ge=1)
    timeout_seconds: float = Field(default=30.0)
    max_attempts: int = Field(default=5, ge=1)
    page_size: int = Field(
        default=20_000, ge=1, description="Events read from DuckDB at a time while sending."
    )

    def destinations(self) -> list[Destination]:
        """Every destination events may go to, each with its ledger name."""
        if self.destinations_file:
            found = load_destinations(Path(self.destinations_file), self.base_url, self.test_mode)
        else:
            if not self.ad_account_id or not self.ad_account_id.isdigit():
                raise DestinationsError(
                    "set PINTEREST_AD_ACCOUNT_ID to the ad account's id (digits only), or "
                    "CAPI_DESTINATIONS_FILE, to send events"
                )
            # The host without its port: an emulator restarted on another port is still the
            # same stand-in, and its ledger must not start again from nothing.
            host = urlsplit(self.base_url).hostname or self.base_url
            default_name = ("pinterest" if host == urlsplit(DEFAULT_API_BASE_URL).hostname
                            else host)
            found = [Destination(
                name=self.destination_name or f"{default_name}:{self.ad_account_id}",
                base_url=self.base_url,
                ad_account_id=self.ad_account_id, token_env="PINTEREST_ACCESS_TOKEN",
                stores=(CATCH_ALL,), test_mode=self.test_mode, access_token=self.access_token,
            )]
        if self.dry_run_dir:
            found = [replace(d, name=f"{d.name}:dry_run", test_mode=False) for d in found]
        return found


def _env(name: str, default: str) -> str:
    return os.environ.get(name) or default


def _env_flag(name: str) -> bool:
    return _env(name, "false").strip().lower() in {"1", "true", "yes", "on"}


def default_resources() -> dict[str, object]:
    """Resources configured from the environment, with defaults for everything but secrets."""
    return {
        "duckdb": _warehouse_from_environment(),
        "settings": PipelineSettings(
            landing_dir=_env("CAPI_LANDING_DIR", "data/landing"),
            default_region=_env("CAPI_DEFAULT_REGION", "US"),
            retention_days=int(_env("CAPI_RETENTION_DAYS", "180")),
            max_event_age_days=int(_env("CAPI_MAX_EVENT_AGE_DAYS", "7")),
            consent_policy=_env("CAPI_CONSENT_POLICY", "skip"),
            partner_name=os.environ.get("CAPI_PARTNER_NAME") or None,
        ),
        "pinterest": _pinterest_from_environment(),
    }


def _warehouse_from_environment() -> WarehouseResource:
    # The key is read through EnvVar only when set, so Dagster shows its name, never its value.
    key = {"encryption_key": EnvVar("CAPI_PERSONAL_ENCRYPTION_KEY")} if os.environ.get(
        "CAPI_PERSONAL_ENCRYPTION_KEY") else {}
    return WarehouseResource(
        database=_env("CAPI_DUCKDB_PATH", "data/capi_pipeline.duckdb"),
        personal_database=os.environ.get("CAPI_PERSONAL_DUCKDB_PATH") or None,
        lock_wait_seconds=float(_env("CAPI_DUCKDB_LOCK_WAIT_SECONDS", "120")),
        **key,
    )


def _pinterest_from_environment() -> PinterestResource:
    destinations_file = os.environ.get("CAPI_DESTINATIONS_FILE") or None
    # With a destinations file each destination names its own token variable; without one,
    # the single ad account and token are required, and Dagster says so when they are unset.
    single = {} if destinations_file else {
        "ad_account_id": EnvVar("PINTEREST_AD_ACCOUNT_ID"),
        "access_token": EnvVar("PINTEREST_ACCESS_TOKEN"),
    }
    return PinterestResource(
        base_url=_env("PINTEREST_API_BASE_URL", DEFAULT_API_BASE_URL),
        destinations_file=destinations_file,
        test_mode=_env_flag("PINTEREST_TEST_MODE"),
        dry_run_dir=os.environ.get("CAPI_DRY_RUN_DIR") or None,
        resend=_env_flag("CAPI_RESEND"),
        destination_name=os.environ.get("CAPI_DESTINATION_NAME") or None,
        batch_size=int(_env("PINTEREST_BATCH_SIZE", "1000")),
        max_concurrency=int(_env("PINTEREST_MAX_CONCURRENCY", "8")),
        calls_per_minute=int(_env("PINTEREST_CALLS_PER_MINUTE", "5000")),
        **single,
    )
