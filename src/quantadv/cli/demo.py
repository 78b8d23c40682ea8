"""``quantadv demo``: the main job in one command.

Runs the experiment ``configs/demo.yaml`` (the shipped Fashion-MNIST classifier
``fmnist-cnn`` on the first 1,000 test images under PGD-L2 and DDN (100 steps); each
adversarial image kept as is, rounded to 8 bits, and Lagrangian-quantized), prints the table of
clean accuracy, success rate and median distortion d (paper 000 Eq. 31, pixel units) and under
it, per attack, how many of the float successes rounding kept and how many Lagrangian
quantization kept (paper 000's headline, measured), then writes the HTML report. It is
exactly ``quantadv run configs/demo.yaml`` followed by ``quantadv report results/demo.db --out
report/demo``; like them it resumes a killed run.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import InputError

#: Where the demo config is looked for: the working directory, then the source checkout.
DEMO_CONFIG_CANDIDATES = (
    Path("configs/demo.yaml"),
    Path(__file__).resolve().parents[3] / "configs" / "demo.yaml",
)


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "demo",
        help="run configs/demo.yaml (fmnist-cnn, PGD-L2 and DDN, quantized or not) and write its report",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--config", default=None, help="demo config (default: configs/demo.yaml)")
    p.add_argument("--out", default="report/demo", help="report folder (default report/demo)")
    p.add_argument("--device", default=None, help="override the config's device (cpu, cuda)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--no-progress", action="store_true", help="no progress bars (the table is printed as usual)")
    return p


def find_config(given: str | None) -> Path:
    if given:
        return Path(given)
    for candidate in DEMO_CONFIG_CANDIDATES:
        if candidate.is_file():
            return candidate
    raise InputError("cannot find configs/demo.yaml: run from the quantadv checkout or pass --config PATH")


def run(args: argparse.Namespace) -> int:
    from ..experiments import load_config
    from . import main

    config = find_config(args.config)
    run_argv = ["run", str(config)] + (["--device", args.device] if args.device else [])
    code = main(run_argv + (["--quiet"] if args.quiet else ["--no-progress"] if args.no_progress else []))
    if code:
        return code
    if args.quiet:  # 'run --quiet' skips the table; the demo always shows it
        from .run import effect_lines, summary_table

        store = load_config(config).store
        print(summary_table(store))
        for line in effect_lines(store):
            print(line)
    return main(["report", str(load_config(config).store), "--out", args.out])
