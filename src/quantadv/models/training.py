"""Training: natural, noisy, PGD, TRADES and Fast adversarial training, with exact checkpoint/resume.

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
``trades``
    TRADES (Zhang et al. 2019, "Theoretically principled trade-off between robustness and
    accuracy", Eq. 5 / Algorithm 1): the loss is ``CE(f(x), y) + beta * KL(f(x) || f(x'))``
    where ``x'`` maximises the KL term inside the L-inf ball of radius ``eps``. As in the
    paper's algorithm ``x'`` starts at ``x + 0.001 * N(0, 1)`` and takes ``attack_steps``
    signed-gradient ascent steps of the KL divergence (step ``attack_step``, default
    ``2.5 * eps / attack_steps``), with the model in eval mode. ``beta`` defaults to 6.
``fast-at``
    "Fast is better than free" (Wong, Rice, Kolter 2020, Algorithm 3): one FGSM step of size
    ``1.25 * eps`` (``attack_step`` overrides it) from a uniform random start in the L-inf
    ball, made with :func:`quantadv.attacks.pgd` (one step, random start).

Options shared by every method:

``eps_warmup`` (epochs)
    The radius grows linearly from 0 to ``eps`` over the first ``eps_warmup`` epochs (per
    batch), the warm-up large radii need (DESIGN.md section 4: MNIST at eps 0.3 does not
    leave loss 2.30 without it).
``val`` (images)
    ``val`` training images (a seeded random choice) are held out. After each epoch the model
    is evaluated on them: clean accuracy and robust accuracy under PGD-``val_steps`` (step
    ``2.5 * eps / val_steps``, random start; L-inf except for ``pgd-l2``). The weights of the
    epoch with the best robust accuracy (ties: the later epoch) are kept and returned: robust
    overfitting makes the last epoch a poor choice (Rice, Wong, Kolter 2020). With ``eps=0``
    the choice is by clean accuracy.

Randomness comes only from two explicit generators seeded with ``TrainConfig.seed``: one
(on the CPU) shuffles the data, one (on the training device) draws noise and PGD random
starts. On the CPU the same seed therefore gives bit-identical weights.

Checkpoints: after every epoch, when a ``checkpoint_dir`` is given, the model's
``state_dict``, the optimizer state (flattened to named tensors) and both generator states
are written to ``epoch-NNNN.safetensors``, and a small ``state.json`` records the epoch, the
configuration, the loss/accuracy history, the non-tensor optimizer state and the sha256 of
that file. Both files are written atomically, ``state.json`` last, so a run killed at any
moment resumes (``resume=True``) from the last finished epoch and ends with the same weights
as a run that was never interrupted. Nothing is pickled. With ``val`` the best weights so far
and the validation history are part of the checkpoint, so a resumed run chooses the same epoch.
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
    "TRADES_DEFAULT_BETA",
    "TrainConfig",
    "TrainResult",
    "accuracy",
    "channel_stats",
    "train",
]

METHODS = ("natural", "noisy", "pgd-linf", "pgd-l2", "trades", "fast-at")
#: the adversarial methods (they need ``eps > 0`` and make an attack per batch)
ADVERSARIAL = ("pgd-linf", "pgd-l2", "trades", "fast-at")
TRADES_DEFAULT_BETA = 6.0
OPTIMIZERS = ("adam", "sgd")
SCHEDULES = ("constant", "cosine")

_CHECKPOINT_FORMAT = 2


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
    beta: float = TRADES_DEFAULT_BETA
    eps_warmup: int = 0
    val: int = 0
    val_steps: int = 10

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
        if self.method == "noisy" and self.eps_warmup:
            raise InputError("--eps-warmup ramps an attack radius; noisy training has none")
        if self.attack_step is not None:
            check_positive(self.attack_step, "attack_step")
        check_positive(self.beta, "beta")
        check_int(self.eps_warmup, "eps_warmup", minimum=0)
        check_int(self.val, "val", minimum=0)
        check_int(self.val_steps, "val_steps")
        if self.eps_warmup > self.epochs:
            raise InputError(
                f"eps_warmup ({self.eps_warmup} epochs) is longer than the run ({self.epochs} "
                "epochs); lower --eps-warmup or raise --epochs"
            )

    @property
    def step_size(self) -> float:
        """The PGD step size actually used (Madry's ``2.5 * eps / steps`` by default)."""
        if self.attack_step is not None:
            return float(self.attack_step)
        if self.method == "fast-at":
            return 1.25 * float(self.eps)
        return 2.5 * float(self.eps) / self.attack_steps

    def eps_at(self, epoch: float) -> float:
        """The radius used at (fractional, 0-based) ``epoch`` under the linear warm-up."""
        if self.eps_warmup == 0:
            return float(self.eps)
        return float(self.eps) * min(1.0, epoch / self.eps_warmup)

    def lr_at(self, epoch: int) -> float:
        """Learning rate of (0-based) ``epoch`` under the configured schedule."""
        if self.schedule == "cosine":
            return self.lr * 0.5 * (1.0 + math.cos(math.pi * epoch / self.epochs))
        return self.lr

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class EpochStats:
    """Loss and accuracy on the training inputs actually used (noisy / adversarial ones).

    With ``val`` held-out images, ``val_clean`` and ``val_robust`` are their clean and
    PGD-``val_steps`` accuracy after the epoch (``None`` without validation).
    """

    epoch: int
    loss: float
    accuracy: float
    lr: float
    seconds: float
    eps: float | None = None
    val_clean: float | None = None
    val_robust: float | None = None


@dataclass
class TrainResult:
    """What :func:`train` returns: the trained model (in eval mode) and how it went."""

    model: nn.Module
    history: list[EpochStats] = field(default_factory=list)
    train_seconds: float = 0.0
    resumed_from_epoch: int = 0
    #: the epoch whose weights were returned (the best-robust one with ``val``, else the last)
    best_epoch: int = 0


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
    log_file: str | Path | None = None,
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
    log_file:
        If given, a JSON-lines file rewritten (atomically) after every epoch with one
        :class:`EpochStats` per line, so after a resume it still matches the checkpoint.
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

    train_idx, val_idx = _split_validation(n_total := images.shape[0], config)
    val_x, val_y = images[val_idx], labels[val_idx]
    images, labels = images[train_idx], labels[train_idx]
    del n_total

    result = TrainResult(model=model)
    best: dict[str, Any] = {"state": None, "score": None}
    start_epoch = 0
    ckpt = Path(checkpoint_dir) if checkpoint_dir is not None else None
    if ckpt is not None and resume and (ckpt / "state.json").exists():
        start_epoch, result.history, result.train_seconds, best = _load_checkpoint(
            ckpt, model, optimizer, shuffle_gen, noise_gen, config, meta
        )
        result.resumed_from_epoch = start_epoch
        log(f"resuming from the checkpoint of epoch {start_epoch}/{config.epochs} in {ckpt}")

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
                eps = config.eps_at(epoch + b / num_batches)
                loss, logits = _batch_loss(model, x, y, config, eps, noise_gen)
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
        if not math.isfinite(loss_sum):
            raise InputError(
                f"training diverged in epoch {epoch + 1} (loss is {loss_sum}); lower --lr"
            )
        stats = EpochStats(
            epoch + 1, loss_sum / seen, correct / seen, lr, 0.0, eps=config.eps_at(epoch + 1)
        )
        if val_idx.numel():
            stats.val_clean, stats.val_robust = _validate(model, val_x, val_y, config, noise_gen)
            score = stats.val_robust if config.eps > 0 else stats.val_clean
            if best["score"] is None or score >= best["score"]:
                best = {
                    "score": score,
                    "epoch": epoch + 1,
                    "state": {k: v.detach().clone() for k, v in model.state_dict().items()},
                }
        stats.seconds = time.perf_counter() - t0
        result.history.append(stats)
        result.train_seconds += stats.seconds
        log(_epoch_line(stats, config, result.history, start_epoch))
        if ckpt is not None:
            _save_checkpoint(
                ckpt, model, optimizer, shuffle_gen, noise_gen, config, meta, result, best
            )
        if log_file is not None:
            atomic_write_bytes(
                Path(log_file),
                "".join(json.dumps(asdict(h)) + "\n" for h in result.history).encode(),
            )
        if on_epoch_end is not None:
            on_epoch_end(stats)
    result.best_epoch = result.history[-1].epoch if result.history else 0
    if best["state"] is not None:
        model.load_state_dict(best["state"])
        result.best_epoch = int(best["epoch"])
        if result.best_epoch != config.epochs:
            log(
                f"keeping the weights of epoch {result.best_epoch} (best validation "
                f"{'robust' if config.eps > 0 else 'clean'} accuracy {best['score']:.4f})"
            )
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


def _pgd():
    try:
        from ..attacks import pgd
    except ImportError as exc:  # pragma: no cover - only while the package is incomplete
        raise ModelError(
            f"adversarial training needs quantadv.attacks.pgd, which cannot be imported ({exc})"
        ) from None
    return pgd


def _split_validation(n: int, config: TrainConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices of the training and the held-out validation images (a seeded random choice)."""
    if config.val == 0:
        return torch.arange(n), torch.arange(0)
    if config.val >= n:
        raise InputError(
            f"--val {config.val} holds out every training image (the training set has {n}); "
            f"choose --val below {n}, e.g. {max(1, n // 10)}"
        )
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(config.seed + 7919))
    return perm[config.val :].sort().values, perm[: config.val].sort().values


def _in_eval_mode(model: nn.Module, fn: Callable[[], torch.Tensor]) -> torch.Tensor:
    """Run ``fn`` (an attack) with the model in eval mode, then back in train mode."""
    model.eval()
    try:
        return fn().detach()
    finally:
        model.train()


def _trades_adversary(
    model: nn.Module, x: torch.Tensor, eps: float, config: TrainConfig, gen: torch.Generator
) -> torch.Tensor:
    """TRADES' inner maximisation (Zhang et al. 2019, Algorithm 1, the loop over K steps).

    ``x'`` starts at ``x + 0.001 * N(0, 1)`` and ascends ``KL(f(x) || f(x'))`` with signed
    gradient steps, projected onto the L-inf ball and [0, 1]. The objective is a divergence
    from the clean prediction rather than a classification loss of the labels, which is why
    this loop is not one of :mod:`quantadv.attacks` (whose losses are ``L_A`` of the labels).
    """
    with torch.no_grad():
        p_clean = F.softmax(model(x), dim=1)
    noise = torch.randn(x.shape, generator=gen, device=x.device, dtype=x.dtype)
    x_adv = (x + 0.001 * noise).clamp(0.0, 1.0)
    step = config.step_size if config.attack_step is not None else 2.5 * eps / config.attack_steps
    for _ in range(config.attack_steps):
        x_adv.requires_grad_(True)
        with torch.enable_grad():
            kl = F.kl_div(F.log_softmax(model(x_adv), dim=1), p_clean, reduction="sum")
            (grad,) = torch.autograd.grad(kl, x_adv)
        x_adv = x_adv.detach() + step * grad.sign()
        x_adv = torch.min(torch.max(x_adv, x - eps), x + eps).clamp(0.0, 1.0)
    return x_adv


def _batch_loss(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    config: TrainConfig,
    eps: float,
    gen: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The loss of one training step and the logits its accuracy is counted on."""
    method = config.method
    if method == "noisy":
        u = torch.rand(x.shape, generator=gen, device=x.device, dtype=x.dtype)
        x = (x + (2.0 * u - 1.0) * eps).clamp(0.0, 1.0)
    elif method == "trades":
        x_adv = x if eps == 0 else _in_eval_mode(
            model, lambda: _trades_adversary(model, x, eps, config, gen)
        )
        logits = model(x)
        kl = F.kl_div(
            F.log_softmax(model(x_adv), dim=1), F.softmax(logits, dim=1), reduction="batchmean"
        )
        return F.cross_entropy(logits, y) + config.beta * kl, logits
    elif method in ADVERSARIAL and eps > 0:
        norm = "l2" if method == "pgd-l2" else "linf"
        steps = 1 if method == "fast-at" else config.attack_steps
        if config.attack_step is not None:
            step = config.step_size
        else:  # the default rules scale with the (warmed-up) radius
            step = 1.25 * eps if method == "fast-at" else 2.5 * eps / steps
        pgd = _pgd()
        x = _in_eval_mode(
            model,
            lambda: pgd(model, x, y, norm=norm, eps=eps, step=step, steps=steps,
                        random_start=True, generator=gen),
        )
    logits = model(x)
    return F.cross_entropy(logits, y), logits


