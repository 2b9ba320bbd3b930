"""Op tags shared by assets: who holds the DuckDB files, and who only waits on the network.

DuckDB lets one process write a file at a time. Every step that writes for long carries WRITER,
which puts it in the Dagster concurrency pool `capi_duckdb`: with the pool's limit at 1 (the
instance's dagster.yaml, see deploy/dagster.yaml) one such step runs at a time across all
runs, and the executor in definitions.py also runs one at a time within a run. Delivery carries
NETWORK instead: it spends its time waiting on Pinterest and opens the files only for a moment
at its start and end, when WarehouseResource waits for any writer holding them.
"""

WRITER_TAG_KEY = "capi/duckdb"
POOL = "capi_duckdb"
WRITER = {WRITER_TAG_KEY: "writer", "dagster/concurrency_key": POOL}
NETWORK = {WRITER_TAG_KEY: "network"}
