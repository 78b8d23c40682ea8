"""Training: natural, noisy and PGD adversarial training, with exact checkpoint/resume.

:func:`train` trains any ``nn.Module`` on uint8 image tensors. It is what ``quantadv train``
runs, and it takes tensors (not dataset names) so it can be used and tested on any data.

Methods (``TrainConfig.method``):

``natural``
    Cross-entropy on the clean images.
``noisy``
    Cross-entropy on ``clip(x + u, 0, 1)`` with ``u`` uniform in ``[-eps, eps]`` per pixel,
    a fresh draw every batch: the noise training of the NSQ defense (paper 002).
``pgd-linf`` / ``pgd-l2``
    Adversarial training of Madry et al. (2018): every batch is replaced by the PGD
    adversarial examples of the current model (L-inf or L2 ball of radius ``eps`` in [0, 1]
    units, uniform random start, ``attack_steps`` steps of size ``attack_step``; default
    ``2.5 * eps / attack_steps``, Madry's rule), made with :func:`quantadv.attacks.pgd`.
    Following standard practice the model is put in **eval mode while the attack is
    generated** (so batch-norm statistics and dropout do not react to the attack iterates)
    and back in train mode for the weight update.

Randomness comes only from two explicit generators seeded with ``TrainConfig.seed``: one
(on the CPU) shuffles the data, one (on the training device) draws noise and PGD random
starts. On the CPU the same seed therefore gives bit-identical weights.

Checkpoints: after every epoch, when a ``checkpoint_dir`` is given, the model's
``state_dict``, the optimizer state (flattened to named tensors) and both generator states
are written to ``epoch-NNNN.safetensors``, and a small ``state.json`` records the epoch, the
configuration, the loss/accuracy history, the non-tensor optimizer state and the sha256 of
that file. Both files are written atomically, ``state.json`` last, so a run killed at any
moment resumes (``resume=True``) from the last finished epoch and ends with the same weights
as a run that was never interrupted. Nothing is pickled.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import nn
from tqdm.auto import tqdm

from .._validate import check_choice, check_int, check_positive
from ..errors import InputError, ModelError
from ._files import atomic_write_bytes, atomic_write_json, sha256_bytes

__all__ = [
    "METHODS",
    "OPTIMIZERS",
    "SCHEDULES",
    "EpochStats",
    "TrainConfig",
    "TrainResult",
    "accuracy",
    "channel_stats",
    "train",
]

METHODS = ("natural", "noisy", "pgd-linf", "pgd-l2")
OPTIMIZERS = ("adam", "sgd")
SCHEDULES = ("constant", "cosine")

_CHECKPOINT_FORMAT = 1


@dataclass(frozen=True)
class TrainConfig:
    """Everything that determines a training run (besides the data and the initial model).

    ``eps`` is the noise amplitude (``noisy``) or the attack radius (``pgd-*``) in [0, 1]
    units; it must be 0 for ``natural``. ``attack_step=None`` means ``2.5 * eps /
    attack_steps``. ``schedule="cosine"`` anneals the learning rate per epoch from ``lr``
    to 0 (epoch ``e`` of ``E`` uses ``lr * (1 + cos(pi * e / E)) / 2``).
    """

    method: str = "natural"
    eps: float = 0.0
    epochs: int = 1
    batch_size: int = 128
    lr: float = 1e-3
    optimizer: str = "adam"
    momentum: float = 0.9
    weight_decay: float = 0.0
    schedule: str = "constant"
    attack_steps: int = 7
    attack_step: float | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        check_choice(self.method, "method", METHODS)
        check_choice(self.optimizer, "optimizer", OPTIMIZERS)
        check_choice(self.schedule, "schedule", SCHEDULES)
        check_int(self.epochs, "epochs")
        check_int(self.batch_size, "batch_size")
        check_int(self.attack_steps, "attack_steps")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise InputError(f"seed must be an integer, got {self.seed!r}")
        check_positive(self.lr, "lr")
        check_positive(self.weight_decay, "weight_decay", allow_zero=True)
        check_positive(self.momentum, "momentum", allow_zero=True)
        eps = check_positive(self.eps, "eps", allow_zero=True)
        if self.method == "natural" and eps != 0:
            raise InputError(
                f"natural training uses no eps, got eps={self.eps}; drop --eps or choose "
                "--method noisy, pgd-linf or pgd-l2"
            )
        if self.method != "natural" and eps == 0:
            raise InputError(
                f"--method {self.method} needs a radius: pass --eps > 0 (in [0, 1] units, "
                "e.g. 0.1 for L-inf on MNIST, 1.5 for L2)"
            )
        if self.attack_step is not None:
            check_positive(self.attack_step, "attack_step")

    @property
    def step_size(self) -> float:
        """The PGD step size actually used (Madry's ``2.5 * eps / steps`` by default)."""
        if self.attack_step is not None:
            return float(self.attack_step)
        return 2.5 * float(self.eps) / self.attack_steps

    def lr_at(self, epoch: int) -> float:
        """Learning rate of (0-based) ``epoch`` under the configured schedule."""
        if self.schedule == "cosine":
            return self.lr * 0.5 * (1.0 + math.cos(math.pi * epoch / self.epochs))
        return self.lr

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class EpochStats:
    """Loss and accuracy on the training inputs actually used (noisy / adversarial ones)."""

    epoch: int
    loss: float
    accuracy: float
    lr: float
    seconds: float


@dataclass
class TrainResult:
    """What :func:`train` returns: the trained model (in eval mode) and how it went."""

    model: nn.Module
    history: list[EpochStats] = field(default_factory=list)
    train_seconds: float = 0.0
    resumed_from_epoch: int = 0


def channel_stats(images: torch.Tensor) -> tuple[list[float], list[float]]:
    """Per-channel mean and standard deviation of uint8 NCHW images, in [0, 1] units.

    Rounded to 4 decimals, so that they read well in a manifest. Computed in float64 over
    all pixels, in chunks (no float copy of the whole dataset).
    """
    _check_uint8_images(images, "images")
    c = images.shape[1]
    total = torch.zeros(c, dtype=torch.float64)
    total_sq = torch.zeros(c, dtype=torch.float64)
    for i in range(0, images.shape[0], 4096):
        chunk = images[i : i + 4096].to(torch.float64) / 255.0
        total += chunk.sum(dim=(0, 2, 3)).cpu()
        total_sq += (chunk * chunk).sum(dim=(0, 2, 3)).cpu()
    n = images.shape[0] * images.shape[2] * images.shape[3]
    mean = total / n
    std = (total_sq / n - mean * mean).clamp_min(1e-12).sqrt()
    return [round(float(v), 4) for v in mean], [round(max(float(v), 1e-4), 4) for v in std]


@torch.no_grad()
def accuracy(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    batch_size: int = 500,
    device: str | torch.device | None = None,
) -> float:
    """Fraction of ``images`` (uint8 or float [0, 1], NCHW) the model classifies as ``labels``.

    The model is evaluated in eval mode and its mode is restored afterwards. ``device``
    defaults to the device of the model's first parameter.
    """
    if labels.dim() != 1 or labels.shape[0] != images.shape[0]:
        raise InputError(
            f"labels must be 1-D with one entry per image; got {tuple(labels.shape)} for "
            f"{images.shape[0]} images"
        )
    if images.shape[0] == 0:
        raise InputError("cannot measure accuracy on an empty set of images")
    dev = torch.device(device) if device is not None else _model_device(model)
    was_training = model.training
    model.eval()
    correct = 0
    try:
        for i in range(0, images.shape[0], batch_size):
            x = _to_float(images[i : i + batch_size].to(dev))
            pred = model(x).argmax(dim=1)
            correct += int((pred == labels[i : i + batch_size].to(dev)).sum())
    finally:
        model.train(was_training)
    return correct / images.shape[0]


def train(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    config: TrainConfig,
    *,
    device: str | torch.device = "cpu",
    checkpoint_dir: str | Path | None = None,
    resume: bool = False,
    meta: dict[str, Any] | None = None,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
    on_epoch_end: Callable[[EpochStats], None] | None = None,
) -> TrainResult:
    """Train ``model`` on uint8 NCHW ``images`` with int64 ``labels`` as ``config`` says.

    Parameters
    ----------
    model:
        Any classifier returning logits for float [0, 1] inputs. It is moved to ``device``
        and trained in place; it is returned in eval mode.
    images, labels:
        The training set: ``uint8`` tensor of shape (N, C, H, W) and class indices (N,).
        They are moved to ``device`` once; batches are converted to float per step.
    config:
        The :class:`TrainConfig`.
    checkpoint_dir:
        If given, a checkpoint is written there after every epoch (see the module docstring).
    resume:
        Continue from the checkpoint in ``checkpoint_dir`` if there is one (its configuration
        and ``meta`` must equal the current ones); start from scratch if there is none.
    meta:
        JSON-serialisable facts that must not change across a resume (the command-line
        front end passes the architecture and the data set name).
    progress:
        Show a tqdm progress bar with the running loss and accuracy.
    log:
        Called with one line of text per finished epoch (default: ``tqdm.write``).
    on_epoch_end:
        Called with the :class:`EpochStats` after each epoch's checkpoint has been written;
        an exception raised there stops training (the checkpoint stays valid).
    """
    _check_uint8_images(images, "images")
    if labels.dim() != 1 or labels.shape[0] != images.shape[0]:
        raise InputError(
            f"labels must be 1-D with one entry per image; got {tuple(labels.shape)} for "
            f"{images.shape[0]} images"
        )
    if labels.dtype.is_floating_point or images.shape[0] == 0:
        raise InputError("labels must be integer class indices and the training set non-empty")
    dev = torch.device(device)
    meta = dict(meta or {})
    log = log or tqdm.write
    if resume and checkpoint_dir is None:
        raise InputError("resume=True needs a checkpoint_dir to resume from")

    model.to(dev)
    images = images.to(dev)
    labels = labels.to(dev, torch.long)
    optimizer = _make_optimizer(model, config)
    shuffle_gen = torch.Generator(device="cpu").manual_seed(config.seed)
    noise_gen = shuffle_gen if dev.type == "cpu" else torch.Generator(device=dev)
    if dev.type != "cpu":
        noise_gen.manual_seed(config.seed + 1)

    result = TrainResult(model=model)
    start_epoch = 0
    ckpt = Path(checkpoint_dir) if checkpoint_dir is not None else None
    if ckpt is not None and resume and (ckpt / "state.json").exists():
        start_epoch, result.history, result.train_seconds = _load_checkpoint(
            ckpt, model, optimizer, shuffle_gen, noise_gen, config, meta
        )
        result.resumed_from_epoch = start_epoch
        log(f"resuming from the checkpoint of epoch {start_epoch}/{config.epochs} in {ckpt}")

    attack = _attack_fn(config) if config.method.startswith("pgd") else None
    n = images.shape[0]
    num_batches = math.ceil(n / config.batch_size)
    for epoch in range(start_epoch, config.epochs):
        lr = config.lr_at(epoch)
        for group in optimizer.param_groups:
            group["lr"] = lr
        t0 = time.perf_counter()
        perm = torch.randperm(n, generator=shuffle_gen).to(dev)
        model.train()
        loss_sum, correct, seen = 0.0, 0, 0
        bar = tqdm(
            total=num_batches,
            desc=f"epoch {epoch + 1}/{config.epochs}",
            disable=not progress,
            leave=False,
            mininterval=1.0,
            dynamic_ncols=True,
        )
        try:
            for b in range(num_batches):
                idx = perm[b * config.batch_size : (b + 1) * config.batch_size]
                x = _to_float(images[idx])
                y = labels[idx]
                x = _training_inputs(model, x, y, config, noise_gen, attack)
                logits = model(x)
                loss = F.cross_entropy(logits, y)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                if hasattr(model, "after_optimizer_step"):  # binary nets: PQ prox, beta annealing
                    model.after_optimizer_step(optimizer.param_groups[0]["lr"])
                loss_sum += float(loss.detach()) * y.shape[0]
                correct += int((logits.detach().argmax(dim=1) == y).sum())
                seen += y.shape[0]
                bar.update(1)
                bar.set_postfix(loss=f"{loss_sum / seen:.4f}", acc=f"{correct / seen:.4f}")
        finally:
            bar.close()
        seconds = time.perf_counter() - t0
        if not math.isfinite(loss_sum):
            raise InputError(
                f"training diverged in epoch {epoch + 1} (loss is {loss_sum}); lower --lr"
            )
        stats = EpochStats(epoch + 1, loss_sum / seen, correct / seen, lr, seconds)
        result.history.append(stats)
        result.train_seconds += seconds
        log(
            f"epoch {stats.epoch}/{config.epochs}: loss {stats.loss:.4f}, "
            f"train accuracy {stats.accuracy:.4f} ({config.method}), lr {lr:.3g}, "
            f"{seconds:.1f} s"
        )
        if ckpt is not None:
            _save_checkpoint(ckpt, model, optimizer, shuffle_gen, noise_gen, config, meta, result)
        if on_epoch_end is not None:
            on_epoch_end(stats)
    model.eval()
    return result


# --------------------------------------------------------------------------------------
# helpers


def _check_uint8_images(images: object, name: str) -> None:
    if not isinstance(images, torch.Tensor) or images.dtype != torch.uint8 or images.dim() != 4:
        got = (
            f"{images.dtype} tensor of shape {tuple(images.shape)}"
            if isinstance(images, torch.Tensor)
            else type(images).__name__
        )
        raise InputError(
            f"{name} must be a uint8 NCHW tensor (as quantadv.data.load returns), got {got}"
        )


def _to_float(x: torch.Tensor) -> torch.Tensor:
    return x.to(torch.float32) / 255.0 if x.dtype == torch.uint8 else x.to(torch.float32)


def _model_device(model: nn.Module) -> torch.device:
    for t in model.parameters():
        return t.device
    for t in model.buffers():
        return t.device
    return torch.device("cpu")


def _make_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise InputError("the model has no trainable parameters")
    if config.optimizer == "sgd":
        return torch.optim.SGD(
            params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay
        )
    return torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)


