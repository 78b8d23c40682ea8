"""Tables and Fig. 1 of docs/paper-004-binary-networks.md from the committed per-model JSON results.

    .venv/bin/python scripts/paper004_report.py --results results/paper004 --img docs/img/paper004

prints the markdown tables (Fig. 1 data, Tables 2-8 analogs, APGD, masking checks) and writes
``<img>/fig1.png`` plus a copy of every ``<model>.json`` to ``<img>/results/`` (the small
result files the page is built from, committed).
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from _figures import pyplot, save, table

ORDER = ["fmnist-cnn", "fmnist-cnn-at-linf", "fmnist-cnn-bc", "fmnist-cnn-mdtanh", "fmnist-cnn-waq",
         "fmnist-cnn-bc-at-linf", "fmnist-cnn*5"]
LABEL = {"fmnist-cnn": "REF (float)", "fmnist-cnn-at-linf": "Adv. train (float)", "fmnist-cnn-bc": "BC",
         "fmnist-cnn-mdtanh": "MD-tanh-S", "fmnist-cnn-waq": "BNN-WAQ", "fmnist-cnn-bc-at-linf": "BC + adv. train",
         "fmnist-cnn*5": "REF, logits x5"}


def pct(res: dict, key: str) -> str:
    v = res.get(key)
    return f"{100 * v['acc']:.1f}" if isinstance(v, dict) else "-"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--results", default="results/paper004")
    p.add_argument("--img", default="docs/img/paper004")
    args = p.parse_args()
    src, img = Path(args.results), Path(args.img)
    (img / "results").mkdir(parents=True, exist_ok=True)
    res = {}
    for name in ORDER:
        for sub in ("", "ablation"):  # the rho ablations run in their own process and directory
            f = src / sub / f"{name}.json"
            if f.exists():
                res.setdefault(name, {}).update({k: v for k, v in json.loads(f.read_text()).items()
                                                 if k not in res.get(name, {}) or not sub})
                (img / "results" / (sub or ".")).mkdir(parents=True, exist_ok=True)
                shutil.copy(f, img / "results" / sub / f.name.replace("*", "-logits-x"))
    names = [n for n in ORDER if n in res]
    lab = [LABEL[n] for n in names]

    print("### Fig. 1 / Table 2 (L-inf eps 0.1, 20 steps): accuracy %\n")
    print(table([[LABEL[n], f"{100 * res[n]['clean']:.1f}", pct(res[n], "pgd_linf"), pct(res[n], "pgdpp_linf_njs"),
                  pct(res[n], "pgdpp_linf_hns"), pct(res[n], "apgd_ce_linf"), pct(res[n], "apgd_dlr_linf"),
                  f"{res[n].get('beta1', float('nan')):.3g}"] for n in names],
                ["model", "clean", "PGD", "PGD++ NJS", "PGD++ HNS", "APGD-CE", "APGD-DLR", "beta1 (NJS)"]))
    print("\n### Table 3 (FGSM eps 0.1): accuracy %\n")
    print(table([[LABEL[n], pct(res[n], "fgsm"), pct(res[n], "fgsmpp_njs"), pct(res[n], "fgsmpp_hns")] for n in names],
                ["model", "FGSM", "FGSM++ NJS", "FGSM++ HNS"]))
    print("\n### Table 4 (L2 eps 1.0, 20 steps): accuracy %\n")
    print(table([[LABEL[n], pct(res[n], "pgd_l2"), pct(res[n], "pgdpp_l2_njs"), pct(res[n], "pgdpp_l2_hns")]
                 for n in names], ["model", "PGD-L2", "PGD++ NJS", "PGD++ HNS"]))
    for tab, prefix, title in (("6", "t6_njs_rho", "PGD++ NJS with rho"), ("8", "t8_prop1_rho", "PGD++, Prop. 1 beta")):
        keys = sorted({k for n in names for k in res[n] if k.startswith(prefix)}, key=lambda k: float(k[len(prefix):]))
        if keys:
            print(f"\n### Table {tab} ({title}): accuracy %\n")
            print(table([[LABEL[n]] + [pct(res[n], k) for k in keys] for n in names if any(k in res[n] for k in keys)],
                        ["model"] + [f"rho={k[len(prefix):]}" for k in keys]))
    print("\n### Table 1 / 7 (correctly classified images of the first N)\n")
    rows = []
    for n in names:
        for r in res[n].get("t7", []):
            rows.append([LABEL[n], r["beta"], f"{r['jsv_mean']:.3g}", f"{r['jsv_std']:.3g}", f"{r['psi_norm']:.3g}",
                         f"{r['grad_norm']:.3g}", f"{r['sign_grad_norm']:.3g}", f"{r['zero_grad_fraction']:.4f}",
                         str(r["images"])])
    print(table(rows, ["model", "beta", "JSV mean", "JSV std", "||psi||", "||grad||", "||sign(grad)||",
                       "zero grads", "images"]))
    print("\n### Masking checks (Sec. 3.1)\n")
    rows = []
    for n in names:
        for c in res[n].get("checks", []):
            rows.append([LABEL[n], c["name"], "PASS" if c["passed"] else "**FLAG**", c["evidence"]])
    print(table(rows, ["model", "check", "verdict", "evidence"], numeric=False))

    plt = pyplot()
    keys = [("clean", "clean"), ("pgd_linf", "PGD"), ("pgdpp_linf_njs", "PGD++ NJS"), ("pgdpp_linf_hns", "PGD++ HNS"),
            ("apgd_dlr_linf", "APGD-DLR")]
    fig, ax = plt.subplots(figsize=(9, 3.6))
    width = 0.16
    for j, (k, title) in enumerate(keys):
        vals = [100 * (res[n][k] if k == "clean" else res[n].get(k, {}).get("acc", float("nan"))) for n in names]
        ax.bar([i + (j - 2) * width for i in range(len(names))], vals, width, label=title)
    ax.set_xticks(range(len(names)), lab, fontsize=8)
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 118)
    ax.set_title(f"Fashion-MNIST, first {res[names[0]]['n']} test images, L-inf eps 0.1, 20 steps")
    ax.legend(fontsize=7, ncol=5)
    save(fig, img / "fig1.png", dpi=110)


if __name__ == "__main__":
    main()
