"""Target classes for targeted attacks: one rule, used by ``quantadv attack`` and the runner."""

from __future__ import annotations

import torch

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
