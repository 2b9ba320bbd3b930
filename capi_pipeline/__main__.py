"""`python -m capi_pipeline COMMAND`: the commands a person runs by hand.

    report --date YYYY-MM-DD    the day's delivery and match rate, and an HTML page
    screenshots                 the Dagster UI and the report, photographed into docs/
"""

import sys


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    commands = ("report", "screenshots")
    if not argv or argv[0] not in commands:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    if argv[0] == "report":
        from capi_pipeline.report import main as report
        return report(argv[1:])
    from capi_pipeline.screenshots import main as screenshots
    return screenshots(argv[1:])


if __name__ == "__main__":
    sys.exit(main())
