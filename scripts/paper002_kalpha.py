"""Paper 002, App. B analog on Fashion-MNIST: how K and alpha trade clean accuracy for robustness.

For every (K, alpha) of the grid, an NSQ model is fine-tuned from ``fmnist-cnn`` (noisy
training behind ``SoftQuantization(K, alpha)``, uniform noise in [-noise, noise], Eq. 10) on the
first ``--train-size`` training images for one epoch, then measured on the first ``--n-clean``
test images (clean accuracy; also for SQ = the same layer in front of ``fmnist-cnn`` without
retraining) and on the first ``--n`` test images under BPDA+PGD (identity backward, ``--steps``
steps of ``2.5 eps / steps``, random start, CE and CW-inf losses) at ``--eps``::

    python scripts/paper002_kalpha.py --out results/paper002/fmnist-kalpha.json

The paper's grid (CIFAR-10) is K in {2, 3, 4, 16} x alpha in {1, 100, 10000} x 255; ours is
K in {1, 2, 4} x alpha in {1, 100} x 255 (the CPU budget; alpha = 10000 x 255 behaves like 100 x 255
on digital images, where both saturate). Results are appended per grid point (resumable).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch

import quantadv
from quantadv import attacks, data, models
from quantadv.defenses import Defended, SoftQuantization, adaptive


@torch.no_grad()
def accuracy(model, x, y) -> float:
    pred = torch.cat([model(x[i:i + 500]).argmax(1) for i in range(0, len(x), 500)])
    return float((pred == y).float().mean())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--levels", default="1,2,4")
    p.add_argument("--alphas", default="255,25500")
    p.add_argument("--noise", type=float, default=0.1)
    p.add_argument("--train-size", type=int, default=10000)
    p.add_argument("--n-clean", type=int, default=2000)
    p.add_argument("--n", type=int, default=100)
    p.add_argument("--eps", type=float, default=0.1)
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--modes", default="pgd,bpda", help="pgd (naive) and/or bpda")
    p.add_argument("--out", required=True)
    args = p.parse_args()
    torch.set_num_threads(1)
    out = Path(args.out)
    store = json.loads(out.read_text()) if out.exists() else {"points": {}}
    store.update({k: v for k, v in vars(args).items() if k != "out"})
    train_x, train_y = data.load("fashion-mnist", "train")
    test_x, test_y = data.load("fashion-mnist", "test")
    xc, yc = quantadv.to_float(test_x[: args.n_clean]), test_y[: args.n_clean]
    x, y = xc[: args.n], yc[: args.n]
    base = models.load("fmnist-cnn")
    store["natural_clean"] = accuracy(base, xc, yc)
    cfg = models.TrainConfig(method="noisy", eps=args.noise, epochs=1, batch_size=128, lr=5e-4, seed=0)
    for levels in [int(v) for v in args.levels.split(",")]:
        for alpha in [float(v) for v in args.alphas.split(",")]:
            key = f"K={levels},alpha={alpha:g}"
            if key in store["points"]:
                continue
            layer = SoftQuantization(levels, alpha)
            rec = {"levels": levels, "alpha": alpha, "sq_clean": accuracy(Defended(layer, base), xc, yc)}
            classifier = models.load("fmnist-cnn")
            t0 = time.perf_counter()
            res = models.train(Defended(layer, classifier), train_x[: args.train_size], train_y[: args.train_size],
                               cfg, progress=False, log=lambda s: None)
            rec["train_seconds"] = round(time.perf_counter() - t0, 1)
            nsq = res.model.eval()
            rec["nsq_clean"] = accuracy(nsq, xc, yc)
            attacked, eot = adaptive(nsq, "bpda")
            broken = torch.zeros(len(y), dtype=torch.bool)
            for loss in ("ce", "margin"):
                for mode, m in [(k, v) for k, v in (("pgd", nsq), ("bpda", attacked)) if k in args.modes.split(",")]:
                    _, info = attacks.pgd(m, x, y, eps=args.eps, step=2.5 * args.eps / args.steps, steps=args.steps,
                                          random_start=True, early_stop=True, loss=loss, eot=eot, seed=0,
                                          return_info=True)
                    ok = ~info["success"].bool()
                    rec[f"{mode}/{loss}"] = float(ok.float().mean())
                    broken |= ~ok
            rec["robust_min"] = float((~broken).float().mean())
            store["points"][key] = rec
            print(key, json.dumps(rec), flush=True)
            out.parent.mkdir(parents=True, exist_ok=True)
            tmp = out.with_suffix(".tmp")
            tmp.write_text(json.dumps(store, indent=1))
            os.replace(tmp, out)


if __name__ == "__main__":
    main()
