"""Paper 002: does the NSQ headline hold against BPDA+PGD with restarts?

Takes the images of a ``scripts/paper002_eval.py`` store that *no* attack broke at ``--eps`` and
attacks them again with BPDA+PGD (identity backward, 100 steps of 2.5 eps / 100, random start,
early stop), ``--restarts`` restarts per loss (``quantadv.attacks.pgd(restarts=R)``, paper 001
Sec. 4.1: an image is broken when any restart breaks it), for both losses::

    python scripts/paper002_restarts.py results/paper002/mnist.json --label nsq --eps 0.3 --restarts 5

Prints the per-image minimum before and after, and writes ``<store>-restarts-<label>.json``.
With ``--images A:B`` it attacks the correctly classified test images ``A..B-1`` instead (BPDA+PGD
with restarts alone, to put the headline on more images).
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
from quantadv.defenses import adaptive


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("store")
    p.add_argument("--label", default="nsq")
    p.add_argument("--eps", type=float, default=0.3)
    p.add_argument("--restarts", type=int, default=5)
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--images", default=None, metavar="A:B",
                   help="instead of the store's survivors, attack test images A..B-1 (more images for the headline)")
    args = p.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    path = Path(args.store)
    store = json.loads(path.read_text())
    rec = store["models"][args.label]
    key = f"{args.eps:g}"
    n = store["n"]
    broken = [not ok for ok in rec["clean_ok"]]
    for res in rec["attacks"].values():
        broken = [a or b for a, b in zip(broken, res["broken"][key], strict=True)]
    todo = torch.tensor([i for i in range(n) if not broken[i]], dtype=torch.long)
    images, labels = data.load(store["data"], "test")
    model = models.load(rec["model"])
    if args.images:
        first, last = (int(v) for v in args.images.split(":"))
        todo = torch.arange(first, last)
        n = last - first
        with torch.no_grad():
            clean_ok = model(quantadv.to_float(images[todo])).argmax(1) == labels[todo]
        todo = todo[clean_ok]
    x, y = quantadv.to_float(images[todo]), labels[todo]
    attacked, eot = adaptive(model, "bpda")
    hit = torch.zeros(len(todo), dtype=torch.bool)
    out = {"eps": args.eps, "restarts": args.restarts, "steps": args.steps, "seed": args.seed,
           "robust_before": len(todo) / n, "attacked_images": todo.tolist()}
    for loss in ("ce", "margin"):
        t0 = time.perf_counter()
        _, info = attacks.pgd(attacked, x, y, eps=args.eps, step=2.5 * args.eps / args.steps, steps=args.steps,
                              random_start=True, early_stop=True, loss=loss, eot=eot, restarts=args.restarts,
                              seed=args.seed, return_info=True)
        ok = info["success"].bool()
        hit |= ok
        out[f"broken/{loss}"] = ok.tolist()
        print(f"{args.label} eps {args.eps}: BPDA+PGD {loss} with {args.restarts} restarts breaks "
              f"{int(ok.sum())}/{len(todo)} of the images no attack broke ({time.perf_counter() - t0:.0f} s)",
              flush=True)
    out["robust_after"] = (len(todo) - int(hit.sum())) / n
    if args.images:
        print(f"images {args.images}: {len(todo)}/{n} correctly classified; robust after BPDA+PGD (CE, CW-inf) "
              f"with {args.restarts} restarts: {100 * out['robust_after']:.1f}%")
    else:
        print(f"per-image minimum at eps {args.eps}: {100 * out['robust_before']:.0f}% -> "
              f"{100 * out['robust_after']:.0f}% of {n} images")
    suffix = f"-{args.images.replace(':', '-')}" if args.images else ""
    target = path.with_name(f"{path.stem}-restarts-{args.label}{suffix}.json")
    target.write_text(json.dumps(out, indent=1))
    print(f"wrote {target}")


if __name__ == "__main__":
    main()
