"""Benchmark (issue 12): cost of ``lagrangian_jpeg`` relative to ``lagrangian`` on the same images.

Both quantize the same DDN outputs of the shipped ``fmnist-cnn`` (first ``--n`` Fashion-MNIST
test images that it classifies correctly). ``lagrangian_jpeg`` pays, per search step, for
writing every candidate as a real JPEG file (jpeglib) and decoding it with libjpeg (Pillow);
``lagrangian`` and ``lagrangian_jpeg`` are each timed with their two searches (``model``,
the default, and ``bisection``, the paper's). The methods are interleaved
repeat by repeat (the machine is shared and loaded), and both wall-clock and process CPU time
are reported; ratios are of medians. The JPEG time is split into network calls and the rest
(encode/write/decode) by profiling one repeat.

Usage::

    OMP_NUM_THREADS=1 nice -n 5 .venv/bin/python benchmarks/jpeg.py --n 200 --repeats 3
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import quantadv
from quantadv import attacks, data, io, models, quantize
from quantadv.quantize.lagrangian import ceil_log2


def timed(fn):  # type: ignore[no-untyped-def]
    w, c = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - w, time.process_time() - c


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--quality", type=int, default=90)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model = models.load("fmnist-cnn")
    images, labels = data.load("fashion-mnist", "test")
    x, y = quantadv.to_float(images[: args.n]), labels[: args.n]
    with torch.no_grad():
        keep = model(x).argmax(1) == y
    x, y = x[keep], y[keep]
    xa = attacks.ddn(model, x, y, steps=args.steps)
    methods = {
        "lagrangian (bisection)": lambda: quantize.lagrangian(model, x, xa, y, search="bisection", return_info=True),
        "lagrangian (model)": lambda: quantize.lagrangian(model, x, xa, y, return_info=True),
        f"lagrangian_jpeg q{args.quality}": lambda: quantize.lagrangian_jpeg(
            model, x, xa, y, quality=args.quality, return_info=True),
        f"lagrangian_jpeg q{args.quality} (bisection)": lambda: quantize.lagrangian_jpeg(
            model, x, xa, y, quality=args.quality, search="bisection", return_info=True),
    }
    wall: dict[str, list[float]] = {k: [] for k in methods}
    cpu: dict[str, list[float]] = {k: [] for k in methods}
    calls: dict[str, tuple[float, int, int]] = {}
    decodes = 0.0
    for _ in range(args.repeats):
        for name, fn in methods.items():
            (_, info), w, c = timed(fn)
            wall[name].append(w)
            cpu[name].append(c)
            bound = 3 + ceil_log2(info["j_size"])
            calls[name] = (float(info["calls"].double().mean()), int(info["calls"].max()),
                           int((info["calls"] > bound).sum()))
            if "decodes" in info and name == f"lagrangian_jpeg q{args.quality}":
                decodes = float(info["decodes"].double().mean())
    # Where the JPEG time goes: the network calls alone on the same number of images.
    jpeg_name = f"lagrangian_jpeg q{args.quality}"
    templates = [io.read_coefficients(b) for b in io.jpeg.encode(x, args.quality)]
    _, w_codec, c_codec = timed(lambda: io.jpeg.decode([t.to_bytes() for t in templates]))
    print(f"{x.shape[0]} images (of the first {args.n}), DDN {args.steps} steps, fmnist-cnn, "
          f"{args.threads} thread(s), {args.repeats} interleaved repeats")
    base_w = statistics.median(wall["lagrangian (bisection)"])
    base_c = statistics.median(cpu["lagrangian (bisection)"])
    print("| method | median wall s | runs (s) | median CPU s | / lagrangian (bisection), wall | CPU "
          "| calls: mean, max, images above 3 + ceil(log2 J) |")
    print("| --- | ---: | --- | ---: | ---: | ---: | ---: |")
    for name in methods:
        mw, mc = statistics.median(wall[name]), statistics.median(cpu[name])
        runs = ", ".join(f"{v:.2f}" for v in wall[name])
        mean, most, above = calls[name]
        print(f"| {name} | {mw:.2f} | {runs} | {mc:.2f} | {mw / base_w:.2f} | {mc / base_c:.2f} "
              f"| {mean:.2f}, {most}, {above} |")
    per_file = c_codec / x.shape[0]
    print(f"write (jpeglib) + decode (Pillow) of one 28x28 JPEG: {1000 * per_file:.2f} ms CPU; "
          f"x {decodes:.1f} files per image = {per_file * decodes * x.shape[0]:.2f} s of the "
          f"{statistics.median(cpu[jpeg_name]):.2f} s CPU of {jpeg_name}")


if __name__ == "__main__":
    main()
