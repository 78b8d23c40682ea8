"""Does torchao int8 / int4 deployment change robustness on the zoo? (docs/deployed-quantization.md)

For each model and each scheme of :func:`quantadv.models.deploy` (calibrated on the first
``--calibration`` training images), this measures

* clean accuracy on the full test split, float and deployed;
* forward time of the deployed model relative to the float model on ``--attack-n`` images
  (median of 3, in this process: the machine is shared);
* on the first ``--attack-n`` test images, L-inf PGD (``--steps`` steps of ``--step``, random
  start, seed 0) at ``--eps``:

  - ``float``: the float model attacked and judged by itself;
  - ``bpda``: the :class:`~quantadv.models.Deployed` model attacked with the float shadow's
    gradient, success judged on the quantized forward;
  - ``naive``: PGD on the bare torchao model (``Deployed.quantized``) with its own autograd,
    where that runs (the error is recorded where it does not);
  - ``transfer``: the float model's PGD adversarials classified by the deployed model.

Robust accuracy counts an image as robust when it is classified correctly at the returned
point (clean errors count as broken).

Run (the numbers of docs/deployed-quantization.md):
``nice -n 15 .venv/bin/python benchmarks/deployed_quantization.py --json deployed.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
import warnings

import torch

from quantadv import data, models, to_float
from quantadv.attacks import pgd

MODELS = ("fmnist-cnn", "fmnist-cnn-at-linf", "mnist-cnn")


def accuracy(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int = 1000) -> float:
    with torch.no_grad():
        right = sum(int((model(x[i:i + batch]).argmax(1) == y[i:i + batch]).sum()) for i in range(0, len(x), batch))
    return right / len(x)


def forward_time(model: torch.nn.Module, x: torch.Tensor) -> float:
    times = []
    for _ in range(3):
        t = time.perf_counter()
        with torch.no_grad():
            model(x)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=list(MODELS))
    ap.add_argument("--schemes", nargs="+", default=list(models.SCHEMES))
    ap.add_argument("--eps", type=float, default=0.1)
    ap.add_argument("--step", type=float, default=0.01)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--attack-n", type=int, default=500)
    ap.add_argument("--calibration", type=int, default=500)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", default=None, help="also write the results here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    kw = dict(eps=args.eps, step=args.step, steps=args.steps, random_start=True, seed=0)
    out: dict = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, {args.threads} threads",
        "torch": torch.__version__,
        "torchao": __import__("torchao").__version__,
        "settings": {k: getattr(args, k) for k in ("eps", "step", "steps", "attack_n", "calibration")},
        "models": {},
    }
    for name in args.models:
        t0 = time.time()
        model = models.load(name)
        dataset = models.manifest(name)["data"]
        xt_u8, yt = data.load(dataset, split="test")
        xc_u8, _ = data.load(dataset, split="train")
        xt, calib = to_float(xt_u8), to_float(xc_u8[: args.calibration])
        xa, ya = xt[: args.attack_n], yt[: args.attack_n]
        adv_f, info_f = pgd(model, xa, ya, return_info=True, **kw)
        row: dict = {
            "data": dataset,
            "test_images": len(xt),
            "clean_float": accuracy(model, xt, yt),
            "robust_float": 1 - info_f["success"].float().mean().item(),
            "schemes": {},
        }
        t_float = forward_time(model, xa)
        print(f"{name}: float clean {row['clean_float']:.4f}, robust {row['robust_float']:.3f}", flush=True)
        for scheme in args.schemes:
            d = models.deploy(model, scheme, calibration=calib)
            r: dict = {"quantized_layers": list(d.quantized_layers), "clean": accuracy(d, xt, yt),
                       "forward_time_ratio": forward_time(d, xa) / t_float}
            _, info = pgd(d, xa, ya, return_info=True, **kw)
            r["robust_bpda"] = 1 - info["success"].float().mean().item()
            try:
                _, info_n = pgd(d.quantized, xa, ya, return_info=True, **kw)
                r["robust_naive"] = 1 - info_n["success"].float().mean().item()
            except Exception as exc:  # the integer ops give no gradient: record how it fails
                r["naive_error"] = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:200]}"
            r["robust_transfer"] = accuracy(d, adv_f, ya)
            row["schemes"][scheme] = r
            naive = f"{r['robust_naive']:.3f}" if "robust_naive" in r else r["naive_error"][:60]
            print(f"  {scheme}: clean {r['clean']:.4f}, bpda {r['robust_bpda']:.3f}, naive {naive}, "
                  f"transfer {r['robust_transfer']:.3f}, fwd x{r['forward_time_ratio']:.2f}", flush=True)
        row["seconds"] = round(time.time() - t0, 1)
        out["models"][name] = row
    text = json.dumps(out, indent=2)
    if args.json:
        tmp = args.json + ".tmp"
        with open(tmp, "w") as f:
            f.write(text + "\n")
        os.replace(tmp, args.json)
    print(text)


if __name__ == "__main__":
    main()
