"""The quantization loss L_Q of paper 000 (Eq. 21-23), its gradient and the success test.

Untargeted (the paper): ``L_Q(q) = s_q(t) - s_q(kappa_a)`` with ``t`` the true class and
``kappa_a = argmax_{k != t} p_a(k)`` the most likely other class at the *unquantized*
``x_a`` (Eq. 23). Targeted (our analogue, target ``tau``): ``L_Q(q) = s_q(kappa_a) -
s_q(tau)`` with ``kappa_a = argmax_{k != tau} p_a(k)``, the strongest competitor of the
target at ``x_a``. In both cases ``L_Q < 0`` means the attacker's goal is met against that
class, and both are written ``s(first) - s(second)``.

``s`` is the softmax probability (``loss="prob"``, the paper) or the logit
(``loss="logit"``; no saturation, so the gradient does not vanish on confident images).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .._validate import check_choice, check_label_range, check_labels
from ..errors import InputError
from ..eval import adversarial_from_logits

LOSS_KINDS = ("prob", "logit")


@dataclass(frozen=True)
class Objective:
    """What the quantizer attacks: labels, optional targets, and the two classes of L_Q."""

    labels: torch.Tensor
    targets: torch.Tensor | None
    first: torch.Tensor  # class whose score L_Q adds (t, or kappa_a when targeted)
    second: torch.Tensor  # class whose score L_Q subtracts (kappa_a, or the target)
    kind: str
    margin: float

    def select(self, idx: torch.Tensor) -> Objective:
        targets = None if self.targets is None else self.targets[idx]
        return Objective(
            self.labels[idx], targets, self.first[idx], self.second[idx], self.kind, self.margin
        )

    def loss(self, logits: torch.Tensor) -> torch.Tensor:
        """Per-image L_Q from the logits (Eq. 21)."""
        scores = logits.softmax(dim=1) if self.kind == "prob" else logits
        pick = scores.gather(1, torch.stack([self.first, self.second], dim=1))
        return pick[:, 0] - pick[:, 1]

    def success(self, logits: torch.Tensor) -> torch.Tensor:
        """True-network success: argmax criterion, and ``L_Q <= margin`` when ``margin < 0``."""
        ok = adversarial_from_logits(logits, self.labels, self.targets)
        if self.margin < 0:
            ok = ok & (self.loss(logits) <= self.margin)
        return ok


def check_labels_targets(
    labels: object, targets: object, batch: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor | None]:
    labels_t = check_labels(labels, batch).to(device)
    targets_t = None
    if targets is not None:
        targets_t = check_labels(targets, batch, "targets").to(device)
    return labels_t, targets_t


def check_margin(margin: object) -> float:
    try:
        m = float(margin)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise InputError(f"margin must be a number <= 0, got {margin!r}") from None
    if not m <= 0.0 or m == float("-inf"):
        raise InputError(
            f"margin must be a finite number <= 0 (footnote 2 of paper 000), got {margin!r}"
        )
    return m


def check_logits(
    logits: torch.Tensor, batch: int, objective_labels: torch.Tensor, targets: torch.Tensor | None
) -> None:
    if logits.dim() != 2 or logits.shape[0] != batch:
        raise InputError(
            f"the model must return logits of shape (batch, classes); got {tuple(logits.shape)}"
        )
    if logits.shape[1] < 2:
        raise InputError(
            f"the model returns {logits.shape[1]} logit(s); L_Q needs at least 2 classes"
        )
    check_label_range(objective_labels, logits.shape[1])
    if targets is not None:
        check_label_range(targets, logits.shape[1], "targets")


def _best_other(logits: torch.Tensor, cls: torch.Tensor) -> torch.Tensor:
    masked = logits.detach().scatter(1, cls.unsqueeze(1), float("-inf"))
    return masked.argmax(dim=1)


def gradient(
    model: nn.Module,
    x_adv: torch.Tensor,
    labels: torch.Tensor,
    targets: torch.Tensor | None,
    kind: str,
    margin: float = 0.0,
) -> tuple[torch.Tensor, Objective]:
    """Gradient of L_Q at ``q = 0`` (Eq. 24), per pixel *in pixel units*, and the objective.

    One forward and one backward pass (one network call per image). ``kappa_a`` comes from
    the same forward pass at ``x_a``. Gradients of the model parameters are not touched:
    only the input gradient is computed, with :func:`torch.autograd.grad`.
    """
    grad, objective, _, _ = gradient_and_loss(model, x_adv, labels, targets, kind, margin)
    return grad, objective


def gradient_and_loss(
    model: nn.Module,
    x_adv: torch.Tensor,
    labels: torch.Tensor,
    targets: torch.Tensor | None,
    kind: str,
    margin: float = 0.0,
    pred_out: torch.Tensor | None = None,
) -> tuple[torch.Tensor, Objective, torch.Tensor, torch.Tensor]:
    """:func:`gradient`, plus ``L_Q(0)`` per image (float64) and the success at ``x_a``.

    ``L_Q(0) + q^T g`` is the first-order model of Eq. 24. Loss and success (the objective's
    test on the logits at ``x_a``) come from the same forward pass as the gradient, so they
    cost nothing; so does the predicted class at ``x_a``, written into ``pred_out`` if given.
    """
    check_choice(kind, "loss", LOSS_KINDS)
    x = x_adv.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        logits = model(x)
        check_logits(logits, x.shape[0], labels, targets)
        if targets is None:
            first, second = labels, _best_other(logits, labels)
        else:
            first, second = _best_other(logits, targets), targets
        objective = Objective(labels, targets, first, second, kind, margin)
        loss_at_adv = objective.loss(logits)
        (grad,) = torch.autograd.grad(loss_at_adv.sum(), x)
    # x is in [0, 1] units: d/d(pixel) = d/dx / 255 (the paper works in 0..255, Sec. 3.2).
    loss_at_adv = loss_at_adv.detach().to(torch.float64)
    success = objective.success(logits.detach())
    if pred_out is not None:
        pred_out.copy_(logits.detach().argmax(dim=1))
    return grad.detach().to(torch.float64) / 255.0, objective, loss_at_adv, success
