"""Issue 21: adversarial *colour* JPEGs at 4:4:4 vs chroma-subsampled 4:2:0 (docs/jpeg.md).

The colour set is built here: Fashion-MNIST tinted to RGB (each image gets a random background
and foreground colour, ``x_rgb = bg + (fg - bg) * x_grey``; 28x28, not a multiple of 16), and a
small colour CNN is trained on 20,000 tinted training images in-process (2 epochs, seed 0). It
is a synthetic stand-in for photos, said plainly: the chroma carries the garment's shape (the
tint follows the grey level), as in real photos, but it is not a natural-image benchmark.

Part 1 (``quality=``): DDN (100 steps) runs once on the first ``--n`` tinted test images that the
model classifies correctly; its float output is quantized into JPEG files at each quality and
subsampling (4:4:4 and Pillow's default 4:2:0) by (a) Pillow re-encoding, (b) DCT rounding and
(c) ``lagrangian_jpeg``. Distortion ``d`` (paper 000 Eq. 31, pixel units, over the 3 channels) is
against the PNG original; every success is re-verified by decoding the returned bytes with
Pillow and classifying them.

Part 2 (in place): the test images are saved as JPEG files at quality 85 (4:4:4 or 4:2:0, what a
camera or Pillow writes), DDN attacks their decode, and ``lagrangian_jpeg(originals=files)``
writes adversarial files keeping each original's tables and subsampling; ``d`` is against the
original file's decode.

Run (niced, 2 threads; prints the markdown tables, writes results.json)::

    OMP_NUM_THREADS=2 nice -n 15 .venv/bin/python scripts/jpeg_colour.py --n 300 --out results/jpeg_colour
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from torch import nn

import quantadv
from quantadv import attacks, data, eval, quantize
from quantadv.io import jpeg as jio

QUALITIES = (75, 90)
SUBSAMPLINGS = ("4:4:4", "4:2:0")
IN_PLACE_QUALITY = 85


def tint(images: torch.Tensor, seed: int) -> torch.Tensor:
    """uint8 ``(N, 1, H, W)`` grey images -> uint8 ``(N, 3, H, W)``, a random colour pair per image."""
    g = torch.Generator().manual_seed(seed)
    n = images.shape[0]
    bg = torch.rand(n, 3, 1, 1, generator=g) * 0.5
    fg = 0.4 + torch.rand(n, 3, 1, 1, generator=g) * 0.6
    grey = images.to(torch.float32) / 255.0
    return ((bg + (fg - bg) * grey) * 255.0).round().clamp(0, 255).to(torch.uint8)


def colour_cnn() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(64 * 7 * 7, 128), nn.ReLU(), nn.Linear(128, 10),
    )


def train(n_train: int, epochs: int) -> nn.Module:
    torch.manual_seed(0)
    images, labels = data.load("fashion-mnist", "train")
    x, y = tint(images[:n_train], seed=1), labels[:n_train]
    model = colour_cnn()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(0)
    for epoch in range(epochs):
        order = torch.randperm(n_train, generator=g)
        total = 0.0
        for i in range(0, n_train, 128):
            idx = order[i:i + 128]
            loss = nn.functional.cross_entropy(model(quantadv.to_float(x[idx])), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += float(loss.detach()) * idx.numel()
        print(f"epoch {epoch + 1}: mean loss {total / n_train:.3f}", flush=True)
    return model.eval()


def stats(d: torch.Tensor, success: torch.Tensor, verified: int) -> dict:
    s = success.bool()
    return {"success": int(s.sum()), "verified": verified,
            "median_d": float(d[s].median()) if s.any() else None,
            "mean_d": float(d[s].mean()) if s.any() else None}


def verify(model: nn.Module, blobs: list[bytes], y: torch.Tensor, success: torch.Tensor) -> int:
    """How many reported successes are adversarial when their bytes are decoded by Pillow."""
    with torch.no_grad():
        pred = model(quantadv.to_float(jio.decode(blobs))).argmax(1)
    return int(((pred != y) & success.bool()).sum())


def run_method(name: str, model, x, xa, y, **kw):  # type: ignore[no-untyped-def]
    fn = {"reencode": quantize.reencode_jpeg, "round_dct": quantize.round_jpeg,
          "lagrangian_jpeg": quantize.lagrangian_jpeg}[name]
    xq, info = fn(model, x, xa, y, return_info=True, **kw)
    return stats(eval.distortion(xq, x), info["success"], verify(model, info["jpeg"], y, info["success"]))


def ddn(model, x, y, steps: int, batch: int = 100) -> torch.Tensor:  # type: ignore[no-untyped-def]
    return torch.cat([attacks.ddn(model, x[i:i + batch], y[i:i + batch], steps=steps)
                      for i in range(0, x.shape[0], batch)])


def fmt(row: dict, attacked: int) -> str:
    med = "-" if row["median_d"] is None else f"{row['median_d']:.3f}"
    mean = "-" if row["mean_d"] is None else f"{row['mean_d']:.3f}"
    return (f"{row['success']}/{attacked} ({100 * row['success'] / attacked:.1f}%) | "
            f"{row['verified']}/{row['success']} | {med} | {mean}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=300)
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--train", type=int, default=20000)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--out", default="results/jpeg_colour")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    model = train(args.train, args.epochs)
    for p in model.parameters():
        p.requires_grad_(False)
    images, labels = data.load("fashion-mnist", "test")
    x_all, y_all = quantadv.to_float(tint(images[: args.n], seed=2)), labels[: args.n]
    with torch.no_grad():
        full_test = tint(images, seed=2)
        accuracy = float(torch.cat([model(quantadv.to_float(full_test[i:i + 1000])).argmax(1)
                                    for i in range(0, full_test.shape[0], 1000)]).eq(labels).double().mean())
        correct = model(x_all).argmax(1) == y_all
    print(f"trained in {time.perf_counter() - t0:.0f} s; tinted test accuracy {accuracy:.4f}", flush=True)
    x, y = x_all[correct], y_all[correct]
    results: dict = {"n": args.n, "attacked": int(x.shape[0]), "test_accuracy": accuracy, "ddn_steps": args.steps,
                     "quality": {}, "in_place": {}}
    t = time.perf_counter()
    xa = ddn(model, x, y, args.steps)
    print(f"DDN on {x.shape[0]} images in {time.perf_counter() - t:.0f} s", flush=True)
    float_ok = eval.is_adversarial(model, xa, y)
    results["ddn_float"] = stats(eval.distortion(xa, x), float_ok, int(float_ok.sum()))
    for quality in QUALITIES:
        for sub in SUBSAMPLINGS:
            clean = jio.decode(jio.encode(x, quality, sub))
            with torch.no_grad():
                clean_wrong = int((model(quantadv.to_float(clean)).argmax(1) != y).sum())
            row = {"clean_jpeg": {"median_d": float(eval.distortion(quantadv.to_float(clean), x).median()),
                                  "misclassified": clean_wrong}}
            for method in ("reencode", "round_dct", "lagrangian_jpeg"):
                t = time.perf_counter()
                row[method] = run_method(method, model, x, xa, y, quality=quality, subsampling=sub)
                row[method]["seconds"] = time.perf_counter() - t
            results["quality"][f"q{quality} {sub}"] = row
            print(f"q{quality} {sub}: {json.dumps(row)}", flush=True)
    for sub in SUBSAMPLINGS:
        files = jio.encode(x_all, IN_PLACE_QUALITY, sub)
        xj = quantadv.to_float(jio.decode(files))
        with torch.no_grad():
            ok = model(xj).argmax(1) == y_all
        keep = ok.nonzero().flatten().tolist()
        xj, yj, fj = xj[ok], y_all[ok], [files[i] for i in keep]
        xaj = ddn(model, xj, yj, args.steps)
        float_ok = eval.is_adversarial(model, xaj, yj)
        row = {"attacked": len(keep), "ddn_float": stats(eval.distortion(xaj, xj), float_ok, int(float_ok.sum()))}
        for method in ("reencode", "round_dct", "lagrangian_jpeg"):
            row[method] = run_method(method, model, xj, xaj, yj, originals=fj)
        results["in_place"][sub] = row
        print(f"in place q{IN_PLACE_QUALITY} {sub}: {json.dumps(row)}", flush=True)
    results["seconds"] = time.perf_counter() - t0
    (out / "results.json").write_text(json.dumps(results, indent=1))
    print_tables(results)


def print_tables(results: dict) -> None:
    attacked = results["attacked"]
    names = {"reencode": "(a) Pillow re-encoding of DDN's output", "round_dct": "(b) DCT rounding",
             "lagrangian_jpeg": "(c) Lagrangian in the DCT domain"}
    print(f"\n{attacked} attacked images of the first {results['n']} (tinted test accuracy "
          f"{results['test_accuracy']:.3f}); DDN float: {fmt(results['ddn_float'], attacked)}\n")
    print("| format | method | success kept | verified from the file | median d | mean d |")
    print("| --- | --- | ---: | ---: | ---: | ---: |")
    for key, row in results["quality"].items():
        q, sub = key.split()
        clean = row["clean_jpeg"]
        print(f"| JPEG {q} {sub} | the clean original saved as JPEG (reference) | {clean['misclassified']}/{attacked} "
              f"misclassified | - | {clean['median_d']:.3f} | - |")
        for method, label in names.items():
            print(f"| JPEG {q} {sub} | {label} | {fmt(row[method], attacked)} |")
    print("\n| original files | method | success kept | verified from the file | median d | mean d |")
    print("| --- | --- | ---: | ---: | ---: | ---: |")
    for sub, row in results["in_place"].items():
        ddn_row = fmt(row["ddn_float"], row["attacked"])
        print(f"| q{IN_PLACE_QUALITY} {sub} | DDN float output (not a file) | {ddn_row} |")
        for method, label in names.items():
            print(f"| q{IN_PLACE_QUALITY} {sub} | {label} | "
                  f"{fmt(row[method], row['attacked'])} |")


if __name__ == "__main__":
    main()
