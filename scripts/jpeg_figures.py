"""Tables and figures of docs/jpeg.md from the store of ``quantadv run configs/jpeg-fmnist.yaml``.

    python scripts/jpeg_figures.py [results/jpeg-fmnist.db]   # markdown tables; docs/img/jpeg/*.png
    python scripts/jpeg_figures.py --colour        # results/jpeg-colour*.db: the colour tables

Counts are over the attacked (correctly classified) images; median / mean d over the successes;
the operating characteristic is the fraction of attacked images adversarial with d <= D
(``quantadv report STORE --markdown --at 2 5 8 12 --inclusive`` prints the DDN rows' numbers; the
table of part 3 is ``quantadv report results/jpeg-ddn-integrated.db --markdown``).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from _figures import ROOT, pyplot, save

from quantadv.eval import operating_characteristic
from quantadv.experiments import load_results
from quantadv.experiments.tables import best_effort_rows, p_suc_key

IMG = ROOT / "docs" / "img" / "jpeg"
QUALITIES = (50, 75, 90, 95)
JPEG = {"reencode": "(a) Pillow re-encoding of DDN's output", "dct": "(b) DCT rounding",
        "lagrangian": "(c) Lagrangian in the DCT domain"}
PNG = {"none": "DDN float output (not an image)", "round_nearest": "R (round the pixels)",
       "lagrangian": "Q-lambda* (paper 000)"}
GRID = np.linspace(0, 30, 301)
POINTS = (2.0, 5.0, 8.0, 12.0)
HEAD = "| format | method | success kept | median d | mean d |\n| --- | --- | ---: | ---: | ---: |"


def fmt(v: float | None) -> str:
    return "-" if v is None or np.isnan(v) else f"{v:.3f}"


def cells(path: Path) -> dict:
    """(model, attack, postprocess) -> its best effort over the attacked images (quantadv.experiments.tables):
    successes, median / mean d of the successes, P_suc(D) with d <= D at POINTS, per-image d_min."""
    rows = best_effort_rows(load_results(path, as_frame=False), at=POINTS, inclusive=True)
    return {(r["model"], r["attack"], r["postprocess"]): r for r in rows}


def line(fmt_: str, label: str, e: dict) -> str:
    kept = f"{e['successes']}/{e['images']} ({100 * e['success_rate']:.1f}%)"
    return f"| {fmt_} | {label} | {kept} | {fmt(e['median_d'])} | {fmt(e['mean_d'])} |"


def reference(clean, pp: str, fmt_: str) -> str:
    """The clean original saved as JPEG (rows of the ``clean`` entry): misclassified, median d over all."""
    ref = clean[clean.postprocess == pp]
    return (f"| {fmt_} | the clean original saved as JPEG (reference) | {int(ref.success.sum())}/{len(ref)} "
            f"misclassified | {fmt(float(ref.d.median()))} | - |")


def curve(e: dict) -> np.ndarray:
    return operating_characteristic(e["d_min"], np.isfinite(e["d_min"]), GRID, inclusive=True)[1].numpy()


def colour() -> None:
    """configs/jpeg-colour*.yaml: 4:4:4 vs 4:2:0 from PNG originals, and in place from q85 files."""
    acc = load_results(ROOT / "results" / "jpeg-colour-accuracy.db", as_frame=True)
    df = load_results(ROOT / "results" / "jpeg-colour.db", as_frame=True)
    n, df = df.idx.nunique(), df[df.clean_pred == df.label]
    b = {k[1:]: v for k, v in cells(ROOT / "results" / "jpeg-colour.db").items()}
    e = b["ddn", "none"]
    print(f"tinted test accuracy {(acc.clean_pred == acc.label).mean():.3f} ({len(acc)} images); {e['images']} "
          f"attacked of the first {n}; DDN float: {e['successes']}/{e['images']} adversarial, median d "
          f"{fmt(e['median_d'])}\n")
    print(HEAD)
    for q in (75, 90):
        for sub, lab in (("4:4:4", "444"), ("4:2:0", "420")):
            print(reference(df[df.attack == "clean"], f"reencode-q{q}-{lab}", f"JPEG q{q} {sub}"))
            for key, label in JPEG.items():
                print(line(f"JPEG q{q} {sub}", label, b["ddn", f"{key}-q{q}-{lab}"]))
    print("\n" + HEAD.replace("format", "original files"))
    for sub, lab in (("4:4:4", "444"), ("4:2:0", "420")):
        b = {k[2]: v for k, v in cells(ROOT / "results" / f"jpeg-colour-inplace-{lab}.db").items()}
        for key, label in {"none": "DDN float output (not a file)", **JPEG}.items():
            print(line(f"q85 {sub}", label, b[key]))


def main() -> None:
    if "--colour" in sys.argv:
        return colour()
    store = Path(sys.argv[1] if len(sys.argv) > 1 else ROOT / "results" / "jpeg-fmnist.db")
    df = load_results(store, as_frame=True)
    n_images = df.idx.nunique()
    df = df[df.clean_pred == df.label]  # the attacked images
    b = cells(store)
    plt = pyplot()
    for model, m in df.groupby("model", sort=False):
        ddn, clean = m[m.attack == "ddn"], m[m.attack == "clean"]
        print(f"\n### {model}: {b[model, 'ddn', 'none']['images']} attacked images (correctly classified among the "
              f"first {n_images})\n")
        print(HEAD)
        for pp, label in PNG.items():
            print(line("PNG", label, b[model, "ddn", pp]))
        for q in QUALITIES:
            print(reference(clean, f"reencode-q{q}", f"JPEG q{q}"))
            for key, label in JPEG.items():
                print(line(f"JPEG q{q}", label, b[model, "ddn", f"{key}-q{q}"]))
        base = ddn[ddn.postprocess == "none"].set_index("idx").calls
        calls = np.concatenate([(ddn[ddn.postprocess == f"lagrangian-q{q}"].set_index("idx").calls - base).to_numpy()
                                for q in QUALITIES])
        print(f"\nlagrangian_jpeg network calls per image (q50-95): mean {calls.mean():.1f}, max {calls.max():.0f}")
        print(f"\nOperating characteristic of {model} (success rate with d <= D):\n")
        print("| curve | " + " | ".join(f"D = {p:g}" for p in POINTS) + " |\n| --- |" + " ---: |" * len(POINTS))
        curves = {"PNG float": ("k:", "none"), "PNG Q-lambda*": ("k-", "lagrangian"), "PNG R": ("k--", "round_nearest")}
        for label, pp in [(k, v[1]) for k, v in curves.items()] + [
                (f"JPEG q{q} {key}", f"{key}-q{q}") for q in QUALITIES for key in JPEG]:
            e = b[model, "ddn", pp]
            print(f"| {label} | " + " | ".join(f"{100 * e[p_suc_key(p)]:.1f}%" for p in POINTS) + " |")
        fig, axes = plt.subplots(1, len(QUALITIES), figsize=(16, 4), sharey=True)
        for ax, q in zip(axes, QUALITIES, strict=True):
            for label, (style, pp) in curves.items():
                ax.plot(GRID, curve(b[model, "ddn", pp]), style, label=label)
            for key, style in zip(JPEG, ("C3-", "C1-", "C0-"), strict=True):
                ax.plot(GRID, curve(b[model, "ddn", f"{key}-q{q}"]), style, label=f"JPEG {key}")
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
