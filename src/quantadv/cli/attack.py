"""``quantadv attack``: attack a model on a dataset, save the adversarial images and a summary."""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

import numpy as np
import torch
import yaml

from ..errors import InputError
from ._common import add_device_seed, load_model, resolve_device

#: Parameters used when the command line does not give them ([0, 1] units).
DEFAULT_PARAMS: dict[str, dict[str, object]] = {
    "fgsm": {"eps": 0.1},
    "ifgsm": {"eps": 0.1, "steps": 10},
    "pgd": {"norm": "l2", "eps": 1.0, "step": 0.1, "steps": 20},
    "cw": {"steps": 20, "search_steps": 5},
    "ddn": {"steps": 100},
}
QUANTIZE_CHOICES = ("none", "round", "lagrangian")


def parse_params(pairs: list[str]) -> dict[str, object]:
    """Parse ``key=value`` pairs; values are read as YAML scalars (numbers, booleans, strings)."""
    params: dict[str, object] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise InputError(f"attack parameters are given as key=value, got {pair!r}")
        params[key.strip()] = yaml.safe_load(value)
    return params


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    defaults = "; ".join(f"{k}: " + ", ".join(f"{p}={v}" for p, v in d.items()) for k, d in DEFAULT_PARAMS.items())
    p = sub.add_parser(
        "attack",
        help="attack a model on a dataset and save the adversarial images (.npz) and a summary (.json)",
        description=(
            "Attack the correctly classified images among the first --n images of a dataset. "
            "Budgets are in [0, 1] units. Defaults per attack: " + defaults + "."
        ),
    )
    p.add_argument("--model", required=True,
                   help="a shipped model name (see 'quantadv zoo list'), or X.safetensors with its X.json manifest")
    p.add_argument("--data", default="fashion-mnist", help="dataset name (see 'quantadv data list')")
    p.add_argument("--split", default="test", choices=("train", "test"))
    p.add_argument("--n", type=int, default=1000, help="attack the first N images (default 1000)")
    p.add_argument("--attack", required=True, choices=sorted(DEFAULT_PARAMS))
    p.add_argument("-p", "--param", action="append", default=[], metavar="KEY=VALUE",
                   help="attack parameter, repeatable, e.g. -p eps=0.5 -p steps=50 -p loss=margin")
    p.add_argument("--quantize", default="none", choices=QUANTIZE_CHOICES,
                   help="turn the output into 8-bit images: round (R) or lagrangian (Q-lambda*)")
    p.add_argument("--target", default=None, metavar="MODE",
                   help="targeted attack: 'random' (a class other than the label, from --seed), 'next' (label + 1), "
                        "'least-likely' (lowest clean logit), or a class index K (images of class K are skipped); "
                        "success then means 'classified as the target', and --png records the targets for verify")
    p.add_argument("--batch-size", type=int, default=500)
    p.add_argument("--out", default="attack-out", help="output folder for adversarial.npz and summary.json")
    p.add_argument("--png", default=None, metavar="DIR",
                   help="also write the adversarial images as lossless PNGs (needs --quantize)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_device_seed(p)
    return p


def make_attack(name: str, params: dict[str, object], seed: int):
    """Bind an attack of :data:`quantadv.attacks.REGISTRY` to its parameters."""
    from ..attacks import REGISTRY

    fn = REGISTRY[name]
    bound = {**DEFAULT_PARAMS[name], **params}
    if name == "pgd" and bound.get("random_start"):
        bound.setdefault("seed", seed)

    def run(model, x, y, targets=None):
        extra = {} if targets is None else {"targets": targets}
        try:
            return fn(model, x, y, **bound, **extra)
        except TypeError as exc:
            raise InputError(f"bad parameter for {name}: {exc}") from None

    return run, bound


def make_postprocess(kind: str):
    """The quantizer of paper 000 applied after the attack, or None."""
    if kind == "none":
        return None
    from .. import quantize

    if kind == "round":
        return lambda model, x, x_adv, y, targets=None: quantize.round_nearest(x_adv)
    return lambda model, x, x_adv, y, targets=None: quantize.lagrangian(model, x, x_adv, y, targets=targets)


def parse_target(value: str | None) -> str | int | None:
    """``--target``: None (untargeted), a mode of :data:`TARGET_MODES`, or a class index."""
    from ..eval.targets import TARGET_MODES

    if value is None:
        return None
    if value in TARGET_MODES:
        return value
    try:
        return int(value)
    except ValueError:
        raise InputError(
            f"--target must be one of {', '.join(TARGET_MODES)} or a class index, got {value!r}"
        ) from None


def _atomic_write(path: Path, write) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def run(args: argparse.Namespace) -> int:
    from .. import data
    from ..digital import is_digital, to_uint8
    from ..eval.batched import attack_dataset, choose_targets, summarize

    if args.n < 1 or args.batch_size < 1:
        raise InputError("--n and --batch-size must be positive integers")
    if args.png and args.quantize == "none":
        raise InputError("--png writes 8-bit images: add --quantize round or --quantize lagrangian")
    device = resolve_device(args.device)
    torch.manual_seed(args.seed)
    params = parse_params(args.param)
    attack, bound = make_attack(args.attack, params, args.seed)
    model = load_model(args.model, device)
    images, labels = data.load(args.data, split=args.split)
    images, labels = images[: args.n], labels[: args.n]
    target_mode = parse_target(args.target)
    targets = None
    if target_mode is not None:
        targets = choose_targets(model, images, labels, target_mode, seed=args.seed,
                                 batch_size=args.batch_size, device=device)
    result = attack_dataset(
        model, images, labels, attack, batch_size=args.batch_size, device=device,
        postprocess=make_postprocess(args.quantize), targets=targets, progress=not args.quiet, desc=args.attack,
    )
    summary = {
        "model": args.model, "data": args.data, "split": args.split, "attack": args.attack,
        "params": bound, "quantize": args.quantize, "target": target_mode, "seed": args.seed,
        **summarize(result, labels),
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    digital = bool(is_digital(result["adv"]).all())
    arrays = {
        "labels": labels.numpy(), "clean_pred": result["clean_pred"].numpy(),
        "adv_pred": result["adv_pred"].numpy(), "attacked": result["attacked"].numpy(),
        "success": result["success"].numpy(), "d": result["d"].numpy(),
        "l2": result["l2"].numpy(), "linf": result["linf"].numpy(),
    }
    if targets is not None:
        arrays["targets"] = targets.numpy()
    if digital:
        arrays["images_uint8"] = to_uint8(result["adv"]).numpy()
    else:
        arrays["images_float"] = result["adv"].numpy().astype(np.float32)
    def write_npz(tmp: str) -> None:
        with open(tmp, "wb") as fh:
            np.savez_compressed(fh, **arrays)

    _atomic_write(out / "adversarial.npz", write_npz)
    _atomic_write(out / "summary.json", lambda tmp: Path(tmp).write_text(json.dumps(summary, indent=2) + "\n"))
    if args.png:
        from ..io import save_png

        keep = result["success"]
        save_png(to_uint8(result["adv"][keep]), args.png, labels=labels[keep],
                 targets=None if targets is None else targets[keep])
    goal = "untargeted" if target_mode is None else f"targeted ({target_mode})"
    print(f"{args.attack} {goal} on {args.model}: clean accuracy {summary['clean_accuracy']:.3f}, "
          f"success {summary['success_rate']:.3f} of {summary['attacked']} attacked, "
          f"median d {summary['median_d']:.3f} (pixel units)")
    print(f"wrote {out / 'adversarial.npz'} and {out / 'summary.json'}")
    if args.png:
        print(f"wrote {int(result['success'].sum())} adversarial PNGs to {args.png}")
    return 0
