"""Example images for docs/jpeg.md: original, DDN float output, and the JPEG variants at one quality.

    OMP_NUM_THREADS=1 nice -n 5 .venv/bin/python scripts/jpeg_examples.py   # after scripts/jpeg_experiments.py
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib
import torch

import quantadv
from quantadv import data, eval, models, quantize
from quantadv.io import jpeg as jio

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cache", default="results/jpeg/ddn_fmnist-cnn_279_100.pt")
    ap.add_argument("--model", default="fmnist-cnn")
    ap.add_argument("--n", type=int, default=300)
    ap.add_argument("--quality", type=int, default=90)
    ap.add_argument("--count", type=int, default=5)
    ap.add_argument("--out", default="docs/img/jpeg/examples.png")
    args = ap.parse_args()
    torch.set_num_threads(1)
    model = models.load(args.model)
    images, labels = data.load("fashion-mnist", "test")
    x, y = quantadv.to_float(images[: args.n]), labels[: args.n]
    with torch.no_grad():
        keep = model(x).argmax(1) == y
    x, y = x[keep][: args.count], y[keep][: args.count]
    xa = torch.load(args.cache, weights_only=True)[: args.count]
    q = args.quality
    rows = {
        "original (PNG)": x,
        "DDN float": xa,
        f"clean JPEG q{q}": quantadv.to_float(jio.decode(jio.encode(x, q))),
        f"re-encoded q{q}": quantize.reencode_jpeg(model, x, xa, y, quality=q),
        f"Lagrangian JPEG q{q}": quantize.lagrangian_jpeg(model, x, xa, y, quality=q),
    }
    fig, axes = plt.subplots(len(rows), args.count, figsize=(1.6 * args.count, 1.8 * len(rows)))
    for r, (title, batch) in enumerate(rows.items()):
        with torch.no_grad():
            pred = model(batch).argmax(1)
        d = eval.distortion(batch, x)
        for c in range(args.count):
            ax = axes[r, c]
            ax.imshow(batch[c, 0].numpy(), cmap="gray", vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            colour = "red" if int(pred[c]) != int(y[c]) else "black"
            ax.set_title(f"pred {int(pred[c])}, d {float(d[c]):.1f}", fontsize=7, color=colour)
            if c == 0:
                ax.set_ylabel(title, fontsize=7)
    fig.suptitle(f"{args.model}: label {y.tolist()}; red = adversarial", fontsize=8)
    fig.tight_layout()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=90)


if __name__ == "__main__":
    main()
