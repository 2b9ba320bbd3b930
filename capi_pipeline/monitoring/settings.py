"""What the monitoring stage judges by: the floors of its checks and Pinterest's read token.

Each field can be set from the environment (README.md, "Configuration") or in run config; the
Dagster UI's resource page shows the values in force.
"""

import os

from dagster import ConfigurableResource, EnvVar
from pydantic import Field

DEFAULT_MATCH_SCORE_FLOOR = 60.0
DEFAULT_PROCESSED_FLOOR = 0.95


class MonitoringSettings(ConfigurableResource):
    """Floors of the monitoring checks, and the token for Pinterest's event quality score."""

    match_score_floor: float = Field(
        default=DEFAULT_MATCH_SCORE_FLOOR, ge=0, le=100,
        description="A day whose match score (0-100) is below this gets a warning.",
    )
    processed_share_floor: float = Field(
        default=DEFAULT_PROCESSED_FLOOR, ge=0, le=1,
        description="A day where Pinterest processed less than this share of the events sent "
        "fails its check.",
    )
    eqs_access_token: str | None = Field(
        default=None,
        description="An OAuth token with ads:read for GET conversion_eqs; unset: not read.",
    )
    eqs_lookback_period: str = Field(
        default="1d", pattern="^(1d|14d)$",
        description="Pinterest's lookback window for the event quality score: 1d or 14d.",
    )


def monitoring_from_environment() -> MonitoringSettings:
    """The settings from CAPI_MATCH_SCORE_FLOOR, CAPI_PROCESSED_FLOOR, PINTEREST_EQS_TOKEN."""
    token = {"eqs_access_token": EnvVar("PINTEREST_EQS_TOKEN")} if os.environ.get(
        "PINTEREST_EQS_TOKEN") else {}
    return MonitoringSettings(
        match_score_floor=float(os.environ.get("CAPI_MATCH_SCORE_FLOOR")
                                or DEFAULT_MATCH_SCORE_FLOOR),
        processed_share_floor=float(os.environ.get("CAPI_PROCESSED_FLOOR")
                                    or DEFAULT_PROCESSED_FLOOR),
        eqs_lookback_period=os.environ.get("PINTEREST_EQS_LOOKBACK") or "1d",
        **token,
    )
