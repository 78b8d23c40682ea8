"""The per-pixel choice rule shared by every quantizer of paper 000 (Sec. 4).

Everything here works on flattened batches ``(B, n)`` in pixel units (0..255 scale) and
float64, so that integers and the comparisons of Eq. 28 are exact.

Notation (paper 000, Eq. 2-4 and Sec. 4): ``u = x_a - x_o`` is the unquantized
perturbation, ``c = ceil(u)``; a quantizer keeps, per pixel, either ``x_o + c`` or
``x_o + c - 1`` (that is ``ceil(x_a)`` or ``floor(x_a)``), except where ``u`` is an integer
(within :data:`SNAP_TOLERANCE`), where the pixel is kept at ``x_o + u``.

- The *distortion choice* (Q0, Eq. 20) is ``ceil`` iff ``u <= 0`` (rounding toward ``x_o``).
- The *loss choice* (Q-infinity, Eq. 25) is ``ceil`` iff ``g < 0``; where ``g == 0`` the
  loss has no preference and the distortion choice is used.
- ``J`` (Eq. 29) holds the non-integer pixels with ``g != 0`` where both choices differ,
  and the ratio (Eq. 30) ``r = (1 - 2c) / g`` is ``> 0`` there (``+inf`` elsewhere).

Every quantizer is "take the distortion choice, except on a subset of ``J`` where the loss
choice is taken": Q0 flips nothing, Q-infinity flips all of ``J``, Q-lambda (Eq. 28)
flips ``{j in J : r(j) <= lambda}`` and Q-delta (Sec. 6) flips a prefix of ``J`` sorted by
ratio. :func:`offsets` implements that once.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .._validate import check_images, check_same_shape
from ..digital import is_digital, pixel_units
from ..errors import InputError

#: Pixels whose perturbation ``u`` lies within this distance of an integer (pixel units)
#: are treated as already quantized and kept as they are.
SNAP_TOLERANCE = 1e-4


@dataclass(frozen=True)
class Split:
    """A perturbation ``u = x_a - x_o`` split into what the per-pixel choice needs.

    All tensors are ``(B, n)``; ``origin`` and ``ceil`` hold integers stored as float64.
    """

    origin: torch.Tensor  # x_o in pixel units
    ceil: torch.Tensor  # c = ceil(u), or u itself where u is an integer
    exact: torch.Tensor  # bool: u is (within SNAP_TOLERANCE) an integer, the pixel is kept
    shape: torch.Size  # shape of the image batch (B, C, H, W)

    @property
    def distortion_ceil(self) -> torch.Tensor:
        """Q0 (Eq. 20) picks ``ceil`` iff ``u <= 0``, i.e. iff ``ceil(u) <= 0``."""
        return self.ceil <= 0


def check_pair(x_orig: object, x_adv: object) -> None:
    """Validate an (original, adversarial) pair of image batches."""
    check_images(x_orig, "x_orig")
    check_images(x_adv, "x_adv")
    check_same_shape(x_orig, x_adv, ("x_orig", "x_adv"))  # type: ignore[arg-type]
    digital = is_digital(x_orig)  # type: ignore[arg-type]
    if not bool(digital.all()):
        bad = (~digital).nonzero().flatten()[:5].tolist()
        raise InputError(
            "x_orig must be a digital image batch (values exactly k/255): images "
            f"{bad} are not; load originals as uint8 and convert them with quantadv.to_float"
        )


def split(x_orig: torch.Tensor, x_adv: torch.Tensor) -> Split:
    """Split ``u = x_adv - x_orig`` (pixel units, float64) for the choice rule."""
    check_pair(x_orig, x_adv)
    origin = pixel_units(x_orig).round().flatten(1)
    adv = pixel_units(x_adv).clamp(0.0, 255.0).flatten(1)
    u = adv - origin
    nearest = u.round()
    exact = (u - nearest).abs() <= SNAP_TOLERANCE
    ceil = torch.where(exact, nearest, torch.ceil(u))
    return Split(origin, ceil, exact, x_orig.shape)


def pixel_values(x_adv: torch.Tensor, like: Split) -> torch.Tensor:
    """``x_a`` in pixel units, clipped to 0..255, float64 ``(B, n)`` (as :func:`split` sees it)."""
    return pixel_units(x_adv).clamp(0.0, 255.0).flatten(1).to(like.origin.device)


def flatten_gradient(grad: torch.Tensor, like: Split) -> torch.Tensor:
    """Gradient as a float64 ``(B, n)`` tensor on the split's device."""
    g = grad.detach().to(device=like.origin.device, dtype=torch.float64).flatten(1)
    if g.shape != like.origin.shape:
        raise InputError(
            f"the gradient has {tuple(grad.shape)} values but the images have shape "
            f"{tuple(like.shape)}; pass one gradient value per pixel"
        )
    if not bool(torch.isfinite(g).all()):
        raise InputError("the gradient contains NaN or infinite values")
    return g


def in_j(parts: Split, g: torch.Tensor) -> torch.Tensor:
    """Boolean mask of J (Eq. 29): non-integer pixels, ``g != 0``, choices disagree."""
    loss_ceil = g < 0
    return (~parts.exact) & (g != 0) & (loss_ceil != parts.distortion_ceil)


def ratios(parts: Split, g: torch.Tensor) -> torch.Tensor:
    """Eq. 30: ``r = (1 - 2 ceil(u)) / g`` on J (always ``> 0`` there), ``+inf`` elsewhere."""
    mask = in_j(parts, g)
    safe_g = torch.where(mask, g, torch.ones_like(g))
    r = (1.0 - 2.0 * parts.ceil) / safe_g
    return torch.where(mask, r, torch.full_like(r, float("inf")))


def agreeing(parts: Split, g: torch.Tensor) -> torch.Tensor:
    """Pixels whose one best choice lowers both distortion and loss (Table 2; Fig. 3, hashed)."""
    return (~parts.exact) & (g != 0) & ~in_j(parts, g)


def offsets(parts: Split, flip: torch.Tensor | None, g: torch.Tensor | None) -> torch.Tensor:
    """Quantized perturbation ``e = x_q - x_o`` (integers, float64, ``(B, n)``).

    Takes the distortion choice (Q0, Eq. 20) everywhere except on ``flip`` (a subset of J),
    where the loss choice of Eq. 25 (``ceil`` iff ``g < 0``) is taken. Integer ``u`` are kept.
    """
    take_ceil = parts.distortion_ceil
    if flip is not None:
        if g is None:
            raise ValueError("offsets: a flip mask needs the gradient")
        take_ceil = torch.where(flip, g < 0, take_ceil)
    chosen = torch.where(take_ceil, parts.ceil, parts.ceil - 1.0)
    return torch.where(parts.exact, parts.ceil, chosen)


def image(parts: Split, e: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Digital image ``x_o + e`` (clipped to 0..255) as exactly ``k/255`` in ``like``'s dtype."""
    k = (parts.origin + e).clamp(0.0, 255.0)
    out = k.to(device=like.device, dtype=like.dtype) / 255.0
    return out.reshape(parts.shape)
