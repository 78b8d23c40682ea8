"""Benchmark: swRD before and after issue 19, against the per-image scikit-learn loop, in one process.

The implementation before issue 19 is read from git (``--before``, default commit 120fe61) and
run next to the current one and the per-image scikit-learn loop of
``benchmarks/vector_quantization.py``, interleaved, one thread, on 256 mnist-5k test images at
the paper's MNIST setting (s = 2, k = 2, sigma = tau = 4/255, beta = 1). Reports wall and
thread CPU time per run (the loop timed on ``--loop-images`` images, scaled to the batch), the
speed-ups, and whether both implementations give identical outputs.

    python benchmarks/vector_quantization_before_after.py [--runs 3] [--loop-images 64]
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--before", default="120fe61")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--loop-images", type=int, default=64)
    ap.add_argument("--batch", type=int, default=256)
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
    for impl in ("new", "old"):
        print(f"{impl}: speed-up over the per-image loop, median of {args.runs}: "
              f"{statistics.median(ratios[(impl, 'wall')]):.1f}x wall, "
              f"{statistics.median(ratios[(impl, 'cpu')]):.1f}x CPU")


if __name__ == "__main__":
    main()
