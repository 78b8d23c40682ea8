"""``quantadv zoo``: list, show and verify the shipped models, and ship a trained one.

* ``quantadv zoo list`` prints one line per shipped model: name, architecture, data,
  training method, eps, clean test accuracy, file size and defense (binary networks show
  their binarisation method beside the architecture).
* ``quantadv zoo show NAME`` prints a model's manifest (JSON), including the exact command
  that reproduces it. ``NAME`` may also be the path of your own ``.safetensors``/``.json``.
* ``quantadv zoo verify [NAME ...]`` checks the sha256 of every (or the named) weight file
  against its manifest; the exit code is 1 if any fails.
* ``quantadv zoo ship PATH [...]`` puts models written by ``quantadv train --out-dir`` into the
  zoo directory, in float16 when no prediction on the full test split changes
  (:mod:`quantadv.models.ship`; DESIGN.md section 5).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from ..models import list as list_models
from ..models import manifest, read_manifest, verify
from ._common import format_table


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "zoo",
        help="list, show and verify the shipped models; ship a trained one (float16 when predictions stay identical)",
        description="List, show and verify the models shipped with quantadv, and ship a trained model into the zoo.",
    )
    sub = p.add_subparsers(dest="zoo_command", metavar="{list,show,verify,ship}")
    sub.add_parser("list", help="table of the shipped models")
    show = sub.add_parser("show", help="print one model's manifest")
    show.add_argument("name", help="zoo name, or path of a .safetensors/.json pair")
    ver = sub.add_parser("verify", help="check the sha256 of the weight files")
    ver.add_argument("names", nargs="*", help="models to check (default: all)")
    ship = sub.add_parser(
        "ship", help="put trained models into the zoo (float16 when every test prediction stays the same)"
    )
    ship.add_argument("paths", nargs="+", help="X.safetensors files with their X.json manifests")
    ship.add_argument("--zoo-dir", default=None, help="target directory (default: the package's zoo)")
    ship.add_argument("--no-float16", action="store_true", help="ship the weights as they are")
    return p


def _row(name: str, m: dict[str, Any]) -> list[str]:
    acc = m.get("clean_accuracy")
    size = m.get("size_bytes")
    arch = str(m.get("arch", "?"))
    binary = m.get("binary")
    if isinstance(binary, dict) and binary.get("method"):
        arch += f" ({binary['method']}, binary)"
    return [
        name,
        arch,
        str(m.get("data", "?")),
        str(m.get("method", "?")),
        f"{m['eps']:g}" if isinstance(m.get("eps"), (int, float)) and m.get("eps") else "-",
        f"{100 * acc:.2f}%" if isinstance(acc, (int, float)) else "?",
        f"{size / 1e6:.1f} MB" if isinstance(size, int) else "?",
        str(m.get("defense") or "-"),
    ]


def run(args: argparse.Namespace) -> int:
    cmd = getattr(args, "zoo_command", None) or "list"
    if cmd == "list":
        names = list_models()
        if not names:
            print("no models are shipped in this installation")
            return 0
        rows = [_row(n, manifest(n)) for n in names]
        header = ["name", "arch", "data", "method", "eps", "clean acc", "size", "defense"]
        print(format_table(rows, header))
        return 0
    if cmd == "show":
        name = args.name
        if name.endswith((".json", ".safetensors")) or "/" in name or "\\" in name:
            m = read_manifest(Path(name))
        else:
            m = manifest(name)
        print(json.dumps(m, indent=2, sort_keys=True))
        return 0
    if cmd == "ship":
        from ..models.ship import ship
        from ..models.zoo import ZOO_DIR

        for path in args.paths:
            ship(path, args.zoo_dir or ZOO_DIR, float16=not args.no_float16)
        return 0
    results = {}
    for name in args.names or [None]:
        results.update(verify(name))
    failed = 0
    for name, problem in results.items():
        if problem is None:
            print(f"ok      {name}")
        else:
            failed += 1
            print(f"FAILED  {name}: {problem}")
    if not results:
        print("no models are shipped in this installation")
    return 1 if failed else 0
