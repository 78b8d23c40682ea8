"""Tables and figures of docs/jpeg.md from the store of ``quantadv run configs/jpeg-fmnist.yaml``.

    python scripts/jpeg_figures.py [results/jpeg-fmnist.db]   # markdown tables; docs/img/jpeg/*.png
    python scripts/jpeg_figures.py --integrated [results/jpeg-ddn-integrated.db]   # part 3's table
    python scripts/jpeg_figures.py --colour        # results/jpeg-colour*.db: the colour tables

Counts are over the attacked (correctly classified) images; median / mean d over the successes;
the operating characteristic is the fraction of attacked images adversarial with d <= D.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from _figures import ROOT, pyplot, save

IMG = ROOT / "docs" / "img" / "jpeg"
QUALITIES = (50, 75, 90, 95)
JPEG = {"reencode": "(a) Pillow re-encoding of DDN's output", "dct": "(b) DCT rounding",
        "lagrangian": "(c) Lagrangian in the DCT domain"}
PNG = {"none": "DDN float output (not an image)", "round_nearest": "R (round the pixels)",
       "lagrangian": "Q-lambda* (paper 000)"}
GRID = np.linspace(0, 30, 301)


def fmt(v: float) -> str:
    return "-" if np.isnan(v) else f"{v:.3f}"


def cell(sub) -> tuple[int, int, float, float]:
    """(successes, attacked, median d, mean d over the successes) of one (model, entry, pp)."""
    ok = sub.d[sub.success.astype(bool)]
    return int(len(ok)), len(sub), float(ok.median()) if len(ok) else np.nan, float(ok.mean()) if len(ok) else np.nan


def curve(sub) -> np.ndarray:
    d = np.where(sub.success.to_numpy(bool), sub.d.to_numpy(float), np.inf)
    return (d[None, :] <= GRID[:, None]).mean(axis=1)


def integrated(df) -> None:
    """configs/jpeg-ddn-integrated.yaml: DDN then lagrangian_jpeg vs JPEG rounding every iteration."""
    print("| quality | variant | success (on the decoded file) | median d | mean d |")
    print("| --- | --- | ---: | ---: | ---: |")
    for q in (50, 75, 90):
        for attack, pp, label in (("ddn-float", f"lagrangian-q{q}", "DDN then lagrangian_jpeg"),
                                  (f"ddn-q{q}", "none", "DDN with JPEG rounding every iteration"),
                                  (f"ddn-q{q}", f"lagrangian-q{q}", "... then lagrangian_jpeg on it")):
            s, k, med, mean = cell(df[(df.attack == attack) & (df.postprocess == pp)])
            print(f"| {q} | {label} | {s}/{k} | {fmt(med)} | {fmt(mean)} |")


def colour() -> None:
    """configs/jpeg-colour*.yaml: 4:4:4 vs 4:2:0 from PNG originals, and in place from q85 files."""
    from quantadv.experiments import load_results

    def frame(name: str):
        df = load_results(ROOT / "results" / f"{name}.db", as_frame=True)
        return df[df.clean_pred == df.label].assign(n=df.idx.nunique())

    acc = load_results(ROOT / "results" / "jpeg-colour-accuracy.db", as_frame=True)
    df = frame("jpeg-colour")
    ddn, clean = df[df.attack == "ddn"], df[df.attack == "clean"]
    s, k, med, _ = cell(ddn[ddn.postprocess == "none"])
    print(f"tinted test accuracy {(acc.clean_pred == acc.label).mean():.3f} ({len(acc)} images); {k} attacked of the "
          f"first {df.n.iloc[0]}; DDN float: {s}/{k} adversarial, median d {fmt(med)}\n")
    print("| format | method | success kept | median d | mean d |\n| --- | --- | ---: | ---: | ---: |")
    for q in (75, 90):
        for sub, lab in (("4:4:4", "444"), ("4:2:0", "420")):
            ref = clean[clean.postprocess == f"reencode-q{q}-{lab}"]
            print(f"| JPEG q{q} {sub} | the clean original saved as JPEG (reference) | {int(ref.success.sum())}/"
                  f"{len(ref)} misclassified | {fmt(float(ref.d.median()))} | - |")
            for key, label in JPEG.items():
                s, k, med, mean = cell(ddn[ddn.postprocess == f"{key}-q{q}-{lab}"])
                print(f"| JPEG q{q} {sub} | {label} | {s}/{k} ({100 * s / k:.1f}%) | {fmt(med)} | {fmt(mean)} |")
    print("\n| original files | method | success kept | median d | mean d |\n| --- | --- | ---: | ---: | ---: |")
    for sub, lab in (("4:4:4", "444"), ("4:2:0", "420")):
        df = frame(f"jpeg-colour-inplace-{lab}")
        for key, label in {"none": "DDN float output (not a file)", **JPEG}.items():
            s, k, med, mean = cell(df[df.postprocess == key])
            print(f"| q85 {sub} | {label} | {s}/{k} ({100 * s / k:.1f}%) | {fmt(med)} | {fmt(mean)} |")


def main() -> None:
    from quantadv.experiments import load_results

    if "--colour" in sys.argv:
        return colour()
    args = [a for a in sys.argv[1:] if a != "--integrated"]
    name = "jpeg-ddn-integrated" if "--integrated" in sys.argv else "jpeg-fmnist"
    store = Path(args[0] if args else ROOT / "results" / f"{name}.db")
    df = load_results(store, as_frame=True)
    n_images = df.idx.nunique()
    df = df[df.clean_pred == df.label]  # the attacked images
    if "--integrated" in sys.argv:
        return integrated(df)
    plt = pyplot()
    for model, m in df.groupby("model", sort=False):
        ddn, clean = m[m.attack == "ddn"], m[m.attack == "clean"]
        n = ddn[ddn.postprocess == "none"].idx.nunique()
        print(f"\n### {model}: {n} attacked images (correctly classified among the first {n_images})\n")
        print("| format | method | success kept | median d | mean d |\n| --- | --- | ---: | ---: | ---: |")
        for pp, label in PNG.items():
            s, k, med, mean = cell(ddn[ddn.postprocess == pp])
            print(f"| PNG | {label} | {s}/{k} ({100 * s / k:.1f}%) | {fmt(med)} | {fmt(mean)} |")
        curves = {"PNG float": ("k:", ddn[ddn.postprocess == "none"]),
                  "PNG Q-lambda*": ("k-", ddn[ddn.postprocess == "lagrangian"]),
                  "PNG R": ("k--", ddn[ddn.postprocess == "round_nearest"])}
        for q in QUALITIES:
            ref = clean[clean.postprocess == f"reencode-q{q}"]
            print(f"| JPEG q{q} | the clean original saved as JPEG (reference) | {int(ref.success.sum())}/{len(ref)} "
                  f"misclassified | {fmt(float(ref.d.median()))} | - |")
            for key, label in JPEG.items():
                s, k, med, mean = cell(ddn[ddn.postprocess == f"{key}-q{q}"])
                print(f"| JPEG q{q} | {label} | {s}/{k} ({100 * s / k:.1f}%) | {fmt(med)} | {fmt(mean)} |")
        base = ddn[ddn.postprocess == "none"].set_index("idx").calls
        calls = np.concatenate([(ddn[ddn.postprocess == f"lagrangian-q{q}"].set_index("idx").calls - base).to_numpy()
                                for q in QUALITIES])
        print(f"\nlagrangian_jpeg network calls per image (q50-95): mean {calls.mean():.1f}, max {calls.max():.0f}")
        print(f"\nOperating characteristic of {model} (success rate with d <= D):\n")
        points = (2.0, 5.0, 8.0, 12.0)
        print("| curve | " + " | ".join(f"D = {p:g}" for p in points) + " |\n| --- |" + " ---: |" * len(points))
        rows = dict(curves) | {f"JPEG q{q} {key}": ("", ddn[ddn.postprocess == f"{key}-q{q}"])
                               for q in QUALITIES for key in JPEG}
        for label, (_, sub) in rows.items():
            c = curve(sub)
            print(f"| {label} | " + " | ".join(f"{100 * c[int(np.argmin(np.abs(GRID - p)))]:.1f}%" for p in points)
                  + " |")
        fig, axes = plt.subplots(1, len(QUALITIES), figsize=(16, 4), sharey=True)
        for ax, q in zip(axes, QUALITIES, strict=True):
            for label, (style, sub) in curves.items():
                ax.plot(GRID, curve(sub), style, label=label)
            for key, style in zip(JPEG, ("C3-", "C1-", "C0-"), strict=True):
                ax.plot(GRID, curve(ddn[ddn.postprocess == f"{key}-q{q}"]), style, label=f"JPEG {key}")
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
