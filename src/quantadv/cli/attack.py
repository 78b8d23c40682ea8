"""``quantadv attack``: attack a model on a dataset, save the adversarial images and a summary.

The command is a one-run experiment: it builds the config its options describe
(:func:`build_config`) and runs it with :func:`quantadv.experiments.run_experiment` into a
temporary store, so it shares the runner's one batch loop (clean predictions, skipping of the
images already misclassified, targets, quantization, success judged on the final image);
then it writes ``adversarial.npz``, ``summary.json`` and, with ``--png``, the PNG files.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import tempfile
from pathlib import Path

import numpy as np
import torch
import yaml

from ..errors import InputError
from ._common import add_device_seed, resolve_device

#: Parameters used when the command line does not give them ([0, 1] units).
DEFAULT_PARAMS: dict[str, dict[str, object]] = {
    "fgsm": {"eps": 0.1},
    "ifgsm": {"eps": 0.1, "steps": 10},
    "pgd": {"norm": "l2", "eps": 1.0, "step": 0.1, "steps": 20},
    "cw": {"steps": 20, "search_steps": 5},
    "ddn": {"steps": 100},
    "apgd": {"eps": 0.1},
    "apgd_t": {"eps": 0.1},
    "square": {"eps": 0.1},
}
QUANTIZE_CHOICES = ("none", "round", "lagrangian", "lagrangian-jpeg")


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
    from ..attacks import REGISTRY

    p.add_argument("--attack", required=True, choices=sorted(REGISTRY),
                   help="an attack of quantadv.attacks.REGISTRY; its required parameters without a default "
                        "below must be given with -p")
    p.add_argument("-p", "--param", action="append", default=[], metavar="KEY=VALUE",
                   help="attack parameter, repeatable, e.g. -p eps=0.5 -p steps=50 -p loss=margin")
    p.add_argument("--quantize", default="none", choices=QUANTIZE_CHOICES,
                   help="turn the output into 8-bit images: round (R) or lagrangian (Q-lambda*); lagrangian-jpeg: "
                        "into JPEG files (Q-lambda* over the DCT coefficients, docs/jpeg.md; see --jpeg)")
    p.add_argument("--target", default=None, metavar="MODE",
                   help="targeted attack: 'random' (a class other than the label, from --seed), 'next' (label + 1), "
                        "'least-likely' (lowest clean logit), or a class index K (images of class K are skipped); "
                        "success then means 'classified as the target', and --png records the targets for verify")
    p.add_argument("--batch-size", type=int, default=500)
    p.add_argument("--out", default="attack-out", help="output folder for adversarial.npz and summary.json")
    p.add_argument("--png", default=None, metavar="DIR",
                   help="also write the adversarial images as lossless PNGs (needs --quantize)")
    p.add_argument("--jpeg", default=None, metavar="DIR",
                   help="with --quantize lagrangian-jpeg: write the adversarial JPEG files (.jpg, keeping the "
                        "quantization tables of --jpeg-quality) and labels.json to DIR")
    p.add_argument("--jpeg-quality", type=int, default=90, metavar="Q",
                   help="JPEG quality 1..100 of --quantize lagrangian-jpeg (default 90)")
    p.add_argument("--jpeg-subsampling", default=None, choices=("4:4:4", "4:2:2", "4:2:0"),
                   help="chroma subsampling of colour JPEG files (default 4:2:0, what Pillow writes; grayscale "
                        "data have no chroma)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (the same as --quiet here)")
    add_device_seed(p)
    return p


def attack_params(name: str, params: dict[str, object]) -> dict[str, object]:
    """The attack's parameters: :data:`DEFAULT_PARAMS` updated with the command line's."""
    return {**DEFAULT_PARAMS.get(name, {}), **params}


#: ``--quantize`` -> the runner's post-processing step
POSTPROCESS = {"none": "none", "round": "round_nearest", "lagrangian": "lagrangian",
               "lagrangian-jpeg": "lagrangian_jpeg"}


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


def build_config(args: argparse.Namespace, params: dict[str, object], target: str | int | None,
                 store: Path) -> dict:
    """The experiment config equivalent to the command line (run by the experiment runner)."""
    model: dict[str, object] = {"file": str(Path(args.model).resolve())} if args.model.endswith(".safetensors") \
        else {"name": args.model}
    model["label"] = Path(args.model).stem if args.model.endswith(".safetensors") else args.model
    return {
        "experiment": "quantadv-attack",
        "seed": args.seed,
        "device": args.device,
        "batch_size": args.batch_size,
        "store": str(store),
        "save_images": args.n,  # every output image is kept: they are the command's result
        "targets": "none" if target is None else target,
        "models": [model],
        "data": {"name": args.data, "split": args.split, "subset": {"first": args.n}},
        "attacks": [{"name": args.attack, "params": params}],
        "postprocess": _postprocess(args),
    }


def _postprocess(args: argparse.Namespace) -> list:
    """The runner's post-processing for ``--quantize``. For lagrangian-jpeg the float output is
    kept too ("none"): the JPEG bytes are re-derived from it (and the quality) for --jpeg."""
    if args.quantize != "lagrangian-jpeg":
        return [POSTPROCESS[args.quantize]]
    params: dict[str, object] = {"quality": getattr(args, "jpeg_quality", 90)}
    if getattr(args, "jpeg_subsampling", None) is not None:
        params["subsampling"] = args.jpeg_subsampling
    return ["none", {"name": "lagrangian_jpeg", "params": params}]


def summarize(result: dict[str, torch.Tensor], labels: torch.Tensor) -> dict[str, float]:
    """Headline numbers: clean accuracy, success rate over attacked images, median d of successes."""
    attacked = result["attacked"]
    success = result["success"]
    n_att = int(attacked.sum())
    d = result["d"][success]
    return {
        "images": int(labels.shape[0]),
        "clean_accuracy": float((result["clean_pred"] == labels.cpu()).double().mean()),
        "attacked": n_att,
        "success_rate": float(success.sum()) / n_att if n_att else math.nan,
        "median_d": float(d.median()) if d.numel() else math.nan,
        "mean_l2": float(result["l2"][success].mean()) if d.numel() else math.nan,
        "mean_linf": float(result["linf"][success].mean()) if d.numel() else math.nan,
        "seconds": float(result["seconds"].sum()),
    }


def read_store(store: Path, postprocess: str | None = None) -> tuple[dict[str, torch.Tensor], torch.Tensor | None]:
    """The per-image outcome of the one run in ``store`` as tensors (ordered by image index);
    ``postprocess``: only that post-processing's rows (when the run has several)."""
    from ..experiments import open_store

    with open_store(store) as st:
        rows = sorted((r for r in st.results() if postprocess in (None, r["postprocess"])), key=lambda r: r["idx"])
        images = {a["idx"]: a for a in st.adversarials() if postprocess in (None, a["postprocess"])}
    n = len(rows)
    adv = []
    for r in rows:
        a = images[r["idx"]]
        shape = tuple(json.loads(a["shape"])) if isinstance(a["shape"], str) else tuple(a["shape"])
        adv.append(torch.from_numpy(np.frombuffer(a["data"], dtype=np.float32).copy()).view(shape))
    attacked = torch.tensor([not (r["info"] and "skipped" in json.loads(r["info"])) for r in rows])
    success = torch.tensor([bool(r["success"]) for r in rows]) & attacked
    result = {
        "clean_pred": torch.tensor([r["clean_pred"] for r in rows]),
        "adv_pred": torch.tensor([r["adv_pred"] for r in rows]),
        "attacked": attacked,
        "success": success,
        "adv": torch.stack(adv) if n else torch.empty(0),
        "d": torch.tensor([r["d"] for r in rows], dtype=torch.float64),
        "l2": torch.tensor([r["l2"] for r in rows], dtype=torch.float64),
        "linf": torch.tensor([r["linf"] for r in rows], dtype=torch.float64),
        "seconds": torch.tensor([r["seconds"] if a else 0.0 for r, a in zip(rows, attacked.tolist(), strict=True)],
                                dtype=torch.float64),
        "labels": torch.tensor([r["label"] for r in rows], dtype=torch.int64),
    }
    targets = None
    if rows and rows[0]["target"] is not None:
        targets = torch.tensor([r["target"] for r in rows])
    return result, targets


