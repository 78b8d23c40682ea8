"""Paper 002 evaluation: Natural vs PGD-AT vs SQ vs NSQ under PGD, BPDA+PGD and stronger attacks.

Runs every attack of docs/paper-002-soft-quantization.md on the first ``--n`` test images of a
data set and writes one JSON store (per-image outcomes, so every number of the page can be
recomputed, including per-image minima over attacks)::

    python scripts/paper002_eval.py --data mnist-5k --n 200 \\
        --model natural=mnist-cnn --model nsq=mnist-cnn-nsq \\
        --model sq=softq:levels=1,alpha=1000@mnist-cnn --transfer-from mnist-cnn \\
        --eps 0.05,0.1,0.2,0.3 --soft-alpha 10,100 --out results/paper002/mnist.json

Models: ``LABEL=ZOO_NAME`` or ``LABEL=SPEC@ZOO_NAME`` (the defense SPEC put in front of the
zoo model's classifier without retraining: paper 002's SQ).

Attacks, each with ``loss`` in {ce, margin} (margin = CW-inf, paper 000 Eq. 5), L-inf PGD with
``--steps`` steps of size ``2.5 eps / steps`` (Madry's rule) from a uniform random start
(seeded), keeping the first adversarial iterate (early stop):

- ``pgd``: on the model as deployed (the naive white-box attack of paper 002, Sec. 5);
- ``bpda``: the defense's forward, identity backward (paper 002 Sec. 5; Athalye et al. 2018);
- ``bpda-soft{A}``: the defense's forward, backward = the derivative of SoftQuantization with
  the same K and a lower alpha ``A`` (one step past the paper);
  For L-inf (sign) steps this equals ``bpda`` whenever the derivative does not underflow to 0
  (it is positive, so it never changes a gradient's sign): a check, not a new attack;
- ``surrogate{A}``: PGD on the smooth surrogate ``F(S_A(x))`` (forward *and* backward through
  the soft layer at the lower alpha ``A``), last iterate evaluated on the target;
- ``transfer``: PGD on the ``--transfer-from`` model, its output evaluated on the target.

An image broken at a smaller eps counts as broken at every larger eps (the same perturbation is
admissible there), and only the images not yet broken are attacked at the next eps: the
reported curve is "broken by this attack at some eps' <= eps". Images the model misclassifies
clean count as broken everywhere.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import torch

import quantadv
from quantadv import attacks, data, models
from quantadv.defenses import Defended, SoftQuantization, adaptive, bpda, parse_defense

ROOT = Path(__file__).resolve().parents[1]


def build_model(text: str):
    if "@" in text:
        spec, name = text.rsplit("@", 1)
        base = models.load(name)
        classifier = base.classifier if isinstance(base, Defended) else base
        return Defended(parse_defense(spec), classifier).eval()
    return models.load(text)


@torch.no_grad()
def predict(model, x, batch=500):
    return torch.cat([model(x[i:i + batch]).argmax(1) for i in range(0, x.shape[0], batch)])


def pgd_broken(model, x, y, eps, loss, steps, eot, seed):
    _, info = attacks.pgd(model, x, y, eps=eps, step=2.5 * eps / steps, steps=steps, random_start=True,
                          early_stop=True, loss=loss, eot=eot, seed=seed, return_info=True)
    return info["success"].bool()


def sweep(target, attacked, x, y, clean_ok, eps_list, loss, steps, eot, seed, craft=None):
    """Per eps, a bool list: image broken at some eps' <= eps. ``craft`` (transfer) makes x_adv."""
    broken = ~clean_ok.clone()
    out = {}
    for eps in eps_list:
        todo = (~broken).nonzero().flatten()
        if todo.numel():
            if craft is None:
                hit = pgd_broken(attacked, x[todo], y[todo], eps, loss, steps, eot, seed)
            else:
                x_adv = craft(todo, eps, loss)
                hit = predict(target, x_adv) != y[todo]
            broken[todo[hit]] = True
        out[f"{eps:g}"] = broken.tolist()
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True)
    p.add_argument("--n", type=int, default=200)
    p.add_argument("--model", action="append", required=True, metavar="LABEL=NAME|SPEC@NAME")
    p.add_argument("--transfer-from", default=None, metavar="ZOO_NAME")
    p.add_argument("--eps", default="0.05,0.1,0.2,0.3")
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--losses", default="ce,margin")
    p.add_argument("--soft-alpha", default="", help="lower alphas for bpda-soft (comma-separated)")
    p.add_argument("--surrogate-alpha", default="",
                   help="alphas of smooth surrogates F(S_alpha(x)) to transfer from (comma-separated)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True)
    args = p.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))

    eps_list = [float(e) for e in args.eps.split(",")]
    losses = args.losses.split(",")
    soft_alphas = [float(a) for a in args.soft_alpha.split(",") if a]
    surrogate_alphas = [float(a) for a in args.surrogate_alpha.split(",") if a]
    images, labels = data.load(args.data, "test")
    x, y = quantadv.to_float(images[: args.n]), labels[: args.n]
    out_path = Path(args.out)
    store = json.loads(out_path.read_text()) if out_path.exists() else {}
    store.update({
        "data": args.data, "n": int(x.shape[0]), "eps": eps_list, "steps": args.steps, "seed": args.seed,
        "step_rule": "2.5*eps/steps", "random_start": True, "early_stop": True,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores (shared), torch {torch.__version__}, "
                   f"{torch.get_num_threads()} thread(s)",
    })
    store.setdefault("models", {})

    def save():
        out_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = out_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(store, indent=1))
        os.replace(tmp, out_path)

    def crafter(source):
        """A transfer attack from ``source``: its PGD output (all n images, cached per eps and loss)."""
        cache: dict[tuple[float, str], torch.Tensor] = {}

        def craft(rows, eps, loss):
            if (eps, loss) not in cache:
                cache[eps, loss] = attacks.pgd(source, x, y, eps=eps, step=2.5 * eps / args.steps,
                                               steps=args.steps, random_start=True, loss=loss, seed=args.seed)
            return cache[eps, loss][rows]

        return craft

    natural_craft = crafter(models.load(args.transfer_from)) if args.transfer_from else None

    test_x, test_y = data.load(args.data, "test")
    for entry in args.model:
        label, _, name = entry.partition("=")
        model = build_model(name)
        rec = store["models"].setdefault(label, {"model": name, "attacks": {}})
        rec["model"] = name
        rec["clean_accuracy_full_test"] = float(
            (predict(model, quantadv.to_float(test_x)) == test_y).float().mean())
        clean_ok = predict(model, x) == y
        rec["clean_ok"] = clean_ok.tolist()
        print(f"{label} ({name}): clean {rec['clean_accuracy_full_test']:.4f} on the full test split, "
              f"{int(clean_ok.sum())}/{len(y)} on the evaluated images", flush=True)
        runs = [("pgd", model, 1, None)]
        if isinstance(model, Defended):
            runs.append(("bpda", adaptive(model, "bpda")[0], 1, None))
            pre = model.preprocess
            if isinstance(pre, SoftQuantization):
                for a in soft_alphas:
                    attacked = Defended(bpda(pre, backward=SoftQuantization(pre.levels, a)), model.classifier)
                    runs.append((f"bpda-soft{a:g}", attacked, 1, None))
                for a in surrogate_alphas:
                    surrogate = Defended(SoftQuantization(pre.levels, a), model.classifier).eval()
                    runs.append((f"surrogate{a:g}", None, 1, crafter(surrogate)))
        if natural_craft is not None and name != args.transfer_from:
            runs.append(("transfer", None, 1, natural_craft))
        for attack_name, attacked, eot, run_craft in runs:
            for loss in losses:
                key = f"{attack_name}/{loss}"
                if key in rec["attacks"]:
                    continue
                t0 = time.perf_counter()
                res = sweep(model, attacked, x, y, clean_ok, eps_list, loss, args.steps, eot, args.seed,
                            craft=run_craft)
                secs = time.perf_counter() - t0
                rec["attacks"][key] = {"broken": res, "seconds": round(secs, 1)}
                acc = ", ".join(f"{e}: {1 - sum(b) / len(b):.3f}" for e, b in res.items())
                print(f"  {key:24s} robust accuracy {acc}  ({secs:.0f} s)", flush=True)
                save()
    save()


if __name__ == "__main__":
    main()
