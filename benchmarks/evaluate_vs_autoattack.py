"""``quantadv.evaluate`` vs torchattacks' AutoAttack ("standard") on zoo models (issue 20, targets).

For each case both run on the same first ``--n`` test images, one after the other in this one
process at ``--threads`` (default 1) threads; robust accuracy is the fraction of *all* images
the model still classifies correctly at the returned point (clean errors count as broken),
judged here after checking the eps-ball and [0, 1] as evaluate judges its own outcomes (one forward
pass; a randomised defense: the majority vote over 10 fresh draws). Wall time and the
process's CPU time are recorded; CPU time is the fairer cost on a shared machine.

Cases (``--cases``, default all):

- ``at``: ``fmnist-cnn-at-linf`` at L-inf eps 0.1 (an undefended, adversarially trained model:
  the time target, evaluate at most 1.2x AutoAttack);
- ``nsq``: ``mnist-cnn-nsq`` at eps 0.3 (a ``Defended``: a steep soft quantizer in front,
  paper 002; evaluate adds BPDA);
- ``scaled``: ``fmnist-cnn-at-linf`` with its logits multiplied by ``--scale`` (default 20):
  the same decisions, an over-confident softmax (paper 004; evaluate adds PGD++ HNS when the
  diagnostic flags it);
- ``int8``: ``fmnist-cnn-at-linf`` deployed with torchao ``int8-dynamic``
  (:func:`quantadv.models.deploy`, calibrated on 500 training images). AutoAttack gets the
  torchao model itself, what a user ships (its integer ops have no gradient); if it stops,
  the error is recorded and torchattacks' Square alone (AutoAttack's gradient-free member,
  5000 queries) gives its number. evaluate gets the ``Deployed`` wrapper (same forward);
- ``zoo`` (expands to one case per shipped model, ``zoo:NAME`` for one): the zoo model on its
  manifest's data set at the L-inf eps of that data set's pages (Fashion-MNIST 0.1, MNIST 0.3),
  as ``quantadv.models.load`` returns it (a ``Defended`` keeps its preprocess: evaluate adds BPDA /
  BPDA+EOT, AutoAttack attacks the whole defended model).

``--json FILE`` is rewritten after every case; with ``--resume`` the cases already in FILE (same
``--n`` and ``--steps``) are kept and skipped, so a long ``--cases zoo`` run survives a kill.

torchattacks is an optional peer (``make bench-deps``). Note: torchattacks 3.5.1's
``AutoAttack(version="standard")`` builds APGD, APGD-T and FAB-T with those classes' default
``steps=10``, not the 100 iterations of AutoAttack's standard version (Croce & Hein 2020); Square
gets 5000 queries as in AutoAttack. ``--steps 10`` runs evaluate at the same 10 iterations, for a
like-for-like time.

Run: ``OMP_NUM_THREADS=1 .venv/bin/python benchmarks/evaluate_vs_autoattack.py --n 200 --json out.json``;
``--table out.json [more.json ...]`` prints their Markdown table (benchmarks/RESULTS.md).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import torch
from torch import nn

import quantadv
from quantadv import data, models, to_float


class Scaled(nn.Module):
    """``scale * model(x)``: the same predictions, an over-confident softmax (paper 004)."""

    def __init__(self, model: nn.Module, scale: float):
        super().__init__()
        self.model, self.scale = model, scale

    def forward(self, x):
        return self.scale * self.model(x)


#: L-inf eps per data set, as on the docs pages (Fashion-MNIST pages 002/004: 0.1; MNIST: 0.3).
ZOO_EPS = {"fashion-mnist": 0.1, "mnist-5k": 0.3}


def expand(cases: str) -> list[str]:
    """``--cases`` with ``zoo`` expanded to ``zoo:NAME`` for every shipped model."""
    out = []
    for name in cases.split(","):
        out += [f"zoo:{m}" for m in models.list()] if name == "zoo" else [name]
    return out


def case(name: str, scale: float):
    if name.startswith("zoo:"):
        model_name = name[4:]
        data_name = models.manifest(model_name).get("data", "fashion-mnist")
        return models.load(model_name), data_name, ZOO_EPS[data_name], model_name
    if name == "at":
        return models.load("fmnist-cnn-at-linf"), "fashion-mnist", 0.1, "fmnist-cnn-at-linf"
    if name == "nsq":
        return models.load("mnist-cnn-nsq"), "mnist-5k", 0.3, "mnist-cnn-nsq (Defended, softq alpha 1000)"
    if name == "scaled":
        return (Scaled(models.load("fmnist-cnn-at-linf"), scale).eval(), "fashion-mnist", 0.1,
                f"fmnist-cnn-at-linf, logits x{scale:g}")
    if name == "int8":
        calib = to_float(data.load("fashion-mnist", split="train")[0][:500])
        dep = models.deploy(models.load("fmnist-cnn-at-linf"), "int8-dynamic", calibration=calib)
        return dep, "fashion-mnist", 0.1, "fmnist-cnn-at-linf, torchao int8-dynamic"
    raise SystemExit(f"unknown case {name!r}")


@torch.no_grad()
def robust_mask(model, adv, x, y, eps) -> torch.Tensor:
    """Per image: the returned image (checked to lie in the eps-ball and in [0, 1]) is still classified right,
    judged as evaluate judges its own outcomes (a randomised defense: the majority vote over 10 fresh draws)."""
    from quantadv.eval.ensemble import _predict

    assert float((adv - x).abs().amax()) <= eps + 1e-5 and float(adv.min()) >= 0 and float(adv.max()) <= 1
    return _predict(model, adv, seed=0, batch_size=500, draws=10) == y


def autoattack(target, eps: float, steps: int | None):
    """torchattacks' AutoAttack ("standard"): the class as shipped (``steps=None``: its members' default 10
    iterations), or the same four members (APGD-CE, APGD-T, FAB-T, Square 5000) at ``steps`` iterations, as
    AutoAttack's paper defines the standard version (100)."""
    import torchattacks as ta

    if steps is None:
        return ta.AutoAttack(target, norm="Linf", eps=eps, version="standard", n_classes=10, seed=0)
    return ta.MultiAttack([
        ta.APGD(target, norm="Linf", eps=eps, steps=steps, seed=0, loss="ce", n_restarts=1),
        ta.APGDT(target, norm="Linf", eps=eps, steps=steps, seed=0, n_classes=10, n_restarts=1),
        ta.FAB(target, norm="Linf", eps=eps, steps=steps, seed=0, multi_targeted=True, n_classes=10, n_restarts=1),
        ta.Square(target, norm="Linf", eps=eps, seed=0, n_queries=5000, n_restarts=1),
    ])


