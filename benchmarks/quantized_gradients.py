"""Per-step cost of the paper 001 attacks: PQGD and DAA-BLOB vs PGD, and vs torchattacks' APGD.

Targets (issue 8): PQGD within 5% of PGD per step at equal steps; DAA-BLOB (RBF kernel over
the batch included) within 1.3x of PGD at batch 500. Also timed side by side in the same run:
BLOB_QG, the kernel alone (one iteration's O(B^2 d) terms), a plain PyTorch PGD loop (the
cost floor) and torchattacks' APGD-CE / APGD-DLR (an optional peer: ``make bench-deps``;
skipped with a note when it is not importable). APGD with ``steps=S`` makes S + 1 gradient
computations (one at the start point) plus its step-size checkpoints; its time is divided by
S like the others'.

Model: the shipped ``mnist-cnn-at-linf`` (``mnist-cnn`` if that is not in the zoo), first
``--batch`` images of the mnist-5k test split, eps 0.3, step 0.01, ``--steps`` steps. Every
method runs ``--repeats`` times, interleaved, in this one process; medians are reported.

Run: ``OMP_NUM_THREADS=1 nice -n 5 .venv/bin/python benchmarks/quantized_gradients.py``.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import torch
import torch.nn.functional as F

from quantadv import data, models, to_float
from quantadv.attacks import daa_blob, pgd, pqgd
from quantadv.attacks.quantized_gradients import blob_kernel_terms

EPS, ALPHA = 0.3, 0.01


def plain_pgd(model, x0, y, steps):
    x = x0.clone()
    for _ in range(steps):
        x.requires_grad_(True)
        (g,) = torch.autograd.grad(F.cross_entropy(model(x), y, reduction="sum"), x)
        x = torch.min(torch.max(x.detach() + ALPHA * g.sign(), x0 - EPS), x0 + EPS).clamp(0, 1)
    return x


def methods(steps: int):
    kw = dict(eps=EPS, step=ALPHA, steps=steps, seed=0)
    m = {
        "plain PGD loop (floor)": lambda mdl, x, y: plain_pgd(mdl, x, y, steps),
        "quantadv pgd (linf)": lambda mdl, x, y: pgd(mdl, x, y, norm="linf", random_start=True, **kw),
        "quantadv pqgd b=200": lambda mdl, x, y: pqgd(mdl, x, y, b=200, **kw),
        "quantadv pqgd b=1000": lambda mdl, x, y: pqgd(mdl, x, y, b=1000, **kw),
        "quantadv daa_blob (sign)": lambda mdl, x, y: daa_blob(mdl, x, y, **kw),
        "quantadv daa_blob b=200 (BLOB_QG)": lambda mdl, x, y: daa_blob(mdl, x, y, b=200, **kw),
    }
    try:
        import torchattacks
    except ImportError:
        print("torchattacks is not installed (make bench-deps): APGD rows skipped")
        return m
    for loss in ("ce", "dlr"):
        def run(mdl, x, y, loss=loss):
            return torchattacks.APGD(mdl, norm="Linf", eps=EPS, steps=steps, n_restarts=1, loss=loss, seed=0)(x, y)

        m[f"torchattacks APGD-{loss.upper()} {torchattacks.__version__}"] = run
    return m


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=500)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", default=None, help="also write the results here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    name = "mnist-cnn-at-linf" if "mnist-cnn-at-linf" in models.list() else "mnist-cnn"
    model = models.load(name)
    images, labels = data.load("mnist-5k", split="test")
    x, y = to_float(images[: args.batch]), labels[: args.batch]
    table = methods(args.steps)
    times: dict[str, list[float]] = {k: [] for k in table}
    kernel_times: list[float] = []
    grads = torch.randn_like(x)
    for _ in range(args.repeats):
        for label, fn in table.items():
            t0 = time.perf_counter()
            fn(model, x, y)
            times[label].append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        for _ in range(5):
            blob_kernel_terms(x, grads)
        kernel_times.append((time.perf_counter() - t0) / 5)
    med = {k: statistics.median(v) for k, v in times.items()}
    base = med["quantadv pgd (linf)"]
    print(f"model {name}, batch {args.batch}, {args.steps} steps, {args.threads} thread(s), "
          f"{args.repeats} interleaved repeats (median); {platform.processor() or platform.machine()}, "
          f"torch {torch.__version__}")
    print("| method | s per run | ms per step | ratio to quantadv pgd |")
    print("| --- | ---: | ---: | ---: |")
    for label, t in med.items():
        print(f"| {label} | {t:.2f} | {1000 * t / args.steps:.1f} | {t / base:.3f} |")
    kernel = statistics.median(kernel_times)
    print(f"| kernel terms alone (B={args.batch}, d={x[0].numel()}), one iteration | - | {1000 * kernel:.1f} | "
          f"{kernel * args.steps / base:.3f} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"model": name, "batch": args.batch, "steps": args.steps, "threads": args.threads,
                       "repeats": args.repeats, "seconds": times, "kernel_seconds": kernel_times}, f, indent=1)


if __name__ == "__main__":
    main()
