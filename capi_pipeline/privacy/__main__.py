"""python -m capi_pipeline.privacy erase --email ADDRESS [--phone NUMBER] [--customer-id ID]

Removes one person from the warehouse and suppresses their future sends (see erase.py). It
uses the pipeline's configuration (CAPI_DUCKDB_PATH, CAPI_PERSONAL_DUCKDB_PATH,
CAPI_DEFAULT_REGION) and prints what it removed per table, never the values it was given.
"""

from __future__ import annotations

import argparse
import os
import sys

from capi_pipeline.privacy.erase import ErasureRequestError, erase_person


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m capi_pipeline.privacy",
                                     description=__doc__.splitlines()[2])
    commands = parser.add_subparsers(dest="command", required=True)
    erase = commands.add_parser("erase", help="remove one person and suppress future sends")
    erase.add_argument("--email")
    erase.add_argument("--phone")
    erase.add_argument("--customer-id")
    args = parser.parse_args(argv)

    from capi_pipeline.resources import default_resources

    warehouse = default_resources()["duckdb"]
    region = os.environ.get("CAPI_DEFAULT_REGION") or "US"
    try:
        with warehouse.get_connection() as conn:
            removed = erase_person(conn, email=args.email, phone=args.phone,
                                   customer_id=args.customer_id, default_region=region)
    except ErasureRequestError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if not removed:
        print("nobody in the warehouse carries that identifier; future sends are suppressed")
        return 0
    print("removed, and future sends suppressed:")
    for table, count in sorted(removed.items()):
        print(f"  {table}: {count}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
