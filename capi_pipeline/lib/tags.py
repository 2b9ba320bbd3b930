"""Op tags shared by assets.

DuckDB lets one process write a file at a time. Every asset that writes carries WRITER, and the
executor in definitions.py runs at most one step with that tag at once.
"""

WRITER_TAG_KEY = "capi/duckdb"
WRITER = {WRITER_TAG_KEY: "writer"}
