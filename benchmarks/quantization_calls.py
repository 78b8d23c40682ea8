"""Benchmark: network calls per image of Q-lambda*'s model-guided search, now and at an earlier commit.

DDN with ``--steps`` (default 50) steps on the first ``--n`` Fashion-MNIST test images
(``fmnist-cnn``, batches of ``--batch``), then ``quantize.lagrangian(..., search="model")`` of
the current code and of ``src/quantadv/quantize/lagrangian.py`` at each ``--before`` commit
(read from git), and the bisection: mean and maximum calls (the gradient counting as one), the
histogram, how many images exceed paper 000's bisection bound ``3 + ceil(log2 |J|)``, and how
many lambda* agree with the bisection's.

    python benchmarks/quantization_calls.py [--n 100] [--before 120fe61]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import types
from pathlib import Path

import torch

from quantadv import attacks, data, models, quantize
from quantadv.quantize.lagrangian import ceil_log2

HERE = Path(__file__).resolve().parent


def lagrangian_at(rev: str):
    """``lagrangian`` as it was at commit ``rev`` (its module read from git, same package)."""
    text = subprocess.run(
        ["git", "show", f"{rev}:src/quantadv/quantize/lagrangian.py"],
        cwd=HERE.parent, check=True, capture_output=True, text=True,
    ).stdout
    name = f"quantadv.quantize._lagrangian_{rev}"
    module = types.ModuleType(name)
    module.__package__ = "quantadv.quantize"
    sys.modules[name] = module
    exec(compile(text, name, "exec"), module.__dict__)  # noqa: S102 - our own file from git
    return module.lagrangian


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--batch", type=int, default=250)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--before", nargs="*", default=["120fe61"])
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model = models.load("fmnist-cnn").eval()
    x_u8, y_all = data.load("fashion-mnist", split="test")
    x, y = x_u8[: args.n].float() / 255, y_all[: args.n]
    batches = [slice(i, i + args.batch) for i in range(0, args.n, args.batch)]
    x_a = torch.cat([attacks.ddn(model, x[b], y[b], steps=args.steps) for b in batches])
    print(f"DDN {args.steps} steps on the first {args.n} Fashion-MNIST test images, fmnist-cnn, "
          f"batches of {args.batch}")
    searches = [("bisection", quantize.lagrangian, "bisection"), ("model (current)", quantize.lagrangian, "model")]
    searches += [(f"model ({rev})", lagrangian_at(rev), "model") for rev in args.before]
    lam_bisection = None
    for name, fn, search in searches:
        infos = [fn(model, x[b], x_a[b], y[b], search=search, return_info=True)[1] for b in batches]
        info = {k: torch.cat([i[k] for i in infos]) for k in ("calls", "j_size", "lambda_star", "success")}
        calls = info["calls"]
        over = int((calls > 3 + ceil_log2(info["j_size"])).sum())
        if lam_bisection is None:
            lam_bisection = info["lambda_star"]
        same = int((info["lambda_star"] == lam_bisection).sum())
        hist = ", ".join(f"{c}: {m}" for c, m in enumerate(torch.bincount(calls).tolist()) if m)
        print(f"{name}: calls mean {calls.double().mean():.2f}, max {int(calls.max())}; above 3 + ceil(log2 |J|): "
              f"{over}/{args.n}; success {int(info['success'].sum())}; same lambda* as bisection {same}/{args.n}; "
              f"histogram {hist}")


if __name__ == "__main__":
    main()
