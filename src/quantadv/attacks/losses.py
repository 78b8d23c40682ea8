"""Classification losses L_A that attacks decrease (paper 000, Sec. 3.1.3).

Convention: the attacker *minimises* ``L_A``, as in paper 000 where every attack moves
against the gradient of ``L_A``.

- ``"ce"``: untargeted ``L_A = log p(y)`` (the negative cross-entropy of the true class);
  targeted ``L_A = -log p(t)`` (the cross-entropy of the target).
- ``"margin"``: Eq. 5 of paper 000, ``L_A = log p(y) - max_{k != y} log p(k)``, negative
  exactly when the image is misclassified. The log-softmax normaliser cancels, so this is
  the logit margin ``z_y - max_{k != y} z_k``. Targeted: ``max_{k != t} z_k - z_t``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

LOSSES = ("ce", "margin")


def best_other_logit(logits: torch.Tensor, cls: torch.Tensor) -> torch.Tensor:
    """Largest logit among the classes other than ``cls`` (per sample)."""
    masked = logits.scatter(1, cls.unsqueeze(1), float("-inf"))
    return masked.amax(dim=1)


def attack_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    targets: torch.Tensor | None,
    kind: str,
) -> torch.Tensor:
    """Per-sample ``L_A`` (to be minimised by the attacker); see the module docstring."""
    if kind == "ce":
        if targets is None:
            return -F.cross_entropy(logits, labels, reduction="none")
        return F.cross_entropy(logits, targets, reduction="none")
    if targets is None:
        return logits.gather(1, labels.unsqueeze(1)).squeeze(1) - best_other_logit(logits, labels)
    return best_other_logit(logits, targets) - logits.gather(1, targets.unsqueeze(1)).squeeze(1)
