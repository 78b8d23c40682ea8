"""``quantadv train``: train a model and write it as a zoo entry (weights + manifest).

Example (the shipped ``fmnist-cnn``)::

    quantadv train --arch small-cnn --data fashion-mnist --method natural --epochs 4 \\
        --batch-size 128 --lr 0.001 --out fmnist-cnn

The result is ``<out-dir>/<NAME>.safetensors`` and ``<out-dir>/<NAME>.json`` (the manifest:
architecture and constructor arguments, data, method, eps, the command that reproduces the
weights, clean accuracy on the full test split, sha256, torch version, training time, date).
While training, a checkpoint is kept in ``<out-dir>/<NAME>.checkpoint/`` after every epoch;
after a crash or kill, rerun the same command with ``--resume`` to continue from the last
finished epoch (the result is identical to an uninterrupted run on the CPU). The checkpoint
directory is removed once the model is written. One line per epoch is printed and also kept,
as JSON, in ``<out-dir>/<NAME>.train.jsonl`` (rewritten after every epoch, so it always matches
the checkpoint): loss, training accuracy, radius, learning rate, seconds and, with ``--val N``,
the clean and PGD-10 robust accuracy on N held-out training images. With ``--val`` the weights
written are those of the epoch with the best robust validation accuracy (Rice et al. 2020).

``--out-dir`` defaults to the package's zoo directory (``src/quantadv/zoo``) when the
command is run from the root of a quantadv source checkout, and to the current directory
otherwise. The normalisation constants inside the model are the per-channel mean and
standard deviation of the training split.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import os
import re
import shlex
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save as st_save

from .. import __version__
from ..errors import DataError, InputError
from ..models import (
    ARCHITECTURES,
    METHODS,
    ZOO_DIR,
    TrainConfig,
    accuracy,
    build,
    channel_stats,
    load_file,
    read_manifest,
    train,
)
from ..models import load as load_zoo
from ..models._files import atomic_write_bytes, atomic_write_json, sha256_bytes
from ..models.binary import (
    BINARY_METHODS,
    anneal_schedule,
    binary_manifest,
    binary_training_model,
    check_binary_arch,
    packed_state,
)
from ..models.training import ADVERSARIAL, OPTIMIZERS, SCHEDULES, TRADES_DEFAULT_BETA
from ._common import add_device_seed, add_threads, apply_threads, resolve_device

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "train",
        help="train a model (natural, noisy, PGD/TRADES/Fast-AT adversarial, binary) and write "
        "weights + manifest",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
    )
    p.add_argument("--arch", required=True, choices=sorted(ARCHITECTURES), help="architecture")
    p.add_argument(
        "--data",
        required=True,
        help="data set name as quantadv.data.load accepts it: fashion-mnist, mnist, mnist-5k, "
        "cifar10, folder:<path>",
    )
    p.add_argument("--method", default="natural", choices=METHODS + BINARY_METHODS,
                   help="training method; bc, mdtanh, waq, pq, pmf, gdtanh train a binary SmallCNN "
                   "(paper 004)")
    p.add_argument("--adv", default=None, choices=ADVERSARIAL,
                   help="with a binary --method: adversarial training (uses --eps, --attack-steps)")
    p.add_argument("--beta-growth", type=float, default=None,
                   help="binary mdtanh/gdtanh/pmf: factor on beta per optimizer step; pq: increase of "
                   "lambda per step (defaults: quantadv.models.binary.ANNEALING)")
    p.add_argument("--beta-max", type=float, default=None,
                   help="binary mdtanh/gdtanh/pmf/pq: cap on beta (lambda for pq); default 1e4")
    p.add_argument(
        "--eps",
        "--noise",
        type=float,
        default=0.0,
        help="noise amplitude (noisy) or attack radius (pgd-*, trades, fast-at) in [0, 1] units",
    )
    p.add_argument(
        "--eps-warmup",
        type=int,
        default=0,
        metavar="E",
        help="grow the attack radius linearly from 0 to --eps over the first E epochs (default: 0)",
    )
    p.add_argument(
        "--beta",
        type=float,
        default=TRADES_DEFAULT_BETA,
        help=f"TRADES' weight of the KL term (default: {TRADES_DEFAULT_BETA:g})",
    )
    p.add_argument(
        "--val",
        type=int,
        default=0,
        metavar="N",
        help="hold out N training images; after each epoch measure clean and PGD robust accuracy "
        "on them and keep the best-robust epoch's weights (default: 0, keep the last epoch)",
    )
    p.add_argument(
        "--val-steps", type=int, default=10, help="PGD steps of the --val evaluation (default: 10)"
    )
    p.add_argument("--epochs", type=int, default=5, help="number of epochs (default: 5)")
    p.add_argument("--batch-size", type=int, default=128, help="batch size (default: 128)")
    p.add_argument("--lr", type=float, default=1e-3, help="learning rate (default: 0.001)")
    p.add_argument("--optimizer", default="adam", choices=OPTIMIZERS, help="default: adam")
    p.add_argument("--momentum", type=float, default=0.9, help="SGD momentum (default: 0.9)")
    p.add_argument("--weight-decay", type=float, default=0.0, help="default: 0")
    p.add_argument(
        "--schedule", default="constant", choices=SCHEDULES, help="learning-rate schedule"
    )
    p.add_argument(
        "--attack-steps", type=int, default=7,
        help="PGD steps for pgd-* and trades training (default: 7; fast-at takes one)"
    )
    p.add_argument(
        "--attack-step",
        type=float,
        default=None,
        help="attack step size in [0, 1] units (default: 2.5 * eps / attack-steps; 1.25 * eps "
        "for fast-at)",
    )
    p.add_argument(
        "--init",
        default=None,
        metavar="NAME|PATH",
        help="start from a zoo model or a .safetensors file with manifest (fine-tuning)",
    )
    p.add_argument(
        "--train-size",
        type=int,
        default=None,
        metavar="N",
        help="train on the first N images of the train split only (default: all)",
    )
    p.add_argument(
        "--defense",
        default=None,
        metavar="SPEC",
        help="train the classifier behind a preprocessing defense, e.g. softq:levels=1,alpha=1000 "
        "(NSQ of paper 002 with --method noisy --noise 0.3); only the classifier's weights are "
        "stored, the manifest records the spec and quantadv.models.load returns a Defended",
    )
    p.add_argument("--out", required=True, metavar="NAME", help="name of the trained model")
    p.add_argument(
        "--out-dir",
        default=None,
        help="where to write NAME.safetensors and NAME.json (default: src/quantadv/zoo when "
        "run from the repository root, else the current directory)",
    )
    p.add_argument(
        "--resume", action="store_true", help="continue from NAME's checkpoint if there is one"
    )
    add_threads(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_device_seed(p)
    return p


def default_out_dir() -> Path:
    """The zoo directory when run from the root of a source checkout, else the cwd."""
    cwd = Path.cwd().resolve()
    if (cwd / "pyproject.toml").is_file() and (cwd / "src" / "quantadv").resolve() == ZOO_DIR.parent:
        return ZOO_DIR
    return cwd


def canonical_command(args: argparse.Namespace, config: TrainConfig) -> str:
    """The ``quantadv train`` command line that reproduces a run, with every option explicit.

    ``--out-dir``, ``--resume``, ``--threads`` and ``--no-progress`` are left out: they do not
    change the weights.
    """
    parts = [
        "quantadv", "train",
        "--arch", args.arch,
        "--data", args.data,
        "--method", getattr(args, "method", config.method),
    ]
    if getattr(args, "method", None) in BINARY_METHODS and config.method != "natural":
        parts += ["--adv", config.method]
    schedule = anneal_schedule(args.method, getattr(args, "beta_growth", None), getattr(args, "beta_max", None)) \
        if getattr(args, "method", None) in BINARY_METHODS else None
    if schedule is not None:
        parts += ["--beta-growth", repr(schedule[1]), "--beta-max", repr(schedule[2])]
    if config.method != "natural":
        parts += ["--eps", repr(float(config.eps))]
    parts += [
        "--epochs", str(config.epochs),
        "--batch-size", str(config.batch_size),
        "--lr", repr(float(config.lr)),
        "--optimizer", config.optimizer,
    ]
    if config.optimizer == "sgd":
        parts += ["--momentum", repr(float(config.momentum))]
    if config.weight_decay:
        parts += ["--weight-decay", repr(float(config.weight_decay))]
    parts += ["--schedule", config.schedule]
    if config.method in ("pgd-linf", "pgd-l2", "trades"):
        parts += ["--attack-steps", str(config.attack_steps)]
    if config.method in ADVERSARIAL and config.attack_step is not None:
        parts += ["--attack-step", repr(float(config.attack_step))]
    if config.method == "trades":
        parts += ["--beta", repr(float(config.beta))]
    if config.eps_warmup:
        parts += ["--eps-warmup", str(config.eps_warmup)]
    if config.val:
        parts += ["--val", str(config.val), "--val-steps", str(config.val_steps)]
    if args.train_size is not None:
        parts += ["--train-size", str(args.train_size)]
    if args.init:
        parts += ["--init", args.init]
    if getattr(args, "defense", None):
        parts += ["--defense", args.defense]
    parts += ["--out", args.out, "--seed", str(config.seed), "--device", args.device]
    return shlex.join(parts)


def _history_entry(h: Any) -> dict[str, Any]:
    entry = {"epoch": h.epoch, "loss": round(h.loss, 6), "train_accuracy": round(h.accuracy, 6)}
    if h.eps is not None:
        entry["eps"] = round(h.eps, 6)
    if h.val_clean is not None:
        entry["val_clean"] = round(h.val_clean, 6)
    if h.val_robust is not None:
        entry["val_robust"] = round(h.val_robust, 6)
    return entry


def _load_data(name: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    from ..data import load as load_data

    train_x, train_y = load_data(name, "train")
    test_x, test_y = load_data(name, "test")
    for x, split in ((train_x, "train"), (test_x, "test")):
        if x.dtype != torch.uint8 or x.dim() != 4:
            raise DataError(
                f"data set {name!r} ({split}) gave a {x.dtype} tensor of shape "
                f"{tuple(x.shape)}; expected uint8 NCHW"
            )
    return train_x, train_y, test_x, test_y


def _initial_model(args: argparse.Namespace, kwargs: dict[str, Any], device: torch.device):
    """Build the model to train: fresh (seeded) or from ``--init``; returns (model, kwargs, init)."""
    torch.manual_seed(args.seed)
    if not args.init:
        return build(args.arch, **kwargs), kwargs, None
    source = args.init
    path = Path(source)
    if source.endswith((".safetensors", ".json")) or os.sep in source or path.is_file():
        meta = read_manifest(path)
        model = load_file(path, device=device)
    else:
        from ..models import manifest as zoo_manifest

        meta = zoo_manifest(source)
        model = load_zoo(source, device=device)
    if meta["arch"] != args.arch:
        raise InputError(
            f"--init {source} is a {meta['arch']!r} model but --arch is {args.arch!r}; "
            "use the same architecture"
        )
    init_kwargs = dict(meta["arch_kwargs"])
    for key in ("in_channels", "num_classes"):
        if init_kwargs.get(key) != kwargs[key]:
            raise InputError(
                f"--init {source} has {key}={init_kwargs.get(key)} but --data {args.data} "
                f"needs {kwargs[key]}; initialise from a model trained on similar data"
            )
    return model, init_kwargs, {"source": source, "sha256": meta["sha256"]}


def _defended_model(args: argparse.Namespace, model: torch.nn.Module) -> torch.nn.Module:
    """With ``--defense SPEC``: ``Defended(parse_defense(SPEC), classifier)`` (paper 002 NSQ).

    The spec is canonicalised in ``args.defense`` (it goes into the command and the manifest).
    A defended ``--init`` model contributes its classifier only: the defense is ``--defense``'s.
    """
    from ..defenses import Defended, format_spec, parse_defense

    if isinstance(model, Defended):
        if not args.defense:
            print(f"note: --init {args.init} is a defended model; training its classifier without "
                  "a defense (pass --defense to keep one)", flush=True)
        model = model.classifier
    if not args.defense:
        return model
    args.defense = format_spec(args.defense)
    return Defended(parse_defense(args.defense), model)


def run(args: argparse.Namespace) -> int:
    if not _NAME.match(args.out or ""):
        raise InputError(
            f"--out {args.out!r} is not a valid model name; use letters, digits, '.', '_' and "
            "'-' (e.g. fmnist-cnn)"
        )
    if args.method != "trades" and args.beta != TRADES_DEFAULT_BETA:
        raise InputError(f"--beta is TRADES' weight; it needs --method trades (got --method {args.method})")
    if getattr(args, "adv", None) and args.method not in BINARY_METHODS:
        raise InputError(f"--adv goes with a binary --method ({', '.join(BINARY_METHODS)}); for a float "
                         f"model use --method {args.adv}")
    if args.method in BINARY_METHODS:  # bad arch or schedule: fail before loading any data
        check_binary_arch(args.method, args.arch)
        anneal_schedule(args.method, getattr(args, "beta_growth", None), getattr(args, "beta_max", None))
    elif getattr(args, "beta_growth", None) is not None or getattr(args, "beta_max", None) is not None:
        raise InputError(f"--beta-growth/--beta-max go with a binary --method (mdtanh, gdtanh, pmf, pq), "
                         f"not {args.method}")
    config = TrainConfig(
        method=(args.adv or "natural") if args.method in BINARY_METHODS else args.method,
        eps=args.eps,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        optimizer=args.optimizer,
        momentum=args.momentum,
        weight_decay=args.weight_decay,
        schedule=args.schedule,
        attack_steps=args.attack_steps,
        attack_step=args.attack_step,
        seed=args.seed,
        beta=args.beta,
        eps_warmup=args.eps_warmup,
        val=args.val,
        val_steps=args.val_steps,
    )
    device = resolve_device(args.device)
    apply_threads(args)
    out_dir = Path(args.out_dir) if args.out_dir else default_out_dir()
    out_dir.mkdir(parents=True, exist_ok=True)
    ckpt_dir = out_dir / f"{args.out}.checkpoint"
    if (ckpt_dir / "state.json").exists() and not args.resume:
        raise InputError(
            f"a checkpoint of an unfinished run exists in {ckpt_dir}; add --resume to continue "
            "it, or delete that directory to start over"
        )

    train_x, train_y, test_x, test_y = _load_data(args.data)
    if args.train_size is not None:
        if not 1 <= args.train_size <= train_x.shape[0]:
            raise InputError(
                f"--train-size must be between 1 and {train_x.shape[0]} (the size of the "
                f"{args.data} train split), got {args.train_size}"
            )
        train_x, train_y = train_x[: args.train_size], train_y[: args.train_size]
    mean, std = channel_stats(train_x)
    kwargs = {
        "in_channels": int(train_x.shape[1]),
        "num_classes": int(max(int(train_y.max()), int(test_y.max())) + 1),
        "mean": mean,
        "std": std,
    }
    model, kwargs, init = _initial_model(args, kwargs, device)
    model = _defended_model(args, model)
    if args.method in BINARY_METHODS:  # paper 004: binary SmallCNN, from scratch or from --init
        model = binary_training_model(model if init else None, args.method, args.arch, kwargs,
                                      getattr(args, "beta_growth", None), getattr(args, "beta_max", None)).to(device)
    command = canonical_command(args, config)
    print(f"training {args.out}: {command}", flush=True)
    print(
        f"data {args.data}: {train_x.shape[0]} train / {test_x.shape[0]} test images of shape "
        f"{tuple(train_x.shape[1:])}, {kwargs['num_classes']} classes; device {device}, "
        f"{torch.get_num_threads()} threads",
        flush=True,
    )
    meta = {
        "arch": args.arch,
        "arch_kwargs": kwargs,
        "data": args.data,
        "train_size": int(train_x.shape[0]),
        "init": init,
    }
    if args.defense:
        meta["defense"] = args.defense
    log_path = out_dir / f"{args.out}.train.jsonl"
    result = train(
        model,
        train_x,
        train_y,
        config,
        device=device,
        checkpoint_dir=ckpt_dir,
        resume=args.resume,
        meta=meta,
        progress=not args.no_progress,
        log=lambda line: print(line, flush=True),
        log_file=log_path,
    )
    clean = accuracy(result.model, test_x, test_y, device=device)
    print(f"clean accuracy on the {test_x.shape[0]} test images: {clean:.4f}", flush=True)

    stored = result.model.classifier if args.defense else result.model  # a Defended stores its classifier
    state = {k: v.detach().contiguous().cpu() for k, v in stored.state_dict().items()}
    if args.method in BINARY_METHODS:  # deployed form: sign bits + float layers (paper 004)
        state = packed_state(result.model)
    data = st_save(state, metadata={"format": "quantadv-model", "arch": args.arch})
    weights = out_dir / f"{args.out}.safetensors"
    atomic_write_bytes(weights, data)
    manifest = {
        "name": args.out,
        "format": 1,
        "arch": args.arch,
        "arch_kwargs": kwargs,
        "data": args.data,
        "input_shape": list(train_x.shape[1:]),
        "train_size": int(train_x.shape[0]),
        "test_size": int(test_x.shape[0]),
        "method": config.method,
        **({"defense": args.defense} if args.defense else {}),
        "eps": float(config.eps),
        "norm": {"pgd-linf": "linf", "pgd-l2": "l2"}.get(config.method),
        "epochs": config.epochs,
        "config": config.to_dict(),
        "attack_step": config.step_size if config.method.startswith("pgd") else None,
        "init": init,
        "from_scratch": init is None,
        "command": command,
        "clean_accuracy": round(clean, 6),
        "history": [_history_entry(h) for h in result.history],
        "epochs_run": len(result.history),
        "chosen_epoch": result.best_epoch,
        "selection": (
            f"best {'robust' if config.eps > 0 else 'clean'} accuracy on {config.val} held-out "
            f"training images (PGD-{config.val_steps})" if config.val else "last epoch"
        ),
        "train_log": log_path.name,
        "sha256": sha256_bytes(data),
        "size_bytes": len(data),
        "torch_version": torch.__version__,
        "quantadv_version": __version__,
        "device": str(device),
        "threads": torch.get_num_threads(),
        "train_seconds": round(result.train_seconds, 1),
        "date": _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat(),
    }
    if args.method in BINARY_METHODS:
        manifest["binary"] = binary_manifest(result.model)
    atomic_write_json(out_dir / f"{args.out}.json", manifest)
    shutil.rmtree(ckpt_dir, ignore_errors=True)
    print(
        f"wrote {weights} and {weights.with_suffix('.json')} "
        f"(clean accuracy {clean:.4f}, {result.train_seconds:.0f} s of training)",
        flush=True,
    )
    return 0
