"""Benchmark: Lagrangian quantization (Q-lambda*, paper 000 Sec. 4.4-4.5) of DDN outputs.

On the first N (default 1,000) Fashion-MNIST test images, for each workload (model):

1. DDN, 100 steps (the library's defaults), batch 250: wall time T_ddn;
2. ``quantadv.quantize.lagrangian`` on its outputs, same batches: wall time T_q, network
   calls per image (the gradient counting as one; max and mean);
3. a straightforward per-image implementation of the same algorithm, written below (one
   image at a time, plain Python control flow): wall time T_loop, and how many of its
   outputs are identical to the library's.

Reports T_q / T_ddn (target <= 5%) and T_loop / T_q (target >= 20x), next to the network's
own batching gain (forward time per image at batch 1 / at the batch size), which bounds that
speed-up on a CPU. Two workloads: the shipped ``fmnist-cnn`` and ``linear``, a softmax
regression trained inside the benchmark, where the network is cheap and the quantizer's own
batching shows. With ``--write`` the results go to benchmarks/RESULTS-quantization.md with the
machine.

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


def _ceil_log2(n: int) -> int:
    return 0 if n <= 1 else (n - 1).bit_length()


def _worst_case(lo: int, hi: int, size: int, q0: bool) -> int:
    """Forward passes galloping + bisection may still need (see lagrangian._worst_case)."""
    if hi == 0:
        return 0
    if lo >= 0 and hi >= 0:
        return _ceil_log2(hi - lo)
    if lo == size:
        return 0 if q0 else 1
    if lo >= 0:
        m = _ceil_log2(size - lo)
        return max(2 * m, m + 1 + (0 if q0 else 1))
    m = _ceil_log2(hi)
    return max(2 * m, m + 1)


def loop_lagrangian(
    model, x_o: torch.Tensor, x_a: torch.Tensor, label: int, search: str = "model"
) -> tuple[torch.Tensor, int]:
    """Q-lambda* for ONE image, written plainly (the baseline). Returns (x_q, network calls).

    Same algorithm as the library: u in pixel units (float64), integers within 1e-4 kept;
    L_Q = p(t) - p(kappa_a) with kappa_a the most likely other class at x_a; g its gradient
    at x_a; J = non-integer pixels with g != 0 whose distortion choice (toward x_o) and loss
    choice (ceil iff g < 0) differ; ratio r = (1 - 2 ceil(u)) / g; candidate k flips the k
    smallest ratios. ``search="bisection"``: try Q0, then Q-inf, then a binary search over
    the sorted ratios. ``search="model"``: test where the linearised L_Q (Eq. 24) crosses 0,
    then where it crosses once shifted by its error at the last test, inside the bracket,
    while galloping + bisection could still finish within 2 + 2 ceil(log2 |J|) passes; else
    gallop and bisect; Q0 last if even Q-inf fails. A digital x_a needs no test.
    """
    xa = x_a.detach().clone().unsqueeze(0).requires_grad_(True)
    logits_a = model(xa)
    probs = logits_a.softmax(dim=1)[0]
    other = probs.clone()
    other[label] = -1.0
    kappa = int(other.argmax())
    loss_a = probs[label] - probs[kappa]
    loss_a.backward()
    g = xa.grad[0].flatten().double() / 255
    calls = 1

    o = (x_o.double() * 255).round().flatten()
    adv = (x_a.double() * 255).clamp(0, 255).flatten()
    u = adv - o
    exact = (u - u.round()).abs() <= 1e-4
    c = torch.where(exact, u.round(), torch.ceil(u))
    dist_ceil = c <= 0
    loss_ceil = g < 0
    j = (~exact) & (g != 0) & (dist_ceil != loss_ceil)
    r = torch.full_like(g, float("inf"))
    r[j] = (1 - 2 * c[j]) / g[j]
    r_sorted, order = torch.sort(r, stable=True)
    size = int(j.sum())

    def image(k: int) -> torch.Tensor:
        lam = 0.0 if k == 0 else float(r_sorted[k - 1])
        take_ceil = dist_ceil.clone()
        flip = j & (r <= lam)
        take_ceil[flip] = loss_ceil[flip]
        v = torch.where(exact, o + c, torch.where(take_ceil, o + c, o + c - 1))
        return (v / 255).to(x_a.dtype).view_as(x_a)

    def evaluate(k: int) -> tuple[bool, float]:
        nonlocal calls
        calls += 1
        with torch.no_grad():
            logits = model(image(k).unsqueeze(0))
        p = logits.softmax(dim=1)[0]
        return int(logits.argmax()) != label, float(p[label] - p[kappa])

    if search == "bisection":
        if evaluate(0)[0]:
            return image(0), calls
        if size == 0 or not evaluate(size)[0]:
            return image(size), calls
        lo, hi = 0, size
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if evaluate(mid)[0]:
                hi = mid
            else:
                lo = mid
        return image(hi), calls

    if torch.equal(image(0), x_a):  # digital x_a: the gradient's forward pass tested it
        return image(0), calls
    e0 = torch.where(exact, c, torch.where(dist_ceil, c, c - 1))
    e_inf = torch.where(exact, c, torch.where(torch.where(j, loss_ceil, dist_ceil), c, c - 1))
    at_q0 = float(loss_a.detach().double()) + float((g * (o + e0 - adv)).sum())
    linear = [at_q0, *(at_q0 + (g * (e_inf - e0))[order].cumsum(0)).tolist()]
    budget = 2 + 2 * _ceil_log2(size)
    lo = hi = -1
    q0 = False
    used, shift, safe, anchor, gallops = 0, 0.0, False, 0, 0
    while not (hi == 0 or (lo >= 0 and hi == lo + 1) or (lo == size and hi < 0)):
        if not safe:
            k = next((i for i in range(size) if linear[i] + shift < 0), size)
            k = min(max(k, lo + 1 if lo >= 0 else 0), hi if hi >= 0 else size)
            k = k - 1 if k == hi else k
            worst = max(_worst_case(lo, k, size, q0 or k == 0), _worst_case(k, hi, size, q0 or k == 0))
            if used and 1 + worst > budget - used:
                safe, anchor = True, (lo if lo >= 0 else hi)
        if safe:
            if lo >= 0 and hi >= 0:
                k = (lo + hi) // 2
            else:
                k = min(anchor + 2**gallops, size) if lo >= 0 else max(anchor - 2**gallops, 0)
                gallops += 1
        ok, loss = evaluate(k)
        used += 1
        q0 = q0 or k == 0
        shift = loss - linear[k]
        if ok:
            hi = k
        else:
            lo = k
    if hi < 0 and not q0 and evaluate(0)[0]:
        hi = 0
    return image(hi if hi >= 0 else size), calls


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (
        f"{os.cpu_count()} CPU cores ({cpu}), load average {load:.2f} at the start; torch "
        f"{torch.__version__}, {torch.get_num_threads()} intra-op thread(s); Python "
        f"{platform.python_version()}; {platform.system()} {platform.release()}"
    )


def commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=HERE, text=True, capture_output=True, check=True
        ).stdout.strip()
        return out
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def linear_model(seed: int = 0, steps: int = 300) -> tuple[torch.nn.Module, float]:
    """A softmax regression (784 -> 10) trained here on the Fashion-MNIST train split.

    The "cheap network" workload: one matrix product per call, so the network no longer
    dominates and the benchmark measures the quantizer's own batching. Full-batch Adam,
    ``steps`` steps, a few seconds on CPU. Returns the model and its test accuracy.
    """
    torch.manual_seed(seed)
    x_tr, y_tr = data.load("fashion-mnist", split="train")
    x_te, y_te = data.load("fashion-mnist", split="test")
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 10))
    opt = torch.optim.Adam(net.parameters(), lr=0.01)
    xf = x_tr.float() / 255
    for _ in range(steps):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(net(xf), y_tr.long()).backward()
        opt.step()
    net.eval()
    with torch.no_grad():
        acc = (net(x_te.float() / 255).argmax(1) == y_te).float().mean().item()
    return net, acc


def gradient_ratio(model, x: torch.Tensor, batch_size: int, reps: int = 5) -> float:
    """Network-only: time of one input gradient (forward + backward) / one forward, at ``batch_size``."""
    xb = x[:batch_size]
    with torch.no_grad():
        model(xb)
        t0 = time.perf_counter()
        for _ in range(reps):
            model(xb)
        t_fwd = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(reps):
        xg = xb.clone().requires_grad_(True)
        torch.autograd.grad(model(xg).logsumexp(1).sum(), xg)
    return (time.perf_counter() - t0) / t_fwd


def forward_gain(model, x: torch.Tensor, batch_size: int, n: int = 200) -> float:
    """Network-only batching gain: per-image forward time at batch 1 / at ``batch_size``.

    This bounds what batching can buy for the search's forward passes, which are most of
    Q-lambda*'s network calls: the speed-up of the batched quantizer over the per-image loop
    cannot exceed it by much.
    """
    xs = x[:n]
    xb = x[:batch_size]
    with torch.no_grad():
        model(xs[:1])
        model(xb)
        t0 = time.perf_counter()
        for i in range(xs.shape[0]):
            model(xs[i : i + 1])
        t_one = (time.perf_counter() - t0) / xs.shape[0]
        reps = max(1, (4 * n) // xb.shape[0])
        t0 = time.perf_counter()
        for _ in range(reps):
            model(xb)
        t_batch = (time.perf_counter() - t0) / (reps * xb.shape[0])
    return t_one / t_batch


def run_workload(name: str, model, x: torch.Tensor, y: torch.Tensor, args) -> dict:
    """DDN, then batched Q-lambda* (median of ``--repeat``), then the per-image loop."""
    n = x.shape[0]
    batches = [slice(i, i + args.batch_size) for i in range(0, n, args.batch_size)]
    t0 = time.perf_counter()
    outs = [attacks.ddn(model, x[b], y[b], steps=args.steps, return_info=True) for b in batches]
    t_ddn = time.perf_counter() - t0
    x_a = torch.cat([o[0] for o in outs])
    ddn_ok = torch.cat([o[1]["success"] for o in outs]).float().mean().item()
    print(f"[{name}] DDN {args.steps} steps on {n} images: {t_ddn:.2f} s ({ddn_ok:.1%} success)")

    times, result = [], None
    for _ in range(args.repeat):
        t0 = time.perf_counter()
        result = [quantize.lagrangian(model, x[b], x_a[b], y[b], return_info=True) for b in batches]
        times.append(time.perf_counter() - t0)
    t_q = statistics.median(times)
    x_q = torch.cat([r[0] for r in result])
    calls = torch.cat([r[1]["calls"] for r in result])
    q_ok = torch.cat([r[1]["success"] for r in result]).float().mean().item()
    print(
        f"[{name}] lagrangian (batched): {t_q:.3f} s (runs: {', '.join(f'{t:.3f}' for t in times)}); "
        f"calls/image mean {calls.double().mean():.2f}, max {int(calls.max())}; success {q_ok:.1%}"
    )

    loop_times, loop_out, loop_calls = [], None, None
    for _ in range(max(1, args.repeat - 2)):
        t0 = time.perf_counter()
        res = [loop_lagrangian(model, x[i], x_a[i], int(y[i])) for i in range(n)]
        loop_times.append(time.perf_counter() - t0)
        loop_out = torch.stack([r[0] for r in res])
        loop_calls = torch.tensor([r[1] for r in res])
    t_loop = statistics.median(loop_times)
    same = int((loop_out == x_q).flatten(1).all(1).sum())
    same_calls = int((loop_calls == calls).sum())
    gain = forward_gain(model, x, args.batch_size)
    grad_ratio = gradient_ratio(model, x, args.batch_size)
    row = {
        "name": name,
        "n": n,
        "t_ddn": t_ddn,
        "ddn_ok": ddn_ok,
        "t_q": t_q,
        "q_ok": q_ok,
        "calls_mean": calls.double().mean().item(),
        "calls_max": int(calls.max()),
        "t_loop": t_loop,
        "loop_repeats": len(loop_times),
        "same": same,
        "same_calls": same_calls,
        "frac": t_q / t_ddn,
        "speedup": t_loop / t_q,
        "gain": gain,
        "grad_ratio": grad_ratio,
    }
    print(f"[{name}] per-image loop: {t_loop:.3f} s; identical outputs {same}/{n}, same call counts {same_calls}/{n}")
    print(
        f"[{name}] quantization / DDN time: {row['frac']:.2%} (target <= 5%); speed-up vs loop: "
        f"{row['speedup']:.1f}x (target >= 20x); network-only forward batching gain: {gain:.1f}x"
    )
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--batch-size", type=int, default=250)
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--workloads", nargs="+", choices=("fmnist-cnn", "linear"), default=["fmnist-cnn", "linear"])
    ap.add_argument("--write", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(max(args.threads))
    host = machine()

    x_u8, y_all = data.load("fashion-mnist", split="test")
    x = x_u8[: args.n].float() / 255
    y = y_all[: args.n]
    workloads, notes = {}, []
    for name in args.workloads:
        if name == "fmnist-cnn":
            workloads[name] = models.load("fmnist-cnn")
            notes.append("`fmnist-cnn`: the shipped SmallCNN (2 conv 5x5 + 2 fully connected layers, 3.3 M parameters)")
        else:
            t0 = time.perf_counter()
            workloads[name], acc = linear_model()
            notes.append(
                f"`linear`: a softmax regression 784 -> 10 trained inside the benchmark "
                f"(full-batch Adam, 300 steps, {time.perf_counter() - t0:.0f} s, test accuracy "
                f"{acc:.1%}): the network costs one matrix product, so this column shows the "
                "quantizer's own batching, as on a GPU where a forward pass costs about the same "
                "for 1 or 250 images"
            )
    rows = []
    for threads in args.threads:
        torch.set_num_threads(threads)
        for name, model in workloads.items():
            row = run_workload(f"{name}, {threads} thr", model, x, y, args)
            rows.append(row)
    if not args.write:
        return

    def cell(key: str, fmt: str) -> str:
        return " | ".join(format(r[key], fmt) for r in rows)

    head = " | ".join(f"`{r['name']}`" for r in rows)
    sep = " | ".join("---" for _ in rows)
    text = f"""# Benchmark: Lagrangian quantization of DDN outputs (paper 000)

