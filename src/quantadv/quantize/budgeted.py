"""Budgeted quantization Q-delta* used inside DDN (paper 000, Sec. 6)."""

from __future__ import annotations

import torch

from ..errors import InputError
from . import _rule


def _per_image(
    value: object, batch: int, name: str, dtype: torch.dtype, device: torch.device
) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        if dtype == torch.bool and value.dtype.is_floating_point:
            raise InputError(
                f"{name} must be boolean (one flag per image), got dtype {value.dtype}"
            )
        t = value.detach().to(device=device, dtype=dtype)
    else:
        t = torch.as_tensor(value, dtype=dtype, device=device)
    if t.dim() == 0:
        t = t.expand(batch)
    if t.dim() != 1 or t.shape[0] != batch:
        raise InputError(
            f"{name} must be a scalar or a 1-D tensor with one entry per image ({batch}), "
            f"got shape {tuple(t.shape)}"
        )
    return t


def budgeted(
    x_orig: torch.Tensor,
    x_adv: torch.Tensor,
    grad: torch.Tensor,
    budget: torch.Tensor | float,
    prev_adversarial: torch.Tensor | bool,
    *,
    return_info: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Q-delta* of paper 000, Sec. 6: Lagrangian quantization steered by a distortion budget.

    The pixels of ``J`` (Eq. 29) are ranked by their ratio ``r`` (Eq. 30, ascending, ties
    by pixel index). Switching the first ``k`` of them from the distortion choice (Q0,
    Eq. 20) to the loss choice (Eq. 25) gives the squared distortion
    ``D(k) = ||Q0(x_a) - x_o||^2 + sum of the first k extra costs`` where switching pixel
    ``j`` costs ``|1 - 2 ceil(u_j)|`` (the numerator of Eq. 30). ``D`` is non-decreasing
    in ``k``; per image this picks

    - ``prev_adversarial`` True: the largest ``k`` with ``D(k) <= budget`` (``k = 0`` if
      even Q0 exceeds it), so the budget is respected whenever it can be;
    - ``prev_adversarial`` False: the smallest ``k`` with ``D(k) > budget`` (all of ``J``,
      i.e. Q-infinity, if no prefix exceeds it), so the budget is exceeded minimally.

    ``delta* = r_(k)`` is the Lagrange multiplier of Eq. 26 that gives this point (up to
    ties). No network call: this is a pure function of its arguments.

    Parameters
    ----------
    x_orig : Tensor
        Digital originals, float NCHW in [0, 1].
    x_adv : Tensor
        Current unquantized iterate, same shape, in [0, 1] (clip it first).
    grad : Tensor
        Gradient, at ``x_adv``, of the loss the attacker *decreases* (e.g. L_Q of Eq. 21,
        or the attack loss), same shape. Only its direction matters (the ranking and the
        choices are invariant to a positive scale per image), so [0, 1] or pixel units alike.
    budget : Tensor or float
        Per-image budget on the squared L2 distortion ``||x_q - x_o||^2`` in pixel units
        (0..255 scale); for a DDN radius ``rho`` in [0, 1] units pass ``(255 * rho) ** 2``.
    prev_adversarial : Tensor or bool
        Per-image: was the previous iterate adversarial?
    return_info : bool
        Also return a dict of per-image tensors: ``delta_star`` (float64, ``0`` when
        ``k = 0``), ``flipped`` (``k``), ``j_size`` (``|J|``) and ``sq_distortion``
        (``D(k)``, float64, pixel units squared).

    Returns
    -------
    Tensor or (Tensor, dict)
        Digital batch with the dtype and device of ``x_adv``.
    """
    parts = _rule.split(x_orig, x_adv)
    if not isinstance(grad, torch.Tensor):
        raise InputError(f"grad must be a torch.Tensor, got {type(grad).__name__}")
    g = _rule.flatten_gradient(grad, parts)
    batch, n = g.shape
    device = g.device
    budget_t = _per_image(budget, batch, "budget", torch.float64, device)
    if not bool(torch.isfinite(budget_t).all()) or bool((budget_t < 0).any()):
        raise InputError("budget must be finite and >= 0 (a squared distortion in pixel units)")
    prev_t = _per_image(prev_adversarial, batch, "prev_adversarial", torch.bool, device)

    r = _rule.ratios(parts, g)
    j_mask = torch.isfinite(r)
    j_size = j_mask.sum(dim=1)
    r_sorted, order = torch.sort(r, dim=1, stable=True)
    extra = torch.where(j_mask, (1.0 - 2.0 * parts.ceil).abs(), torch.zeros_like(r))
    base = _rule.offsets(parts, None, None).square().sum(dim=1)
    # cost[:, i] = D(i + 1): squared distortion after switching the first i + 1 ratios.
    cost = base.unsqueeze(1) + extra.gather(1, order).cumsum(dim=1)
    position = torch.arange(n, device=device).unsqueeze(0)
    within = ((cost <= budget_t.unsqueeze(1)) & (position < j_size.unsqueeze(1))).sum(dim=1)
    base_ok = base <= budget_t
    largest_within = torch.where(base_ok, within, torch.zeros_like(within))
    smallest_over = torch.where(
        base_ok, torch.minimum(within + 1, j_size), torch.zeros_like(within)
    )
    k = torch.where(prev_t, largest_within, smallest_over)

    flip_sorted = position < k.unsqueeze(1)
    flip = torch.zeros_like(flip_sorted).scatter(1, order, flip_sorted)
    x_q = _rule.image(parts, _rule.offsets(parts, flip, g), x_adv)
    if not return_info:
        return x_q
    at = (k - 1).clamp(min=0).unsqueeze(1)
    delta = torch.where(k > 0, r_sorted.gather(1, at).squeeze(1), torch.zeros_like(base))
    spent = torch.where(k > 0, cost.gather(1, at).squeeze(1), base)
    info = {"delta_star": delta, "flipped": k, "j_size": j_size, "sq_distortion": spent}
    return x_q, info
