"""APGD-CE and APGD-DLR (torchattacks) on the images of a paper 001 config, per-image outcomes.

The evaluation a careful evaluator would run today (Croce & Hein 2020, Auto-PGD), at the same
budget as the config's headline runs (L-inf eps, number of steps, one random start per run),
on the same images (the config's data subset; images the model misclassifies are not attacked
and count as errors, as in the runner). torchattacks is an optional peer dependency
(``make bench-deps``). APGD returns, per image, the best iterate it found (it keeps any
adversarial iterate), so it is compared with our attacks' ``adv_any`` as well as their last
iterate.

Writes ``results/paper001/apgd-<experiment>.json``: per (loss, eps, seed) the list of dataset
indices and per-image success; it resumes (finished (loss, eps, seed) entries are skipped).

    OMP_NUM_THREADS=1 nice -n 5 .venv/bin/python scripts/paper001_apgd.py configs/paper001-mnist.yaml \\
        --eps 0.3 --steps 100 --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch

from quantadv import to_float
from quantadv.experiments.config import load_config


def _load(cfg):
    from quantadv import data, models

    spec = cfg.models[0]
    model = models.load(spec.name)
    images, labels = data.load(cfg.data.name, split=cfg.data.split)
    idx = torch.tensor(cfg.data.select(images.shape[0]), dtype=torch.int64)
    return spec.name, model, to_float(images[idx]), labels[idx], idx


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("config")
    ap.add_argument("--eps", type=float, nargs="+", required=True)
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--losses", nargs="+", default=["ce", "dlr"])
    ap.add_argument("--batch", type=int, default=100)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    try:
        import torchattacks
    except ImportError:
        raise SystemExit("torchattacks is not installed: make bench-deps "
                         "(or pip install --no-deps torchattacks)") from None
    cfg = load_config(args.config)
    name, model, x, y, idx = _load(cfg)
    out_path = Path("results/paper001") / f"apgd-{cfg.experiment}.json"
    out_path.parent.mkdir(parents=True, exist_ok=True)
    store = json.loads(out_path.read_text()) if out_path.exists() else {
        "experiment": cfg.experiment, "model": name, "data": cfg.data.name, "torchattacks": torchattacks.__version__,
        "runs": {}}
    with torch.no_grad():
        clean = torch.cat([model(x[i:i + args.batch]).argmax(1) for i in range(0, len(x), args.batch)])
    correct = clean == y
    for seed in args.seeds:  # seed outermost: an interrupted job leaves whole runs of every loss
        for eps in args.eps:
            for loss in args.losses:
                key = f"{loss}/eps={eps}/steps={args.steps}/seed={seed}"
                if key in store["runs"]:
                    continue
                t0 = time.time()
                success = ~correct.clone()
                todo = correct.nonzero().flatten()
                for s in range(0, len(todo), args.batch):
                    rows = todo[s:s + args.batch]
                    atk = torchattacks.APGD(model, norm="Linf", eps=eps, steps=args.steps, n_restarts=1,
                                            loss=loss, seed=seed)
                    adv = atk(x[rows], y[rows]).detach()
                    assert float((adv - x[rows]).abs().max()) <= eps + 1e-6
                    with torch.no_grad():
                        success[rows] = model(adv).argmax(1) != y[rows]
                store["runs"][key] = {"loss": loss, "eps": eps, "steps": args.steps, "seed": seed,
                                      "idx": idx.tolist(), "success": success.tolist(),
                                      "attacked": correct.tolist(), "seconds": round(time.time() - t0, 1)}
                tmp = out_path.with_suffix(".json.tmp")
                tmp.write_text(json.dumps(store))
                os.replace(tmp, out_path)
                acc = 1 - success.float().mean().item()
                print(f"{key}: accuracy {acc:.4f} ({time.time() - t0:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