def _attack_fn(config: TrainConfig) -> Callable[..., torch.Tensor]:
    try:
        from ..attacks import pgd
    except ImportError as exc:  # pragma: no cover - only while the package is incomplete
        raise ModelError(
            f"adversarial training needs quantadv.attacks.pgd, which cannot be imported ({exc})"
        ) from None
    norm = "linf" if config.method == "pgd-linf" else "l2"
    eps, step, steps = float(config.eps), config.step_size, config.attack_steps

    def attack(model: nn.Module, x: torch.Tensor, y: torch.Tensor, gen: torch.Generator):
        return pgd(
            model, x, y, norm=norm, eps=eps, step=step, steps=steps, random_start=True,
            generator=gen,
        )

    return attack


def _training_inputs(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    config: TrainConfig,
    gen: torch.Generator,
    attack: Callable[..., torch.Tensor] | None,
) -> torch.Tensor:
    """The inputs of one training step: clean, noisy, or PGD-adversarial."""
    if config.method == "noisy":
        u = torch.rand(x.shape, generator=gen, device=x.device, dtype=x.dtype)
        return (x + (2.0 * u - 1.0) * float(config.eps)).clamp(0.0, 1.0)
    if attack is not None:
        model.eval()
        try:
            x_adv = attack(model, x, y, gen).detach()
        finally:
            model.train()
        return x_adv
    return x


