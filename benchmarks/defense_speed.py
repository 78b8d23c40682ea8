"""Defense speed (paper 002): NSQ vs PGD-AT training time, and BPDA / EOT cost per attack step.

1. **Training.** One epoch of NSQ training (``SoftQuantization(1, 1000)`` in front of the
   ``small-cnn``, uniform noise 0.3, paper 002 Eq. 10) and one epoch of PGD-L-inf adversarial
   training (7 steps, eps 0.3, Madry's step rule) of the same network on the same images
   (the first ``--train-images`` of mnist-5k's train split, batch 64, Adam), interleaved batch
   by batch (so that both see the same load on a shared machine), ``--repeats`` times. The paper's claim: 24x faster
   on MNIST (5 min vs 2 h on a TITAN V).
2. **Attack step.** The time of one PGD step (forward + backward + update) on a batch of
   ``--batch`` mnist-5k test images against ``mnist-cnn-nsq`` as deployed (naive), through
   BPDA (identity backward), and with EOT m = 10 (the same BPDA model with ``eot=10``; a
   deterministic defense, so this measures the engine's cost of 10 draws) and against a
   randomized defense (``RandDisc(k=2, 4/255, 4/255)`` in front of the same classifier, BPDA,
   eot 1 vs 10). Each is timed over ``--steps`` steps, median of ``--repeats``, interleaved.
   Target: EOT m = 10 <= 10.5 x one step.

Run: ``OMP_NUM_THREADS=1 nice -n 5 .venv/bin/python benchmarks/defense_speed.py``; the table
printed is what benchmarks/RESULTS.md quotes.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import torch

import quantadv
from quantadv import attacks, data, models
from quantadv.defenses import Defended, RandDisc, SoftQuantization, adaptive, bpda


def train_epoch_seconds(x, y, eps: float, seed: int, batch: int = 64) -> tuple[float, float]:
    """One epoch of NSQ and one of PGD-AT (7 steps) on the same batches, interleaved batch by batch.

    Each batch is one NSQ training step (uniform noise, forward/backward through the soft layer,
    Adam update) and one PGD-AT step (7-step PGD on the model in eval mode, then the update in
    train mode), exactly what :func:`quantadv.models.train` does per batch for ``noisy`` and
    ``pgd-linf``; interleaving makes both see the same machine load. Returns the two sums.
    """
    torch.manual_seed(seed)
    nsq = Defended(SoftQuantization(1, 1000), models.SmallCNN(1, 10, mean=0.1311, std=0.3083))
    torch.manual_seed(seed)
    at = models.SmallCNN(1, 10, mean=0.1311, std=0.3083)
    opts = {id(m): torch.optim.Adam(m.parameters(), lr=1e-3) for m in (nsq, at)}
    gen = torch.Generator().manual_seed(seed)
    perm = torch.randperm(x.shape[0], generator=gen)
    t_nsq = t_at = 0.0
    for b in range(0, x.shape[0], batch):
        xb, yb = quantadv.to_float(x[perm[b:b + batch]]), y[perm[b:b + batch]]
        t0 = time.perf_counter()
        nsq.train()
        noisy = (xb + (2 * torch.rand(xb.shape, generator=gen) - 1) * eps).clamp(0, 1)
        _update(nsq, opts[id(nsq)], noisy, yb)
        t1 = time.perf_counter()
        at.eval()
        x_adv = attacks.pgd(at, xb, yb, eps=eps, step=2.5 * eps / 7, steps=7, random_start=True, generator=gen)
        at.train()
        _update(at, opts[id(at)], x_adv, yb)
        t2 = time.perf_counter()
        t_nsq += t1 - t0
        t_at += t2 - t1
    return t_nsq, t_at


def _update(model, opt, x, y) -> None:
    loss = torch.nn.functional.cross_entropy(model(x), y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()


def step_seconds(model, x, y, steps: int, eot: int) -> float:
    t0 = time.perf_counter()
    attacks.pgd(model, x, y, eps=0.3, step=0.01, steps=steps, eot=eot, seed=0)
    return (time.perf_counter() - t0) / steps


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--train-images", type=int, default=1000)
    p.add_argument("--batch", type=int, default=100)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--skip-training", action="store_true")
    args = p.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores (shared), torch {torch.__version__}, "
          f"{torch.get_num_threads()} thread(s)")

    if not args.skip_training:
        tx, ty = data.load("mnist-5k", "train")
        tx, ty = tx[: args.train_images], ty[: args.train_images]
        names = ("NSQ (noisy 0.3, softq K=1 alpha=1000)", "PGD-AT (7 steps, eps 0.3)")
        runs: dict[str, list[float]] = {n: [] for n in names}
        for r in range(args.repeats):
            for n, t in zip(names, train_epoch_seconds(tx, ty, 0.3, r), strict=True):
                runs[n].append(t)
        nsq = statistics.median(runs[names[0]])
        print(f"\n### One training epoch on {args.train_images} mnist-5k images, batch 64 "
              f"(interleaved per batch; median of {args.repeats})\n")
        print("| method | median s | runs (s) | / NSQ |\n| --- | ---: | --- | ---: |")
        for name, ts in runs.items():
            med = statistics.median(ts)
            print(f"| {name} | {med:.2f} | {', '.join(f'{t:.1f}' for t in ts)} | {med / nsq:.2f} |")

    images, labels = data.load("mnist-5k", "test")
    x, y = quantadv.to_float(images[: args.batch]), labels[: args.batch]
    nsq_model = models.load("mnist-cnn-nsq")
    bpda_model, _ = adaptive(nsq_model, "bpda")
    rand = Defended(bpda(RandDisc(2, 4 / 255, 4 / 255)), nsq_model.classifier).eval()
    cases = {
        "NSQ, naive (eot 1)": (nsq_model, 1),
        "NSQ, BPDA (eot 1)": (bpda_model, 1),
        "NSQ, BPDA, eot 10": (bpda_model, 10),
        "RandDisc, BPDA (eot 1)": (rand, 1),
        "RandDisc, BPDA, eot 10": (rand, 10),
    }
    times: dict[str, list[float]] = {k: [] for k in cases}
    for _ in range(args.repeats):
        for name, (model, eot) in cases.items():
            times[name].append(step_seconds(model, x, y, args.steps, eot))
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"\n### One PGD step on a batch of {args.batch} (median of {args.repeats} x {args.steps} steps)\n")
    print("| case | ms / step | runs (ms) | ratio |\n| --- | ---: | --- | --- |")
    ratios = {
        "NSQ, naive (eot 1)": "1.00 (reference)",
        "NSQ, BPDA (eot 1)": f"{med['NSQ, BPDA (eot 1)'] / med['NSQ, naive (eot 1)']:.2f} x naive",
        "NSQ, BPDA, eot 10": f"{med['NSQ, BPDA, eot 10'] / med['NSQ, BPDA (eot 1)']:.2f} x BPDA eot 1",
        "RandDisc, BPDA (eot 1)": f"{med['RandDisc, BPDA (eot 1)'] / med['NSQ, naive (eot 1)']:.2f} x NSQ naive",
        "RandDisc, BPDA, eot 10": f"{med['RandDisc, BPDA, eot 10'] / med['RandDisc, BPDA (eot 1)']:.2f} x eot 1",
    }
    for name, ts in times.items():
        print(f"| {name} | {1000 * med[name]:.1f} | {', '.join(f'{1000 * t:.0f}' for t in ts)} | {ratios[name]} |")


if __name__ == "__main__":
    main()
