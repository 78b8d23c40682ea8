"""Classification losses L_A that attacks decrease (paper 000, Sec. 3.1.3).

Convention: the attacker *minimises* ``L_A``, as in paper 000 where every attack moves
against the gradient of ``L_A``.

- ``"ce"``: untargeted ``L_A = log p(y)`` (the negative cross-entropy of the true class);
  targeted ``L_A = -log p(t)`` (the cross-entropy of the target). Computed from
  ``log_softmax`` (PyTorch's ``cross_entropy``), whose gradient with respect to the logits
  is ``p - y``: in float32 its true-class term ``p_y - 1`` rounds to exactly 0 once the logit
  margin exceeds ~17 (``p_y`` rounds to 1), but the other classes' ``p_j = exp(z_j - logsumexp)``
  stay non-zero until they underflow (margin above ~87, subnormal to ~103), so a sign step
  still has a direction.
- ``"ce-clipped"``: the same cross-entropy computed from clipped *probabilities*, as Keras /
  TensorFlow's ``categorical_crossentropy(from_logits=False)`` does:
  ``-log(clip(softmax(z)_c, CLIP_EPS, 1 - CLIP_EPS))`` with ``CLIP_EPS = 1e-7`` (Keras'
  default epsilon), ``c`` the true class (untargeted, sign flipped as for ``"ce"``) or the
  target. The clip's gradient is zero outside its range, so the loss is flat -- its input
  gradient **exactly zero** -- as soon as ``p_y >= 1 - 1e-7`` (untargeted; a logit margin of
  about 16) or ``p_t <= 1e-7`` (targeted). This is the numerics under which an over-confident
  network "masks" its gradient at margins where ``"ce"`` still has one (paper 004, Sec. 3.1,
  Eq. 6: ``psi = p - y`` vanishes); offered to measure which numerics an attack's result
  depends on. (Plain ``log(softmax(z))`` without the clip is *not* such a form under
  autograd: its backward is ``p - y`` too, computed through the softmax, identical to
  ``"ce"`` until ``p_c`` underflows to 0, where it gives NaN instead of 0.)
- ``"margin"``: Eq. 5 of paper 000, ``L_A = log p(y) - max_{k != y} log p(k)``, negative
  exactly when the image is misclassified. The log-softmax normaliser cancels, so this is
  the logit margin ``z_y - max_{k != y} z_k``. Targeted: ``max_{k != t} z_k - z_t``.
- ``"dlr"``: the Difference of Logits Ratio of Croce & Hein (2020, Eq. 6), the margin divided
  by the spread of the top logits, so that it is invariant to a shift and a rescaling of the
  logits (a saturated softmax cannot flatten it): untargeted
  ``L_A = (z_y - max_{k != y} z_k) / (z_pi1 - z_pi3)``, targeted (Eq. 7)
  ``L_A = (z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2)``, with ``z_pi1 >= z_pi2 >= ...`` the
  sorted logits (and 1e-12 added to the denominators). It needs at least 3 classes (4 for the
  targeted version). Note the sign: the paper *maximises* ``-L_A``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..errors import InputError

LOSSES = ("ce", "margin", "dlr", "ce-clipped")

#: Probabilities are clipped to ``[CLIP_EPS, 1 - CLIP_EPS]`` by ``"ce-clipped"`` (Keras' epsilon).
CLIP_EPS = 1e-7


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
    if kind == "dlr":
        return dlr_loss(logits, labels, targets)
    if kind == "ce-clipped":
        return clipped_ce_loss(logits, labels, targets)
    if kind == "ce":
        if targets is None:
            return -F.cross_entropy(logits, labels, reduction="none")
        return F.cross_entropy(logits, targets, reduction="none")
    if targets is None:
        return logits.gather(1, labels.unsqueeze(1)).squeeze(1) - best_other_logit(logits, labels)
    return best_other_logit(logits, targets) - logits.gather(1, targets.unsqueeze(1)).squeeze(1)


def dlr_loss(logits: torch.Tensor, labels: torch.Tensor, targets: torch.Tensor | None) -> torch.Tensor:
    """``L_A`` of the (targeted) DLR loss, Croce & Hein (2020) Eq. 6-7; see the module docstring."""
    d = logits.shape[1]
    need = 3 if targets is None else 4
    if d < need:
        raise InputError(f"the {'targeted ' if targets is not None else ''}DLR loss needs at least {need} classes, "
                         f"the model has {d}; use loss='ce' or loss='margin'")
    top = logits.sort(dim=1, descending=True).values
    z_y = logits.gather(1, labels.unsqueeze(1)).squeeze(1)
    if targets is None:
        return (z_y - best_other_logit(logits, labels)) / (top[:, 0] - top[:, 2] + 1e-12)
    z_t = logits.gather(1, targets.unsqueeze(1)).squeeze(1)
    return (z_y - z_t) / (top[:, 0] - (top[:, 2] + top[:, 3]) / 2 + 1e-12)


def clipped_ce_loss(logits: torch.Tensor, labels: torch.Tensor, targets: torch.Tensor | None) -> torch.Tensor:
    """``L_A`` of ``"ce-clipped"``: the cross-entropy of probabilities clipped to
    ``[CLIP_EPS, 1 - CLIP_EPS]`` (Keras' ``categorical_crossentropy`` on probabilities); its
    gradient is exactly zero once the clip is active. See the module docstring."""
    cls = labels if targets is None else targets
    p = torch.softmax(logits, dim=1).gather(1, cls.unsqueeze(1)).squeeze(1)
    log_p = torch.log(p.clamp(CLIP_EPS, 1.0 - CLIP_EPS))
    return log_p if targets is None else -log_p
