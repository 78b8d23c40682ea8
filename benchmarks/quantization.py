"""Benchmark: Lagrangian quantization (Q-lambda*, paper 000 Sec. 4.4-4.5) of DDN outputs.

On the first N (default 1,000) Fashion-MNIST test images and the shipped ``fmnist-cnn``:

1. DDN, 100 steps (the library's defaults), batch 250: wall time T_ddn;
2. ``quantadv.quantize.lagrangian`` on its outputs, same batches: wall time T_q, network
   calls per image (the gradient counting as one; max and mean);
3. a straightforward per-image implementation of the same algorithm, written below (one
   image at a time, plain Python control flow): wall time T_loop, and how many of its
   outputs are identical to the library's.

Reports T_q / T_ddn (target <= 5%) and T_loop / T_q (target >= 20x), and with ``--write``
records them in benchmarks/RESULTS-quantization.md together with the machine.

    python benchmarks/quantization.py                 # print
    python benchmarks/quantization.py --write         # print and record

Timings are medians over ``--repeat`` runs of the quantizers (the DDN run is timed once:
it is the expensive part and its time only enters the denominator).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import time
from pathlib import Path

import torch

import quantadv
from quantadv import attacks, data, models, quantize

HERE = Path(__file__).resolve().parent


def loop_lagrangian(model, x_o: torch.Tensor, x_a: torch.Tensor, label: int) -> tuple[torch.Tensor, int]:
    """Q-lambda* for ONE image, written plainly (the baseline). Returns (x_q, network calls).

    Same algorithm as the library: u in pixel units (float64), integers within 1e-4 kept;
    L_Q = p(t) - p(kappa_a) with kappa_a the most likely other class at x_a; g its gradient
    at x_a; J = non-integer pixels with g != 0 whose distortion choice (toward x_o) and loss
    choice (ceil iff g < 0) differ; ratio r = (1 - 2 ceil(u)) / g; try Q0, then Q-inf, then
    a binary search over the sorted ratios for the smallest adversarial one.
    """
    xa = x_a.detach().clone().unsqueeze(0).requires_grad_(True)
    probs = model(xa).softmax(dim=1)[0]
    other = probs.clone()
    other[label] = -1.0
    kappa = int(other.argmax())
    (probs[label] - probs[kappa]).backward()
    g = xa.grad[0].flatten().double()
    calls = 1

    o = (x_o.double() * 255).round().flatten()
    u = (x_a.double() * 255).clamp(0, 255).flatten() - o
    exact = (u - u.round()).abs() <= 1e-4
    c = torch.where(exact, u.round(), torch.ceil(u))
    dist_ceil = c <= 0
    loss_ceil = g < 0
    j = (~exact) & (g != 0) & (dist_ceil != loss_ceil)
    r = torch.full_like(g, float("inf"))
    r[j] = (1 - 2 * c[j]) / g[j]
    r_sorted = torch.sort(r[j]).values

    def image(lam: float) -> torch.Tensor:
        take_ceil = dist_ceil.clone()
        flip = j & (r <= lam)
        take_ceil[flip] = loss_ceil[flip]
        v = torch.where(exact, o + c, torch.where(take_ceil, o + c, o + c - 1))
        return (v / 255).to(x_a.dtype).view_as(x_a)

    def adversarial(lam: float) -> bool:
        nonlocal calls
        calls += 1
        with torch.no_grad():
            return int(model(image(lam).unsqueeze(0)).argmax()) != label

    if adversarial(0.0):
        return image(0.0), calls
    if r_sorted.numel() == 0 or not adversarial(float("inf")):
        return image(float("inf")), calls
    lo, hi = 0, r_sorted.numel()              # candidate k: lambda = r_sorted[k - 1]
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if adversarial(float(r_sorted[mid - 1])):
            hi = mid
        else:
            lo = mid
    return image(float(r_sorted[hi - 1])), calls


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (f"{os.cpu_count()} CPU cores ({cpu}), shared with other jobs; torch "
            f"{torch.__version__}, {torch.get_num_threads()} intra-op thread(s); Python "
            f"{platform.python_version()}; {platform.system()} {platform.release()}")


def commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=HERE, text=True,
                             capture_output=True, check=True).stdout.strip()
        return out
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--batch-size", type=int, default=250)
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--write", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    x_u8, y_all = data.load("fashion-mnist", split="test")
    x = x_u8[: args.n].float() / 255
    y = y_all[: args.n]
    model = models.load("fmnist-cnn")
    batches = [slice(i, i + args.batch_size) for i in range(0, args.n, args.batch_size)]

    t0 = time.perf_counter()
    outs = [attacks.ddn(model, x[b], y[b], steps=args.steps, return_info=True) for b in batches]
    t_ddn = time.perf_counter() - t0
    x_a = torch.cat([o[0] for o in outs])
    ddn_ok = torch.cat([o[1]["success"] for o in outs])
    print(f"DDN {args.steps} steps on {args.n} images: {t_ddn:.2f} s "
          f"({ddn_ok.float().mean():.1%} success)")

    times, result = [], None
    for _ in range(args.repeat):
        t0 = time.perf_counter()
        res = [quantize.lagrangian(model, x[b], x_a[b], y[b], return_info=True) for b in batches]
        times.append(time.perf_counter() - t0)
        result = res
    t_q = statistics.median(times)
    x_q = torch.cat([r[0] for r in result])
    calls = torch.cat([r[1]["calls"] for r in result])
    q_ok = torch.cat([r[1]["success"] for r in result])
    print(f"lagrangian (batched): {t_q:.3f} s (runs: {', '.join(f'{t:.3f}' for t in times)}); "
          f"calls/image mean {calls.double().mean():.2f}, max {int(calls.max())}; "
          f"success {q_ok.float().mean():.1%}")

    loop_times, loop_out, loop_calls = [], None, None
    for _ in range(max(1, args.repeat - 2)):
        t0 = time.perf_counter()
        res = [loop_lagrangian(model, x[i], x_a[i], int(y[i])) for i in range(args.n)]
        loop_times.append(time.perf_counter() - t0)
        loop_out = torch.stack([r[0] for r in res])
        loop_calls = torch.tensor([r[1] for r in res])
    t_loop = statistics.median(loop_times)
    same = (loop_out == x_q).flatten(1).all(1)
    print(f"per-image loop: {t_loop:.3f} s; identical outputs {int(same.sum())}/{args.n}; "
          f"same call counts {int((loop_calls == calls).sum())}/{args.n}")

    frac, speedup = t_q / t_ddn, t_loop / t_q
    print(f"quantization / DDN time: {frac:.2%} (target <= 5%); speed-up vs loop: "
          f"{speedup:.1f}x (target >= 20x)")
    if not args.write:
        return
    text = f"""# Benchmark: Lagrangian quantization of DDN outputs (paper 000)

