# Two commands for a new user: `make demo` shows the product working, `make test` tests it.
# Only Python 3.11 and make are needed. When uv is not on PATH it is installed with pip into
# .tools/, a virtual environment of its own, because system Pythons often refuse pip installs.

PYTHON ?= python3
UV ?= $(shell command -v uv 2>/dev/null || echo .tools/bin/uv)

.PHONY: install demo test lint dev clean screenshots

$(UV):
	$(PYTHON) -m venv .tools
	.tools/bin/pip install --quiet uv

install: $(UV)
	$(UV) sync --frozen --python 3.11

demo: install
	$(UV) run --frozen python -m capi_pipeline.demo.run

# The two tests that drive the real Dagster CLI, daemon and webserver end to end (a 14-day
# backfill, the demo) mostly wait on the processes they start; they run beside the rest of the
# suite, so both cores are used. Their output follows the suite's; either failing fails `make test`.
CLI_TESTS = capi_pipeline_tests/test_backfill.py capi_pipeline_tests/test_demo.py

test: install
	@mkdir -p .test-logs
	@$(UV) run --frozen pytest -q -p no:cacheprovider $(CLI_TESTS) > .test-logs/cli-tests.log 2>&1 & \
	cli=$$!; \
	$(UV) run --frozen pytest -q $(addprefix --ignore=,$(CLI_TESTS)); suite=$$?; \
	wait $$cli; cli_status=$$?; \
	echo "--- end-to-end CLI tests ($(CLI_TESTS)):"; cat .test-logs/cli-tests.log; \
	test $$suite -eq 0 && test $$cli_status -eq 0

lint: install
	$(UV) run --frozen ruff check capi_pipeline capi_pipeline_tests

dev: install
	mkdir -p data/demo/dagster_home
	test -f data/demo/dagster_home/dagster.yaml || cp deploy/dagster.yaml data/demo/dagster_home/
	DAGSTER_HOME=$(CURDIR)/data/demo/dagster_home CAPI_DUCKDB_PATH=data/demo/warehouse.duckdb \
		CAPI_LANDING_DIR=$${CAPI_LANDING_DIR:-data/demo/landing} \
		$(UV) run --frozen dagster dev -w workspace.yaml

# Photographs of the Dagster UI and the report over the demo's files, into docs/screenshots/
# (needs `make demo` first and /usr/bin/chromium: apt-get install -y chromium).
screenshots: install
	$(UV) run --frozen python -m capi_pipeline screenshots

clean:
	rm -rf data/demo capi_pipeline/dbt_project/target capi_pipeline/dbt_project/logs

.PHONY: bench-ingest
bench-ingest: install
	$(UV) run --frozen python benchmarks/ingest_benchmark.py --events 1000000 --runs 3