# --------------------------------------------------------------------------------------
# checkpoints


def _flatten_optimizer(state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split ``optimizer.state_dict()`` into named tensors and a JSON-serialisable rest."""
    tensors: dict[str, torch.Tensor] = {}
    plain: dict[str, Any] = {"param_groups": state["param_groups"], "state": {}}
    for pid, entry in state["state"].items():
        for key, value in entry.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optimizer.{pid}.{key}"] = value.detach().contiguous().cpu()
            else:
                plain["state"].setdefault(str(pid), {})[key] = value
        plain["state"].setdefault(str(pid), {})
    try:
        json.dumps(plain)
    except TypeError as exc:
        raise ModelError(f"optimizer state cannot be stored without pickle: {exc}") from None
    return tensors, plain


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], plain: dict[str, Any]) -> dict:
    state: dict[int, dict[str, Any]] = {int(pid): dict(v) for pid, v in plain["state"].items()}
    for name, value in tensors.items():
        if not name.startswith("optimizer."):
            continue
        _, pid, key = name.split(".", 2)
        state.setdefault(int(pid), {})[key] = value
    return {"state": state, "param_groups": plain["param_groups"]}


def _save_checkpoint(
    ckpt: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    shuffle_gen: torch.Generator,
    noise_gen: torch.Generator,
    config: TrainConfig,
    meta: dict[str, Any],
    result: TrainResult,
) -> None:
    ckpt.mkdir(parents=True, exist_ok=True)
    epoch = len(result.history) and result.history[-1].epoch
    tensors = {
        f"model.{k}": v.detach().contiguous().cpu() for k, v in model.state_dict().items()
    }
    opt_tensors, opt_plain = _flatten_optimizer(optimizer.state_dict())
    tensors.update(opt_tensors)
    tensors["rng.shuffle"] = shuffle_gen.get_state()
    if noise_gen is not shuffle_gen:
        tensors["rng.noise"] = noise_gen.get_state().cpu()
    data = st_save(tensors, metadata={"format": "quantadv-checkpoint", "epoch": str(epoch)})
    file_name = f"epoch-{epoch:04d}.safetensors"
    atomic_write_bytes(ckpt / file_name, data)
    atomic_write_json(
        ckpt / "state.json",
        {
            "format": _CHECKPOINT_FORMAT,
            "epoch": epoch,
            "file": file_name,
            "sha256": sha256_bytes(data),
            "config": config.to_dict(),
            "meta": meta,
            "optimizer": opt_plain,
            "history": [asdict(h) for h in result.history],
            "train_seconds": result.train_seconds,
        },
    )
    for old in ckpt.glob("epoch-*.safetensors"):
        if old.name != file_name:
            old.unlink()


def _load_checkpoint(
    ckpt: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    shuffle_gen: torch.Generator,
    noise_gen: torch.Generator,
    config: TrainConfig,
    meta: dict[str, Any],
) -> tuple[int, list[EpochStats], float]:
    try:
        state = json.loads((ckpt / "state.json").read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelError(
            f"checkpoint {ckpt / 'state.json'} is unreadable ({exc}); delete {ckpt} to start over"
        ) from None
    if state.get("format") != _CHECKPOINT_FORMAT:
        raise ModelError(f"checkpoint in {ckpt} has an unknown format; delete it to start over")
    saved_config = state.get("config")
    if saved_config != config.to_dict() or state.get("meta") != json.loads(json.dumps(meta)):
        diffs = [
            f"{k}: checkpoint {saved_config.get(k)!r} vs now {v!r}"
            for k, v in config.to_dict().items()
            if saved_config.get(k) != v
        ] + [
            f"{k}: checkpoint {state.get('meta', {}).get(k)!r} vs now {v!r}"
            for k, v in json.loads(json.dumps(meta)).items()
            if state.get("meta", {}).get(k) != v
        ]
        raise InputError(
            f"the checkpoint in {ckpt} belongs to a different run ({'; '.join(diffs)}); "
            "resume with the original arguments, or delete the checkpoint directory"
        )
    path = ckpt / state["file"]
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ModelError(f"checkpoint file {path} is missing ({exc}); delete {ckpt}") from None
    if sha256_bytes(data) != state["sha256"]:
        raise ModelError(f"checkpoint file {path} is corrupt (sha256 mismatch); delete {ckpt}")
    tensors = st_load(data)
    model_state = {k[len("model.") :]: v for k, v in tensors.items() if k.startswith("model.")}
    try:
        model.load_state_dict(model_state)
        optimizer.load_state_dict(_unflatten_optimizer(tensors, state["optimizer"]))
    except (RuntimeError, ValueError, KeyError) as exc:
        raise ModelError(
            f"checkpoint in {ckpt} does not fit this model ({exc}); delete it to start over"
        ) from None
    shuffle_gen.set_state(tensors["rng.shuffle"])
    if noise_gen is not shuffle_gen:
        if "rng.noise" not in tensors:
            raise InputError(
                f"checkpoint in {ckpt} was written on the CPU; resume it with --device cpu"
            )
        noise_gen.set_state(tensors["rng.noise"])
    elif "rng.noise" in tensors:
        raise InputError(
            f"checkpoint in {ckpt} was written on a GPU; resume it on the same kind of device"
        )
    history = [EpochStats(**h) for h in state["history"]]
    return int(state["epoch"]), history, float(state["train_seconds"])
