"""``quantadv merge STORE.db [SHARD.db ...]``: merge per-rank shard files into a store.

A run under ``torchrun`` merges its shards itself at the end, and a new ``quantadv run`` merges
leftovers of an interrupted one before it starts; this command does it by hand. Without
explicit shards, every ``<store>.shard-K-of-N.db`` next to the store is merged. Shards must
come from the same config as the store; each is merged in one transaction and deleted after
it (``--keep`` keeps them).
"""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "merge",
        help="merge the shard files of a multi-process run into its results store",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("store", help="results store, e.g. results/demo.db (created if missing)")
    p.add_argument("shards", nargs="*", help="shard files (default: all shards of STORE)")
    p.add_argument("--keep", action="store_true", help="keep the shard files after merging")
    return p


def run(args: argparse.Namespace) -> int:
    from ..errors import InputError
    from ..experiments import find_shards, merge_shards

    store = Path(args.store)
    shards = [Path(s) for s in args.shards] or find_shards(store)
    if not shards:
        raise InputError(
            f"no shard files found for {str(store)!r} (looked for "
            f"{store.stem}.shard-K-of-N.db in {str(store.parent)!r}); nothing to merge"
        )
    for s in shards:
        if not s.is_file():
            raise InputError(f"shard {str(s)!r} does not exist")
    totals = merge_shards(store, shards, remove=not args.keep)
    print(f"merged {totals['shards']} shard(s) into {store}: {totals['results']} new outcomes, "
          f"{totals['runs']} new runs")
    return 0
