"""Figures of docs/paper-001-quantized-gradients.md (paper 001); its tables come from ``quantadv report``.

Reads the stores of ``quantadv run configs/paper001-<name>.yaml`` (``results/paper001-<name>.db``),
keeps a compact per-image extract next to the figures (``docs/img/paper001/outcomes-<name>.csv.gz``,
committed, so the figures can be redrawn without the stores) and writes PNGs to ``docs/img/paper001/``.

    python scripts/paper001_figures.py mnist fmnist         # Figs. 3 / 4 analogs and the b sweep
    python scripts/paper001_figures.py hist                 # Fig. 2 histograms (quantadv diagnose --gradients)
    quantadv report results/paper001-mnist.db --markdown    # the tables: average / lowest run / worst case
                                                            # per criterion (robust.csv), paired tests

Conventions: accuracy is over all images of the subset (misclassified ones are not attacked and
count as errors), ``1 - success``, averaged over the independent runs (``repeat``) of one attack;
"k steps" is the ``k``-th iterate of the 100-step run (a k-step attack with a fixed step size).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np
from _figures import ROOT, pyplot, save

RESULTS = ROOT / "results"
OUT = ROOT / "docs" / "img" / "paper001"
HEADLINE_EPS = {"mnist": 0.3, "fmnist": 0.1}
MODEL = {"mnist": "mnist-cnn-at-linf", "fmnist": "fmnist-cnn-at-linf"}


def method_name(attack: str, b, step: float = 0.01, loss: str | None = None) -> str:
    if attack.endswith("apgd.py:apgd"):  # the APGD config entry (configs/entries/apgd.py)
        return f"APGD-{(loss or 'ce').upper()}"
    if step is not None and not math.isclose(step, 0.01):
        return f"{method_name(attack, b)} (step {step:g})"
    if attack == "pgd":
        return "PGD"
    if attack == "pqgd":
        return "PGD" if b == 1 else f"PQGD_{b}"
    if attack == "daa_blob":
        return "BLOB" if b is None else f"BLOB_QG_{b}"
    return attack


# ----------------------------------------------------------------------------- extraction
def extract(name: str):
    """Per-image outcomes of one experiment's store as a pandas DataFrame (and its committed extract)."""
    import pandas as pd

    from quantadv.experiments import load_results

    csv = OUT / f"outcomes-{name}.csv.gz"
    db = RESULTS / f"paper001-{name}.db"
    if not db.exists():
        if csv.exists():
            print(f"{db.relative_to(ROOT)} not found: using the committed extract {csv.relative_to(ROOT)}")
            return pd.read_csv(csv)
        sys.exit(f"neither {db} nor {csv}: run quantadv run configs/paper001-{name}.yaml first")
    rows = []
    for r in load_results(db, as_frame=False):
        if r["postprocess"] != "none":
            continue
        p = {"attack": r["attack_name"], **json.loads(r["params"])}
        info = json.loads(r["info"]) if r["info"] else {}
        skipped, success = info.get("skipped") == "misclassified", bool(r["success"])
        # runs of one attack from several entries are all independent runs: name them by entry and run id
        row = dict(method=method_name(p["attack"], p.get("b"), p.get("step"), p.get("loss")), attack=p["attack"],
                   b=p.get("b"), eps=p["eps"], steps=p["steps"], restarts=p.get("restarts", 1),
                   repeat=f"{r['attack']}#{r['run_id']}", idx=r["idx"], skipped=skipped, success=success)
        first = info.get("attack", {}).get("first_adv")  # the engine's first adversarial iterate (-1: none)
        if first is None:  # APGD (its best iterate of all its iterations)
            row["any"] = row[f"at{p['steps']}"] = success
        else:  # broken after k steps: an iterate <= k was adversarial
            row["any"] = success or first >= 0
            for k in range(10, p["steps"] + 1, 10):
                row[f"at{k}"] = success if skipped else 0 <= first <= k
        rows.append(row)
    df = pd.DataFrame(rows)
    OUT.mkdir(parents=True, exist_ok=True)
    df.to_csv(csv, index=False, compression={"method": "gzip", "mtime": 0})
    print(f"wrote {csv.relative_to(ROOT)} ({len(df)} rows)")
    return df


def per_image(df, method: str, eps: float, col: str, steps: int = 100):
    """(runs x images) boolean matrix of 'robust' (not broken) for one method, images sorted by idx."""
    sub = df[(df.method == method) & np.isclose(df.eps, eps) & (df.steps == steps) & (df.restarts == 1)]
    if sub.empty or col not in sub or sub[col].isna().all():
        return None
    mat = sub.pivot_table(index="repeat", columns="idx", values=col, aggfunc="first")
    mat = mat.reindex(columns=sorted(df.idx.unique()))
    mat = mat[mat.notna().all(axis=1)]  # complete runs only (a run still in progress is left out)
    if mat.empty:
        return None
    return ~mat.to_numpy(dtype=bool)


