"""Defense speed (paper 002): NSQ vs PGD-AT training time, and BPDA / EOT cost per attack step.

1. **Training.** One epoch of NSQ training (``SoftQuantization(1, 1000)`` in front of the
   ``small-cnn``, uniform noise 0.3, paper 002 Eq. 10) and one epoch of PGD-L-inf adversarial
   training (7 steps, eps 0.3, Madry's step rule) of the same network on the same images
   (the first ``--train-images`` of mnist-5k's train split, batch 64, Adam), interleaved,
   ``--repeats`` times, each from the same fresh initialisation. The paper's claim: 24x faster
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


def train_epoch_seconds(method: str, x, y, eps: float, seed: int) -> float:
    torch.manual_seed(seed)
    clf = models.SmallCNN(1, 10, mean=0.1311, std=0.3083)
    model = Defended(SoftQuantization(1, 1000), clf) if method == "noisy" else clf
    cfg = models.TrainConfig(method=method, eps=eps, epochs=1, batch_size=64, lr=1e-3, attack_steps=7, seed=seed)
    t0 = time.perf_counter()
    models.train(model, x, y, cfg, progress=False, log=lambda s: None)
    return time.perf_counter() - t0


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
        runs: dict[str, list[float]] = {"NSQ (noisy, softq K=1 alpha=1000)": [], "PGD-AT (7 steps)": []}
        for r in range(args.repeats):
            runs["NSQ (noisy, softq K=1 alpha=1000)"].append(train_epoch_seconds("noisy", tx, ty, 0.3, r))
            runs["PGD-AT (7 steps)"].append(train_epoch_seconds("pgd-linf", tx, ty, 0.3, r))
        nsq = statistics.median(runs["NSQ (noisy, softq K=1 alpha=1000)"])
        print(f"\n### One training epoch on {args.train_images} mnist-5k images (median of {args.repeats})\n")
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