def _validate(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, config: TrainConfig, gen: torch.Generator
) -> tuple[float, float | None]:
    """Clean and PGD-``val_steps`` robust accuracy on the held-out images (eval mode)."""
    clean = accuracy(model, x, y)
    if config.eps == 0:
        return clean, None
    pgd = _pgd()
    norm = "l2" if config.method == "pgd-l2" else "linf"
    eps = float(config.eps)
    was_training = model.training
    model.eval()
    correct = 0
    try:
        for i in range(0, x.shape[0], 500):
            xb, yb = _to_float(x[i : i + 500]), y[i : i + 500]
            x_adv = pgd(model, xb, yb, norm=norm, eps=eps, step=2.5 * eps / config.val_steps,
                        steps=config.val_steps, random_start=True, generator=gen)
            with torch.no_grad():
                correct += int((model(x_adv).argmax(dim=1) == yb).sum())
    finally:
        model.train(was_training)
    return clean, correct / x.shape[0]


def _epoch_line(
    stats: EpochStats, config: TrainConfig, history: list[EpochStats], start_epoch: int
) -> str:
    """One log line per epoch, with the validation numbers and the time left for the run."""
    line = (
        f"epoch {stats.epoch}/{config.epochs}: loss {stats.loss:.4f}, "
        f"train accuracy {stats.accuracy:.4f} ({config.method}"
        + (f", eps {stats.eps:.4g}" if config.eps else "")
        + f"), lr {stats.lr:.3g}"
    )
    if stats.val_clean is not None:
        line += f", val clean {stats.val_clean:.4f}"
    if stats.val_robust is not None:
        line += f", val robust {stats.val_robust:.4f} (PGD-{config.val_steps})"
    done_here = history[start_epoch:]
    left = config.epochs - stats.epoch
    eta = sum(h.seconds for h in done_here) / len(done_here) * left
    line += f", {stats.seconds:.1f} s"
    if left:
        line += f", about {eta / 60:.1f} min left for {left} epoch{'s' if left > 1 else ''}"
    return line


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
    best: dict[str, Any],
) -> None:
    ckpt.mkdir(parents=True, exist_ok=True)
    epoch = len(result.history) and result.history[-1].epoch
    tensors = {
        f"model.{k}": v.detach().contiguous().cpu() for k, v in model.state_dict().items()
    }
    opt_tensors, opt_plain = _flatten_optimizer(optimizer.state_dict())
    tensors.update(opt_tensors)
    if best["state"] is not None:
        tensors.update({f"best.{k}": v.detach().contiguous().cpu() for k, v in best["state"].items()})
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
            "best": None if best["state"] is None
            else {"epoch": best["epoch"], "score": best["score"]},
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
) -> tuple[int, list[EpochStats], float, dict[str, Any]]:
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
    best: dict[str, Any] = {"state": None, "score": None}
    if state.get("best") is not None:
        best = {
            **state["best"],
            "state": {k[len("best.") :]: v for k, v in tensors.items() if k.startswith("best.")},
        }
    return int(state["epoch"]), history, float(state["train_seconds"]), best
