"""``quantadv certify``: certified accuracy vs eps of a randomized-quantization defense (paper 003)."""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch

from ..errors import InputError
from ._common import (
    add_device_seed,
    add_progress,
    add_threads,
    apply_threads,
    format_table,
    load_model,
    network_progress,
    resolve_device,
    show_progress,
    write_line,
)


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "certify",
        help="certified accuracy vs eps of a RandDisc / pRD / swRD defense (paper 003, Theorem 1)",
        description=(
            "Theorem 1 of paper 003: an image is certified at eps when the majority vote over --samples "
            "quantizations of the clean image is correct and margin^2/2 >= KL(Q(x) || Q(x')). "
            "--kl paper estimates the KL as the paper does (codebooks sorted into vectors, GMM fits, "
            "Monte Carlo) at an adversarial x' (PGD-40, step eps/20, BPDA + EOT): an estimate at one "
            "point of the ball, not a guarantee. --kl bound uses a closed-form upper bound valid over "
            "the whole L-inf ball (data processing; closed form for one-channel RandDisc); it certifies "
            "only tiny radii. Writes certificate.json and certified.png to --out."
        ),
    )
    p.add_argument("--model", required=True,
                   help="a zoo model (a defended one brings its defense) or X.safetensors with its X.json")
    p.add_argument("--defense", default=None, metavar="SPEC",
                   help="the quantizer, e.g. swrd:s=2,k=2,sigma=4/255,tau=4/255,beta=1 (randdisc:, prd: too); "
                        "replaces a defended model's own defense")
    p.add_argument("--data", default="mnist-5k", help="dataset name (see 'quantadv data list')")
    p.add_argument("--split", default="test", choices=("train", "test"))
    p.add_argument("--n", type=int, default=100, help="certify the first N images (default 100)")
    p.add_argument("--eps", default="0,0.02,0.04,0.08,0.16,0.24,0.32",
                   help="comma-separated L-inf radii in [0, 1] units (default: paper 003's MNIST grid)")
    p.add_argument("--kl", default="paper", choices=("paper", "bound"))
    p.add_argument("--samples", type=int, default=100, help="t: quantizations per image for the margin (100)")
    p.add_argument("--codebooks", type=int, default=1000,
                   help="codebook draws per image for the GMM fits (paper: 10000; default 1000)")
    p.add_argument("--gmm-components", type=int, default=2, help="k_gmm (paper: 2 on MNIST)")
    p.add_argument("--mc-samples", type=int, default=100_000, help="Monte Carlo draws for Eq. 9 (100000)")
    p.add_argument("--attack-steps", type=int, default=40, help="PGD steps of the attack giving x' (40)")
    p.add_argument("--eot", type=int, default=10, help="EOT draws per gradient of that attack (10)")
    p.add_argument("--alpha", type=float, default=None,
                   help="use a Hoeffding lower bound at level 1-alpha on the margin instead of the estimate")
    p.add_argument("--out", default="certify-out", help="output folder (certificate.json, certified.png)")
    add_threads(p)
    p.add_argument("--quiet", action="store_true", help="print only the table (no progress lines or bar)")
    add_progress(p)
    add_device_seed(p)
    return p


def _parse_eps(text: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise InputError(f"--eps must be comma-separated numbers like 0,0.1,0.3, got {text!r}") from None
    if not values or any(v < 0 for v in values):
        raise InputError(f"--eps must list radii >= 0, got {text!r}")
    return values


def run(args: argparse.Namespace) -> int:
    from .. import data
    from ..attacks import pgd
    from ..defenses import Defended, adaptive, parse_defense
    from ..defenses.certify import certify, plot_certified

    if args.n < 1:
        raise InputError("--n must be a positive integer")
    apply_threads(args)
    eps = _parse_eps(args.eps)
    device = resolve_device(args.device)
    model = load_model(args.model, device)
    classifier = model.classifier if isinstance(model, Defended) else model
    if args.defense:
        preprocess = parse_defense(args.defense)
    elif isinstance(model, Defended):
        preprocess = model.preprocess
    else:
        raise InputError(f"{args.model} has no defense: pass --defense, e.g. swrd:s=2,k=2,sigma=4/255,tau=4/255,beta=1")
    classifier.eval().to(device)

    images, labels = data.load(args.data, split=args.split)
    x = images[: args.n].to(device).float() / 255.0
    y = labels[: args.n].to(device)

    def attack(model, imgs, lbls, e):
        attacked, m = adaptive(Defended(*model), "bpda+eot", eot_samples=args.eot)
        return pgd(attacked, imgs, lbls, eps=e, step=e / 20, steps=args.attack_steps, eot=m)

    torch.manual_seed(args.seed)  # the attack's EOT draws use torch's global generator
    generator = torch.Generator(device=device).manual_seed(args.seed)
    t0 = time.perf_counter()
    with network_progress([classifier], desc="certify: images through the classifier",
                          enabled=show_progress(args)) as bar:
        say = (lambda _m: None) if args.quiet else (lambda m: write_line(bar, m))
        cert = certify(
            (preprocess, classifier), x, y, eps, samples=args.samples, kl=args.kl, attack=attack,
            codebooks=args.codebooks, gmm_components=args.gmm_components, mc_samples=args.mc_samples,
            alpha=args.alpha, generator=generator, seed=args.seed, progress=say,
        )
    seconds = time.perf_counter() - t0
    if args.kl == "paper":
        cert.settings["attack"] = f"PGD-{args.attack_steps} step eps/20, BPDA + EOT m={args.eot}"
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    summary = cert.to_dict()
    summary.update({
        "model": args.model, "defense": args.defense, "data": args.data, "split": args.split, "n": int(x.shape[0]),
        "seed": args.seed, "seconds": round(seconds, 1), "threads": torch.get_num_threads(),
    })
    tmp = out / ".certificate.json.tmp"
    tmp.write_text(json.dumps(summary, indent=1))
    os.replace(tmp, out / "certificate.json")
    plot_certified({args.defense or args.model: cert}, str(out / "certified.png"),
                   title=f"{args.model} on {args.data} ({x.shape[0]} images)")
    rows = [[f"{e:g}", f"{100 * a:.1f}%", f"{float(cert.kl[:, j].median()):.3g}"]
            for j, (e, a) in enumerate(zip(cert.eps, cert.certified_accuracy, strict=True))]
    print(f"{args.model} + {preprocess!r} on {x.shape[0]} images of {args.data}: clean (vote of {args.samples}) "
          f"{100 * cert.clean_accuracy:.1f}%, KL: {args.kl}; {seconds:.0f} s")
    print(format_table(rows, ["eps", "certified", "median KL"]))
    print(f"wrote {out / 'certificate.json'} and {out / 'certified.png'}")
    return 0
