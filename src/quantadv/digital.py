"""Digital images: float tensors on the 1/255 grid and their uint8 form (DESIGN.md section 1).

A *digital image* is a float tensor whose values are exactly ``k/255`` for integers
``k`` in ``0..255`` (paper 000, Sec. 3.1: the set X of admissible images).
"""

from __future__ import annotations

import torch

from .errors import InputError

#: Largest distance from the 1/255 grid (in pixel units, 0..255 scale) still treated as on it.
GRID_TOLERANCE = 1e-3


def pixel_units(x: torch.Tensor) -> torch.Tensor:
    """Return ``x`` (values in [0, 1]) in pixel units, on the 0..255 scale, as float64."""
    return x.detach().to(torch.float64) * 255.0


def is_digital(x: torch.Tensor) -> torch.Tensor:
    """Per-image boolean: True where every value of the image lies on the 1/255 grid in [0, 1]."""
    if x.dtype == torch.uint8:
        return torch.ones(x.shape[0], dtype=torch.bool, device=x.device)
    p = pixel_units(x)
    on_grid = ((p - p.round()).abs() <= GRID_TOLERANCE) & (p >= -GRID_TOLERANCE) & (p <= 255 + GRID_TOLERANCE)
    return on_grid.flatten(1).all(dim=1)


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """Convert a digital float image batch to ``uint8`` exactly.

    Raises :class:`~quantadv.errors.InputError` when a value is not on the 1/255 grid:
    use a quantizer from :mod:`quantadv.quantize` first. Never truncates silently.
    """
    if not isinstance(x, torch.Tensor):
        raise InputError(f"to_uint8 expects a torch.Tensor, got {type(x).__name__}")
    if x.dtype == torch.uint8:
        return x.clone()
    if not x.dtype.is_floating_point:
        raise InputError(f"to_uint8 expects a float tensor in [0, 1], got dtype {x.dtype}")
    if not torch.isfinite(x).all():
        raise InputError("to_uint8: the tensor contains NaN or infinite values")
    p = pixel_units(x)
    off = (p - p.round()).abs()
    if bool((off > GRID_TOLERANCE).any()) or float(p.min()) < -GRID_TOLERANCE or float(p.max()) > 255 + GRID_TOLERANCE:
        worst = float(off.max())
        raise InputError(
            "to_uint8: the tensor is not a digital image (values must be exactly k/255 in [0, 1]; "
            f"largest distance from the grid is {worst:.4g} pixel units, range "
            f"[{float(x.min()):.4g}, {float(x.max()):.4g}]). Quantize it first, e.g. with "
            "quantadv.quantize.round_nearest or quantadv.quantize.lagrangian"
        )
    return p.round().clamp(0, 255).to(torch.uint8)


def to_float(x: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Convert a ``uint8`` image batch to floats in [0, 1] (exactly k/255)."""
    if not isinstance(x, torch.Tensor) or x.dtype != torch.uint8:
        got = x.dtype if isinstance(x, torch.Tensor) else type(x).__name__
        raise InputError(f"to_float expects a uint8 tensor, got {got}")
    return x.to(dtype) / 255.0