def paired_cell(e: dict, a: dict) -> str:
    """``evaluate-only / AutoAttack-only breaks, McNemar p`` on the same images, or ``-`` without per-image data."""
    from quantadv.experiments.summary import mcnemar_exact

    a_robust = a.get("per_image_robust", a.get("square_only_per_image_robust"))
    if "per_image_robust" not in e or a_robust is None:
        return "-"
    e_only, a_only, p = mcnemar_exact([not r for r in e["per_image_robust"]], [not r for r in a_robust])
    return f"{e_only} / {a_only}, p = {p:.2g}"


def timed(fn):
    t, c = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - t, time.process_time() - c


def table(paths: list[str]) -> str:
    """The Markdown table of benchmarks/RESULTS.md from ``--json`` files (their rows in order): per case the
    clean and robust accuracy (%) of evaluate (float and 8-bit) and AutoAttack, their CPU times, evaluate's
    breaks per attack."""
    rows = []
    for path in paths:
        with open(path) as fh:
            rows += json.load(fh)["rows"]
    lines = ["| model | eps | images | clean | evaluate, float | evaluate, 8-bit | AutoAttack "
             "| CPU s, evaluate / AutoAttack | evaluate's breaks per attack | breaks only evaluate / only AutoAttack |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- | --- | --- |"]
    for r in rows:
        e, a = r["evaluate"], r["autoattack"]
        aa = (f"{100 * a['robust']:.1f}%" if "robust" in a
              else f"stops ({a['error'].split(':')[0]}); Square alone {100 * a['square_only_robust']:.1f}%")
        if r.get("aa_steps"):
            aa += f" ({r['aa_steps']} iterations)"
        plan = ", ".join(f"{name} {broken}" for name, broken, _ in e["plan"])
        lines.append(f"| `{r['model']}` | {r['eps']:g} | {r['n']} | {100 * e['clean']:.1f}% | {100 * e['robust']:.1f}% "
                     f"| {100 * e['robust_digital']:.1f}% | {aa} | {e['cpu']:.0f} / {a['cpu']:.0f} "
                     f"({e['cpu'] / max(a['cpu'], 1e-9):.2f}x) | {plan} | {paired_cell(e, a)} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=200)
    p.add_argument("--cases", default="int8,nsq,scaled,at")
    p.add_argument("--scale", type=float, default=20.0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--steps", type=int, default=100,
                   help="evaluate's APGD iterations (100, AutoAttack's; 10 is what torchattacks' AutoAttack runs)")
    p.add_argument("--aa-steps", type=int, default=None,
                   help="run torchattacks' four AutoAttack members at this many iterations (100 = AutoAttack's "
                        "paper) instead of its AutoAttack class as shipped (10)")
    p.add_argument("--json", default=None)
    p.add_argument("--resume", action="store_true", help="keep and skip the cases already in --json")
    p.add_argument("--table", metavar="JSON", nargs="+", default=None,
                   help="print the Markdown table of --json files (one table, their rows in order) and exit")
    args = p.parse_args()
    if args.table:
        return print(table(args.table))
    torch.set_num_threads(args.threads)
    import torchattacks as ta

    rows = []
    if args.resume and args.json and os.path.exists(args.json):
        with open(args.json) as fh:
            rows = [r for r in json.load(fh)["rows"]
                    if r["n"] == args.n and r["steps"] == args.steps and r.get("aa_steps") == args.aa_steps]
    done = {r["case"] for r in rows}
    for name in expand(args.cases):
        if name in done:
            continue
        model, data_name, eps, label = case(name, args.scale)
        xs, ys = data.load(data_name)
        x, y = to_float(xs[: args.n]), ys[: args.n]
        row = {"case": name, "model": label, "data": data_name, "eps": eps, "n": args.n, "steps": args.steps,
               "aa_steps": args.aa_steps}
        print(f"== {label}, eps {eps}, {args.n} images", flush=True)

        result, wall, cpu = timed(lambda: quantadv.evaluate(model, x, y, norm="linf", eps=eps, seed=0, steps=args.steps,  # noqa: B023
                                                            log=lambda s: print("   ", s, flush=True)))
        row["evaluate"] = {"robust": result.robust_accuracy, "robust_digital": result.digital_robust_accuracy,
                           "clean": result.clean_accuracy, "wall": wall, "cpu": cpu,
                           "plan": [[a.name, a.broken, round(a.seconds, 1)] for a in result.plan],
                           "checks": [str(c) for c in result.checks],
                           "per_image_robust": [bool(b) for b in result.robust.tolist()],
                           "per_image_robust_digital": [bool(b) for b in result.robust_digital.tolist()]}
        print(f"   evaluate: robust {100 * result.robust_accuracy:.1f}% "
              f"(8-bit {100 * result.digital_robust_accuracy:.1f}%)"
              f" wall {wall:.0f} s cpu {cpu:.0f} s", flush=True)

        target = model.quantized if name == "int8" else model
        aa = autoattack(target, eps, args.aa_steps)
        try:
            adv, wall, cpu = timed(lambda: aa(x, y))  # noqa: B023
            mask = robust_mask(target, adv, x, y, eps)
            row["autoattack"] = {"robust": float(mask.double().mean()), "wall": wall, "cpu": cpu,
                                 "per_image_robust": [bool(b) for b in mask.tolist()]}
        except RuntimeError as exc:
            msg = str(exc).splitlines()[0]
            print(f"   AutoAttack stopped: RuntimeError: {msg}", flush=True)
            sq = ta.Square(target, norm="Linf", eps=eps, n_queries=5000, n_restarts=1, p_init=0.8, loss="margin",
                           seed=0)
            adv, wall, cpu = timed(lambda: sq(x, y))  # noqa: B023
            mask = robust_mask(target, adv, x, y, eps)
            row["autoattack"] = {"error": f"RuntimeError: {msg}",
                                 "square_only_robust": float(mask.double().mean()),
                                 "square_only_per_image_robust": [bool(b) for b in mask.tolist()],
                                 "wall": wall, "cpu": cpu}
        a = row["autoattack"]
        print(f"   AutoAttack: { {k: v for k, v in a.items() if 'per_image' not in k} }", flush=True)
        row["load_after"] = os.getloadavg()
        rows.append(row)
        out = {"rows": rows, "threads": args.threads, "torch": torch.__version__, "torchattacks": ta.__version__,
               "machine": platform.processor() or platform.machine()}
        if args.json:  # after every case, so that a stopped run keeps what it measured
            with open(args.json, "w") as fh:
                fh.write(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
