"""Marts: the dbt models analysts query, built over the pipeline's tables."""


import os
from pathlib import Path

from dagster import AssetExecutionContext
from dagster_dbt import DbtCliResource, DbtProject, dbt_assets

from capi_pipeline.lib.tags import WRITER
from capi_pipeline.resources import WarehouseResource

PACKAGE_DIR = Path(__file__).resolve().parents[1]
dbt_project = DbtProject(
    project_dir=PACKAGE_DIR / "dbt_project",
    profiles_dir=PACKAGE_DIR.parent / "dbt_profiles",
)
# `dagster dev` re-parses on start; the CLI and tests need a manifest too, so one is made on
# first load when none exists (about five seconds, once).
dbt_project.prepare_if_dev()
if not dbt_project.manifest_path.exists():
    dbt_project.preparer.prepare(dbt_project)


@dbt_assets(manifest=dbt_project.manifest_path, op_tags=WRITER)
def dbt_marts(context: AssetExecutionContext, dbt: DbtCliResource, duckdb: WarehouseResource):
    """Build and test the dbt models (marts.match_rate_daily, ...) on the pipeline's file."""
    # dbt runs inside its project folder, where a relative path would name another file.
    os.environ["CAPI_DUCKDB_PATH"] = str(Path(duckdb.database).resolve())
    yield from dbt.cli(["build"], context=context).stream()
