"""``quantadv report STORE.db --out DIR``: turn a results store into an HTML report.

Writes ``DIR/index.html`` (self-contained: plots embedded as PNG, tables, the config, the
machines and the code version), every plot as a PNG and an SVG file, and the tables as CSV
(``runs.csv``, ``best_effort.csv``, ``results.csv``). The store is opened read-only.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "report",
        help="write an HTML report (plots, tables, CSV) from a results store",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("store", help="results store written by 'quantadv run', e.g. results/demo.db")
    p.add_argument("--out", help="output directory (default: report/<store name>)")
    p.add_argument("--images", type=int, default=8, metavar="N",
                   help="images per image grid (default 8)")
    return p


def run(args: argparse.Namespace) -> int:
    from ..errors import InputError
    from ..experiments import write_report

    if args.images < 1:
        raise InputError(f"--images must be >= 1, got {args.images}")
    store = Path(args.store)
    out = Path(args.out) if args.out else Path("report") / store.stem
    index = write_report(store, out, max_images=args.images)
    print(f"report: {index}")
    return 0
