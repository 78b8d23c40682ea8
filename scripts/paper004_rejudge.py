"""Paper 004 re-judged at scale (issue 17 §3): the page's tables from the runner's stores and the
``quantadv diagnose --json`` files, plus the "why is PGD++ weaker" breakdown. Reads only.

    .venv/bin/python scripts/paper004_rejudge.py \
        --stores results/paper004-full-linf.db results/paper004-full-l2.db results/paper004-full-2k.db \
        --diagnose results/paper004-diagnose

    .venv/bin/python scripts/paper004_rejudge.py --figure docs/img/paper004/fig1.png \
        results/paper004-full-linf.db pgd pgd_pp-njs pgd_pp-hns fgsm fgsm_pp-njs fgsm_pp-hns

prints markdown (``quantadv report STORE --markdown`` prints the same accuracies per run, with the
paired tests):

0. with ``--figure PNG STORE SELECTOR ...``: the page's Fig. 1 analog, grouped bars of the robust
   accuracy per model and attack entry that ``quantadv report STORE --markdown --columns
   SELECTOR ...`` tabulates;
1. Tables 1 / 7 from the diagnose files (``<model>.json``) with, per model, the share of correctly
   classified images whose logit margin exceeds 16.6 (``p_y`` rounds to 1 in float32: the
   true-class term of ``psi`` is 0, and ``loss=ce-clipped`` has no gradient) and 87 (the other
   classes' ``p_j`` underflow: ``loss=ce`` has no gradient either), and the masking checks;
2. for each model, the images one attack broke and the other did not (default: PGD vs PGD++ NJS
   in the first store, ``--why pgd pgd_pp-njs``), with the beta PGD++ used (``info.temperature``) and,
   joined by dataset index with the diagnose file, the clean logit margin and the error signal
   ``||psi||`` and gradient norm at beta = 1 and at NJS's beta1: what PGD++ changed on exactly
   the images where it lost (or won).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
from collections import defaultdict
from pathlib import Path

from _figures import table

from quantadv.experiments import load_results
from quantadv.experiments.summary import robust_summary, select

#: float32 saturation margins, as quantadv.diagnostics.MARGIN_ROUNDS / MARGIN_UNDERFLOWS (scripts read
#: stores only and import nothing from the diagnostics): p_y rounds to 1 above 24 ln 2, p_j underflow above 126 ln 2
MARGIN_ROUNDS, MARGIN_UNDERFLOWS = 24 * math.log(2), 126 * math.log(2)
#: row order: the binary networks, then the references (as in configs/paper004-full-*.yaml)
MODELS = ["fmnist-cnn-bc", "fmnist-cnn-pmf", "fmnist-cnn-mdtanh", "fmnist-cnn-pq", "fmnist-cnn-gdtanh",
          "fmnist-cnn-waq", "fmnist-cnn", "fmnist-cnn-x5", "fmnist-cnn-bc-at-linf", "fmnist-cnn-at-linf"]


def figure(store: Path, selectors: list[str], out: Path) -> None:
    """Fig. 1 analog: robust accuracy (%) per model (groups) and attack entry (bars), the numbers of
    ``quantadv report STORE --markdown --columns SELECTORS``."""
    from _figures import pyplot, save

    cells = [c for c in robust_summary(store) if c["postprocess"] == "none"]
    models = sorted({c["model"] for c in cells}, key=lambda m: (MODELS + [m]).index(m))
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8, 3))
    width = 0.8 / len(selectors)
    for k, sel in enumerate(selectors):
        acc = {c["model"]: 100 * c["mean"] for c in select(cells, sel)}
        xs = [i + (k - (len(selectors) - 1) / 2) * width for i in range(len(models))]
        ax.bar(xs, [acc.get(m, 0.0) for m in models], width, label=sel)
    ax.set_xticks(range(len(models)), [m.replace("fmnist-cnn", "cnn") for m in models], rotation=20)
    ax.set(ylabel="robust accuracy (%)", title=f"{store.stem}, {max(c['images'] for c in cells)} test images")
    ax.legend(fontsize=7, ncol=2)
    save(fig, out)


def diagnose_tables(files: list[Path]) -> dict[str, dict]:
    docs = {}
    for f in files:
        docs[f.stem] = json.loads(f.read_text())
    rows, checks = [], []
    for name, d in docs.items():
        margins = d["per_image"]["margin"]
        n = len(margins)
        over = sum(m > MARGIN_ROUNDS for m in margins) / max(n, 1)
        under = sum(m > MARGIN_UNDERFLOWS for m in margins) / max(n, 1)
        for r in d["signal"]:
            rows.append([name, r["beta"], f"{r['jsv_mean']:.3g}", f"{r['jsv_std']:.3g}", f"{r['psi_norm']:.3g}",
                         f"{r['grad_norm']:.3g}", f"{r['zero_grad_fraction']:.4f}", str(r["images"]),
                         f"{100 * over:.1f}" if r["beta"] == "orig" else "",
                         f"{100 * under:.2f}" if r["beta"] == "orig" else ""])
        for c in d["checks"]:
            checks.append([name, c["name"], c["verdict"], c["evidence"]])
    if rows:
        print("\n### Table 1 / 7 (correctly classified images; paper's BNNs: JSV mean 16-45)\n")
        print(table(rows, ["model", "beta", "JSV mean", "JSV std", "||psi||", "||grad||", "zero grads", "images",
                           f"% margin > {MARGIN_ROUNDS:.1f}", f"% margin > {MARGIN_UNDERFLOWS:.1f}"]))
    if checks:
        print("\n### Masking checks (Sec. 3.1)\n")
        print(table(checks, ["model", "check", "verdict", "evidence"], numeric=False))
    return docs


def why(store: Path, a: str, b: str, docs: dict[str, dict]) -> None:
    """Images broken by exactly one of entries ``a`` and ``b`` (first grid point of each)."""
    rows = [r for r in load_results(store, as_frame=False) if r["postprocess"] == "none" and r["attack"] in (a, b)]
    first_params = {}
    for r in rows:
        first_params.setdefault((r["model"], r["attack"]), r["params"])
    per: dict[str, dict[str, dict[int, dict]]] = defaultdict(lambda: defaultdict(dict))
    for r in rows:
        if r["params"] == first_params[(r["model"], r["attack"])]:
            per[r["model"]][r["attack"]][r["idx"]] = r
    print(f"\n### Why: images broken by only one of {a} / {b} ({store.name}; medians; psi, grad at the clean image)\n")
    out = []
    for model, att in per.items():
        if a not in att or b not in att:
            continue
        d = docs.get(model, {}).get("per_image")
        pos = {i: k for k, i in enumerate(d["index"])} if d else {}
        groups = {f"{a} only": [], f"{b} only": [], "both": []}
        for idx, ra in att[a].items():
            rb = att[b].get(idx)
            if rb is None or ra["clean_pred"] != ra["label"]:
                continue
            key = {(1, 0): f"{a} only", (0, 1): f"{b} only", (1, 1): "both"}.get((ra["success"], rb["success"]))
            if key:
                groups[key].append((idx, rb))
        for g, members in groups.items():
            betas = [json.loads(rb["info"] or "{}").get("attack", {}).get("temperature") for _, rb in members]
            betas = [t for t in betas if t is not None]

            def med(field: str, members=members, d=d, pos=pos) -> str:
                vals = [d[field][pos[i]] for i, _ in members if i in pos] if d else []
                return f"{statistics.median(vals):.3g}" if vals else "-"

            out.append([model, g, str(len(members)), f"{statistics.median(betas):.3g}" if betas else "-",
                        med("margin"), med("psi_norm_orig"), med("psi_norm_njs"), med("grad_norm_orig"),
                        med("grad_norm_njs")])
    print(table(out, ["model", "broken by", "images", f"beta ({b})", "margin", "||psi|| beta=1", "||psi|| NJS",
                      "||grad|| beta=1", "||grad|| NJS"]))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--stores", nargs="+", type=Path, default=[], help="stores; the first one feeds --why")
    p.add_argument("--diagnose", type=Path, default=None, help="directory of quantadv diagnose --json files")
    p.add_argument("--figure", nargs="+", default=None, metavar="PNG_STORE_SELECTORS",
                   help="Fig. 1 analog: the PNG to write, a store, then its attack entries (selectors)")
    p.add_argument("--why", nargs=2, default=["pgd", "pgd_pp-njs"], metavar=("A", "B"),
                   help="entries compared image by image in the first store (default: pgd pgd_pp-njs)")
    args = p.parse_args()
    if args.figure:
        figure(Path(args.figure[1]), args.figure[2:], Path(args.figure[0]))
    docs = diagnose_tables(sorted(args.diagnose.glob("*.json"))) if args.diagnose else {}
    if args.stores:
        why(args.stores[0], *args.why, docs)


if __name__ == "__main__":
    main()