Command: `python benchmarks/quantization.py --write` (defaults: `--n {args.n} --batch-size
{args.batch_size} --steps {args.steps} --repeat {args.repeat} --threads {args.threads}`), quantadv
{quantadv.__version__}, commit {commit()}.

Machine: {machine()}.

Workload: the first {args.n} Fashion-MNIST test images, the shipped `fmnist-cnn`, DDN with
{args.steps} steps (library defaults) in batches of {args.batch_size}; then
`quantadv.quantize.lagrangian` (Q-lambda*, paper 000 Sec. 4.4-4.5) on its outputs, same
batches; then a plain per-image implementation of the same algorithm (`loop_lagrangian` in
the benchmark: one image at a time, one gradient, Q0, Q-inf, binary search).

| measurement | value | target |
| --- | --- | --- |
| DDN {args.steps} steps, {args.n} images | {t_ddn:.2f} s ({ddn_ok.float().mean():.1%} success) | |
| Q-lambda*, batched (median of {args.repeat}) | {t_q:.3f} s ({q_ok.float().mean():.1%} success) | |
| **Q-lambda* time / DDN time** | **{frac:.2%}** | <= 5% |
| calls per image (gradient = 1), mean / max | {calls.double().mean():.2f} / {int(calls.max())} | <= 3 + ceil(log2 J) |
| per-image loop, same algorithm (median of {len(loop_times)}) | {t_loop:.3f} s | |
| **speed-up of the batched implementation** | **{speedup:.1f}x** | >= 20x |
| loop outputs identical to the library's | {int(same.sum())} / {args.n} | |

The CPU was shared with other jobs (model training) during the run, so absolute times are
upper bounds; the DDN and quantization timings were taken back to back in one process, and
the ratio is what the benchmark is about.
"""
    path = HERE / "RESULTS-quantization.md"
    tmp = path.with_suffix(".md.tmp")
    tmp.write_text(text)
    tmp.replace(path)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
