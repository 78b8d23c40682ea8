"""Issue 12, part 3: does quantizing to JPEG *inside* DDN beat post-processing? (docs/jpeg.md)

Runs the same DDN loop (Eq. 10-11 of paper 000, as ``quantadv.attacks.ddn``: normalised
gradient step, cosine-annealed step size, radius x(1 -+ gamma), best adversarial iterate kept)
on the same images in two ways:

- ``post``: the float DDN, then ``quantize.lagrangian_jpeg`` on its output;
- ``integrated``: every iterate is projected onto the JPEG grid (DCT coefficients rounded in
  units of the table's steps, decoded by the differentiable decoder model with libjpeg's
  rounding: the JPEG analog of "DDN + R every iteration") and success is judged on the
  projected iterate; the kept iterate is finally written as a real JPEG with its coefficients
  rounded, decoded by libjpeg and re-checked.

Prints success (re-verified on the decoded files) and the median distortion of both, per
quality. Run niced::

    OMP_NUM_THREADS=1 nice -n 5 .venv/bin/python scripts/jpeg_ddn_integrated.py --n 100
"""

from __future__ import annotations

import argparse
import math
import time

import torch

import quantadv
from quantadv import data, eval, models, quantize
from quantadv.io import jpeg as jio


def _normalize(v: torch.Tensor) -> torch.Tensor:
    n = v.flatten(1).norm(dim=1).clamp_min(1e-12)
    return v / n.view(-1, *([1] * (v.dim() - 1)))


def ddn_loop(model, x, y, steps: int, project=None, gamma: float = 0.05, step: float = 1.0):  # type: ignore[no-untyped-def]
    """DDN; ``project`` (optional) maps each iterate onto the JPEG grid before it is judged."""
    rho = torch.ones(x.shape[0], dtype=x.dtype)
    coef = None
    cur = x.clone()
    if project is not None:
        cur, coef = project(cur)
    best = x.clone()
    best_coef = None if coef is None else coef.clone()
    best_norm = torch.full((x.shape[0],), math.inf, dtype=torch.float64)
    for i in range(steps):
        z = cur.detach().requires_grad_(True)
        logits = model(z)
        loss = torch.nn.functional.cross_entropy(logits, y, reduction="sum")
        (grad,) = torch.autograd.grad(loss, z)
        adv = logits.argmax(1) != y
        norm = (cur - x).flatten(1).norm(dim=1).double()
        better = adv & (norm < best_norm)
        best[better] = cur[better].detach()
        best_norm[better] = norm[better]
        if coef is not None:
            best_coef[better] = coef[better]
        alpha = step / 100 + (step - step / 100) * (1 + math.cos(math.pi * i / steps)) / 2
        x_t = cur.detach() + alpha * _normalize(grad)  # ascent on the CE loss of the true class
        rho = torch.where(adv, (1 - gamma) * rho, (1 + gamma) * rho)
        cur = (x + rho.view(-1, 1, 1, 1) * _normalize(x_t - x)).clamp(0, 1)
        if project is not None:
            cur, coef = project(cur)
    with torch.no_grad():
        adv = model(cur).argmax(1) != y
    norm = (cur - x).flatten(1).norm(dim=1).double()
    better = adv & (norm < best_norm)
    best[better] = cur[better]
    if coef is not None:
        best_coef[better] = coef[better]
    return best, best_coef


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--model", default="fmnist-cnn")
    ap.add_argument("--qualities", nargs="+", type=int, default=[75, 90])
    args = ap.parse_args()
    torch.set_num_threads(1)
    model = models.load(args.model)
    for p in model.parameters():
        p.requires_grad_(False)
    images, labels = data.load("fashion-mnist", "test")
    x, y = quantadv.to_float(images[: args.n]), labels[: args.n]
    with torch.no_grad():
        keep = model(x).argmax(1) == y
    x, y = x[keep], y[keep]
    print(f"{args.model}: {x.shape[0]} correctly classified of the first {args.n} test images, DDN {args.steps} steps")
    t = time.perf_counter()
    xa, _ = ddn_loop(model, x, y, args.steps)
    print(f"float DDN: {time.perf_counter() - t:.0f} s, success {int((model(xa).argmax(1) != y).sum())}, "
          f"median d {float(eval.distortion(xa, x).median()):.3f}")
    print("| quality | variant | success (verified on the decoded file) | median d | mean d |")
    print("| --- | --- | ---: | ---: | ---: |")
    for q in args.qualities:
        templates = [jio.read_coefficients(b) for b in jio.encode(x, q)]
        tables = torch.from_numpy(templates[0].component_tables())

        def project(z: torch.Tensor, tables: torch.Tensor = tables) -> tuple[torch.Tensor, torch.Tensor]:
            coef = jio.forward_dct(z.double() * 255, tables).round()
            image = jio.decoder_model(coef, tables, z.shape[-2], z.shape[-1], rounding=True) / 255
            return image.to(z.dtype), coef

        xq, info = quantize.lagrangian_jpeg(model, x, xa, y, quality=q, return_info=True)
        with torch.no_grad():
            ok = model(quantadv.to_float(jio.decode(info["jpeg"]))).argmax(1) != y
        d = eval.distortion(xq, x)[ok]
        print(f"| {q} | DDN then lagrangian_jpeg | {int(ok.sum())}/{x.shape[0]} | {float(d.median()):.3f} | "
              f"{float(d.mean()):.3f} |", flush=True)
        t = time.perf_counter()
        xi, coef = ddn_loop(model, x, y, args.steps, project=project)
        seconds = time.perf_counter() - t
        blobs = [tpl.with_coefficients(list(c.to(torch.int16).numpy())).to_bytes()
                 for tpl, c in zip(templates, coef, strict=True)]
        xd = quantadv.to_float(jio.decode(blobs))
        with torch.no_grad():
            ok = model(xd).argmax(1) != y
        d = eval.distortion(xd, x)[ok]
        print(f"| {q} | DDN with JPEG rounding every iteration ({seconds:.0f} s) | {int(ok.sum())}/{x.shape[0]} | "
              f"{float(d.median()):.3f} | {float(d.mean()):.3f} |", flush=True)
        _, post_round = quantize.lagrangian_jpeg(model, x, xi, y, quality=q, return_info=True)
        d2 = eval.distortion(quantadv.to_float(jio.decode(post_round["jpeg"])), x)[post_round["success"]]
        print(f"| {q} | ... then lagrangian_jpeg on it | {int(post_round['success'].sum())}/{x.shape[0]} | "
              f"{float(d2.median()):.3f} | {float(d2.mean()):.3f} |", flush=True)


if __name__ == "__main__":
    main()
