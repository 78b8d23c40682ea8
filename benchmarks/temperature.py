"""PGD++ cost (paper 004): NJS and HNS relative to PGD at equal steps, Jacobian vs PGD steps.

Workload: a shipped model (default ``fmnist-cnn-bc``, 10 classes) on the first ``--n`` (100)
Fashion-MNIST test images, L-inf eps 0.1, step 0.025, 20 steps, random start, 1 thread.

- ``pgd``: :func:`quantadv.attacks.pgd`;
- ``pgd_pp njs``: :func:`quantadv.attacks.pgd_pp` with ``scaling="njs"`` **including** the
  Jacobian of M = 100 images for ``beta1`` (the NJS cache is cleared before every run);
- ``pgd_pp njs (beta1 cached)``: the same with ``beta1`` from the cache (a second attack on
  the same model and images: the per-step cost of Algorithm 1 alone);
- ``pgd_pp hns``: ``scaling="hns"`` including the per-image Jacobian and the 100-point grid;
- ``jacobian M=100 (backward|vmap)``: :func:`quantadv.diagnostics.input_jacobian` alone, with
  both strategies, against ``10 PGD steps`` on the same images.

Targets (issue 9): NJS <= 1.1x PGD, HNS <= 1.5x PGD, Jacobian of 100 images <= 10 PGD steps.
Every method runs ``--repeats`` times, interleaved, in one process (after one warm-up round,
so the one-time ``torch.func`` import is not counted); medians are reported.

Run: ``OMP_NUM_THREADS=1 .venv/bin/python benchmarks/temperature.py``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from quantadv import attacks, data, models, to_float
from quantadv.attacks import temperature
from quantadv.diagnostics import input_jacobian

KW = {"eps": 0.1, "step": 0.025, "steps": 20, "seed": 0}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="fmnist-cnn-bc")
    p.add_argument("--n", type=int, default=100)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", default=None, help="also write the raw timings here")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    model = models.load(args.model).eval()
    images, labels = data.load("fashion-mnist", "test")
    x, y = to_float(images[: args.n]), labels[: args.n]

    def njs():
        temperature._NJS_CACHE.clear()
        attacks.pgd_pp(model, x, y, scaling="njs", **KW)

    methods = {
        "pgd (20 steps)": lambda: attacks.pgd(model, x, y, random_start=True, **KW),
        "pgd_pp njs (20 steps + beta1)": njs,
        "pgd_pp njs (20 steps, beta1 cached)": lambda: attacks.pgd_pp(model, x, y, scaling="njs", **KW),
        "pgd_pp hns (20 steps + grid)": lambda: attacks.pgd_pp(model, x, y, scaling="hns", **KW),
        "pgd (10 steps, the M=100 images)": lambda: attacks.pgd(model, x[:100], y[:100], random_start=True,
                                                                **{**KW, "steps": 10}),
        "jacobian M=100 (backward)": lambda: input_jacobian(model, x[:100], strategy="backward"),
        "jacobian M=100 (vmap)": lambda: input_jacobian(model, x[:100], strategy="vmap"),
    }
    for fn in methods.values():  # warm-up (imports, allocator)
        fn()
    times: dict[str, list[float]] = {k: [] for k in methods}
    for _ in range(args.repeats):
        for name, fn in methods.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    base, base10 = med["pgd (20 steps)"], med["pgd (10 steps, the M=100 images)"]
    print(f"model {args.model}, {args.n} images, {args.threads} thread(s), median of {args.repeats}")
    print("| method | median s | runs (s) | ratio | target |")
    print("| --- | ---: | --- | ---: | --- |")
    targets = {"pgd_pp njs (20 steps + beta1)": ("/ PGD-20", 1.1),
               "pgd_pp njs (20 steps, beta1 cached)": ("/ PGD-20", 1.1),
               "pgd_pp hns (20 steps + grid)": ("/ PGD-20", 1.5),
               "jacobian M=100 (backward)": ("/ PGD-10", 1.0), "jacobian M=100 (vmap)": ("/ PGD-10", 1.0)}
    for name, value in med.items():
        runs = ", ".join(f"{t:.2f}" for t in times[name])
        if name in targets:
            label, target = targets[name]
            ratio = value / (base if label == "/ PGD-20" else base10)
            verdict = "met" if ratio <= target else "missed"
            print(f"| {name} | {value:.2f} | {runs} | {ratio:.2f} {label} | <= {target} ({verdict}) |")
        else:
            print(f"| {name} | {value:.2f} | {runs} | | |")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"times": times, "median": med}, fh, indent=1)


if __name__ == "__main__":
    main()
