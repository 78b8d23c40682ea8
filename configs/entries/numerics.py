"""Config entries for loss-numerics controls (``entry: "entries/numerics.py:NAME"``).

- :func:`float64` (a model entry): a zoo model computed in float64 and returning float64 logits,
  so that an attack's loss and its gradient are float64 too: the control for float32's rounding
  of ``p_y`` to 1 above a logit margin of ~16.6 (docs/paper-004-binary-networks.md, "why FGSM++
  wins"; configs/paper004-float64.yaml).

A file of its own: a run's id includes the sha256 of its entry file, so adding a function to
``paper004.py`` would have changed the ids of the runs that use ``paper004.py:scaled`` in stores
made before.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from quantadv import models


class Float64(nn.Module):
    """A float64 copy of ``model``: inputs are cast up, the logits stay float64 (so does the loss)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = copy.deepcopy(model).double()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x.double())


def float64(name: str = "fmnist-cnn-bc") -> nn.Module:
    """Zoo model ``name`` computed in float64 (same weights; predictions may differ in ties only)."""
    return Float64(models.load(name)).eval()
