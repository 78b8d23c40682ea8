"""Soft and hard input quantization (paper 002, Sec. 3, Eq. 3).

A ``K``-level quantizer maps every pixel value ``x`` in ``[0, 1]`` onto the grid
``{0, 1/K, ..., 1}`` (``K`` intervals, ``K + 1`` output values; ``K = 1`` is binarisation).
The *hard* quantizer rounds to the nearest grid value; its gradient is zero almost everywhere.
The *soft* quantizer of paper 002, Eq. 3, replaces the step inside interval ``k`` by a sigmoid::

    S(x) = (1/K) * sigmoid(alpha * (x - (2k + 1) / (2K))) + k/K,   k = min(floor(K x), K - 1)

``alpha`` is in the paper's units: the slope parameter for inputs in ``[0, 1]``. The paper's
MNIST setting is ``K = 1, alpha = 1000``; its CIFAR-10 setting ``alpha = 100 x 255`` (its code
works on 0..255 pixels with ``alpha = 100``, which is ``100 x 255`` once pixels are divided by
255: footnote of Sec. 5). A value given for 0..255 pixels must therefore be multiplied by 255.

As ``alpha`` grows, ``S`` becomes the hard quantizer: on a digital image (values ``j/255``) no
pixel lies on a threshold ``(2k + 1)/(2K)`` (255 is odd), so for a large enough ``alpha`` the
float32 sigmoid saturates to exactly 0 or 1 and ``S(x)`` equals :class:`HardQuantization`
bit for bit. At moderate ``alpha`` the float32 gradient ``alpha * s * (1 - s)`` is not exactly
zero but tiny (down to denormal numbers) for pixels within about ``100/alpha`` of a threshold,
and exactly zero beyond: this is the gradient masking that BPDA (Athalye et al. 2018) works
around, see :func:`quantadv.defenses.bpda`.

Both layers are deterministic (``randomized = False``): EOT has nothing to average.
"""

from __future__ import annotations

import torch
from torch import nn

from .._validate import check_int, check_positive
from ..errors import InputError

__all__ = ["HardQuantization", "SoftQuantization"]


def _levels(levels: object) -> int:
    return check_int(levels, "levels (K, the number of quantization intervals)", minimum=1)


def _interval(x: torch.Tensor, levels: int) -> torch.Tensor:
    """Interval index ``k = min(floor(K x), K - 1)`` of every value (values in [0, 1])."""
    return torch.floor(x * levels).clamp(0, levels - 1)


class SoftQuantization(nn.Module):
    """Differentiable ``K``-level soft quantization of the input (paper 002, Eq. 3).

    Parameters
    ----------
    levels : int
        ``K``, the number of quantization intervals (``K + 1`` output levels; ``K = 1`` is
        binarisation, the paper's MNIST setting).
    alpha : float
        Sigmoid slope for inputs in ``[0, 1]`` (the paper's units: 1000 for MNIST; its
        CIFAR-10 ``alpha = 100`` on 0..255 pixels is ``100 x 255`` here). Larger is closer
        to :class:`HardQuantization`.

    Notes
    -----
    Element-wise; output in ``[0, 1]``, non-decreasing in ``x`` (the small jumps at interval
    boundaries, of height ``(2/K) sigmoid(-alpha / (2K))``, are upward). Works for any shape
    and any float dtype; the sigmoid is evaluated in the input's dtype, so the saturation
    (exact zeros of the gradient) is that of the dtype.
    """

    randomized = False

    def __init__(self, levels: int = 1, alpha: float = 1000.0) -> None:
        super().__init__()
        self.levels = _levels(levels)
        self.alpha = check_positive(alpha, "alpha")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor) or not x.dtype.is_floating_point:
            raise InputError(
                "SoftQuantization takes a float tensor with values in [0, 1] "
                f"(got {type(x).__name__ if not isinstance(x, torch.Tensor) else x.dtype})"
            )
        k_levels = self.levels
        k = _interval(x.detach(), k_levels)
        centre = (2.0 * k + 1.0) / (2.0 * k_levels)
        # (k + sigmoid) / K is Eq. 3's sigmoid / K + k / K, written so that a saturated sigmoid
        # gives exactly HardQuantization's (k + 0 or 1) / K
        return (k + torch.sigmoid(self.alpha * (x - centre))) / k_levels

    def derivative(self, x: torch.Tensor) -> torch.Tensor:
        """``dS/dx`` element-wise: ``(alpha / K) * s * (1 - s)``, ``s`` the sigmoid of Eq. 3.

        Paper 002's Eq. 8 prints ``alpha * s * (1 - s)``, the ``K = 1`` case; differentiating
        Eq. 3 gives the factor ``1/K``.
        """
        k = _interval(x, self.levels)
        s = torch.sigmoid(self.alpha * (x - (2.0 * k + 1.0) / (2.0 * self.levels)))
        return self.alpha / self.levels * s * (1.0 - s)

    def extra_repr(self) -> str:
        return f"levels={self.levels}, alpha={self.alpha:g}"


class HardQuantization(nn.Module):
    """Hard ``K``-level quantization: every value rounded to the nearest of ``{0, 1/K, ..., 1}``.

    The limit of :class:`SoftQuantization` as ``alpha`` grows (paper 002, Sec. 3, "Hard
    quantization"; Xu et al. 2017's bit-depth reduction when ``K = 2^b - 1``). A value exactly on
    a threshold ``(2k + 1)/(2K)`` goes up (the soft layer gives the threshold itself there, for
    every ``alpha``; digital images never hit a threshold since 255 is odd). Its gradient is
    zero everywhere (``round`` has a zero derivative in autograd): attack it through
    :func:`quantadv.defenses.bpda`.
    """

    randomized = False

    def __init__(self, levels: int = 1) -> None:
        super().__init__()
        self.levels = _levels(levels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor) or not x.dtype.is_floating_point:
            raise InputError("HardQuantization takes a float tensor with values in [0, 1]")
        k_levels = self.levels
        k = _interval(x, k_levels)
        up = (x >= (2.0 * k + 1.0) / (2.0 * k_levels)).to(x.dtype)
        return (k + up) / k_levels

    def extra_repr(self) -> str:
        return f"levels={self.levels}"
