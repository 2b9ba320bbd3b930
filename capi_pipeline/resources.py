"""The resources every stage shares: the DuckDB file, the pipeline's settings, Pinterest.

Each setting has a safe default and can be set from the environment (see README.md,
"Configuration"). Secrets are read through `EnvVar`, so Dagster never shows their values.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path

from dagster import ConfigurableResource, EnvVar
from dagster_duckdb import DuckDBResource
from pydantic import Field

from capi_pipeline.lib.duck import ensure_schema

DEFAULT_API_BASE_URL = "https://api.pinterest.com"
SCHEMAS = ("raw", "staging", "identity", "capi", "delivery", "monitoring", "marts")


_SCHEMA_READY: set[str] = set()


class WarehouseResource(DuckDBResource):
    """The pipeline's DuckDB file, with its folder created and its schema in place."""

    @contextmanager
    def get_connection(self):
        if self.database != ":memory:":
            # DuckDB names a file's catalog after its stem, and a catalog called like one of
            # our schemas makes every `capi.x` or `raw.x` ambiguous.
            if Path(self.database).stem in SCHEMAS:
                raise ValueError(
                    f"CAPI_DUCKDB_PATH names a file called {Path(self.database).name}: choose "
                    f"a name other than {', '.join(SCHEMAS)} (for example capi_pipeline.duckdb)"
                )
            Path(self.database).parent.mkdir(parents=True, exist_ok=True)
        with super().get_connection() as conn:
            # The schema is checked once per process and file; the delivery stage opens a
            # connection per batch and should not pay for it each time.
            key = str(Path(self.database).resolve()) if self.database != ":memory:" else ""
            if key not in _SCHEMA_READY or not key:
                ensure_schema(conn)
                _SCHEMA_READY.add(key)
            else:
                conn.execute("SET TimeZone = 'UTC'")
            yield conn


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


class PinterestResource(ConfigurableResource):
    """Pinterest's Conversions API for one ad account, or the emulator standing in for it."""

    base_url: str = Field(default=DEFAULT_API_BASE_URL)
    ad_account_id: str
    access_token: str
    test_mode: bool = Field(default=False, description="Send ?test=true: Pinterest records none.")
    dry_run_dir: str | None = Field(
        default=None, description="Write request bodies to this folder instead of sending."
    )
    batch_size: int = Field(default=1000, ge=1, le=1000)
    max_concurrency: int = Field(default=4, ge=1)
    calls_per_minute: int = Field(default=5000, ge=1)
    timeout_seconds: float = Field(default=30.0)
    max_attempts: int = Field(default=5, ge=1)

    @property
    def destination(self) -> str:
        """The ledger's name for where events go; test traffic has its own ledger."""
        suffix = ":test" if self.test_mode else ""
        suffix = ":dry_run" if self.dry_run_dir else suffix
        return f"pinterest:{self.ad_account_id}{suffix}"


def _env(name: str, default: str) -> str:
    return os.environ.get(name) or default


def _env_flag(name: str) -> bool:
    return _env(name, "false").strip().lower() in {"1", "true", "yes", "on"}


def default_resources() -> dict[str, object]:
    """Resources configured from the environment, with defaults for everything but secrets."""
    return {
        "duckdb": WarehouseResource(database=_env("CAPI_DUCKDB_PATH", "data/capi_pipeline.duckdb")),
        "settings": PipelineSettings(
            landing_dir=_env("CAPI_LANDING_DIR", "data/landing"),
            default_region=_env("CAPI_DEFAULT_REGION", "US"),
        ),
        "pinterest": PinterestResource(
            base_url=_env("PINTEREST_API_BASE_URL", DEFAULT_API_BASE_URL),
            ad_account_id=EnvVar("PINTEREST_AD_ACCOUNT_ID"),
            access_token=EnvVar("PINTEREST_ACCESS_TOKEN"),
            test_mode=_env_flag("PINTEREST_TEST_MODE"),
            dry_run_dir=os.environ.get("CAPI_DRY_RUN_DIR") or None,
        ),
    }
