"""Issue 12 experiments: adversarial JPEG files on Fashion-MNIST (docs/jpeg.md).

For each model, DDN (100 steps) runs once on the first ``--n`` test images (correctly
classified ones are attacked) and its float output is reused at every quality. Per quality
50, 75, 90, 95 it compares, on the *written* .jpg files decoded by libjpeg (Pillow):

- ``reencode``: round the float output to 8 bits and re-encode it with Pillow (what saving a
  float adversarial image as JPEG does);
- ``round_dct``: round each DCT coefficient of the float output (the JPEG analog of R);
- ``lagrangian_jpeg``: Q-lambda* over the DCT coefficients;

plus the PNG references of paper 000 (float, R, Q-lambda*) and the distortion of the clean
original saved as JPEG. Every success reported by a quantizer is re-verified by writing the
files with ``save_jpeg``, reading them back with ``load_jpeg`` and classifying them.

Run (niced, one thread; results under results/jpeg/, plots in docs/img/jpeg/)::

    OMP_NUM_THREADS=1 nice -n 5 .venv/bin/python scripts/jpeg_experiments.py --n 300 > results/jpeg/log.txt 2>&1 &
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import numpy as np
import torch

import quantadv
from quantadv import attacks, data, eval, io, models, quantize

QUALITIES = (50, 75, 90, 95)
MODELS = ("fmnist-cnn", "fmnist-cnn-at-l2")
METHODS = ("reencode", "round_dct", "lagrangian_jpeg")


def ddn_outputs(name: str, model, x, y, steps: int, out: Path, batch: int):  # type: ignore[no-untyped-def]
    cache = out / f"ddn_{name}_{x.shape[0]}_{steps}.pt"
    if cache.exists():
        return torch.load(cache, weights_only=True)
    t = time.perf_counter()
    xa = torch.cat([attacks.ddn(model, x[i:i + batch], y[i:i + batch], steps=steps)
                    for i in range(0, x.shape[0], batch)])
    print(f"{name}: DDN {steps} steps on {x.shape[0]} images in {time.perf_counter() - t:.0f} s", flush=True)
    torch.save(xa, cache)
    return xa


def curve(d: np.ndarray, success: np.ndarray, grid: np.ndarray) -> list[float]:
    """Operating characteristic: fraction of attacked images adversarial with d <= D."""
    ok = np.where(success, d, np.inf)
    return [float((ok <= g).mean()) for g in grid]


def summarize(d: torch.Tensor, success: torch.Tensor) -> dict:
    s = success.bool()
    return {"success": int(s.sum()), "median_d": float(d[s].median()) if s.any() else None,
            "mean_d": float(d[s].mean()) if s.any() else None}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=300)
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--batch", type=int, default=100)
    ap.add_argument("--out", default="results/jpeg")
    ap.add_argument("--models", nargs="+", default=list(MODELS))
    ap.add_argument("--qualities", nargs="+", type=int, default=list(QUALITIES))
    ap.add_argument("--img", default="docs/img/jpeg", help="folder of the plots")
    args = ap.parse_args()
    torch.set_num_threads(1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    images, labels = data.load("fashion-mnist", "test")
    x_all, y_all = quantadv.to_float(images[: args.n]), labels[: args.n]
    results: dict = {"n": args.n, "ddn_steps": args.steps, "models": {}}
    grid = np.linspace(0, 30, 301)
    for name in args.models:
        model = models.load(name)
        with torch.no_grad():
            correct = model(x_all).argmax(1) == y_all
        x, y = x_all[correct], y_all[correct]
        xa = ddn_outputs(name, model, x, y, args.steps, out, args.batch)
        entry: dict = {"attacked": int(x.shape[0]), "png": {}, "jpeg": {}}
        # PNG references (paper 000)
        d_float = eval.distortion(xa, x)
        entry["png"]["float"] = summarize(d_float, eval.is_adversarial(model, xa, y))
        xr = quantize.round_nearest(xa)
        entry["png"]["round"] = summarize(eval.distortion(xr, x), eval.is_adversarial(model, xr, y))
        t = time.perf_counter()
        xl, il = quantize.lagrangian(model, x, xa, y, search="bisection", return_info=True)
        png_seconds = time.perf_counter() - t
        entry["png"]["lagrangian"] = summarize(eval.distortion(xl, x), il["success"])
        entry["png"]["lagrangian"]["seconds"] = png_seconds
        curves = {"png float": curve(d_float.numpy(), entry_success(model, xa, y), grid),
                  "png round": curve(eval.distortion(xr, x).numpy(), eval.is_adversarial(model, xr, y).numpy(), grid),
                  "png lagrangian": curve(eval.distortion(xl, x).numpy(), il["success"].numpy(), grid)}
        for q in args.qualities:
            row: dict = {}
            clean = io.jpeg.decode(io.jpeg.encode(x, q))
            d_clean = eval.distortion(quantadv.to_float(clean), x)
            with torch.no_grad():
                clean_ok = model(quantadv.to_float(clean)).argmax(1) == y
            row["clean_jpeg"] = {"median_d": float(d_clean.median()), "still_correct": int(clean_ok.sum())}
            for method in METHODS:
                t = time.perf_counter()
                xq, info = [], {"success": [], "jpeg": [], "calls": [], "lambda_star": [], "j_size": []}
                for i in range(0, x.shape[0], args.batch):
                    sl = slice(i, i + args.batch)
                    fn = {"reencode": quantize.reencode_jpeg, "round_dct": quantize.round_jpeg,
                          "lagrangian_jpeg": quantize.lagrangian_jpeg}[method]
                    xb, ib = fn(model, x[sl], xa[sl], y[sl], quality=q, return_info=True)
                    xq.append(xb)
                    for k in info:
                        if k in ib:
                            info[k] += ib[k] if isinstance(ib[k], list) else ib[k].tolist()
                seconds = time.perf_counter() - t
                xq_t = torch.cat(xq)
                success = torch.tensor(info["success"])
                d = eval.distortion(xq_t, x)
                # Re-verify every reported success from the written files.
                folder = out / name / f"q{q}" / method
                if folder.exists():
                    shutil.rmtree(folder)
                keep = success.nonzero().flatten()
                verified = 0
                if keep.numel():
                    io.save_jpeg([info["jpeg"][i] for i in keep.tolist()], folder, labels=y[keep])
                    reloaded = quantadv.to_float(io.load_jpeg(folder))
                    same = bool((reloaded == xq_t[keep]).all())
                    verified = int(eval.is_adversarial(model, reloaded, y[keep]).sum())
                else:
                    same = True
                stats = summarize(d, success)
                stats.update({"verified": verified, "files_match_output": same, "seconds": seconds})
                if method == "lagrangian_jpeg":
                    stats["max_calls"] = max(info["calls"])
                    stats["mean_calls"] = float(np.mean(info["calls"]))
                row[method] = stats
                curves[f"q{q} {method}"] = curve(d.numpy(), success.numpy(), grid)
                print(f"{name} q{q} {method}: {stats}", flush=True)
            entry["jpeg"][str(q)] = row
        entry["curves"] = curves
        results["models"][name] = entry
        (out / "results.json").write_text(json.dumps({**results, "grid": grid.tolist()}, indent=1))
    plot(results, grid, Path(args.img))


def entry_success(model, xa, y) -> np.ndarray:  # type: ignore[no-untyped-def]
    return eval.is_adversarial(model, xa, y).numpy()


def plot(results: dict, grid: np.ndarray, img: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    img.mkdir(parents=True, exist_ok=True)
    for name, entry in results["models"].items():
        fig, axes = plt.subplots(1, len(results["models"][name]["jpeg"]), figsize=(16, 4), sharey=True)
        for ax, q in zip(np.atleast_1d(axes), entry["jpeg"], strict=True):
            c = entry["curves"]
            ax.plot(grid, c["png float"], "k:", label="float (not an image)")
            ax.plot(grid, c["png lagrangian"], "k-", label="PNG Q-lambda*")
            ax.plot(grid, c["png round"], "k--", label="PNG R")
            for method, style in zip(METHODS, ("C3-", "C1-", "C0-"), strict=True):
                ax.plot(grid, c[f"q{q} {method}"], style, label=f"JPEG {method}")
            ax.axvline(entry["jpeg"][q]["clean_jpeg"]["median_d"], color="grey", lw=0.8)
            ax.set_title(f"{name}, quality {q}")
            ax.set_xlabel("distortion d (pixel units)")
            ax.grid(alpha=0.3)
        np.atleast_1d(axes)[0].set_ylabel("success rate with d <= D")
        np.atleast_1d(axes)[0].legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(img / f"oc_{name}.png", dpi=80)
        plt.close(fig)


if __name__ == "__main__":
    main()