def run(args: argparse.Namespace) -> int:
    from ..digital import is_digital, to_uint8
    from ..errors import ConfigError
    from ..experiments import parse_config, run_experiment

    if args.n < 1 or args.batch_size < 1:
        raise InputError("--n and --batch-size must be positive integers")
    if args.png and args.quantize == "none":
        raise InputError("--png writes 8-bit images: add --quantize round or --quantize lagrangian")
    jpeg_mode = args.quantize == "lagrangian-jpeg"
    if args.jpeg and not jpeg_mode:
        raise InputError("--jpeg writes adversarial JPEG files: add --quantize lagrangian-jpeg")
    if getattr(args, "jpeg_subsampling", None) and not jpeg_mode:
        raise InputError("--jpeg-subsampling sets the chroma of JPEG files: add --quantize lagrangian-jpeg")
    if jpeg_mode and args.png:
        raise InputError("--quantize lagrangian-jpeg makes JPEG files: use --jpeg DIR instead of --png")
    if jpeg_mode:
        from ..io.jpeg import check_quality

        check_quality(args.jpeg_quality)
    resolve_device(args.device)
    params = attack_params(args.attack, parse_params(args.param))
    target_mode = parse_target(args.target)
    out = Path(args.out)
    with tempfile.TemporaryDirectory(prefix="quantadv-attack-") as tmp:
        store = Path(tmp) / "attack.db"
        try:
            cfg = parse_config(build_config(args, params, target_mode, store), base_dir=Path.cwd(),
                               source="quantadv attack")
        except ConfigError as exc:  # say it in the command line's words
            raise InputError(str(exc).replace("models[0].name", "--model").replace("attacks[0].params.", "-p ")
                             .replace("attacks[0].params", "-p").replace("targets", "--target")) from None
        try:
            run_experiment(cfg, quiet=args.quiet or args.no_progress)
        except ConfigError as exc:
            raise InputError(str(exc)) from None
        result, targets = read_store(store, "lagrangian_jpeg" if jpeg_mode else None)
        floats = read_store(store, "none")[0]["adv"] if jpeg_mode and args.jpeg else None
    labels = result.pop("labels")
    summary = {
        "model": args.model, "data": args.data, "split": args.split, "attack": args.attack,
        "params": params, "quantize": args.quantize, "target": target_mode, "seed": args.seed,
        **summarize(result, labels),
    }
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
    if args.jpeg:
        _write_jpegs(args, result, floats, labels, targets)
    return 0


