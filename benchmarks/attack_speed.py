"""Attack speed: quantadv vs the cost floor (a plain PyTorch loop) and peer libraries.

PGD-L-inf (20 steps), CW-L2 (100 Adam steps, one constant, no search: the setting all
three implementations share) and DDN (100 steps) on the first 1,000 Fashion-MNIST test
images against the shipped ``fmnist-cnn``, batch 500, 2 CPU threads. The plain loop does
the same number of forward+backward passes with nothing else (the cost floor); torchattacks
and Foolbox are timed at equal settings when they are importable. Every method runs
``--repeats`` times, interleaved, in this one process; medians are reported, with the
ratio to the plain loop. Peak memory (growth of the resident set while the method runs on one
batch, sampled every 2 ms) is measured per method in a fresh subprocess, with 3 steps (the
memory an attack needs does not grow with its number of steps).

Run: ``make bench`` (installs the peers) or ``.venv/bin/python benchmarks/attack_speed.py``.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import subprocess
import sys
import threading
import time

import torch
import torch.nn.functional as F

from quantadv import data, models, to_float
from quantadv.attacks import cw, ddn, pgd

EPS, ALPHA, PGD_STEPS = 0.1, 0.01, 20
CW_STEPS, CW_LR, CW_C = 100, 0.01, 1.0
DDN_STEPS = 100


# ----------------------------------------------------------------- plain loops (cost floor)
def plain_pgd(model, x0, y):
    x = x0.clone()
    for _ in range(PGD_STEPS):
        x.requires_grad_(True)
        (g,) = torch.autograd.grad(F.cross_entropy(model(x), y, reduction="sum"), x)
        x = torch.min(torch.max(x.detach() + ALPHA * g.sign(), x0 - EPS), x0 + EPS).clamp(0, 1)
    return x


def plain_grad_loop(model, x0, y, steps):
    """``steps`` forward+backward passes with a trivial update: the floor for CW and DDN."""
    x = x0.clone()
    for _ in range(steps):
        x.requires_grad_(True)
        (g,) = torch.autograd.grad(F.cross_entropy(model(x), y, reduction="sum"), x)
        x = (x.detach() + 1e-3 * g.sign()).clamp(0, 1)
    return x


def methods():
    m = {
        "pgd/quantadv": lambda mod, x, y: pgd(mod, x, y, norm="linf", eps=EPS, step=ALPHA, steps=PGD_STEPS),
        "pgd/plain": plain_pgd,
        "cw/quantadv": lambda mod, x, y: cw(mod, x, y, steps=CW_STEPS, search_steps=1, lr=CW_LR, c_init=CW_C),
        "cw/plain": lambda mod, x, y: plain_grad_loop(mod, x, y, CW_STEPS),
        "ddn/quantadv": lambda mod, x, y: ddn(mod, x, y, steps=DDN_STEPS),
        "ddn/plain": lambda mod, x, y: plain_grad_loop(mod, x, y, DDN_STEPS),
    }
    try:
        import torchattacks as ta

        m["pgd/torchattacks"] = lambda mod, x, y: ta.PGD(mod, eps=EPS, alpha=ALPHA, steps=PGD_STEPS,
                                                         random_start=False)(x, y)
        m["cw/torchattacks"] = lambda mod, x, y: ta.CW(mod, c=CW_C, kappa=0, steps=CW_STEPS, lr=CW_LR)(x, y)
    except Exception:  # noqa: BLE001 - a peer that fails to import is simply not timed
        pass
    try:
        import foolbox as fb

        def fb_run(attack, eps):
            def run(mod, x, y):
                _, clipped, _ = attack(fb.PyTorchModel(mod, bounds=(0, 1)), x, y, epsilons=eps)
                return clipped
            return run

        m["pgd/foolbox"] = fb_run(fb.attacks.LinfPGD(abs_stepsize=ALPHA, steps=PGD_STEPS, random_start=False), EPS)
        m["cw/foolbox"] = fb_run(fb.attacks.L2CarliniWagnerAttack(binary_search_steps=1, steps=CW_STEPS,
                                                                  stepsize=CW_LR, initial_const=CW_C), None)
        m["ddn/foolbox"] = fb_run(fb.attacks.DDNAttack(steps=DDN_STEPS), None)
    except Exception:  # noqa: BLE001
        pass
    return m


def load(n):
    model = models.load("fmnist-cnn")
    images, labels = data.load("fashion-mnist", split="test")
    return model, to_float(images[:n]), labels[:n]


def run_method(fn, model, x, y, batch):
    t0 = time.perf_counter()
    for i in range(0, x.shape[0], batch):
        fn(model, x[i : i + batch], y[i : i + batch])
    return time.perf_counter() - t0


def _rss_mib() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * resource.getpagesize() / 2**20


def measure_peak(name, n, batch):
    """Peak resident-set growth (MiB) while ``name`` runs, sampled every 2 ms in this process."""
    global PGD_STEPS, CW_STEPS, DDN_STEPS
    PGD_STEPS = CW_STEPS = DDN_STEPS = 3  # memory does not grow with the number of steps
    model, x, y = load(n)
    fn = methods()[name]
    fn(model, x[:8], y[:8])
    before, peak, done = _rss_mib(), [0.0], threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], _rss_mib())
            time.sleep(0.002)

    sampler = threading.Thread(target=sample)
    sampler.start()
    run_method(fn, model, x, y, batch)
    done.set()
    sampler.join()
    return max(peak[0], _rss_mib()) - before


def peak_memory(name, n, batch):
    """:func:`measure_peak` in a fresh interpreter, so methods do not share an allocator."""
    code = (
        "import sys, torch; sys.path.insert(0, 'benchmarks'); import attack_speed as b; "
        f"torch.set_num_threads(2); print(b.measure_peak({name!r}, {n}, {batch}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--batch", type=int, default=500)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--only", default=None, help="comma-separated attack families (pgd,cw,ddn)")
    ap.add_argument("--json", default=None, help="also write the results to this JSON file")
    args = ap.parse_args()
    torch.set_num_threads(2)
    model, x, y = load(args.n)
    table = methods()
    if args.only:
        keep = set(args.only.split(","))
        table = {k: v for k, v in table.items() if k.split("/")[0] in keep}
    for fn in table.values():  # warm-up (allocator, lazy imports) on a small batch
        fn(model, x[:8], y[:8])
    times = {k: [] for k in table}
    for _ in range(args.repeats):
        for name, fn in table.items():
            times[name].append(run_method(fn, model, x, y, args.batch))
    results = {}
    for name, ts in times.items():
        family = name.split("/")[0]
        med = statistics.median(ts)
        floor = statistics.median(times[f"{family}/plain"])
        results[name] = {"median_s": med, "runs_s": ts, "ratio_to_plain": med / floor,
                         "peak_rss_growth_mib": peak_memory(name, args.n, args.batch)}
    machine = {"cpu_threads": torch.get_num_threads(), "torch": torch.__version__,
               "python": platform.python_version(), "processor": platform.processor() or platform.machine(),
               "maxrss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    print(f"{args.n} images, batch {args.batch}, {args.repeats} repeats, machine {machine}")
    print(f"{'method':<20}{'median s':>10}{'/ plain':>10}{'peak MiB':>10}")
    for name, r in results.items():
        print(f"{name:<20}{r['median_s']:>10.2f}{r['ratio_to_plain']:>10.3f}{r['peak_rss_growth_mib']:>10.0f}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"machine": machine, "results": results}, fh, indent=2)


if __name__ == "__main__":
    main()
