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


def _manifest_is_stale() -> bool:
    """Whether the manifest is missing or older than a model, macro or the project file."""
    if not dbt_project.manifest_path.exists():
        return True
    built = dbt_project.manifest_path.stat().st_mtime
    sources = [path for folder in ("models", "macros")
               for path in (dbt_project.project_dir / folder).rglob("*")]
    sources.append(dbt_project.project_dir / "dbt_project.yml")
    return any(path.stat().st_mtime > built for path in sources if path.is_file())


# `dagster dev` re-parses on start; the CLI and tests need a manifest too, so one is made on
# load when none exists or a model changed since (about five seconds each time).
dbt_project.prepare_if_dev()
if _manifest_is_stale():
    dbt_project.preparer.prepare(dbt_project)


@dbt_assets(manifest=dbt_project.manifest_path, op_tags=WRITER)
def dbt_marts(context: AssetExecutionContext, dbt: DbtCliResource, duckdb: WarehouseResource):
    """Build and test the dbt models (marts.match_rate_daily, ...) on the pipeline's file."""
    # dbt runs inside its project folder, where a relative path would name another file.
    os.environ["CAPI_DUCKDB_PATH"] = str(Path(duckdb.database).resolve())
    yield from dbt.cli(["build"], context=context).stream()
