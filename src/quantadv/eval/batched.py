"""Run an attack over a dataset in batches and summarise the outcome per image.

This is the one place that walks a dataset batch by batch for the ``attack`` and ``demo``
commands: it converts uint8 images to floats on the device, attacks the images the model
classifies correctly (the usual protocol: an already misclassified image needs no attack),
re-checks success with an independent forward pass, and measures distortion (paper 000 Eq. 31).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import torch
from torch import nn
from tqdm import tqdm

from ..digital import to_float
from ..errors import InputError
from .metrics import distortion
from .targets import pick_targets

AttackFn = Callable[..., torch.Tensor]


def choose_targets(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    mode: str | int,
    *,
    seed: int = 0,
    batch_size: int = 500,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """One target class per image of a dataset (int64, CPU), by :func:`~quantadv.eval.targets.pick_targets`.

    ``mode``: ``"random"`` (drawn from a generator seeded with ``seed``: the same targets for
    the same seed), ``"next"``, ``"least-likely"`` (lowest clean logit) or a class index
    ``k`` (images of class ``k`` have nothing to attack and :func:`attack_dataset` skips
    them). The model classifies the images once to learn the number of classes and logits.
    """
    logits = []
    with torch.no_grad():
        for start in range(0, images.shape[0], batch_size):
            logits.append(model(to_float(images[start : start + batch_size]).to(device)).cpu())
    scores = torch.cat(logits)
    gen = torch.Generator().manual_seed(int(seed))
    return pick_targets(mode, labels.cpu(), scores.shape[1], generator=gen, logits=scores)


def attack_dataset(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    attack: AttackFn,
    *,
    batch_size: int = 500,
    device: torch.device | str = "cpu",
    postprocess: Callable[..., torch.Tensor] | None = None,
    targets: torch.Tensor | None = None,
    progress: bool = True,
    desc: str = "attack",
) -> dict[str, torch.Tensor]:
    """Attack every correctly classified image of ``images`` (uint8 NCHW) and measure the result.

    ``attack(model, x, y)`` returns adversarial floats; ``postprocess(model, x, x_adv, y)``
    (e.g. a quantizer) is applied to its output when given. With ``targets`` (one class per
    image, see :func:`choose_targets`) both are called with ``targets=`` the batch's targets
    as a keyword, and success means "classified as the target". Returns CPU tensors per image:
    ``clean_pred``, ``attacked`` (was correctly classified, and its target is not its label),
    ``adv`` (float images; the original where not attacked), ``adv_pred``, ``success`` (attacked and now misclassified,
    or classified as its target), ``d`` (Eq. 31, pixel units), ``l2``, ``linf``, and
    ``seconds`` (attack time per image).
    """
    if targets is not None and targets.shape != labels.shape:
        raise InputError(f"targets must hold one class per image ({labels.shape[0]}), got {tuple(targets.shape)}")
    n = images.shape[0]
    out: dict[str, list[torch.Tensor]] = {k: [] for k in
                                          ("clean_pred", "attacked", "adv", "adv_pred", "seconds")}
    bar = tqdm(total=n, desc=desc, unit="img", disable=not progress, dynamic_ncols=True)
    for start in range(0, n, batch_size):
        x = to_float(images[start : start + batch_size]).to(device)
        y = labels[start : start + batch_size].to(device)
        with torch.no_grad():
            clean_pred = model(x).argmax(1)
        attacked = clean_pred == y
        t = None if targets is None else targets[start : start + batch_size].to(device)
        if t is not None:  # an image already of the target class has nothing to attack
            attacked &= t != y
        x_adv = x.clone()
        t0 = time.perf_counter()
        if bool(attacked.any()):
            xa, ya = x[attacked], y[attacked]
            extra = {} if t is None else {"targets": t[attacked]}
            result = attack(model, xa, ya, **extra)
            if postprocess is not None:
                result = postprocess(model, xa, result, ya, **extra)
            x_adv[attacked] = result
        elapsed = time.perf_counter() - t0
        with torch.no_grad():
            adv_pred = model(x_adv).argmax(1)
        per_image = elapsed / max(int(attacked.sum()), 1)
        out["clean_pred"].append(clean_pred.cpu())
        out["attacked"].append(attacked.cpu())
        out["adv"].append(x_adv.cpu())
        out["adv_pred"].append(adv_pred.cpu())
        out["seconds"].append(torch.where(attacked.cpu(), per_image, 0.0).to(torch.float64))
        bar.update(x.shape[0])
    bar.close()
    result = {k: torch.cat(v) for k, v in out.items()}
    originals = to_float(images)
    if targets is None:
        result["success"] = result["attacked"] & (result["adv_pred"] != labels.cpu())
    else:
        result["success"] = result["attacked"] & (result["adv_pred"] == targets.cpu())
    for kind in ("d", "l2", "linf"):
        result[kind] = distortion(result["adv"], originals, kind)
    return result


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
