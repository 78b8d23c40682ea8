"""Benchmark: Q-lambda* (model-guided search, batched) against the per-image reference (paper 000).

Workload (issue 19): DDN with ``--steps`` (default 50) steps on the first ``--n`` (default 100)
Fashion-MNIST test images, ``fmnist-cnn``. Then, on the DDN outputs:

1. network calls per image of ``quantadv.quantize.lagrangian`` (``search="model"``, the
   gradient counting as one): mean, maximum, histogram, and how many images stay within paper
   000's bisection bound ``3 + ceil(log2 |J|)`` (target: all, and a mean <= 4.0);
2. speed: ``--runs`` alternating runs of (a) the library on the whole batch and (b) the
   reference: paper 000's search written plainly for one image at a time (Q0, Q-infinity, then
   bisection over the sorted ratios; ``loop_lagrangian(..., "bisection")`` of
   ``benchmarks/quantization.py``), both in this process at ``--threads`` torch threads. The
   speed-up is the median over runs of (reference time / library time), from wall time and
   from the process's CPU time (which a loaded machine disturbs less); target >= 25x;
3. that both give the same successes and the same distortion ``d`` (Eq. 31) per image;
4. the network alone on the batch (one input gradient, one forward pass): a batched search
   needs at least the gradient and, per image that needs a boundary, two forward passes, so
   reference time / that floor bounds the speed-up any batched search can reach here.

    python benchmarks/quantization_reference.py [--n 100] [--steps 50] [--runs 3] [--threads 1]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from quantadv import attacks, data, models, quantize  # noqa: E402
from quantadv.eval import distortion  # noqa: E402
from quantization import _ceil_log2, loop_lagrangian  # noqa: E402


def _timed(fn):
    w0, c0 = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - w0, time.process_time() - c0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model = models.load("fmnist-cnn").eval()
    x_u8, y_all = data.load("fashion-mnist", split="test")
    x, y = x_u8[: args.n].float() / 255, y_all[: args.n]
    load = os.getloadavg()
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, load average {load[0]:.1f} / {load[1]:.1f} / "
          f"{load[2]:.1f}; torch {torch.__version__}, {args.threads} thread(s)")
    x_a, t_ddn, c_ddn = _timed(lambda: attacks.ddn(model, x, y, steps=args.steps))
    print(f"DDN {args.steps} steps on {args.n} images: {t_ddn:.1f} s wall, {c_ddn:.1f} s CPU")

    x_q, info = quantize.lagrangian(model, x, x_a, y, return_info=True)
    calls = info["calls"]
    bound = 3 + torch.tensor([_ceil_log2(int(j)) for j in info["j_size"]])
    hist = torch.bincount(calls).tolist()
    print(f"calls per image: mean {calls.double().mean():.2f}, max {int(calls.max())}; within 3 + ceil(log2 |J|): "
          f"{int((calls <= bound).sum())}/{args.n}; histogram "
          + ", ".join(f"{c}: {m}" for c, m in enumerate(hist) if m))

    ratios_wall, ratios_cpu, lib_times, ref_times = [], [], [], []
    reference = None
    for run in range(args.runs):
        _, w_lib, c_lib = _timed(lambda: quantize.lagrangian(model, x, x_a, y))
        reference, w_ref, c_ref = _timed(
            lambda: [loop_lagrangian(model, x[i], x_a[i], int(y[i]), "bisection") for i in range(args.n)]
        )
        ratios_wall.append(w_ref / w_lib)
        ratios_cpu.append(c_ref / c_lib)
        lib_times.append((w_lib, c_lib))
        ref_times.append((w_ref, c_ref))
        print(f"run {run + 1}: library {w_lib:.3f} s wall / {c_lib:.3f} s CPU; reference {w_ref:.3f} s / "
              f"{c_ref:.3f} s; speed-up {w_ref / w_lib:.1f}x wall, {c_ref / c_lib:.1f}x CPU")
    x_ref = torch.stack([r[0] for r in reference])
    pred_ref = model(x_ref).argmax(1)
    ok_ref = pred_ref != y
    d_lib, d_ref = distortion(x_q, x), distortion(x_ref, x)
    same_ok = int((ok_ref == info["success"]).sum())
    same_d = int(((d_lib - d_ref).abs() <= 1e-9).sum())
    print(f"same success {same_ok}/{args.n}, same d {same_d}/{args.n} (success {int(info['success'].sum())}, "
          f"median d {float(d_lib[info['success']].median()):.4f})")
    # The network alone, batched: what no batched search can go below (1 gradient and, for an
    # image that needs a boundary, 2 forward passes), hence a ceiling on the speed-up.
    xg = x_a.detach().clone().requires_grad_(True)
    c_grad = statistics.median(
        _timed(lambda: torch.autograd.grad(model(xg).logsumexp(1).sum(), xg))[2] for _ in range(3))
    with torch.no_grad():
        c_fwd = statistics.median(_timed(lambda: model(x_a))[2] for _ in range(3))
    floor = c_grad + 2 * c_fwd
    ref_cpu = statistics.median(c for _, c in ref_times)
    print(f"network alone, batch of {args.n}, median of 3: input gradient {1000 * c_grad / args.n:.2f} ms CPU "
          f"per image, forward {1000 * c_fwd / args.n:.2f} ms; floor of a batched search (gradient + 2 forward passes) "
          f"{floor:.3f} s CPU; reference / floor = {ref_cpu / floor:.1f}x, the most any batched search "
          f"could reach against this reference")
    print(f"speed-up, median of {args.runs}: {statistics.median(ratios_wall):.1f}x wall, "
          f"{statistics.median(ratios_cpu):.1f}x CPU (per run: "
          + ", ".join(f"{w:.1f}/{c:.1f}" for w, c in zip(ratios_wall, ratios_cpu, strict=True)) + ")")


if __name__ == "__main__":
    main()
