"""Config entries of docs/paper-004-binary-networks.md (``entry: "entries/paper004.py:NAME"``).

- :func:`scaled` (a model entry): a zoo model with its logits multiplied by ``scale``, the same
  decision boundary with ``scale`` times the confidence (the page's "REF, logits x5": an
  over-confident copy whose mean Jacobian singular value is about 5x the float network's).
- :func:`prop1_pgd` (an attack entry): PGD++ with the temperature of Prop. 1 alone (paper 004
  Table 8): ``beta`` per image from the clean logits and ``rho`` (``prop1_temperature``).

APGD is ``entries/apgd.py``.
"""

from __future__ import annotations

import torch
from torch import nn

from quantadv import models
from quantadv.attacks import pgd_pp
from quantadv.attacks.temperature import prop1_temperature
from quantadv.errors import InputError


class ScaledLogits(nn.Module):
    """``scale * model(x)``: every prediction is the model's, with ``scale`` times the confidence."""

    def __init__(self, model: nn.Module, scale: float) -> None:
        super().__init__()
        self.model, self.scale = model, scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x) * self.scale


def scaled(name: str = "fmnist-cnn", scale: float = 5.0) -> nn.Module:
    """Zoo model ``name`` with its logits multiplied by ``scale`` (> 0)."""
    if not scale > 0:
        raise InputError(f"scale must be > 0, got {scale}")
    return ScaledLogits(models.load(name), float(scale)).eval()


def prop1_pgd(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, *, rho: float, eps: float,
              step: float, steps: int, norm: str = "linf", seed: int | None = None,
              generator: torch.Generator | None = None, return_info: bool = False):
    """PGD++ with Prop. 1's per-image beta for ``rho`` (paper 004 Table 8); rho >= 0.9: no scaling."""
    with torch.no_grad():
        logits = model(images)
    beta = prop1_temperature(logits, rho) if rho < 0.9 else None
    return pgd_pp(model, images, labels, norm=norm, eps=eps, step=step, steps=steps, temperature=beta,
                  seed=seed, generator=generator, return_info=return_info)
