"""Command line: ``python -m bench SUITE [--quick] [--json PATH]``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from bench.calibration import describe as describe_calibration
from bench.calibration import measure as measure_calibration
from bench.harness import format_table, report, suites, write_json


def main(argv: list[str] | None = None) -> int:
    available = suites()
    parser = argparse.ArgumentParser(prog="python -m bench", description="VAP benchmarks")
    parser.add_argument("suite", choices=sorted(available), help="which suite to run")
    parser.add_argument(
        "--quick", action="store_true", help="short run (about a minute; e2e, churn and soak 2-4 minutes)"
    )
    parser.add_argument("--json", type=Path, metavar="PATH", help="write the results as JSON to PATH")
    parser.add_argument(
        "--minutes", type=float, metavar="M", help="soak: minutes at steady load (default 60; --quick 1.5)"
    )
    parser.add_argument(
        "--lines",
        type=Path,
        metavar="FILE",
        help='accuracy: score these lines instead of the defaults ({"lines": [{"id": "L1", "points": '
        "[[x1, y1], [x2, y2]]}]}, normalized coordinates)",
    )
    parser.add_argument(
        "--no-calibration",
        action="store_true",
        help="e2e, inference: skip measuring the machine's speed against DESIGN.md's planning figures first",
    )
    args = parser.parse_args(argv)

    suite = available[args.suite]
    if suite.configure is not None:
        suite.configure(args)
    print(f"suite {suite.name}: {suite.description}{' (quick)' if args.quick else ''}", flush=True)
    calibration = None
    if suite.calibrate and not args.no_calibration:
        calibration = measure_calibration()
        print(describe_calibration(calibration), flush=True)
    rows = suite.run(args.quick)
    print(format_table(rows, suite.columns))
    for line in suite.summarize(rows):
        print(line)
    if calibration is not None:
        print(describe_calibration(calibration))
    if args.json:
        write_json(args.json, report(suite.name, rows, calibration))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
