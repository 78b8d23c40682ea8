"""Paper 004 on Fashion-MNIST: every table's measurement for one or more zoo models.

    OMP_NUM_THREADS=1 nice -n 5 .venv/bin/python scripts/paper004_experiments.py \\
        --models fmnist-cnn fmnist-cnn-at-linf fmnist-cnn-bc fmnist-cnn-mdtanh fmnist-cnn-waq \\
        fmnist-cnn-bc-at-linf --n 300 --out results/paper004

writes ``<out>/<model>.json`` per model (resumable: a part already in the file is not rerun)
with clean accuracy; Table 2 (PGD-Linf vs PGD++ NJS/HNS), Table 3 (FGSM vs FGSM++), Table 4
(PGD-L2 vs PGD++), Table 6 (NJS with varying rho), Table 8 (Prop. 1 beta per image with
varying rho), APGD-CE / APGD-DLR from torchattacks on the same images and budgets, Table 7
(Jacobian statistics on the correctly classified ones of the N images) and the Sec. 3.1
masking checks (first ``--n-checks`` images). A model name ``NAME*k`` attacks zoo model NAME
with its logits multiplied by k (an over-confident copy with the same predictions).
``scripts/paper004_report.py`` turns the JSON files into the
tables and figure of docs/paper-004-binary-networks.md.

Budgets, scaled from CIFAR-10 (8/255, step 2/255, 20 steps; L2 120/255, step 15/255) to
Fashion-MNIST: L-inf eps 0.1, step 0.025 (= eps / 4 as 2/8), 20 steps; FGSM eps 0.1; L2 eps
1.0, step 0.125 (= eps / 8 as 15/120), 20 steps. Every attack uses seed 0 and a random start
(FGSM/FGSM++ none), on the first N test images; accuracies are over all N images.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from quantadv import attacks, data, models, to_float
from quantadv.attacks.temperature import prop1_temperature
from quantadv.diagnostics import masking_checks, signal_report

LINF = {"norm": "linf", "eps": 0.1, "step": 0.025, "steps": 20}
L2 = {"norm": "l2", "eps": 1.0, "step": 0.125, "steps": 20}
FGSM_EPS = 0.1
RHOS_T6 = [1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 2e-1]
RHOS_T8 = [1e-15, 1e-9, 1e-5, 1e-1, 2e-1, 5e-1]


class ScaledLogits(torch.nn.Module):
    """``scale * model(x)``: the same decision boundary, ``scale`` times the confidence.

    ``--models fmnist-cnn*5`` attacks ``fmnist-cnn`` with its logits multiplied by 5: an
    over-confident copy (mean JSV about 5x the float network's, like the paper's BNNs in
    Table 1) whose every prediction is the original's.
    """

    def __init__(self, model: torch.nn.Module, scale: float) -> None:
        super().__init__()
        self.model, self.scale = model, scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x) * self.scale


def load_model(name: str) -> torch.nn.Module:
    base, _, scale = name.partition("*")
    model = (models.load_file(base) if base.endswith(".safetensors") else models.load(base)).eval()
    return ScaledLogits(model, float(scale)).eval() if scale else model


@torch.no_grad()
def accuracy(model, x, y) -> float:
    return float((torch.cat([model(x[i : i + 500]).argmax(1) for i in range(0, len(x), 500)]) == y).float().mean())


def apgd(model, x, y, loss: str, norm: str, eps: float, steps: int) -> torch.Tensor:
    import torchattacks

    atk = torchattacks.APGD(model, norm="Linf" if norm == "linf" else "L2", eps=eps, steps=steps, n_restarts=1,
                            loss=loss, seed=0)
    return atk(x, y)


def run_model(name: str, x: torch.Tensor, y: torch.Tensor, out: Path, n_checks: int, surrogate: str | None,
              parts: set[str], rhos: list[float] | None = None) -> None:
    path = out / f"{Path(name).name.removesuffix('.safetensors')}.json"
    res = json.loads(path.read_text()) if path.exists() else {}
    model = load_model(name)
    res["model"] = name
    res["n"] = int(len(x))
    res["clean"] = accuracy(model, x, y)

    def save():
        path.write_text(json.dumps(res, indent=1, sort_keys=True))

    def measure(key: str, fn) -> None:
        if key in res:
            return
        t0 = time.perf_counter()
        x_adv = fn()
        res[key] = {"acc": accuracy(model, x_adv, y), "seconds": round(time.perf_counter() - t0, 1)}
        print(f"{name:<24} {key:<28} accuracy {100 * res[key]['acc']:6.2f}%  ({res[key]['seconds']} s)", flush=True)
        save()

    beta1 = attacks.njs_temperature(model, x, y)
    res["beta1"] = beta1
    if "t2" in parts:
        measure("pgd_linf", lambda: attacks.pgd(model, x, y, random_start=True, seed=0, **LINF))
        for sc in ("njs", "hns"):
            measure(f"pgdpp_linf_{sc}", lambda sc=sc: attacks.pgd_pp(model, x, y, scaling=sc, seed=0, **LINF))
    if "t3" in parts:
        measure("fgsm", lambda: attacks.fgsm(model, x, y, eps=FGSM_EPS))
        for sc in ("njs", "hns"):
            measure(f"fgsmpp_{sc}", lambda sc=sc: attacks.fgsm_pp(model, x, y, eps=FGSM_EPS, scaling=sc))
    if "t4" in parts:
        measure("pgd_l2", lambda: attacks.pgd(model, x, y, random_start=True, seed=0, **L2))
        for sc in ("njs", "hns"):
            measure(f"pgdpp_l2_{sc}", lambda sc=sc: attacks.pgd_pp(model, x, y, scaling=sc, seed=0, **L2))
    if "apgd" in parts:
        for loss in ("ce", "dlr"):
            measure(f"apgd_{loss}_linf", lambda loss=loss: apgd(model, x, y, loss, "linf", LINF["eps"], LINF["steps"]))
    if "t6" in parts:
        for rho in rhos or RHOS_T6:
            measure(f"t6_njs_rho{rho:g}", lambda rho=rho: attacks.pgd_pp(model, x, y, scaling="njs", rho=rho, seed=0,
                                                                         **LINF))
    if "t8" in parts:
        with torch.no_grad():
            logits = model(x)
        for rho in rhos or RHOS_T8:
            beta = prop1_temperature(logits, rho) if rho < 0.9 else None
            measure(f"t8_prop1_rho{rho:g}", lambda beta=beta: attacks.pgd_pp(model, x, y, temperature=beta, seed=0,
                                                                             **LINF))
    if "t7" in parts and "t7" not in res:
        t0 = time.perf_counter()
        rows = signal_report(model, x, y, samples=len(x))
        res["t7"] = [r.__dict__ for r in rows]
        print(f"{name:<24} table 7 ({time.perf_counter() - t0:.0f} s)", flush=True)
        for r in rows:
            print("   " + r.row(), flush=True)
        save()
    if "checks" in parts and "checks" not in res:
        t0 = time.perf_counter()
        sur = models.load(surrogate).eval() if surrogate and surrogate != name else None
        checks = masking_checks(model, x[:n_checks], y[:n_checks], surrogate=sur, seed=0,
                                eps=LINF["eps"], step=LINF["step"], steps=LINF["steps"])
        res["checks"] = [{"name": c.name, "passed": c.passed, "evidence": c.evidence, "values": c.values}
                         for c in checks]
        res["checks_n"] = int(min(n_checks, len(x)))
        res["checks_surrogate"] = sur is not None and surrogate
        print(f"{name:<24} masking checks ({time.perf_counter() - t0:.0f} s)", flush=True)
        for c in checks:
            print("   " + str(c), flush=True)
        save()
    save()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", required=True)
    p.add_argument("--n", type=int, default=300)
    p.add_argument("--n-checks", type=int, default=100)
    p.add_argument("--surrogate", default="fmnist-cnn", help="float surrogate of the transfer check")
    p.add_argument("--parts", nargs="+", default=["t2", "t3", "t4", "apgd", "t7", "checks"])
    p.add_argument("--rhos", nargs="+", type=float, default=None, help="rho values of t6/t8 (default: the paper's)")
    p.add_argument("--out", default="results/paper004")
    args = p.parse_args()
    torch.set_num_threads(1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    images, labels = data.load("fashion-mnist", "test")
    x, y = to_float(images[: args.n]), labels[: args.n]
    for name in args.models:
        run_model(name, x, y, out, args.n_checks, args.surrogate, set(args.parts), args.rhos)


if __name__ == "__main__":
    main()
