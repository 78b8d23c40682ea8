"""``quantadv demo``: the main job in one command.

Attacks the shipped Fashion-MNIST classifier ``fmnist-cnn`` on the first 1,000 test images
with PGD-L2 and DDN and prints clean accuracy, attack success rate and median distortion d
(paper 000 Eq. 31, pixel units).
"""

from __future__ import annotations

import argparse

import torch

from ._common import add_device_seed, resolve_device

#: (row label, attack name, parameters) of the demo table; budgets in [0, 1] units.
DEMO_ATTACKS = (
    ("PGD-L2 (eps=1.0, 20 steps)", "pgd", {"norm": "l2", "eps": 1.0, "step": 0.1, "steps": 20}),
    ("DDN (100 steps)", "ddn", {"steps": 100}),
)


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "demo",
        help="attack the shipped fmnist-cnn with PGD-L2 and DDN on 1,000 test images and print a table",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--model", default="fmnist-cnn", help="shipped model to attack (default fmnist-cnn)")
    p.add_argument("--n", type=int, default=1000, help="number of test images (default 1000)")
    p.add_argument("--batch-size", type=int, default=500)
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    add_device_seed(p)
    return p


def run(args: argparse.Namespace) -> int:
    from .. import data, models
    from ..attacks import REGISTRY
    from ..eval.batched import attack_dataset, format_table, summarize

    device = resolve_device(args.device)
    torch.manual_seed(args.seed)
    model = models.load(args.model, device=device)
    dataset = models.manifest(args.model)["data"]
    images, labels = data.load(dataset, split="test")
    images, labels = images[: args.n], labels[: args.n]
    rows = []
    for label, name, params in DEMO_ATTACKS:
        fn = REGISTRY[name]
        result = attack_dataset(
            model, images, labels, lambda m, x, y, fn=fn, params=params: fn(m, x, y, **params),
            batch_size=args.batch_size, device=device, progress=not args.quiet, desc=label,
        )
        rows.append({"attack": label, **summarize(result, labels)})
    print(f"\n{args.model} on {len(labels)} {dataset} test images ({device.type}):")
    print(format_table(rows, [
        ("attack", "attack", ""), ("clean_accuracy", "clean acc", ".3f"),
        ("success_rate", "success", ".3f"), ("median_d", "median d", ".3f"),
        ("mean_l2", "mean L2", ".3f"), ("seconds", "seconds", ".1f"),
    ]))
    print("d = ||x_adv - x||_2 / sqrt(n) in pixel units (0..255), paper 000 Eq. 31; "
          "success is over the correctly classified images.")
    return 0