def _write_jpegs(args: argparse.Namespace, result: dict, floats: torch.Tensor, labels: torch.Tensor,
                 targets: torch.Tensor | None) -> None:
    """``--jpeg DIR``: the JPEG files of the successes, re-derived from the stored float output and
    the quality with :func:`quantadv.quantize.lagrangian_jpeg` (deterministic), checked against the
    run's decoded images, written with :func:`quantadv.io.save_jpeg`."""
    from .. import models as zoo
    from ..data import load as load_data
    from ..digital import to_float
    from ..io import save_jpeg
    from ..quantize import lagrangian_jpeg

    keep = result["success"].nonzero().flatten()
    if not keep.numel():
        print(f"no successful image: nothing written to {args.jpeg}")
        return
    device = resolve_device(args.device)
    model = zoo.load_file(args.model, device=device) if args.model.endswith(".safetensors") \
        else zoo.load(args.model, device=device)
    images, _ = load_data(args.data, args.split)
    x = to_float(images[keep]).to(device)
    sub_targets = None if targets is None else targets[keep].to(device)
    blobs, same = [], 0
    for start in range(0, keep.numel(), args.batch_size):
        sl = slice(start, start + args.batch_size)
        x_q, info = lagrangian_jpeg(model, x[sl], floats[keep][sl].to(device), labels[keep][sl].to(device),
                                    quality=args.jpeg_quality, subsampling=getattr(args, "jpeg_subsampling", None),
                                    return_info=True,
                                    targets=None if sub_targets is None else sub_targets[sl])
        blobs += info["jpeg"]
        same += int((x_q.cpu() == result["adv"][keep][sl]).flatten(1).all(1).sum())
    save_jpeg(blobs, args.jpeg, labels=labels[keep], targets=None if targets is None else targets[keep])
    print(f"wrote {len(blobs)} adversarial JPEGs (quality {args.jpeg_quality}) to {args.jpeg}"
          + ("" if same == len(blobs) else f"; {len(blobs) - same} differ from the run's images (re-derived), "
             f"check them with 'quantadv verify {args.jpeg} --model {args.model}'"))
