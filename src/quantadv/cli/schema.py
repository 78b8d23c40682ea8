"""``quantadv schema``: print the JSON schema of experiment configs (``quantadv run CONFIG.yaml``).

The schema is generated from the one description of a config (``quantadv.experiments.schema``),
the same one ``quantadv run`` checks a config against first. Point an editor's YAML language
server at it to get completion and checking while writing a config (docs/experiments.md)::

    quantadv schema --out configs/schema.json
    # first line of a config:  # yaml-language-server: $schema=schema.json
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "schema",
        help="print the JSON schema of experiment configs (for editors and validators)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--out", help="write the schema to this file instead of printing it")
    return p


def run(args: argparse.Namespace) -> int:
    from ..experiments.schema import schema_text

    text = schema_text() + "\n"
    if not args.out:
        print(text, end="")
        return 0
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    print(f"schema: {out}")
    return 0