#: the attacks of the figures, in the order of the legends
ORDER = ["PGD", "PGD (step 0.0375)", "PQGD_10", "PQGD_100", "PQGD_200", "PQGD_500", "PQGD_1000", "PQGD_5000",
         "BLOB", "BLOB_QG_100", "BLOB_QG_200", "APGD-CE", "APGD-DLR"]


def acc(df, method: str, eps: float, col: str, runs: int | None = None) -> float:
    """Accuracy (%) of ``method``, mean over its (first ``runs``) complete runs; NaN when not run."""
    robust = per_image(df, method, eps, col)
    return np.nan if robust is None else robust[:runs].mean() * 100


def figures(name: str) -> None:
    """Figs. 3 and 4 analogs and the b sweep of one experiment (the tables: quantadv report --markdown)."""
    df = extract(name)
    eps0 = HEADLINE_EPS[name]
    methods = [m for m in ORDER if m in set(df.method)]
    bs = [m for m in methods if m == "PGD" or m.startswith("PQGD_")]
    eps_values = sorted(set(df[df.method.isin(["PGD", "PQGD_200", "PQGD_1000"])].eps))
    plt = pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(11, 3.2))
    ax = axes[0]
    steps = list(range(10, 101, 10))
    for m in methods:
        if m.startswith("APGD"):
            if per_image(df, m, eps0, "at100") is not None:
                ax.scatter([100], [acc(df, m, eps0, "at100")], marker="x", label=m, zorder=3)
        elif m in ("PGD", "PGD (step 0.0375)", "PQGD_100", "PQGD_200", "PQGD_1000", "BLOB", "BLOB_QG_200", "PQGD_5000"):
            ax.plot(steps, [acc(df, m, eps0, f"at{k}") for k in steps], marker=".", label=m)
    ax.set_xlabel("steps")
    ax.set_ylabel("accuracy (%)")
    ax.set_title(f"Fig. 4 analog: {MODEL[name]}, eps {eps0}")
    ax.legend(fontsize=6)
    ax = axes[1]
    for m in ["PGD", "PQGD_200", "PQGD_1000"]:
        ax.plot(eps_values, [acc(df, m, e, "at100") for e in eps_values], marker="o", label=m)
    ax.set_xlabel("eps (L-inf, [0,1] units)")
    ax.set_ylabel("accuracy (%)")
    ax.set_title("Fig. 3 analog: 100 steps")
    ax.legend(fontsize=6)
    ax = axes[2]
    for col in ("at20", "at100"):
        ax.plot([1 if m == "PGD" else int(m.split("_")[1]) for m in bs], [acc(df, m, eps0, col, 1) for m in bs],
                marker="o", label=col.replace("at", "") + " steps")
    ax.set_xscale("log")
    ax.set_xlabel("b (1 = PGD)")
    ax.set_ylabel("accuracy (%)")
    ax.set_title(f"b sweep (Sec. 4.5), eps {eps0}, run 1")
    ax.legend(fontsize=6)
    save(fig, OUT / f"curves-{name}.png")


# ----------------------------------------------------------------------------- Fig. 2
def hist(path: Path = RESULTS / "paper001" / "gradients-mnist.npz") -> None:
    """Fig. 2 analog from ``quantadv diagnose --gradients``: sign, raw and quantized gradients."""
    if not path.exists():
        sys.exit(f"{path} is missing: run quantadv diagnose --model mnist-cnn-at-linf --data mnist-5k --images 100 "
                 f"--eps 0.3 --step 0.01 --gradients {path.relative_to(ROOT)}")
    z = np.load(path)
    g, cap = z["gradient"], float(z["eps"] / z["step"])
    plt = pyplot()
    fig, axes = plt.subplots(2, 3, figsize=(10, 5))
    panels = [("(a) sign gradient", np.sign(g))] + [
        (f"({'bcde'[i]}) b = {b}", z[f"quantized_{b}"]) for i, b in enumerate(z["b"][:4])]
    for ax, (title, q) in zip(axes.flat, panels, strict=False):
        v = np.clip(q.flatten(), -cap, cap)  # the projection caps a move at eps / step steps
        if title.startswith("(a)"):
            ax.hist(v, bins=5, range=(-2.5, 2.5))
        else:
            ax.hist(v, bins=61, range=(-cap - 0.5, cap + 0.5), log=True)
        ax.set_title(title)
    ax = axes.flat[5]
    ax.hist(g.flatten(), bins=101, log=True)
    ax.set_title("(f) raw gradient (d loss / d x)")
    fig.suptitle(f"Fig. 2 analog: mnist-cnn-at-linf, {len(g)} test images at a random start (eps {float(z['eps']):g}); "
                 f"values capped at +-{cap:.0f} = eps / step", fontsize=8)
    save(fig, OUT / "fig2-histograms.png")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("what", nargs="+", choices=["mnist", "fmnist", "hist"])
    args = ap.parse_args()
    for w in args.what:
        if w == "hist":
            hist()
        else:
            figures(w)


if __name__ == "__main__":
    main()
