"""Tables and figures of docs/paper-002-soft-quantization.md from the JSON stores of the eval scripts.

    python scripts/paper002_figures.py results/paper002/mnist.json results/paper002/fmnist-a.json+fmnist-b.json
    python scripts/paper002_figures.py --kalpha results/paper002-kalpha.db+results/paper002-kalpha-clean.db

For every store: one markdown table (robust accuracy per model, attack, loss and eps over the
store's images; eps 0 is clean accuracy on the same images) plus the per-image headline: an
image counts as robust at eps only if *no* attack and loss of the store broke it there. Writes
``docs/img/paper002/<store>.png`` (Fig. 3 analog: one panel per loss, plus the per-image minimum).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from _figures import ROOT, pyplot, save

OUT = ROOT / "docs" / "img" / "paper002"


def robust(flags: list[bool]) -> float:
    return 1 - sum(flags) / len(flags)


def table(store: dict, name: str) -> dict:
    eps = [f"{e:g}" for e in store["eps"]]
    print(f"\n#### {name}: {store['data']}, first {store['n']} test images, {store['steps']}-step PGD "
          f"(step 2.5 eps / steps, random start)\n")
    print("| model | attack | loss | clean | " + " | ".join(f"eps {e}" for e in eps) + " |")
    print("| --- | --- | --- | ---: | " + " | ".join("---:" for _ in eps) + " |")
    headline = {}
    for label, rec in store["models"].items():
        clean = 1 - robust(rec["clean_ok"])  # fraction correct
        broken_any = {e: [not ok for ok in rec["clean_ok"]] for e in eps}
        for key, res in rec["attacks"].items():
            attack, loss = key.split("/")
            cells = " | ".join(f"{100 * robust(res['broken'][e]):.0f}%" for e in eps)
            print(f"| {label} | {attack} | {loss} | {100 * clean:.0f}% | {cells} |")
            for e in eps:
                broken_any[e] = [a or b for a, b in zip(broken_any[e], res["broken"][e], strict=True)]
        cells = " | ".join(f"**{100 * robust(broken_any[e]):.0f}%**" for e in eps)
        print(f"| {label} | **per-image minimum over all rows** | | {100 * clean:.0f}% | {cells} |")
        headline[label] = {"clean": clean, **{e: robust(broken_any[e]) for e in eps}}
    return headline


def figure(store: dict, name: str, headline: dict) -> None:
    plt = pyplot()
    eps = [0.0] + list(store["eps"])
    fig, axes = plt.subplots(1, 3, figsize=(11, 3.2), sharey=True)
    palette = {"natural": "tab:green", "pgd-at": "tab:red", "sq": "tab:purple", "nsq": "tab:blue"}
    colour = {label: palette.get(label, f"C{i}") for i, label in enumerate(store["models"])}
    for ax, loss in zip(axes[:2], ("ce", "margin"), strict=True):
        for label, rec in store["models"].items():
            clean = sum(rec["clean_ok"]) / len(rec["clean_ok"])
            for key, res in rec["attacks"].items():
                attack, l_ = key.split("/")
                if l_ != loss or attack not in ("pgd", "bpda"):
                    continue
                ys = [clean] + [robust(res["broken"][f"{e:g}"]) for e in store["eps"]]
                ax.plot(eps, ys, marker="o", ms=3, ls="-" if attack == "pgd" else "--", color=colour[label],
                        label=f"{label} {'PGD' if attack == 'pgd' else 'BPDA+PGD'}")
        ax.set_title(f"{name}: {'cross-entropy' if loss == 'ce' else 'CW-inf (margin)'} loss")
        ax.set_xlabel("L-inf eps")
    for label, h in headline.items():
        axes[2].plot(eps, [h["clean"]] + [h[f"{e:g}"] for e in store["eps"]], marker="o", ms=3, label=label,
                     color=colour[label])
    axes[2].set_title("per-image minimum over every attack")
    axes[2].set_xlabel("L-inf eps")
    axes[0].set_ylabel(f"accuracy ({store['n']} images)")
    for ax in axes:
        ax.legend(fontsize=6)
    save(fig, OUT / f"{name}.png")


def kalpha(paths: list[Path]) -> None:
    """The K / alpha table from the stores of configs/paper002-kalpha.yaml and paper002-kalpha-clean.yaml."""
    import pandas as pd

    from quantadv.experiments import load_results

    df = pd.concat([load_results(p, as_frame=True) for p in paths])
    clean = df[df.attack == "clean"].groupby("model").apply(lambda g: (g.clean_pred == g.label).mean())
    att = df[df.attack != "clean"]
    print(f"\n#### K / alpha study: NSQ fine-tuned from fmnist-cnn (configs/entries/nsq.py); clean on "
          f"{df[df.attack == 'clean'].idx.nunique()} test images (natural fmnist-cnn: {100 * clean['natural']:.1f}%); "
          f"BPDA+PGD at eps 0.1 on {att.idx.nunique()} images\n")
    print("| K | alpha | SQ clean | NSQ clean | bpda/ce | bpda/margin | min over rows | train s |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for model, g in att.groupby("model"):
        k, a = model.removeprefix("nsq-K").split("-a")
        robust = {json.loads(p)["loss"]: ~sub.set_index("idx").success.astype(bool)
                  for p, sub in g.groupby("params")}
        both = robust["ce"] & robust["margin"]
        meta = sorted((ROOT / "results" / "paper002" / "kalpha").glob(f"nsq-K{k}-alpha{a}-*.json"))
        secs = f"{json.loads(meta[0].read_text())['train_seconds']:.0f}" if meta else "-"
        print(f"| {k} | {a} | {100 * clean[f'sq-K{k}-a{a}']:.1f}% | {100 * clean[model]:.1f}% | "
              f"{100 * robust['ce'].mean():.0f}% | {100 * robust['margin'].mean():.0f}% | "
              f"**{100 * both.mean():.0f}%** | "
              f"{secs} |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("stores", nargs="*")
    p.add_argument("--kalpha", default=None)
    args = p.parse_args()
    for s in args.stores:
        # "a.json+b.json": stores of the same data and eps (e.g. two processes) merged model-wise
        paths = [Path(part) for part in s.split("+")]
        store = json.loads(paths[0].read_text())
        for extra in paths[1:]:
            other = json.loads(extra.read_text())
            if (other["data"], other["eps"], other["n"]) != (store["data"], store["eps"], store["n"]):
                raise SystemExit(f"{extra} has other data/eps/n than {paths[0]}")
            store["models"].update(other["models"])
        name = paths[0].stem.split("-")[0]
        headline = table(store, name)
        figure(store, name, headline)
    if args.kalpha:
        kalpha([Path(p) for p in args.kalpha.split("+")])


if __name__ == "__main__":
    main()
