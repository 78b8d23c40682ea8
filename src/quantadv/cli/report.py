"""``quantadv report STORE.db --out DIR``: turn a results store into an HTML report.

Writes ``DIR/index.html`` (self-contained: plots embedded as PNG, tables, the config, the
machines and the code version), every plot as a PNG and an SVG file, and the tables as CSV
(``runs.csv``, ``best_effort.csv``, ``results.csv``, ``robust.csv``, ``paired.csv``). The store is
opened read-only.

``--markdown`` prints the tables as Markdown instead (no files unless ``--out`` is given too):
the best effort per attack entry over the correctly classified images (success, median / mean d
of the successes, network calls and gradients per attacked image over the whole grid; ``--at D
...`` adds the operating characteristic P_suc(D), paper 000 Eq. 32), the robust accuracy (average,
std, lowest run, worst case over repeats and adaptive modes, per criterion of the config's
``summary:``) and the paired comparisons. ``--columns SEL ...`` puts a
paper-style table first: robust accuracy (%) per model (rows) and attack entry (columns; ``pgd``
or ``pgd:eps=0.05`` selects an entry's cell as in ``summary: compare``).
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
    p.add_argument("--markdown", action="store_true", help="print the tables as Markdown")
    p.add_argument("--at", type=float, nargs="+", default=[], metavar="D",
                   help="with --markdown: P_suc(D) columns (success with d < D; paper 000 Eq. 32)")
    p.add_argument("--inclusive", action="store_true", help="with --at: count d <= D instead of d < D")
    p.add_argument("--columns", nargs="+", default=[], metavar="SEL",
                   help="with --markdown: first a table of robust accuracy (%%) per model and these attack "
                        "entries (label, or label:key=value to pick a grid point)")
    return p


def run(args: argparse.Namespace) -> int:
    from ..errors import InputError
    from ..experiments import write_report

    if args.images < 1:
        raise InputError(f"--images must be >= 1, got {args.images}")
    store = Path(args.store)
    if args.columns and not args.markdown:
        raise InputError("--columns prints a Markdown table: add --markdown")
    if args.markdown:
        from ..experiments.tables import markdown_tables

        print(markdown_tables(store, at=args.at, inclusive=args.inclusive, columns=args.columns), end="")
        if not args.out:
            return 0
    out = Path(args.out) if args.out else Path("report") / store.stem
    index = write_report(store, out, max_images=args.images)
    print(f"report: {index}")
    return 0
