"""Figures of docs/paper-002-soft-quantization.md from the runner's stores (tables: quantadv report --markdown).

    python scripts/paper002_figures.py results/paper002-mnist.db results/paper002-fmnist.db
    python scripts/paper002_figures.py --kalpha results/paper002-kalpha.db results/paper002-kalpha-clean.db

Per store (configs/paper002-*.yaml) ``<out>/<data>.png``, the Fig. 3 analog of paper 002: robust
accuracy vs eps (eps 0: clean accuracy), breaks carried to larger eps (``summary.carry``), per model
for PGD as deployed (adaptive none, solid) and BPDA+PGD (dashed), one panel per loss, and the
per-image headline: an image counts as robust at eps only if no run of the store's ``summary.headline``
entries broke it there. ``--kalpha ATTACKED CLEAN`` prints the K / alpha table (App. B analog).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from _figures import ROOT, pyplot, save, table

from quantadv.experiments import load_results
from quantadv.experiments.report import stored_summary_options
from quantadv.experiments.store import open_store
from quantadv.experiments.summary import headline, robust_summary

PANELS = {"pgd-ce": "cross-entropy loss", "pgd-cw": "CW-inf (margin) loss"}  # attack entries of the configs
COLOURS = {"natural": "tab:green", "pgd-at": "tab:red", "pgd-at02": "tab:orange", "trades": "tab:orange",
           "sq": "tab:purple", "nsq": "tab:blue"}


def figure(store: Path, out: Path) -> None:
    rows = load_results(store, as_frame=False)
    with open_store(store) as st:
        models = list(dict.fromkeys(r["model"] for r in st.runs()))  # config order
    clean = {m: sum(r["clean_pred"] == r["label"] for r in rows if r["model"] == m) /
             sum(r["model"] == m for r in rows) for m in models}
    cells = [c for c in robust_summary(store, carry="eps") if c["postprocess"] == "none"]
    labels = stored_summary_options(store).get("headline") or sorted({c["attack"] for c in cells})
    name = store.stem.removeprefix("paper002-")
    plt = pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.6), sharey=True)

    def curve(ax, model: str, picked: list[dict], acc, **style) -> None:
        points = sorted((json.loads(c["params"])["eps"], acc(c)) for c in picked)
        if points:
            ax.plot([0.0] + [e for e, _ in points], [clean[model]] + [a for _, a in points], marker="o", ms=3,
                    color=COLOURS.get(model, f"C{models.index(model)}"), **style)

    for ax, (entry, title) in zip(axes, PANELS.items(), strict=False):
        for m in models:
            here = [c for c in cells if c["model"] == m and c["attack"] == entry]
            for mode, ls, shown in (("none", "-", "PGD"), ("bpda", "--", "BPDA+PGD")):
                curve(ax, m, [c for c in here if mode in c["by_mode"]], lambda c, mode=mode: c["by_mode"][mode],
                      ls=ls, label=f"{m} {shown}")
        ax.set_title(f"{name}: {title}")
    for m in models:
        curve(axes[2], m, [c for c in headline(cells, labels) if c["model"] == m], lambda c: c["worst"], label=m)
    axes[2].set_title("per-image minimum over every attack")
    axes[0].set_ylabel(f"accuracy ({max(c['images'] for c in cells)} images)")
    for ax in axes:
        ax.set_xlabel("L-inf eps")
        ax.legend(fontsize=6)
    save(fig, out / f"{name}.png")


def kalpha(attacked: Path, clean_store: Path) -> None:
    """The K / alpha table from the stores of configs/paper002-kalpha.yaml and paper002-kalpha-clean.yaml."""
    clean = {c["model"]: c["worst"] for c in robust_summary(clean_store)}  # identity attack: clean accuracy
    cells = robust_summary(attacked)
    loss = {(c["model"], json.loads(c["params"])["loss"]): c for c in cells}
    print(f"NSQ fine-tuned from fmnist-cnn; natural fmnist-cnn clean: {100 * clean['natural']:.1f}%; "
          f"BPDA+PGD at eps 0.1 on {cells[0]['images']} images\n")
    lines = []
    for h in headline(cells, sorted({c["attack"] for c in cells})):
        model = h["model"]
        k, a = model.removeprefix("nsq-K").split("-a")
        meta = sorted((ROOT / "results" / "paper002" / "kalpha").glob(f"nsq-K{k}-alpha{a}-*.json"))
        lines.append([k, a, *(f"{100 * clean[m]:.1f}%" for m in (f"sq-K{k}-a{a}", model)),
                      *(f"{100 * loss[model, lo]['worst']:.0f}%" for lo in ("ce", "margin")),
                      f"**{100 * h['worst']:.0f}%**",
                      f"{json.loads(meta[0].read_text())['train_seconds']:.0f}" if meta else "-"])
    print(table(lines, ["K", "alpha", "SQ clean", "NSQ clean", "bpda/ce", "bpda/margin", "min over rows", "train s"]))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("stores", nargs="*", type=Path, help="runner stores of configs/paper002-{mnist,fmnist}.yaml")
    p.add_argument("--out", type=Path, default=ROOT / "docs" / "img" / "paper002", help="directory of the PNGs")
    p.add_argument("--kalpha", nargs=2, type=Path, metavar=("ATTACKED", "CLEAN"), default=None)
    args = p.parse_args()
    for store in args.stores:
        figure(store, args.out)
    if args.kalpha:
        kalpha(*args.kalpha)


if __name__ == "__main__":
    main()
