"""Paper 002: a greedy pixel-flip attack made for a binarising (K = 1) input layer.

Behind ``SoftQuantization(1, alpha)`` with a large alpha, the classifier sees (almost exactly) the
binarised image ``b = [x >= 0.5]``. An L-inf attacker with budget eps can change ``b`` only at the
pixels within eps of 0.5 (it then pushes the pixel by eps across the threshold); everything else
is out of reach. The attack below searches over those flips directly, instead of following a
BPDA gradient through all pixels:

    repeat: g = gradient of the CW-inf margin loss L_A (minimised) w.r.t. the classifier's input at
            the current b; flip the ``--per-step`` reachable, not yet flipped pixels with the largest
            first-order decrease -g_i (1 - 2 b_i) > 0; judge the real defended model at that x'.

``x'`` moves each flipped pixel by the full eps toward the other side (clipped to [0, 1]) and
leaves the rest unchanged, so ``||x' - x||_inf <= eps``; success is judged on the real NSQ model
(soft layer included)::

    python scripts/paper002_flip.py results/paper002/mnist.json --label nsq --eps 0.3

Prints the accuracy under this attack alone and the per-image minimum with every attack of the
store (and the restarts file, if present); writes ``<store>-flip-<label>.json``.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import torch

import quantadv
from quantadv import data, models
from quantadv.attacks.losses import attack_loss
from quantadv.defenses import SoftQuantization


def flip_attack(model, x, y, eps, steps, per_step):
    layer, clf = model.preprocess, model.classifier
    if not isinstance(layer, SoftQuantization) or layer.levels != 1:
        raise SystemExit("the flip attack is for SoftQuantization(levels=1, ...) defenses")
    b0 = (x >= 0.5).to(x.dtype)
    pushed = torch.where(b0 > 0, (x - eps).clamp(0, 1), (x + eps).clamp(0, 1))
    margin = 20.0 / layer.alpha  # beyond it the sigmoid is saturated in float32
    reachable = torch.where(b0 > 0, pushed <= 0.5 - margin, pushed >= 0.5 + margin)
    flipped = torch.zeros_like(b0, dtype=torch.bool)
    done = torch.zeros(len(x), dtype=torch.bool)
    with torch.no_grad():
        done |= model(x).argmax(1) != y
    for _ in range(steps):
        active = (~done).nonzero().flatten()
        if active.numel() == 0:
            break
        b = torch.where(flipped[active], 1 - b0[active], b0[active]).requires_grad_(True)
        loss = attack_loss(clf(b), y[active], None, "margin")
        (g,) = torch.autograd.grad(loss.sum(), b)
        gain = -g * (1 - 2 * b.detach())  # L_A is minimised (<= 0 means adversarial, paper 000 Eq. 5)
        gain = torch.where(reachable[active] & ~flipped[active], gain, torch.full_like(gain, -float("inf")))
        top = gain.flatten(1).topk(per_step, dim=1)
        choose = torch.zeros_like(gain.flatten(1), dtype=torch.bool)
        choose.scatter_(1, top.indices, top.values > 0)
        if not bool(choose.any()):
            break
        flipped[active] |= choose.view_as(b)
        x_adv = torch.where(flipped[active], pushed[active], x[active])
        with torch.no_grad():
            done[active] = model(x_adv).argmax(1) != y[active]
    x_adv = torch.where(flipped, pushed, x)
    assert float((x_adv - x).abs().max()) <= eps + 1e-6
    with torch.no_grad():
        broken = model(x_adv).argmax(1) != y
    return broken, flipped.flatten(1).sum(1)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("store")
    p.add_argument("--label", default="nsq")
    p.add_argument("--eps", type=float, default=0.3)
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--per-step", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    path = Path(args.store)
    store = json.loads(path.read_text())
    rec = store["models"][args.label]
    n, key = store["n"], f"{args.eps:g}"
    images, labels = data.load(store["data"], "test")
    x, y = quantadv.to_float(images[:n]), labels[:n]
    broken, flips = flip_attack(models.load(rec["model"]), x, y, args.eps, args.steps, args.per_step)
    before = [not ok for ok in rec["clean_ok"]]
    for res in rec["attacks"].values():
        before = [a or b for a, b in zip(before, res["broken"][key], strict=True)]
    restarts = path.with_name(f"{path.stem}-restarts-{args.label}.json")
    if restarts.exists():
        r = json.loads(restarts.read_text())
        if r["eps"] == args.eps:
            for loss in ("ce", "margin"):
                for i, hit in zip(r["attacked_images"], r[f"broken/{loss}"], strict=True):
                    before[i] = before[i] or hit
    after = [a or bool(b) for a, b in zip(before, broken.tolist(), strict=True)]
    out = {"eps": args.eps, "steps": args.steps, "per_step": args.per_step, "broken": broken.tolist(),
           "flips": flips.tolist(), "robust_alone": 1 - float(broken.float().mean()),
           "robust_min_before": 1 - sum(before) / n, "robust_min_after": 1 - sum(after) / n}
    print(f"{args.label} eps {args.eps}: flip attack alone leaves {100 * out['robust_alone']:.0f}%; "
          f"per-image minimum {100 * out['robust_min_before']:.0f}% -> {100 * out['robust_min_after']:.0f}% "
          f"(median flips on broken images: {int(flips[broken].median()) if bool(broken.any()) else 0})")
    target = path.with_name(f"{path.stem}-flip-{args.label}.json")
    target.write_text(json.dumps(out, indent=1))
    print(f"wrote {target}")


if __name__ == "__main__":
    main()
