"""Benchmark: swRD before and after issue 19, against the per-image scikit-learn loop, in one process.

The implementation before issue 19 is read from git (``--before``, default commit 120fe61) and
run next to the current one and the per-image scikit-learn loop of
``benchmarks/vector_quantization.py``, interleaved, one thread, on 256 mnist-5k test images at
the paper's MNIST setting (s = 2, k = 2, sigma = tau = 4/255, beta = 1). Reports wall and
thread CPU time per run (the loop timed on ``--loop-images`` images, scaled to the batch), the
speed-ups, and whether both implementations give identical outputs.

    python benchmarks/vector_quantization_before_after.py [--runs 3] [--loop-images 64] [--profile]

With ``--profile``, also the thread CPU time of each stage of the current swRD on the batch
(median of 5): the windows, the per-image noise draws, k-means++, the Lloyd iterations (with
the image-iterations done and the fewest possible), the nearest centre of the probe, and
Eq. 2-4 (softmax weights and the sliding-window sums).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
import types
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import quantadv  # noqa: E402
from quantadv import data  # noqa: E402
from quantadv.defenses import SlidingWindowRandDisc  # noqa: E402
from vector_quantization import SIG, loop_quantize  # noqa: E402


def load_before(rev: str) -> types.ModuleType:
    text = subprocess.run(
        ["git", "show", f"{rev}:src/quantadv/defenses/vector_quantization.py"],
        cwd=HERE.parent, check=True, capture_output=True, text=True,
    ).stdout
    text = text.replace("from .._validate", "from quantadv._validate").replace("from ..errors", "from quantadv.errors")
    module = types.ModuleType("vq_before")
    exec(compile(text, "vq_before", "exec"), module.__dict__)  # noqa: S102 - our own file from git
    return module


def profile_stages(x: torch.Tensor, quantizer: SlidingWindowRandDisc, repeat: int = 5) -> None:
    """Thread CPU time of each stage of ``quantizer(x)`` (the same calls ``forward`` makes)."""
    import importlib

    vq = importlib.import_module("quantadv.defenses.vector_quantization")
    k, sigma, tau, iters = quantizer.k, quantizer.sigma, quantizer.tau, quantizer.iters
    seeds = vq.draw_seeds(x.shape[0], torch.Generator().manual_seed(0), x.device)
    stages: dict[str, list[float]] = {}
    clock = [0.0]

    def lap(name: str) -> None:
        now = time.thread_time()
        stages.setdefault(name, []).append(now - clock[0])
        clock[0] = now

    for _ in range(repeat):
        clock[0] = time.thread_time()
        pts = quantizer.points(x).contiguous()
        b, n, d = pts.shape
        lap("windows (unfold)")
        sig, uni, tau_n = vq.draw_noise(seeds, n, d, k, sigma > 0, tau > 0, x.dtype, x.device)
        lap("noise draws (per-image generators)")
        noisy = sig.mul_(sigma).add_(pts)
        lap("noisy windows")
        init = vq.kmeans_plus_plus(noisy, k, uni)
        lap("k-means++")
        centres, _ = vq.kmeans(noisy, init, iters)
        lap("Lloyd iterations")
        probe = tau_n.mul_(tau).add_(pts)
        labels = vq._nearest(probe, centres)
        lap("nearest centre of the noisy probe")
        p_hat = torch.gather(centres, 1, labels.unsqueeze(-1).expand(b, n, d))
        ((pts - p_hat) ** 2).sum(-1)
        lap("reconstructions and their distances")
        quantizer.reconstructions(x, generator=torch.Generator().manual_seed(0))
        lap("reconstructions(), whole")
        quantizer(x, generator=torch.Generator().manual_seed(0))
        lap("forward, whole")
        stages.setdefault("Eq. 2-4 (softmax weights, sliding sums): forward - reconstructions()", []).append(
            stages["forward, whole"][-1] - stages["reconstructions(), whole"][-1])
    # Lloyd work: image-iterations to reach each image's fixed point.
    with torch.no_grad():
        pts = quantizer.points(x).contiguous()
        b, n, d = pts.shape
        sig, uni, _ = vq.draw_noise(seeds, n, d, k, sigma > 0, tau > 0, x.dtype, x.device)
        noisy = sig.mul_(sigma).add_(pts)
        centres = vq.kmeans_plus_plus(noisy, k, uni)
        labels = vq._nearest(noisy, centres)
        until = torch.full((b,), iters)
        for it in range(iters):
            centres = vq._centre_update(noisy, labels, centres)
            new = vq._nearest(noisy, centres)
            still = (new != labels).any(1)
            until = torch.where((~still) & (until == iters), torch.minimum(until, torch.tensor(it + 1)), until)
            labels = new
    hist = ", ".join(f"{i}: {m}" for i, m in enumerate(torch.bincount(until).tolist()) if m)
    print(f"profile (thread CPU, median of {repeat}, {x.shape[0]} images):")
    for name, values in stages.items():
        print(f"  {name}: {1000 * statistics.median(values):.1f} ms")
    print(f"  Lloyd iterations until no assignment moves (incl. the checking one), images: {hist}; "
          f"{int(until.sum())} image-iterations in all")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--before", default="120fe61")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--loop-images", type=int, default=64)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--profile", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(1)
    from threadpoolctl import threadpool_limits

    before = load_before(args.before)
    images, _ = data.load("mnist-5k", split="test")
    x = quantadv.to_float(images[: args.batch])
    xs = x.numpy().astype(np.float64)
    new = SlidingWindowRandDisc(2, 2, SIG, SIG, beta=1.0)
    old = before.SlidingWindowRandDisc(2, 2, SIG, SIG, beta=1.0)
    same = all(
        torch.equal(new(x, generator=torch.Generator().manual_seed(s)),
                    old(x, generator=torch.Generator().manual_seed(s)))
        for s in range(3)
    )
    load = os.getloadavg()
    print(f"{os.cpu_count()} cores, load average {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f}; torch "
          f"{torch.__version__}, 1 thread; batch {args.batch}; identical outputs (3 seeds): {same}")
    clocks = {"wall": time.perf_counter, "cpu": time.thread_time}
    ratios = {("new", c): [] for c in clocks} | {("old", c): [] for c in clocks}
    with threadpool_limits(1):
        rng = np.random.default_rng(0)
        loop_quantize(xs[0], "swrd", 2, 2, SIG, SIG, 1.0, rng)
        new(x[:8])
        old(x[:8])
        n = min(args.loop_images, args.batch)
        for run in range(args.runs):
            g = torch.Generator().manual_seed(run)
            t = {}
            for name, fn in (
                ("new", lambda g=g: new(x, generator=g)),
                ("old", lambda g=g: old(x, generator=g)),
                ("loop", lambda: [loop_quantize(xs[i], "swrd", 2, 2, SIG, SIG, 1.0, rng) for i in range(n)]),
            ):
                w0, c0 = time.perf_counter(), time.thread_time()
                fn()
                t[name] = {"wall": time.perf_counter() - w0, "cpu": time.thread_time() - c0}
            for c in clocks:
                t["loop"][c] *= args.batch / n
                for impl in ("new", "old"):
                    ratios[(impl, c)].append(t["loop"][c] / t[impl][c])
            print(f"run {run + 1}: " + "; ".join(
                f"{name} {1000 * v['wall']:.0f} ms wall / {1000 * v['cpu']:.0f} ms CPU" for name, v in t.items()
            ) + f"; loop / new {ratios[('new', 'wall')][-1]:.1f}x wall, "
                f"{ratios[('new', 'cpu')][-1]:.1f}x CPU; "
                f"loop / old {ratios[('old', 'wall')][-1]:.1f}x wall, {ratios[('old', 'cpu')][-1]:.1f}x CPU")
    if args.profile:
        profile_stages(x, new)
    for impl in ("new", "old"):
        print(f"{impl}: speed-up over the per-image loop, median of {args.runs}: "
              f"{statistics.median(ratios[(impl, 'wall')]):.1f}x wall, "
              f"{statistics.median(ratios[(impl, 'cpu')]):.1f}x CPU")


if __name__ == "__main__":
    main()
