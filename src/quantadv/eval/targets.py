"""Target classes for targeted attacks: one rule, used by ``quantadv attack`` and the runner."""

from __future__ import annotations

import torch
from torch import nn

from ..digital import to_float
from ..errors import InputError

#: The named ways to pick a target per image; an integer class index is accepted too.
TARGET_MODES = ("random", "next", "least-likely")


def pick_targets(
    mode: str | int,
    labels: torch.Tensor,
    num_classes: int,
    *,
    generator: torch.Generator | None = None,
    logits: torch.Tensor | None = None,
) -> torch.Tensor:
    """One target class per image (int64, on ``labels``' device).

    - ``"random"``: uniform over the ``num_classes - 1`` classes other than the label, drawn
      from ``generator`` (``labels + randint(1, C)`` modulo ``C``);
    - ``"next"``: ``labels + 1`` modulo ``C``;
    - ``"least-likely"``: the class with the lowest logit other than the label (Kurakin et
      al.'s iterative least-likely class method); needs the clean ``logits``;
    - an integer ``k``: every image gets ``k`` (an image whose label is ``k`` has nothing to
      attack; callers skip it).

    Every mode but ``k`` never returns the label.
    """
    labels = labels.long()
    if mode == "random":
        offset = torch.randint(1, num_classes, (labels.shape[0],), generator=generator)
        return (labels.cpu() + offset).remainder(num_classes).to(labels.device)
    if mode == "next":
        return (labels + 1) % num_classes
    if mode == "least-likely":
        if logits is None:
            raise InputError("targets 'least-likely' needs the clean logits of the images")
        masked = logits.detach().to(labels.device).scatter(1, labels.unsqueeze(1), float("inf"))
        return masked.argmin(dim=1)
    if isinstance(mode, bool) or not isinstance(mode, int):
        raise InputError(f"target must be one of {', '.join(TARGET_MODES)} or a class index, got {mode!r}")
    if not 0 <= mode < num_classes:
        raise InputError(
            f"target class {mode} is out of range: the model has {num_classes} classes (0..{num_classes - 1})"
        )
    return torch.full_like(labels, mode)


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
    ``k`` (images of class ``k`` have nothing to attack and the runner skips
    them). The model classifies the images once to learn the number of classes and logits.
    """
    logits = []
    with torch.no_grad():
        for start in range(0, images.shape[0], batch_size):
            logits.append(model(to_float(images[start : start + batch_size]).to(device)).cpu())
    scores = torch.cat(logits)
    gen = torch.Generator().manual_seed(int(seed))
    return pick_targets(mode, labels.cpu(), scores.shape[1], generator=gen, logits=scores)
