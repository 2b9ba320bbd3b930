# Two commands for a new user: `make demo` shows the product working, `make test` tests it.
# Only Python 3.11 and make are needed; uv is installed with pip when it is missing.

UV := $(shell command -v uv 2>/dev/null)
ifeq ($(UV),)
UV := $(shell python3 -m pip install --quiet uv >/dev/null 2>&1; python3 -c 'import shutil,sys,os; p=shutil.which("uv") or os.path.join(os.path.dirname(sys.executable),"uv"); print(p)')
endif

.PHONY: install demo test lint dev clean

install:
	$(UV) sync --frozen --python 3.11

demo: install
	$(UV) run --frozen python -m capi_pipeline.demo.run

test: install
	$(UV) run --frozen pytest -q

lint: install
	$(UV) run --frozen ruff check capi_pipeline capi_pipeline_tests

dev: install
	DAGSTER_HOME=$${DAGSTER_HOME:-$(CURDIR)/data/dagster_home} sh -c 'mkdir -p "$$DAGSTER_HOME" && $(UV) run --frozen dagster dev -w workspace.yaml'

clean:
	rm -rf data/demo capi_pipeline/dbt_project/target capi_pipeline/dbt_project/logs
