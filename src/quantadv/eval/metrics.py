"""Per-image success and distortion measures.

Distortion follows paper 000, Eq. 31: ``d = ||x_q - x_o||_2 / sqrt(n)`` in pixel units
(0..255 scale), ``n`` the number of values per image (C*H*W). L2 and L-inf in [0, 1] units
are offered beside it.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .._validate import check_choice, check_images, check_label_range, check_labels, check_same_shape

DISTORTION_KINDS = ("d", "l2", "linf")


@torch.no_grad()
def predict(model: nn.Module, images: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
    """Return the model's predicted classes (argmax of the logits) for a batch of images."""
    check_images(images)
    out = [model(images[i : i + batch_size]).argmax(dim=1) for i in range(0, images.shape[0], batch_size)]
    return torch.cat(out)


def adversarial_from_logits(
    logits: torch.Tensor, labels: torch.Tensor, targets: torch.Tensor | None = None
) -> torch.Tensor:
    """Success criterion from logits: untargeted argmax != label, targeted argmax == target."""
    pred = logits.argmax(dim=1)
    return pred == targets if targets is not None else pred != labels


@torch.no_grad()
def is_adversarial(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    targets: torch.Tensor | None = None,
) -> torch.Tensor:
    """Per-image boolean: does ``model`` misclassify ``images`` (or predict ``targets``)?

    Uses one forward pass in the model's current mode.
    """
    check_images(images)
    labels = check_labels(labels, images.shape[0]).to(images.device)
    if targets is not None:
        targets = check_labels(targets, images.shape[0], "targets").to(images.device)
    logits = model(images)
    check_label_range(labels, logits.shape[1])
    if targets is not None:
        check_label_range(targets, logits.shape[1], "targets")
    return adversarial_from_logits(logits, labels, targets)


def distortion(adversarial: torch.Tensor, original: torch.Tensor, kind: str = "d") -> torch.Tensor:
    """Per-image distortion between two image batches (float64).

    ``kind="d"``: paper 000 Eq. 31, ``255 * ||x_a - x_o||_2 / sqrt(n)`` (pixel units);
    ``kind="l2"``: ``||x_a - x_o||_2`` in [0, 1] units; ``kind="linf"``: max absolute change.
    """
    check_choice(kind, "kind", DISTORTION_KINDS)
    check_same_shape(adversarial, original, ("adversarial", "original"))
    diff = (adversarial.detach().to(torch.float64) - original.detach().to(torch.float64)).flatten(1)
    if kind == "linf":
        return diff.abs().amax(dim=1)
    l2 = diff.norm(dim=1)
    if kind == "l2":
        return l2
    return l2 * 255.0 / math.sqrt(diff.shape[1])
