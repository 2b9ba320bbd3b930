"""Shared fixtures: the pipeline's real assets on a temporary DuckDB file, and the emulator."""

from __future__ import annotations

from pathlib import Path

import pytest
from dagster import AssetSelection, materialize

from capi_pipeline import definitions
from capi_pipeline.lib.duck import connect_read_only
from capi_pipeline.pinterest.emulator import EmulatorProcess
from capi_pipeline.resources import PinterestResource, PipelineSettings, WarehouseResource

TOKEN = "test-token-7f3a9c"
AD_ACCOUNT = "549755813599"


class Pipeline:
    """The real assets over one DuckDB file and landing folder, sending to an emulator."""

    def __init__(self, folder: Path, base_url: str, **settings) -> None:
        self.database = folder / "warehouse.duckdb"
        self.landing = folder / "landing"
        self.landing.mkdir(parents=True, exist_ok=True)
        self.base_url = base_url
        self.settings = settings

    def resources(self, **pinterest) -> dict[str, object]:
        return {
            "duckdb": WarehouseResource(database=str(self.database)),
            "settings": PipelineSettings(landing_dir=str(self.landing), **self.settings),
            "pinterest": PinterestResource(**{
                "base_url": self.base_url, "ad_account_id": AD_ACCOUNT, "access_token": TOKEN,
                **pinterest,
            }),
            "dbt": definitions.defs.resources["dbt"],
            "monitoring": definitions.defs.resources["monitoring"],
        }

    def run(self, partition: str, selection=None, marts: bool = False, **pinterest):
        """Materialize a selection for one partition: every asset but the dbt marts by default.

        The marts cost a dbt start-up (about ten seconds) and have tests of their own.
        """
        if selection is None:
            selection = AssetSelection.all()
            if not marts:
                selection = selection - AssetSelection.groups("marts")
        return materialize(
            list(definitions.defs.assets),
            partition_key=partition,
            resources=self.resources(**pinterest),
            selection=selection,
            raise_on_error=False,
        )

    def query(self, sql: str, *params) -> list[tuple]:
        with connect_read_only(str(self.database)) as conn:
            return conn.execute(sql, list(params)).fetchall()

    def scalar(self, sql: str, *params):
        return self.query(sql, *params)[0][0]


def cli_environment(folder: Path, dagster_home: Path, base_url: str) -> dict[str, str]:
    """The environment of a Dagster CLI, daemon or webserver process run by a test: the
    pipeline's files under `folder`, the instance in `dagster_home`, sending to `base_url`."""
    import os

    return {
        **os.environ,
        "DAGSTER_HOME": str(dagster_home),
        "CAPI_DUCKDB_PATH": str(folder / "warehouse.duckdb"),
        "CAPI_LANDING_DIR": str(folder / "landing"),
        "PINTEREST_API_BASE_URL": base_url,
        "PINTEREST_AD_ACCOUNT_ID": AD_ACCOUNT,
        "PINTEREST_ACCESS_TOKEN": TOKEN,
    }


@pytest.fixture(scope="session")
def emulator():
    """One Pinterest emulator process on a free loopback port for the whole session.

    Every body it accepts, across all the tests that share it, is checked against Pinterest's
    schema (../shared/tools/capi_schema.py) before each reset and at the end of the session.
    """
    from capi_pipeline_tests.schema_check import BodyChecker

    with EmulatorProcess(token=TOKEN, ad_account_ids=(AD_ACCOUNT,)) as process:
        checker = BodyChecker()
        reset = process.reset

        def checked_reset() -> None:
            checker.check(process.bodies())
            reset()

        process.reset = checked_reset
        yield process
        checker.check(process.bodies())
        assert not checker.problems, checker.report()


@pytest.fixture
def pipeline(tmp_path, emulator) -> Pipeline:
    emulator.reset()
    return Pipeline(tmp_path, emulator.base_url)
