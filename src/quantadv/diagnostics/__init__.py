"""Diagnostics for gradient masking (paper 004, Sec. 3.1 and Tables 1 / 7).

* :func:`jacobian_singular_values` -- per-image singular values of the logit-vs-input
  Jacobian, descending (batched ``torch.func``; paper 004 Sec. 4).
* :func:`jacobian_stats` -- Table 1 / Table 7 statistics (JSV mean/std, ``||psi||``, input
  gradient norm, ``||sign(grad)||``, fraction of exactly-zero gradient components) at any
  temperature, from one Jacobian.
* :func:`masking_checks` -- the Sec. 3.1 checks (Athalye et al. 2018): accuracy vs attack
  iterations, vs radius, transfer from a float surrogate vs white box, one-step vs
  iterative, and PGD vs PGD++; each a :class:`Check` with PASS/FLAG and its evidence.
  ``quantadv diagnose --model NAME`` runs them and exits non-zero when one flags.
* :func:`margin_shares` -- how saturated the softmax is in float32: the share of clean logit
  margins past ``MARGIN_ROUNDS`` (~16.6, ``p_y`` rounds to 1) and ``MARGIN_UNDERFLOWS`` (~87.3).
* :func:`start_gradients` -- the loss gradient at a random start (paper 001, Fig. 2):
  ``quantadv diagnose --gradients FILE.npz`` writes it with its quantizations.
"""

from .gradients import start_gradients
from .jacobian import JacobianStats, input_jacobian, jacobian_singular_values, jacobian_stats, weights_sha256
from .masking import MARGIN_ROUNDS, MARGIN_UNDERFLOWS, Check, margin_shares, masking_checks, signal_report

__all__ = [
    "MARGIN_ROUNDS",
    "MARGIN_UNDERFLOWS",
    "Check",
    "JacobianStats",
    "input_jacobian",
    "jacobian_singular_values",
    "jacobian_stats",
    "margin_shares",
    "masking_checks",
    "signal_report",
    "start_gradients",
    "weights_sha256",
]
