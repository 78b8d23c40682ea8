"""The clean images as an "attack" (a config entry): the runner's clean-accuracy and format checks.

``entry: "entries/clean.py:identity"`` returns the images unchanged, so a run of it measures what
the model does on the images themselves and, through ``postprocess``, on a processed copy: with
``reencode_jpeg`` the clean original saved as a JPEG file (docs/jpeg.md's reference rows), and
behind a randomised defense (``models: [{defense: ...}]``) the clean accuracy of one draw
(docs/paper-003). ``success`` is then "misclassified", ``d`` the distortion of the processing.
"""

from __future__ import annotations

import torch
from torch import nn


def identity(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The images themselves (a copy); the model is not called."""
    return images.clone()
