"""Lagrangian quantization Q-lambda* (paper 000, Eq. 21-30, Sec. 4.3-4.5)."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from .._validate import check_choice, check_images, check_positive
from ..errors import InputError
from . import _loss, _rule


def loss_gradient(
    model: nn.Module,
    x_adv: torch.Tensor,
    labels: torch.Tensor,
    *,
    targets: torch.Tensor | None = None,
    loss: str = "prob",
) -> torch.Tensor:
    """Gradient ``g`` of the quantization loss L_Q at ``x_a`` (paper 000, Eq. 21-24).

    Returned per pixel in *pixel units* (derivative with respect to the 0..255 value), as
    float64 with the shape of ``x_adv``. ``L_Q = s(t) - s(kappa_a)`` untargeted, ``s(kappa_a)
    - s(tau)`` targeted (see :mod:`quantadv.quantize`); ``s`` is the softmax probability
    (``loss="prob"``) or the logit (``loss="logit"``). One network call per image.
    """
    check_images(x_adv, "x_adv")
    labels_t, targets_t = _loss.check_labels_targets(labels, targets, x_adv.shape[0], x_adv.device)
    grad, _ = _loss.gradient(model, x_adv, labels_t, targets_t, loss)
    return grad


def fixed_multiplier(
    x_orig: torch.Tensor,
    x_adv: torch.Tensor,
    grad: torch.Tensor,
    multiplier: torch.Tensor | float,
) -> torch.Tensor:
    """Q-lambda of paper 000 (Eq. 26-28) for a given gradient and Lagrange multiplier.

    Per pixel, with ``u = x_a - x_o`` and ``g = grad`` in pixel units: ``x_o + ceil(u)`` if
    ``1 - 2 ceil(u) >= lambda g`` else ``x_o + floor(u)`` (Eq. 28), integer ``u`` kept. At a
    tie on ``J`` (``lambda = r(j)``, Eq. 30) the loss-decreasing choice is taken, as in
    :func:`lagrangian`. ``multiplier = 0`` gives Q0 (Eq. 20), ``inf`` gives Q-infinity
    (Eq. 25). No network call; ``multiplier`` is a number or one value per image (>= 0).
    Use it with :func:`loss_gradient` to trace loss and distortion against ``lambda``
    (Fig. 4 of the paper).
    """
    parts = _rule.split(x_orig, x_adv)
    if not isinstance(grad, torch.Tensor):
        raise InputError(f"grad must be a torch.Tensor, got {type(grad).__name__}")
    g = _rule.flatten_gradient(grad, parts)
    lam = torch.as_tensor(multiplier, dtype=torch.float64).to(g.device)
    if lam.dim() == 0:
        lam = lam.expand(g.shape[0])
    if lam.shape != (g.shape[0],):
        raise InputError(
            f"multiplier must be a number or hold one value per image ({g.shape[0]}), "
            f"got shape {tuple(lam.shape)}"
        )
    if bool(torch.isnan(lam).any()) or bool((lam < 0).any()):
        raise InputError("multiplier (lambda of Eq. 26) must be >= 0")
    flip = _rule.in_j(parts, g) & (_rule.ratios(parts, g) <= lam.unsqueeze(1))
    return _rule.image(parts, _rule.offsets(parts, flip, g), x_adv)


#: Strategies of :func:`lagrangian` for the search of lambda* over the sorted ratios.
SEARCHES = ("model", "bisection")


def lagrangian(
    model: nn.Module,
    x_orig: torch.Tensor,
    x_adv: torch.Tensor,
    labels: torch.Tensor,
    *,
    targets: torch.Tensor | None = None,
    margin: float = 0.0,
    loss: str = "prob",
    search: str = "model",
    eps: float | None = None,
    norm: str = "linf",
    return_info: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Q-lambda* of paper 000: the least-distortion Lagrangian quantization that stays adversarial.

    With ``u = x_a - x_o`` in pixel units and ``g`` the gradient of the quantization loss
    ``L_Q`` (Eq. 21-23) at ``x_a`` (computed once, first-order model Eq. 24), each pixel
    solves Eq. 27, ``min (u + q)^2 + lambda g q`` over ``q in {ceil(u), floor(u)} - u``,
    whose solution is Eq. 28: ``ceil`` iff ``1 - 2 ceil(u) >= lambda g``. ``lambda = 0`` is
    Q0 (Eq. 20), ``lambda -> infinity`` is Q-infinity (Eq. 25). Only pixels of ``J``
    (Eq. 29) depend on ``lambda``: a pixel of ``J`` switches from the distortion choice to
    the loss choice when ``lambda`` reaches its ratio ``r = (1 - 2 ceil(u)) / g > 0``
    (Eq. 30). At ``lambda = r`` exactly both choices cost the same in Eq. 27; we take the
    loss choice, so that ``lambda* = r(j*)`` includes pixel ``j*`` as in Sec. 4.4.

    The candidates are ``k = 0 .. |J|``: candidate ``k`` is ``lambda = r_(k)``, the ``k``-th
    smallest ratio (``k = 0``: Q0; ``k = |J|``: Q-infinity). ``lambda*`` is a candidate whose
    quantization is adversarial under the *true* network while candidate ``k - 1`` is not
    (a *boundary*, Sec. 4.5), or ``0`` when Q0 is adversarial; when the true outcome is
    monotone along the candidates it is the smallest adversarial one. Both searches run in
    lock-step for the whole batch (one forward pass per step for all images still searching):

    - ``search="model"`` (default): the first-order model of Eq. 24, ``L_Q(0) + g^T q_k``,
      is evaluated at every candidate with one cumulative sum along the sorted ratios (no
      network call). The first candidate where it meets the margin is tested with the
      network; each later step re-centres the model on the true loss the last forward pass
      returned and tests the candidate where the corrected model crosses, inside the
      bracket known so far. A step is only taken if galloping (1, 2, 4, ... candidates
      away) and bisection could still finish within ``2 + 2 ceil(log2 |J|)`` forward passes
      whatever the outcome; otherwise the search gallops and bisects from there. If even
      Q-infinity fails, Q0 is tried before giving up. When ``x_a`` is already digital, the
      gradient's forward pass was at ``x_q`` itself and no other pass is made. On DDN
      outputs this makes about 3 forward passes per image instead of about 10
      (docs/quantization.md).
    - ``search="bisection"``: the paper's procedure: ``lambda = 0`` first, then
      Q-infinity, then a binary search over the sorted ratios; at most
      ``2 + ceil(log2 |J|)`` forward passes per image.

    If no tested candidate is adversarial, Q-infinity is returned and ``success`` is False.

    **Inside an eps-ball** (``eps=``, our addition for :func:`quantadv.evaluate`): a digital
    image ``x_q`` must often stay in the threat model's ball ``||x_q - x_o|| <= eps`` too, and
    rounding away from ``x_o`` can leave it (``eps = 0.1`` is 25.5 levels: a pixel at ``u =
    25.3`` must not go to 26). With ``eps`` given the candidates are restricted to the ball
    before the search (:func:`ball_ratios`): for ``norm="linf"`` a pixel of ``J`` whose loss
    choice lies more than ``floor(255 eps)`` levels from ``x_o`` leaves ``J`` (it keeps the
    distortion choice); for ``norm="l2"`` the sorted candidates add distortion one pixel at a
    time (Eq. 27's first term), so ``J`` is cut to the longest prefix of the ratio order whose
    candidate lies in the ball. Q0 (rounding toward ``x_o``) never moves a pixel further from
    ``x_o`` than ``x_a`` is, so it is in the ball whenever ``x_a`` is; every candidate, hence
    the result, is then in the ball. ``x_adv`` outside the ball raises.

    Parameters
    ----------
    model : nn.Module
        Returns logits; used as found (mode and ``requires_grad`` flags untouched).
    x_orig : Tensor
        Digital originals ``x_o``, float NCHW in [0, 1] (exactly ``k/255``).
    x_adv : Tensor
        Unquantized adversarial samples ``x_a``, same shape, in [0, 1].
    labels : Tensor
        True classes ``t``.
    targets : Tensor, optional
        Targeted mode: succeed when the prediction is the target ``tau``; L_Q becomes
        ``s(kappa_a) - s(tau)`` with ``kappa_a`` the most likely class other than ``tau``
        at ``x_a`` (our analogue of Eq. 21; see :mod:`quantadv.quantize`).
    margin : float
        ``m <= 0`` (footnote 2). ``0``: success is the argmax criterion (prediction != t,
        or == tau). ``m < 0``: success also needs the true ``L_Q(q) <= m`` (in the units of
        ``loss``: probability or logit differences).
    loss : {"prob", "logit"}
        ``s`` in L_Q: softmax probabilities (the paper) or logits.
    search : {"model", "bisection"}
        How ``lambda*`` is searched (above). Both return a checked boundary, and the same
        one whenever the true outcome is monotone along the candidates.
    eps : float, optional
        Keep ``x_q`` inside the ball of this radius around ``x_orig`` ([0, 1] units; above).
        ``x_adv`` must lie in that ball. ``None`` (default): no constraint (the paper).
    norm : {"linf", "l2"}
        The norm of the ball (only with ``eps``).
    return_info : bool
        Also return a dict of per-image tensors: ``lambda_star`` (float64; ``0`` when Q0
        succeeded, ``inf`` on failure), ``j_size`` (``|J|``), ``success`` (bool),
        ``calls`` (network calls, the gradient counting as one), ``both_pixels`` (pixels
        whose choice lowers both loss and distortion, Table 2) and ``lambda_pixels``
        (pixels of ``J`` switched to the loss choice by ``lambda*``), ``pred`` (the
        network's class at ``x_q``, from the search's own forward pass of the returned
        candidate; one more call only where the search never evaluated it).

    Returns
    -------
    Tensor or (Tensor, dict)
        Digital batch ``x_q`` with the dtype and device of ``x_adv``.
    """
    parts = _rule.split(x_orig, x_adv)
    margin_value = _loss.check_margin(margin)
    check_choice(search, "search", SEARCHES)
    if eps is not None:
        check_choice(norm, "norm", BALL_NORMS)
        eps = check_positive(eps, "eps", allow_zero=True)
        _check_in_ball(parts, x_adv, norm, eps)
    batch = x_adv.shape[0]
    device = x_adv.device
    labels_t, targets_t = _loss.check_labels_targets(labels, targets, batch, device)
    pred_at_adv = torch.empty(batch, dtype=torch.int64, device=device)
    grad, objective, loss_at_adv, success_at_adv = _loss.gradient_and_loss(
        model, x_adv, labels_t, targets_t, loss, margin_value, pred_out=pred_at_adv
    )
    g = _rule.flatten_gradient(grad, parts)
    r = _rule.ratios(parts, g)
    if eps is not None:
        r = ball_ratios(parts, g, r, norm=norm, eps=eps)
    j_mask = torch.isfinite(r)
    j_size = j_mask.sum(dim=1)
    r_sorted, order = torch.sort(r, dim=1, stable=True)
    calls = torch.ones(batch, dtype=torch.int64, device=device)
    # The prediction at the smallest successful candidate tested so far (the returned one,
    # since the search only ever returns a tested success) and at Q-infinity (k = |J|, what a
    # failure returns): the info's ``pred`` without another network call.
    best_k = torch.full((batch,), -1, dtype=torch.int64, device=device)
    best_pred = torch.full((batch,), -1, dtype=torch.int64, device=device)
    inf_pred = torch.full((batch,), -1, dtype=torch.int64, device=device)

    def lam_at(idx: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        """lambda = r_(k) (k-th smallest ratio, 1-based) for the images ``idx``; 0 for k = 0."""
        pos = (k - 1).clamp(min=0).unsqueeze(1)
        value = r_sorted[idx].gather(1, pos).squeeze(1)
        return torch.where(k > 0, value, torch.zeros_like(value))

    # Every Q-lambda takes, per pixel, either its Q0 value or its Q-infinity value (they differ
    # on J only), so both images are built once and each search step is a single selection.
    e_zero = _rule.offsets(parts, None, None)
    e_inf = _rule.offsets(parts, j_mask, g)
    q_zero = _rule.image(parts, e_zero, x_adv).flatten(1)
    q_inf = _rule.image(parts, e_inf, x_adv).flatten(1)

    @torch.no_grad()
    def test(idx: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Candidate ``k`` of the images ``idx`` under the true network: (adversarial, L_Q)."""
        flip = r[idx] <= lam_at(idx, k).unsqueeze(1)  # r = +inf off J, where q_zero == q_inf
        image = torch.where(flip, q_inf[idx], q_zero[idx]).reshape(idx.numel(), *x_adv.shape[1:])
        logits = model(image)
        calls[idx] += 1
        chosen = objective.select(idx)
        ok = chosen.success(logits)
        pred = logits.argmax(dim=1)
        better = ok & ((best_k[idx] < 0) | (k < best_k[idx]))
        best_k[idx[better]] = k[better]
        best_pred[idx[better]] = pred[better]
        at_inf = k == j_size[idx]
        inf_pred[idx[at_inf]] = pred[at_inf]
        return ok, chosen.loss(logits).to(torch.float64)

    if search == "bisection":
        hi = _bisection(lambda idx, k: test(idx, k)[0], j_size)
    else:
        # Eq. 24 at every candidate: L_Q(0) + g^T q_k, with q_k = x_q(k) - x_a in pixel units;
        # switching the i-th sorted pixel of J changes it by g (e_inf - e_zero) < 0.
        adv = _rule.pixel_values(x_adv, parts)
        at_q0 = loss_at_adv + (g * (parts.origin + e_zero - adv)).sum(dim=1)
        steps = (g * (e_inf - e_zero)).gather(1, order)
        linear = torch.cat([at_q0.unsqueeze(1), at_q0.unsqueeze(1) + steps.cumsum(dim=1)], dim=1)
        # A digital x_a is its own quantization: the gradient's forward pass already tested it.
        known = (q_zero == x_adv.flatten(1)).all(dim=1)
        hi = _model_guided(test, linear, j_size, margin_value, known, success_at_adv)

    success = hi >= 0
    everyone = torch.arange(batch, device=device)
    lam_star = torch.where(success, lam_at(everyone, hi.clamp(min=0)), float("inf"))
    flip = j_mask & (r <= lam_star.unsqueeze(1))
    x_q = torch.where(flip, q_inf, q_zero).reshape(x_adv.shape)
    if not return_info:
        return x_q
    pred = torch.where(success, torch.where(best_k == hi, best_pred, -1), inf_pred)
    digital = (x_q.flatten(1) == x_adv.flatten(1)).all(dim=1)  # x_q is x_a: its pass judged it
    pred = torch.where((pred < 0) & digital, pred_at_adv, pred)
    missing = (pred < 0).nonzero().flatten()
    if missing.numel():  # e.g. a digital x_a judged by the gradient's own pass
        with torch.no_grad():
            pred[missing] = model(x_q[missing]).argmax(dim=1)
        calls[missing] += 1
    info = {
        "lambda_star": lam_star,
        "j_size": j_size,
        "success": success,
        "calls": calls,
        "pred": pred,
        "both_pixels": _rule.agreeing(parts, g).sum(dim=1),
        "lambda_pixels": flip.sum(dim=1),
    }
    return x_q, info


#: Norms of the ball :func:`lagrangian` can keep its output in.
BALL_NORMS = ("linf", "l2")
#: Slack (pixel units) of the ball tests: float32 inputs put ``x_o + eps`` a hair off.
_BALL_SLACK = 1e-3


def _check_in_ball(parts: _rule.Split, x_adv: torch.Tensor, norm: str, eps: float) -> None:
    u = _rule.pixel_values(x_adv, parts) - parts.origin
    size = u.abs().amax(dim=1) if norm == "linf" else u.norm(dim=1)
    bad = (size > 255.0 * eps + _BALL_SLACK).nonzero().flatten()
    if bad.numel():
        raise InputError(
            f"x_adv images {bad[:5].tolist()} lie outside the {norm} ball of radius eps={eps:g} around x_orig "
            f"(largest: {float(size[bad].max()) / 255:.4g}); project them onto the ball first or drop eps="
        )


def ball_ratios(parts: _rule.Split, g: torch.Tensor, r: torch.Tensor, *, norm: str, eps: float) -> torch.Tensor:
    """The ratios of Eq. 30 with ``+inf`` on the pixels a ball constraint takes out of ``J``.

    ``norm="linf"``: the pixels whose loss choice (Eq. 25) lies more than ``floor(255 eps)``
    levels from ``x_o``. ``norm="l2"``: every pixel after the longest prefix of the ratio
    order (ties in stable order) along which the candidate's squared distortion, Q0's plus
    ``(|e_0| + 1)^2 - e_0^2`` per switched pixel, stays within ``(255 eps)^2``. Since a
    Q-lambda switches exactly the pixels of ``J`` with ``r <= lambda``, every candidate of
    :func:`lagrangian` built from the returned ratios lies in the ball when Q0 does.
    """
    radius = 255.0 * eps
    in_j = torch.isfinite(r)
    e_zero = _rule.offsets(parts, None, None)
    e_loss = _rule.offsets(parts, in_j, g)
    inf = torch.full_like(r, float("inf"))
    if norm == "linf":
        return torch.where(e_loss.abs() > math.floor(radius + _BALL_SLACK), inf, r)
    r_sorted, order = torch.sort(r, dim=1, stable=True)
    extra = (e_loss.square() - e_zero.square()).gather(1, order)  # >= 0; 0 off J
    total = e_zero.square().sum(dim=1, keepdim=True) + extra.cumsum(dim=1)
    keep_sorted = (total <= radius * radius + _BALL_SLACK) & torch.isfinite(r_sorted)
    keep = torch.zeros_like(in_j).scatter(1, order, keep_sorted)
    return torch.where(keep, r, inf)


def _bisection(
    adversarial: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], j_size: torch.Tensor
) -> torch.Tensor:
    """The paper's search (Sec. 4.5): Q0, then Q-infinity, then bisection over the candidates.

    ``adversarial(idx, k)`` tests candidate ``k`` of the images ``idx`` with one forward pass.
    Returns, per image, the adversarial candidate found (``-1`` on failure).
    """
    batch = j_size.shape[0]
    device = j_size.device
    everyone = torch.arange(batch, device=device)
    zero = torch.zeros(batch, dtype=torch.int64, device=device)
    success = adversarial(everyone, zero)
    hi = torch.where(success, zero, -1)

    # Q0 failed: try Q-infinity (lambda beyond every ratio); pointless when J is empty.
    pending = everyone[~success & (j_size > 0)]
    if pending.numel():
        ok = adversarial(pending, j_size[pending])
        searching = pending[ok]
        hi[searching] = j_size[searching]
        # Invariant: candidate lo fails, candidate hi succeeds.
        lo = torch.zeros(batch, dtype=torch.int64, device=device)
        while searching.numel():
            active = searching[hi[searching] - lo[searching] > 1]
            if not active.numel():
                break
            mid = (lo[active] + hi[active]) // 2
            ok = adversarial(active, mid)
            hi[active[ok]] = mid[ok]
            lo[active[~ok]] = mid[~ok]
    return hi


def ceil_log2(n: torch.Tensor) -> torch.Tensor:
    """``ceil(log2 n)`` of an integer tensor, exactly, with ``0`` for ``n <= 1``."""
    m = (n - 1).clamp(min=1).to(torch.float64)
    return torch.where(n <= 1, 0, torch.floor(torch.log2(m)).to(torch.int64) + 1)


def model_guided_bound(j_size: torch.Tensor) -> torch.Tensor:
    """Worst-case forward passes of the model-guided search: ``2 + 2 ceil(log2 |J|)``."""
    return 2 + 2 * ceil_log2(j_size)


def _worst_case(lo: torch.Tensor, hi: torch.Tensor, j_size: torch.Tensor, q0: torch.Tensor) -> torch.Tensor:
    """Forward passes that galloping and bisection may still need from a search state.

    ``lo`` / ``hi``: largest candidate seen failing / smallest seen succeeding (``-1``:
    none); ``q0``: candidate 0 was tested. From a bracket of width ``w``, bisection takes
    ``ceil(log2 w)``. From one known side at distance ``e`` of the end (``|J| - lo`` or
    ``hi``), galloping ``1, 2, 4, ...`` away takes at most ``m + 1`` tests, ``m = ceil(log2
    e)``, and leaves a bracket of width ``2^(j-1)`` after ``j + 1`` of them: ``2m`` in all,
    or ``m + 1`` (plus a last test of Q0) if every candidate up to Q-infinity fails.
    """
    has_lo, has_hi = lo >= 0, hi >= 0
    bracket = ceil_log2(hi - lo)
    m_up = ceil_log2(j_size - lo)
    up = torch.maximum(2 * m_up, m_up + 1 + (~q0).long())
    m_down = ceil_log2(hi)
    down = torch.maximum(2 * m_down, m_down + 1)
    ended_up = (lo == j_size) & ~has_hi
    out = torch.where(has_lo & has_hi, bracket, torch.where(has_lo, up, down))
    out = torch.where(ended_up, (~q0).long(), out)
    return torch.where(hi == 0, 0, out)


def _crossing(linear: torch.Tensor, shift: torch.Tensor, j_size: torch.Tensor, margin: float) -> torch.Tensor:
    """First candidate where ``linear + shift`` predicts success; ``|J|`` if none does.

    ``linear`` (``(A, n + 1)``, candidates ``0 .. n``) falls along the candidates, so the
    candidates predicted to fail form a prefix and their count (below ``|J|``) is the first
    predicted success. Success is predicted at ``L_Q < 0`` (the winning class changes) for
    ``margin = 0``, at ``L_Q <= margin`` otherwise.
    """
    value = linear[:, :-1] + shift.unsqueeze(1)
    fails = value > margin if margin < 0 else value >= 0
    below_j = torch.arange(value.shape[1], device=value.device).unsqueeze(0) < j_size.unsqueeze(1)
    return (fails & below_j).sum(dim=1)


def _model_guided(
    test: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]],
    linear: torch.Tensor,
    j_size: torch.Tensor,
    margin: float,
    known: torch.Tensor,
    known_success: torch.Tensor,
) -> torch.Tensor:
    """The model-guided search of :func:`lagrangian`; returns the candidate found (``-1``: none).

    ``test(idx, k)`` runs one forward pass on candidate ``k`` of the images ``idx`` and
    returns (adversarial, true L_Q). ``linear[:, k]`` is the first-order model (Eq. 24) at
    candidate ``k``. ``known`` marks images whose Q0 is ``x_a`` itself (digital input, so
    ``J`` is empty); their outcome, ``known_success``, came with the gradient.

    Per image the state is ``lo`` (largest candidate seen failing) and ``hi`` (smallest seen
    succeeding), ``-1`` while unknown; it stops at a boundary (``hi = lo + 1``), at
    ``hi = 0`` or at ``lo = |J|`` (then Q0 is tested if it was not). *Model steps*: the
    model is shifted by the error it made at the last tested candidate (its true L_Q minus
    its prediction), and the candidate where the shifted model first predicts success is
    tested (the one below it if that one is already known to succeed), clamped inside
    ``(lo, hi)``. A model step is taken only if, whatever its outcome, :func:`_worst_case`
    still fits in ``model_guided_bound(|J|)`` minus the passes spent; otherwise the image
    switches for good to *safe steps*: gallop ``1, 2, 4, ...`` candidates away from the
    known side, then bisect. The first test (the model's own prediction) leaves at most
    ``1 + 2 ceil(log2 |J|)``, so the bound holds for every image.
    """
    batch = j_size.shape[0]
    device = j_size.device
    minus_one = torch.full((batch,), -1, dtype=torch.int64, device=device)
    lo, hi = minus_one.clone(), minus_one.clone()
    hi[known & known_success] = 0
    lo[known & ~known_success] = 0
    q0_tested = known.clone()
    budget = model_guided_bound(j_size)
    used = torch.zeros(batch, dtype=torch.int64, device=device)
    safe = torch.zeros(batch, dtype=torch.bool, device=device)
    anchor = torch.zeros(batch, dtype=torch.int64, device=device)
    gallops = torch.zeros(batch, dtype=torch.int64, device=device)
    shift = torch.zeros(batch, dtype=torch.float64, device=device)  # model error at last test

    active = torch.nonzero(~known).flatten()
    while active.numel():
        a_lo, a_hi, a_size, a_q0 = lo[active], hi[active], j_size[active], q0_tested[active]
        # Model step.
        predicted = _crossing(linear[active], shift[active], a_size, margin)
        lower = torch.where(a_lo >= 0, a_lo + 1, 0)
        upper = torch.where(a_hi >= 0, a_hi, a_size)
        predicted = torch.minimum(torch.maximum(predicted, lower), upper)
        candidate = torch.where(predicted == a_hi, predicted - 1, predicted)
        is_zero = candidate == 0
        if_ok = _worst_case(a_lo, candidate, a_size, a_q0 | is_zero)
        if_not = _worst_case(candidate, a_hi, a_size, a_q0 | is_zero)
        fits = 1 + torch.maximum(if_ok, if_not) <= budget[active] - used[active]
        first = used[active] == 0
        # Images that leave the model steps now start galloping from their known side.
        leaving = ~fits & ~first & ~safe[active]
        anchor[active[leaving]] = torch.where(a_lo[leaving] >= 0, a_lo[leaving], a_hi[leaving])
        safe[active[leaving]] = True
        a_safe = safe[active]
        jumps = torch.pow(2, gallops[active])
        safe_candidate = torch.where(
            (a_lo >= 0) & (a_hi >= 0),
            (a_lo + a_hi) // 2,
            torch.where(
                a_lo >= 0,
                torch.minimum(anchor[active] + jumps, a_size),
                (anchor[active] - jumps).clamp(min=0),
            ),
        )
        candidate = torch.where(a_safe, safe_candidate, candidate)
        galloping = a_safe & ((a_lo >= 0) ^ (a_hi >= 0))

        ok, true_loss = test(active, candidate)
        used[active] += 1
        gallops[active[galloping]] += 1
        q0_tested[active[candidate == 0]] = True
        hi[active[ok]] = candidate[ok]
        lo[active[~ok]] = candidate[~ok]
        at = linear[active].gather(1, candidate.unsqueeze(1)).squeeze(1)
        shift[active] = true_loss - at
        a_lo, a_hi = lo[active], hi[active]
        done = ((a_lo >= 0) & (a_hi == a_lo + 1)) | (a_hi == 0) | ((a_lo == a_size) & (a_hi < 0))
        active = active[~done]
    # Even Q-infinity failed: Q0 may still be adversarial on a non-monotone network (the
    # bisection tests it first); one more pass for those images only.
    last = torch.nonzero((hi < 0) & ~q0_tested).flatten()
    if last.numel():
        ok, _ = test(last, torch.zeros_like(last))
        hi[last[ok]] = 0
    return hi
