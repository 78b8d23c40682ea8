"""Rounding R, toward-original Q0 and gradient-sign Q-infinity (paper 000, Sec. 3.3, 4.1, 4.2).

All quantizers take float NCHW batches in [0, 1] and return digital images (exactly
``k/255``, same dtype and device as ``x_adv``) whose every pixel is ``floor`` or ``ceil`` of
``x_adv`` in pixel units. Inputs are never modified; the model is used as found (its mode
and ``requires_grad`` flags are not changed).
"""

from __future__ import annotations

import torch
from torch import nn

from .._validate import check_images
from ..digital import pixel_units
from . import _loss, _rule


def round_nearest(x_adv: torch.Tensor) -> torch.Tensor:
    """R of paper 000, Eq. 12: round every pixel value to the nearest integer (0..255 scale).

    Ties follow the paper's convention (Eq. 13): a value ``v`` goes to ``e`` when
    ``v in (e - 1/2, e + 1/2]``, i.e. exact halves round *down*. Values within
    ``SNAP_TOLERANCE`` (pixel units) of an integer or a half are treated as exactly that.

    Parameters
    ----------
    x_adv : Tensor
        Float NCHW batch in [0, 1].

    Returns
    -------
    Tensor
        Digital batch, same shape, dtype and device as ``x_adv``.
    """
    check_images(x_adv, "x_adv")
    # k = ceil(p - 1/2 - tol) rounds to nearest with halves going down (Eq. 13), and sends
    # values within tol of an integer or of a half to that integer or down, so that a half
    # stored as (k + 0.5)/255 in float32 follows the tie rule rather than its last bits.
    k = pixel_units(x_adv).clamp_(0.0, 255.0).sub_(0.5 + _rule.SNAP_TOLERANCE).ceil_()
    return k.to(dtype=x_adv.dtype) / 255.0


def toward_original(x_orig: torch.Tensor, x_adv: torch.Tensor) -> torch.Tensor:
    """Q0 of paper 000, Eq. 20: round ``u = x_a - x_o`` toward zero (the least distortion).

    Per pixel ``x_q = x_o + ceil(u)`` if ``u <= 0`` else ``x_o + floor(u)``, so that
    ``||x_q - x_o|| <= ||x_a - x_o||``. ``x_orig`` must be digital. No network call.
    """
    parts = _rule.split(x_orig, x_adv)
    return _rule.image(parts, _rule.offsets(parts, None, None), x_adv)


def gradient_sign(
    model: nn.Module,
    x_orig: torch.Tensor,
    x_adv: torch.Tensor,
    labels: torch.Tensor,
    *,
    targets: torch.Tensor | None = None,
    loss: str = "prob",
) -> torch.Tensor:
    """Q-infinity of paper 000, Eq. 25: quantize against the sign of the gradient of L_Q.

    With ``g`` the gradient of ``L_Q`` (Eq. 21; see :mod:`quantadv.quantize` for the
    targeted form and ``loss``) at ``x_a``: ``ceil`` where ``g < 0``, ``floor`` where
    ``g > 0``, Q0 where ``g == 0``; pixels where ``u`` is an integer are kept. This is the
    ``lambda -> infinity`` limit of Eq. 28. Costs one gradient computation.
    """
    parts = _rule.split(x_orig, x_adv)
    labels_t, targets_t = _loss.check_labels_targets(labels, targets, x_adv.shape[0], x_adv.device)
    grad, _ = _loss.gradient(model, x_adv, labels_t, targets_t, loss)
    g = _rule.flatten_gradient(grad, parts)
    e = _rule.offsets(parts, _rule.in_j(parts, g), g)
    return _rule.image(parts, e, x_adv)
