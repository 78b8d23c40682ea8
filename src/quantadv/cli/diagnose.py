"""``quantadv diagnose``: is a model's robustness real, or masked gradients? (paper 004, Sec. 3.1)

Example::

    quantadv diagnose --model fmnist-cnn-bc --images 200 --eps 0.1

prints the signal-propagation statistics of Tables 1 / 7 (Jacobian singular values, error
signal, input-gradient norms, fraction of exactly-zero gradients, for beta = 1, NJS and HNS),
the share of clean logit margins past float32's saturation points (above ~16.6 ``p_y`` rounds
to 1 and the cross-entropy loses its true-class term; above ~87.3 it has no gradient at all;
``quantadv.diagnostics.margin_shares``), and runs the gradient-masking checks (accuracy vs
iterations, vs radius up to an eps that must reach 0%, transfer from a float surrogate vs white
box, one-step vs iterative, PGD vs PGD++). With ``--deploy SCHEME`` the model is first quantized with torchao
(:func:`quantadv.models.deploy`) and the float model is the transfer surrogate. Each check
prints PASS or FLAG with its evidence; the exit code is 1 when any check flags (0 otherwise;
2 for a usage error), so the command can gate a CI job.

At scale (paper 004 re-judged on a whole test set)::

    quantadv diagnose --model fmnist-cnn-bc --images 1000 --signal-images 10000 --json bc.json

computes Tables 1 / 7 on the correctly classified images among the first 10,000 (one Jacobian
per image), runs the checks on the first 1,000 (``--checks`` picks some, ``none`` skips them)
and writes everything -- the settings, the three signal rows, the margin shares, every check with
its numbers, and per image (``per_image``: dataset index, label, logit margin, NJS / HNS beta, ``||psi||``,
``||grad||`` and the zero-gradient fraction at beta = 1 / NJS / HNS) -- to ``bc.json``.

``--gradients FILE.npz`` instead writes the loss gradient at a uniform random start in the
eps-ball and its quantizations ``zeta(b g / max|g|)`` (paper 001, Eq. 4, at each ``--gradient-b``)
and prints how they are distributed (paper 001, Fig. 2): no checks are run.
"""

from __future__ import annotations

import argparse

import torch

from ..diagnostics.masking import CHECKS
from ..errors import InputError
from ._common import (
    add_deploy,
    add_device_seed,
    add_model_threat,
    add_progress,
    add_threads,
    apply_threads,
    deploy_model,
    load_model,
    model_manifest,
    network_progress,
    resolve_device,
    show_progress,
    write_line,
)


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "diagnose",
        help="gradient-masking checks (PASS/FLAG) and Jacobian statistics of a model",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
    )
    add_model_threat(p, count="--images", count_default=200, eps_default=0.1)
    p.add_argument("--step", type=float, default=None, help="PGD step (default: eps / 4)")
    p.add_argument("--steps", type=int, default=20, help="PGD iterations (default: 20)")
    p.add_argument("--surrogate", default=None,
                   help="float model for the transfer check (default: the manifest's --init model, if any)")
    add_deploy(p)
    p.add_argument("--tol", type=float, default=0.02, help="tolerance in accuracy (default: 0.02)")
    p.add_argument("--signal-images", type=int, default=None, metavar="N",
                   help="Tables 1 / 7 on every correctly classified image among the first N test images "
                        "(default: the first 500 correctly classified among --images)")
    p.add_argument("--checks", default=",".join(CHECKS), metavar="NAME,...",
                   help=f"masking checks to run, comma-separated, or 'none' (default: {','.join(CHECKS)})")
    p.add_argument("--json", default=None, metavar="FILE.json",
                   help="also write the settings, signal rows, checks and per-image signal values as JSON")
    p.add_argument("--gradients", default=None, metavar="FILE.npz",
                   help="only write the loss gradients at a random start in the eps-ball and their quantizations "
                        "(paper 001 Eq. 4) to FILE.npz and print their statistics; no checks")
    p.add_argument("--gradient-b", default="100,200,500,1000", metavar="B,...",
                   help="the b values of --gradients (default: 100,200,500,1000)")
    add_threads(p)
    p.add_argument("--quiet", action="store_true", help="no progress bar and no per-attack accuracy lines")
    add_progress(p)
    add_device_seed(p)
    return p


