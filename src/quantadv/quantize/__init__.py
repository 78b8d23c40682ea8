"""Quantization of adversarial samples into digital images (paper 000, Sec. 3.3-4.5 and 6).

An attack outputs ``x_a``, which is not a digital image; these functions turn it into one,
``x_q``, whose every pixel is ``floor(x_a)`` or ``ceil(x_a)`` on the 0..255 scale:

- :func:`round_nearest` — R, Eq. 12 (kills weak perturbations, Sec. 3.3);
- :func:`toward_original` — Q0, Eq. 20 (least distortion, no network call);
- :func:`gradient_sign` — Q-infinity, Eq. 25 (most adversarial to first order);
- :func:`lagrangian` — Q-lambda*, Eq. 26-30 and Sec. 4.4-4.5 (least distortion among the
  Lagrangian quantizations that stay adversarial under the true network);
- :func:`fixed_multiplier` — Q-lambda for a given lambda and gradient (Eq. 28), with
  :func:`loss_gradient` the gradient of L_Q (Eq. 24);
- :func:`budgeted` — Q-delta*, Sec. 6 (Lagrangian quantization steered by a distortion
  budget, for use inside DDN; no network call);
- :func:`lagrangian_jpeg` — Q-lambda* over the DCT coefficients of a JPEG file (issue 12),
  with the baselines :func:`round_jpeg` and :func:`reencode_jpeg` (docs/jpeg.md).

The quantization loss (Eq. 21) is ``L_Q = s(t) - s(kappa_a)`` untargeted, with ``t`` the
true class and ``kappa_a`` the most likely other class at the unquantized ``x_a``; in
targeted mode (target ``tau``) it is ``L_Q = s(kappa_a) - s(tau)`` with ``kappa_a`` the most
likely class other than ``tau``. ``s`` is the softmax probability (``loss="prob"``, the
paper) or the logit (``loss="logit"``). See docs/quantization.md.
"""

from .basic import gradient_sign, round_nearest, toward_original
from .budgeted import budgeted
from .jpeg import lagrangian_jpeg, reencode_jpeg, round_jpeg
from .lagrangian import fixed_multiplier, lagrangian, loss_gradient

__all__ = [
    "budgeted",
    "fixed_multiplier",
    "gradient_sign",
    "lagrangian",
    "lagrangian_jpeg",
    "loss_gradient",
    "reencode_jpeg",
    "round_jpeg",
    "round_nearest",
    "toward_original",
]
