"""Per-image search of an attack's budget by bisection (paper 000, Sec. 5.4).

Bounded attacks (I-FGSM, PGD) take a budget ``eps`` and do not minimise the distortion; the
paper turns them into "smallest budget that works" attacks by a 5-step binary search on
``eps`` per image ("IFGSM: ... d_max is given by a 5-step binary search over [0, 15]";
"PGD2: a 5-step binary search finds the correct eps to produce an adversarial example after
10 iterations"). :func:`budget_search` does that for any attack of this library (or any
function with the same calling convention and ``return_info``).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from .._validate import check_images, check_int, check_positive
from ..errors import InputError


def budget_search(
    attack: Callable[..., tuple[torch.Tensor, dict[str, torch.Tensor]]],
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    param: str = "eps",
    low: float,
    high: float,
    rounds: int = 5,
    targets: torch.Tensor | None = None,
    return_info: bool = False,
    **params: object,
):
    """Bisect ``attack``'s budget ``param`` per image over ``[low, high]`` (paper 000 Sec. 5.4).

    Each of the ``rounds`` rounds runs ``attack`` once per image at the midpoint of the image's
    current interval: if the attack succeeds the interval keeps its lower half, otherwise its
    upper half. Images that share a midpoint are attacked together (at most ``2**(k-1)``
    groups in round ``k``). As in the paper, the end points are never tried themselves: every
    budget tried is ``low + (high - low) * j / 2**rounds`` for some ``0 < j < 2**rounds``.

    Parameters
    ----------
    attack : an attack of :mod:`quantadv.attacks` (e.g. ``ifgsm``, ``pgd``), called as
        ``attack(model, x, y, **{param: value}, **params, return_info=True)``; its info
        ``success`` decides each round.
    param : the budget's keyword (``"eps"`` for FGSM, I-FGSM and PGD).
    low, high : the search interval, ``0 <= low < high``, in the attack's units.
    rounds : rounds of bisection (the paper: 5).
    targets : passed on for a targeted attack.
    params : the attack's other keyword arguments (e.g. I-FGSM's ``steps=20``, or PGD's
        ``norm="l2", step=..., steps=10``).

    Returns
    -------
    Per image, the output of the successful round with the smallest budget; for an image
    that never succeeded, the output of its last round (the largest budget tried). With
    ``return_info=True`` also a dict of per-image tensors: ``success``, ``calls`` and
    ``grads`` (summed over the rounds) and ``budget`` (the smallest successful budget,
    float64, ``inf`` for failures).
    """
    if not callable(attack):
        raise InputError(f"attack must be an attack function, got {type(attack).__name__}")
    check_images(images, "images")
    low = check_positive(low, "low", allow_zero=True)
    high = check_positive(high, "high")
    if not low < high:
        raise InputError(f"the search interval needs low < high, got low={low}, high={high}")
    rounds = check_int(rounds, "rounds", minimum=1)
    if param in params:
        raise InputError(f"{param} is searched; do not pass it as a fixed parameter too")
    n = images.shape[0]
    device = images.device
    lo = torch.full((n,), float(low), dtype=torch.float64)
    hi = torch.full((n,), float(high), dtype=torch.float64)
    best = images.detach().clone()
    budget = torch.full((n,), float("inf"), dtype=torch.float64)
    calls = torch.zeros(n, dtype=torch.int64, device=device)
    grads = torch.zeros(n, dtype=torch.int64, device=device)
    for _ in range(rounds):
        mid = (lo + hi) / 2
        for value in torch.unique(mid).tolist():
            group = (mid == value).nonzero().flatten()
            on = group.to(device)
            extra = {} if targets is None else {"targets": targets[on]}
            out = attack(model, images[on], labels[on], **{param: value}, **params, **extra, return_info=True)
            if not (isinstance(out, tuple) and len(out) == 2):
                raise InputError("budget_search needs an attack that returns (images, info) with return_info=True")
            x_adv, info = out
            ok = info["success"].to("cpu", torch.bool)
            calls[on] += info["calls"].to(device)
            grads[on] += info["grads"].to(device)
            fresh = ok | ~torch.isfinite(budget[group])  # a success, or no success yet: keep it
            best[on[fresh.to(device)]] = x_adv[fresh.to(device)].detach()
            budget[group[ok]] = value
            hi[group[ok]] = value
            lo[group[~ok]] = value
    if not return_info:
        return best
    found = torch.isfinite(budget)
    return best, {"success": found.to(device), "calls": calls, "grads": grads, "budget": budget.to(device)}