def run(args: argparse.Namespace) -> int:
    from .. import data, to_float
    from ..diagnostics import MARGIN_ROUNDS, MARGIN_UNDERFLOWS, margin_shares, masking_checks, signal_report

    apply_threads(args)
    if args.images < 1:
        raise InputError(f"--images must be >= 1, got {args.images}")
    if not args.eps > 0:
        raise InputError(f"--eps must be > 0, got {args.eps}")
    checks_wanted = _parse_checks(args.checks)
    if args.signal_images is not None and args.signal_images < 1:
        raise InputError(f"--signal-images must be >= 1, got {args.signal_images}")
    if args.json is not None and not args.json.endswith(".json"):
        raise InputError(f"--json must name a .json file, got {args.json}")
    device = resolve_device(args.device)
    model = load_model(args.model, device).eval()
    meta = model_manifest(args.model)
    data_name = args.data or meta.get("data") or "fashion-mnist"
    surrogate_name = args.surrogate or ((meta.get("init") or {}).get("source") if meta.get("binary") else None)
    surrogate = load_model(surrogate_name, device).eval() if surrogate_name else None
    if args.deploy is not None:
        float_model = model
        model = deploy_model(model, args.deploy, data_name, device)
        print(f"deployed {args.model} as {args.deploy} (torchao; quantized layers: "
              f"{', '.join(model.quantized_layers)}); gradients are the float model's", flush=True)
        surrogate = surrogate or float_model
    images, labels = data.load(data_name, "test")
    x = to_float(images[: args.images]).to(device)
    y = labels[: args.images].to(device)
    if args.signal_images is None:
        xs, ys, samples = x, y, 500
    else:
        xs, ys = to_float(images[: args.signal_images]).to(device), labels[: args.signal_images].to(device)
        samples = xs.shape[0]

    if args.gradients is not None:
        return _gradients(args, model, x, y, data_name)
    shown = args.model if args.deploy is None else f"{args.model} ({args.deploy})"
    print(f"model {shown} on the first {x.shape[0]} {data_name} test images; {args.norm} eps={args.eps:g}, "
          f"{args.steps} steps", flush=True)
    with network_progress([model, surrogate], desc="diagnose: signal propagation", enabled=show_progress(args)) as bar:
        report, values = signal_report(model, xs, ys, samples=samples, per_image=True)
        write_line(bar, f"\nsignal propagation (paper 004, Tables 1 / 7; {report[0].images} correctly classified "
                        f"images of the first {xs.shape[0]}):")
        for row in report:
            write_line(bar, "  " + row.row())
        shares = margin_shares(values["margin"])
        write_line(bar, f"  clean logit margin: median {shares['median']:.3g}; {100 * shares['rounds']:.1f}% above "
                        f"{MARGIN_ROUNDS:.1f} (float32 rounds p_y to 1: cross-entropy loses the true-class term, "
                        f"a clipped CE has no gradient), {100 * shares['underflows']:.2f}% above "
                        f"{MARGIN_UNDERFLOWS:.1f} (every other p_j underflows: no CE gradient)")
        checks = []
        if checks_wanted:
            write_line(bar, "\ngradient-masking checks (paper 004, Sec. 3.1):")
            bar.set_description_str("diagnose: masking checks")
            say = (lambda _line: None) if args.quiet else (lambda line: write_line(bar, line))
            checks = masking_checks(model, x, y, eps=args.eps, norm=args.norm, step=args.step, steps=args.steps,
                                    surrogate=surrogate, tol=args.tol, seed=args.seed, checks=checks_wanted, log=say)
    if surrogate is None and "transfer" in checks_wanted:
        print("  (transfer check skipped: no --surrogate and no float --init model in the manifest)")
    print()
    for c in checks:
        print(c, flush=True)
    flagged = [c.name for c in checks if not c.passed]
    if checks_wanted:
        print(f"\n{len(flagged)} of {len(checks)} checks flagged" + (f": {', '.join(flagged)}" if flagged else ""))
    else:
        print("masking checks skipped (--checks none)")
    if args.json is not None:
        _write_json(args, data_name, shown, x.shape[0], xs.shape[0], report, values, shares, checks)
    return 1 if flagged else 0


