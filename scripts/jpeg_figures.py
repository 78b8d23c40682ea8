"""Figures of docs/jpeg.md from the store of ``quantadv run configs/jpeg-fmnist.yaml``.

    python scripts/jpeg_figures.py                          # docs/img/jpeg/*.png (results/jpeg-fmnist.db)
    python scripts/jpeg_figures.py results/jpeg-colour.db   # other stores: the clean references only

The page's tables are ``quantadv report results/jpeg-fmnist.db --markdown --at 2 5 8 12 --inclusive``
(and the same for ``results/jpeg-colour*.db``, ``results/jpeg-ddn-integrated.db``): counts over the
attacked (correctly classified) images, median / mean d over the successes, the operating
characteristic as the fraction of attacked images adversarial with d <= D. This script adds what a
best effort does not give: the median distortion of the clean original saved as JPEG (the ``clean``
entry) over all attacked images, the format's own distortion.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from _figures import ROOT, pyplot, save

from quantadv.eval import operating_characteristic
from quantadv.experiments import load_results
from quantadv.experiments.tables import best_effort_rows

IMG = ROOT / "docs" / "img" / "jpeg"
QUALITIES = (50, 75, 90, 95)
JPEG = ("reencode", "dct", "lagrangian")
GRID = np.linspace(0, 30, 301)


def curve(e: dict) -> np.ndarray:
    return operating_characteristic(e["d_min"], np.isfinite(e["d_min"]), GRID, inclusive=True)[1].numpy()


def main() -> None:
    stores = [Path(a) for a in sys.argv[1:]] or [ROOT / "results" / "jpeg-fmnist.db"]
    for store in stores:
        df = load_results(store, as_frame=True)
        df = df[df.clean_pred == df.label]  # the attacked images
        for (model, pp), g in df[df.attack == "clean"].groupby(["model", "postprocess"], sort=False):
            print(f"{store.name} {model}: the clean original through {pp}: median d {g.d.median():.3f} "
                  f"over {len(g)} images, {int(g.success.sum())} misclassified")
        if {f"reencode-q{q}" for q in QUALITIES} <= set(df.postprocess):
            figures(store, df)


def figures(store: Path, df) -> None:
    """Operating characteristics per model and quality (docs/img/jpeg/oc_<model>.png) and the examples."""
    b = {(r["model"], r["attack"], r["postprocess"]): r for r in best_effort_rows(load_results(store, as_frame=False))}
    plt = pyplot()
    for model, m in df.groupby("model", sort=False):
        clean = m[m.attack == "clean"]
        curves = {"PNG float": ("k:", "none"), "PNG Q-lambda*": ("k-", "lagrangian"), "PNG R": ("k--", "round_nearest")}
        fig, axes = plt.subplots(1, len(QUALITIES), figsize=(16, 4), sharey=True)
        for ax, q in zip(axes, QUALITIES, strict=True):
            for label, (style, pp) in curves.items():
                ax.plot(GRID, curve(b[model, "ddn", pp]), style, label=label)
            for key, style in zip(JPEG, ("C3-", "C1-", "C0-"), strict=True):
                ax.plot(GRID, curve(b[model, "ddn", f"{key}-q{q}"]), style, label=f"JPEG {key}")
            # the median distortion of the clean original saved at this quality
            ax.axvline(float(clean[clean.postprocess == f"reencode-q{q}"].d.median()), color="grey", lw=0.8)
            ax.set(title=f"{model}, quality {q}", xlabel="distortion d (pixel units)")
        axes[0].set_ylabel("success rate with d <= D")
        axes[0].legend(fontsize=7)
        _save(fig, f"oc_{model}.png")
    examples(store, df, plt)


def examples(store: Path, df, plt, model: str = "fmnist-cnn", q: int = 90, count: int = 5) -> None:
    """The first attacked images the store kept: original, DDN float, clean JPEG, (a), (c) at quality q."""
    from quantadv.experiments.store import open_store

    with open_store(store) as st:
        originals, adv = st.originals(), st.adversarials()
    m = df[df.model == model]
    idx = sorted(set(m.idx) & set(originals))[:count]
    rows = {"original (PNG)": ("ddn", None), "DDN float": ("ddn", "none"),
            f"clean JPEG q{q}": ("clean", f"reencode-q{q}"), f"re-encoded q{q}": ("ddn", f"reencode-q{q}"),
            f"Lagrangian JPEG q{q}": ("ddn", f"lagrangian-q{q}")}
    runs = {a: set(m[m.attack == a].run_id) for a in ("ddn", "clean")}
    fig, axes = plt.subplots(len(rows), count, figsize=(1.6 * count, 1.8 * len(rows)))
    for r, (title, (attack, pp)) in enumerate(rows.items()):
        for c, i in enumerate(idx):
            if pp is None:
                shape, data = originals[i]
                img, pred, d = np.frombuffer(data, np.uint8).reshape(shape)[0] / 255, None, 0.0
            else:
                a = next(a for a in adv if a["run_id"] in runs[attack] and a["postprocess"] == pp and a["idx"] == i)
                img = np.frombuffer(a["data"], np.float32).reshape(a["shape"])[0]
                row = m[(m.run_id == a["run_id"]) & (m.postprocess == pp) & (m.idx == i)].iloc[0]
                pred, d = int(row.adv_pred), float(row.d)
            ax = axes[r, c]
            ax.imshow(img, cmap="gray", vmin=0, vmax=1)
            ax.set(xticks=[], yticks=[])
            label = int(m[m.idx == i].label.iloc[0])
            ax.set_title(f"pred {label if pred is None else pred}, d {d:.1f}", fontsize=7,
                         color="red" if pred is not None and pred != label else "black")
            if c == 0:
                ax.set_ylabel(title, fontsize=7)
    fig.suptitle(f"{model}: images {idx}; red = adversarial", fontsize=8)
    _save(fig, "examples.png")


def _save(fig, name: str) -> None:
    fig.tight_layout()
    save(fig, IMG / name, dpi=80)


if __name__ == "__main__":
    main()