Command: `python benchmarks/quantization.py --write` (defaults: `--n {args.n} --batch-size
{args.batch_size} --steps {args.steps} --repeat {args.repeat} --threads {" ".join(map(str, args.threads))}
--workloads {" ".join(args.workloads)}`), quantadv {quantadv.__version__}, commit {commit()}.

Machine: {host}. Nothing else ran during the measurement.

Workload: the first {args.n} Fashion-MNIST test images; DDN with {args.steps} steps (library
defaults) in batches of {args.batch_size}; then `quantadv.quantize.lagrangian` (Q-lambda*,
paper 000 Sec. 4.4-4.5) on its outputs, same batches; then a plain per-image implementation of
the same algorithm (`loop_lagrangian` in the benchmark: one image at a time, one gradient, Q0,
Q-inf, binary search), whose outputs must be identical. Each column is one model at one number
of torch intra-op threads. Models:

{chr(10).join(f"- {t}" for t in notes)}.

| measurement | {head} | target |
| --- | {sep} | --- |
| DDN {args.steps} steps, {args.n} images (s) | {cell("t_ddn", ".2f")} | |
| DDN success | {cell("ddn_ok", ".1%")} | |
| Q-lambda*, batched, median of {args.repeat} (s) | {cell("t_q", ".3f")} | |
| Q-lambda* success | {cell("q_ok", ".1%")} | |
| **Q-lambda* time / DDN time** | {cell("frac", ".2%")} | <= 5% |
| calls per image (gradient = 1), mean | {cell("calls_mean", ".2f")} | |
| calls per image, max | {cell("calls_max", "d")} | <= 3 + ceil(log2 J) |
| network alone: gradient / forward time per image (batch {args.batch_size}) | {cell("grad_ratio", ".2f")} | |
| per-image loop, same algorithm (s) | {cell("t_loop", ".3f")} | |
| **speed-up of the batched implementation** | {cell("speedup", ".1f")} | >= 20x |
| network alone: forward time per image, batch 1 / batch {args.batch_size} | {cell("gain", ".1f")} | |
| loop outputs identical to the library's (of {args.n}) | {cell("same", "d")} | all |
| same network-call counts (of {args.n}) | {cell("same_calls", "d")} | all |

Reading:

- Time fraction. Q-lambda* costs one gradient and about ten forward passes per image, DDN one
  gradient per step; the fraction is therefore about (calls - 1 + g) / (100 g) with g the
  gradient / forward cost ratio of the network on this machine (row "gradient / forward"). Where
  a backward pass is cheap relative to the forward (g well below the textbook 3), ten forward
  passes weigh more against 100 gradients, and the fraction rises above 5%.
- Speed-up. The search's forward passes are most of Q-lambda*'s cost, so on a CPU the speed-up
  over a per-image loop is bounded by how much faster the *network itself* runs per image in a
  batch (row "forward time per image, batch 1 / batch {args.batch_size}"). For the shipped CNN on
  this CPU that gain is small and the >= 20x target is out of reach for any implementation; with
  a cheap network (`linear`) the speed-up measures the quantizer's own batching.
- Identical outputs: batched and single-image forward passes may differ in the last bits of the
  arithmetic; an image whose true loss sits at a success threshold can then take another branch
  of the search (a difference of this kind is what an "identical" count below {args.n} means).
"""
    path = HERE / "RESULTS-quantization.md"
    tmp = path.with_suffix(".md.tmp")
    tmp.write_text(text)
    tmp.replace(path)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