def _parse_checks(text: str) -> tuple[str, ...]:
    if text.strip() == "none":
        return ()
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    bad = [n for n in names if n not in CHECKS]
    if bad or not names:
        raise InputError(f"--checks: unknown check {', '.join(bad) or repr(text)}; allowed: {', '.join(CHECKS)}, "
                         "or 'none'")
    return names


def _write_json(args: argparse.Namespace, data_name: str, shown: str, n_checks: int, n_signal: int, report,
                values: dict, shares: dict, checks) -> None:
    """``--json``: settings, signal rows, checks and per-image values, written atomically."""
    import dataclasses
    import json
    import math
    import os
    from pathlib import Path

    def plain(v):
        if isinstance(v, torch.Tensor):
            v = v.detach().cpu().tolist()
        if isinstance(v, float):
            return v if math.isfinite(v) else None
        if isinstance(v, list):
            return [plain(u) for u in v]
        return v

    doc = {
        "model": shown, "data": data_name, "split": "test", "norm": args.norm, "eps": args.eps,
        "step": args.step if args.step is not None else args.eps / 4, "steps": args.steps, "seed": args.seed,
        "tol": args.tol, "check_images": n_checks, "signal_images": n_signal,
        "signal": [dataclasses.asdict(r) for r in report],
        "beta_njs": plain(values["beta_njs"]),
        "margins": {k: plain(v) for k, v in shares.items()},
        "checks": [{"name": c.name, "passed": c.passed, "verdict": c.verdict, "evidence": c.evidence,
                    "values": {k: plain(float(v)) for k, v in c.values.items()}} for c in checks],
        "per_image": {k: plain(v) for k, v in values.items() if k != "beta_njs"},
    }
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps(doc, allow_nan=False) + "\n")
    os.replace(tmp, out)
    print(f"wrote {out}")


def _gradients(args: argparse.Namespace, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor,
               data_name: str) -> int:
    """``--gradients FILE.npz``: the start gradients, their quantizations and their statistics."""
    import os
    from pathlib import Path

    import numpy as np

    from ..attacks import quantized_gradient
    from ..diagnostics import start_gradients

    try:
        bs = [int(b) for b in args.gradient_b.split(",")]
    except ValueError:
        raise InputError(f"--gradient-b must be integers separated by commas, got {args.gradient_b!r}") from None
    if args.norm != "linf":
        raise InputError("--gradients draws the start in the L-inf ball: use --norm linf")
    out = Path(args.gradients)
    if out.suffix != ".npz":
        raise InputError(f"--gradients must name a .npz file, got {out}")
    step = args.step if args.step is not None else args.eps / 4
    _, g = start_gradients(model, x, y, eps=args.eps, seed=args.seed)
    g = g.detach().cpu()
    arrays = {"gradient": g.numpy(), "labels": y.cpu().numpy(), "eps": np.float64(args.eps),
              "step": np.float64(step), "b": np.array(bs)}
    cap = args.eps / step  # a component beyond it crosses the whole ball in one step
    mags = g.abs()
    ratio = mags.flatten(1).amax(1) / mags.flatten(1).median(1).values.clamp_min(1e-30)
    print(f"model {args.model}, first {x.shape[0]} {data_name} test images at a random start (eps {args.eps:g}, "
          f"seed {args.seed}): median |g| {float(mags.median()):.2e}, max {float(mags.max()):.2e}; "
          f"per-image max/median {float(ratio.median()):.0f}")
    print(f"| quantization | % components = +-1 | % components >= eps / step = {cap:g} |\n| --- | ---: | ---: |")
    for b in [1, *bs]:
        q = quantized_gradient(g, b)
        if b != 1:
            arrays[f"quantized_{b}"] = q.numpy().astype(np.int32)
        name = "sign (b = 1)" if b == 1 else f"b = {b}"
        print(f"| {name} | {100 * float((q.abs() == 1).double().mean()):.1f} | "
              f"{100 * float((q.abs() >= cap).double().mean()):.1f} |")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp.npz")
    np.savez_compressed(tmp, **arrays)
    os.replace(tmp, out)
    print(f"wrote {out}")
    return 0
