"""How peaked is a model's input gradient? The raw and quantized gradients at a random start.

Paper 001 (Fig. 2) argues from the histogram of the quantized gradient ``zeta(b g / max|g|)``
(Eq. 4) at the start of an attack: on a model whose gradient is peaked, most components
quantize to +-1 and PQGD behaves like PGD with a sign step; on a flat gradient, many components
reach values whose single step already crosses the eps-ball and the projection clips them.
:func:`start_gradients` gives the gradients behind such a histogram; ``quantadv diagnose
--gradients FILE.npz`` writes them with their quantizations (docs/paper-001-quantized-gradients.md).
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import InputError


def start_gradients(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, *, eps: float,
                    loss: str = "ce", seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``(x0, g)``: a uniform random start in the L-inf ``eps``-ball (clipped to [0, 1]) and the
    ascent direction ``g`` of the attack loss there (the gradient an L-inf attack's first step
    uses, before any sign or quantization), per image. Same ``seed``, same start."""
    from ..attacks.engine import make_problem

    if not eps > 0:
        raise InputError(f"eps must be > 0, got {eps}")
    gen = torch.Generator().manual_seed(seed)
    noise = (2 * torch.rand(images.shape, generator=gen, dtype=images.dtype) - 1).to(images.device)
    x0 = (images + noise * eps).clamp(0, 1)
    problem = make_problem(model, images, labels, loss=loss)
    _, grad, _ = problem.loss_and_grad(x0, torch.arange(images.shape[0], device=images.device))
    return x0, -grad  # the engine minimises L_A; its negative gradient is the ascent direction
