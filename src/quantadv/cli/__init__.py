"""The ``quantadv`` command.

Each subcommand lives in its own module of this package and exposes two functions:
``add_parser(subparsers)`` (registers its ``argparse`` sub-parser and returns it) and
``run(args) -> int`` (does the work, returns the exit code). ``main`` wires them up and
turns user errors (:class:`~quantadv.errors.QuantadvError`) into a one-line message and
exit code 2 instead of a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from ..errors import QuantadvError

#: Subcommands in the order ``quantadv --help`` lists them; each is a module of this package.
SUBCOMMANDS = ("data", "train", "zoo", "attack", "verify", "run", "report", "merge", "demo", "diagnose", "certify",
               "schema", "evaluate")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="quantadv",
        description=(
            "Adversarial machine learning where quantization matters: attacks whose output "
            "is a real 8-bit image, quantized-gradient attacks, attacks on binary networks, "
            "and input-quantization defenses."
        ),
    )
    from .. import __version__

    parser.add_argument("--version", action="version", version=f"quantadv {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in SUBCOMMANDS:
        try:
            module = importlib.import_module(f"{__name__}.{name}")
        except ModuleNotFoundError as exc:  # a subcommand not built yet is simply not listed
            if exc.name == f"{__name__}.{name}":
                continue
            raise
        p = module.add_parser(sub)
        p.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "_run", None):
        parser.print_help()
        return 2
    try:
        return int(args._run(args) or 0)
    except QuantadvError as exc:
        print(f"quantadv {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader went away (``quantadv run --dry-run | head``): stop quietly
        try:  # point stdout at /dev/null so the interpreter's final flush does not raise again
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except (OSError, ValueError):
            pass
        return 141


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
