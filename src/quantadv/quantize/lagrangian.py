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
      network; each later step corrects the model by the errors the forward passes revealed
      (its error at the last tested candidate; once a failing and a succeeding candidate are
      known, their two errors interpolated between them) and tests where the corrected model
      crosses, inside the bracket known so far. Each step is moved to the nearest candidate
      from which the search can still end, whatever the outcomes, within paper 000's bound of
      ``2 + ceil(log2 |J|)`` forward passes (:func:`bisection_bound`; the worst case left is
      counted exactly by :func:`_need`): when the model is wrong the steps turn into bisection
      steps in time, so no image ever costs more network calls than the paper's search, and
      the search always ends. If even Q-infinity fails, Q0 is tried before giving up. When
      ``x_a`` is already digital, the gradient's forward pass was at ``x_q`` itself and no
      other pass is made. On DDN outputs of ``fmnist-cnn`` this makes about 3.1 forward
      passes per image instead of about 9.4 (docs/quantization.md).
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

    linear, known = None, None
    if search == "model":
        # Eq. 24 at every candidate: L_Q(0) + g^T q_k, with q_k = x_q(k) - x_a in pixel units;
        # switching the i-th sorted pixel of J changes it by g (e_inf - e_zero) < 0.
        adv = _rule.pixel_values(x_adv, parts)
        at_q0 = loss_at_adv + (g * (parts.origin + e_zero - adv)).sum(dim=1)
        steps = (g * (e_inf - e_zero)).gather(1, order)
        linear = torch.cat([at_q0.unsqueeze(1), at_q0.unsqueeze(1) + steps.cumsum(dim=1)], dim=1)
        # A digital x_a is its own quantization: the gradient's forward pass already tested it.
        known = (q_zero == x_adv.flatten(1)).all(dim=1)
    hi = search_candidates(
        test, linear, j_size, margin_value, search=search, known=known, known_success=success_at_adv
    )

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


def search_candidates(
    test: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]],
    linear: torch.Tensor | None,
    j_size: torch.Tensor,
    margin: float,
    *,
    search: str = "model",
    known: torch.Tensor | None = None,
    known_success: torch.Tensor | None = None,
) -> torch.Tensor:
    """The search for ``lambda*`` over the candidates ``k = 0 .. |J|`` (Sec. 4.5), shared by
    :func:`lagrangian` and :func:`quantadv.quantize.lagrangian_jpeg`.

    ``test(idx, k)`` makes one forward pass on candidate ``k`` of the images ``idx`` and returns
    (adversarial, true ``L_Q`` as float64); ``linear[:, k]`` is Eq. 24 at candidate ``k``
    (``(B, max |J| + 1)``; unused by ``search="bisection"``); ``known`` marks images whose
    candidate 0 was already judged (``known_success``). Returns per image the candidate found
    (a tested success whose predecessor was tested and failed, or ``0``), ``-1`` on failure.
    Either search makes at most :func:`bisection_bound` forward passes per image.
    """
    if search == "bisection":
        return _bisection(lambda idx, k: test(idx, k)[0], j_size)
    if linear is None:
        raise InputError("the model-guided search needs Eq. 24 at every candidate (linear)")
    if known is None or known_success is None:
        known = torch.zeros(j_size.shape, dtype=torch.bool, device=j_size.device)
        known_success = known
    return _model_guided(test, linear, j_size, margin, known, known_success)

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


def bisection_bound(j_size: torch.Tensor) -> torch.Tensor:
    """Forward passes of paper 000's search (Sec. 4.5), and at most of ours: ``2 + ceil(log2 |J|)``.

    Q0, Q-infinity, then ``ceil(log2 |J|)`` bisection steps; with the gradient, ``3 + ceil(log2
    |J|)`` network calls per image. The model-guided search never spends more.
    """
    return 2 + ceil_log2(j_size)


def _need(lo: torch.Tensor, hi: torch.Tensor, size: torch.Tensor, q0: torch.Tensor) -> torch.Tensor:
    """Forward passes that a bisection still needs, whatever the outcomes, to end the search.

    State per image: ``lo`` the largest candidate known to fail and ``hi`` the smallest known
    to succeed (``-1``: none), ``q0`` whether candidate 0 was tested, ``size = |J|``. The
    search ends at ``hi = lo + 1`` (a boundary), at ``hi = 0``, or when Q-infinity (``lo =
    |J|``) and Q0 both failed. From a bracket (``hi`` known, ``lo >= -1``): ``ceil(log2 (hi -
    lo))``. From ``lo`` alone: the ``|J| - lo`` candidates above ``lo`` and, when they all
    fail, Q0 if it is still untested and not among them: ``ceil(log2 (|J| - lo + 1 +
    extra))``, ``extra = 1`` for that Q0 (a decision tree of depth ``L`` resolves ``2^L - 1``
    candidates, or ``2^L - 2`` and a last test of Q0). From nothing known, ``ceil(log2 (|J| +
    3))`` (``1`` if ``J`` is empty), at most paper 000's ``2 + ceil(log2 |J|)``. These are the
    exact worst cases over all outcomes (brute-forced in the tests); ``0`` exactly when the
    search has ended.
    """
    bracket = ceil_log2((hi - lo).clamp(min=1))
    extra = ((lo >= 0) & ~q0).long()
    alone = ceil_log2((size - lo + 1 + extra).clamp(min=1))
    # Nothing known: a first failure above 0 leaves Q0 to test, so ceil(log2 (|J| + 3)) (1 if J is empty).
    nothing = torch.where(size == 0, 1, ceil_log2(size + 3))
    alone = torch.where(lo < 0, nothing, alone)
    return torch.where(hi == 0, 0, torch.where(hi > 0, bracket, alone))


def _safe_candidates(
    lo: torch.Tensor, hi: torch.Tensor, size: torch.Tensor, q0: torch.Tensor, left: torch.Tensor, width: int
) -> torch.Tensor:
    """Mask ``(A, width)`` of the candidates worth testing whose test, whatever its outcome,
    leaves a state that :func:`_need` says ends within ``left - 1`` more passes.

    Worth testing: inside the bracket ``(lo, hi)``; above ``lo`` up to Q-infinity while no
    success is known; only Q0 once Q-infinity failed (``lo = |J|``). As long as ``_need`` of
    the state is at most ``left``, the bisection's own next step is in the mask, so it is
    never empty (checked exhaustively for small ``|J|`` by the tests).
    """
    k = torch.arange(width, device=lo.device).unsqueeze(0)
    lo_, hi_, size_, q0_ = lo.unsqueeze(1), hi.unsqueeze(1), size.unsqueeze(1), q0.unsqueeze(1)
    has_hi = hi_ >= 0
    ended_above = (lo_ >= size_) & ~has_hi  # Q-infinity failed: Q0 is the one test left
    inside = (k > lo_) & torch.where(has_hi, k < hi_, k <= size_)
    inside = torch.where(ended_above, (k == 0) & ~q0_, inside)
    # success at k: a bracket (lo, k), or hi = 0
    after_success = torch.where(k == 0, 0, ceil_log2((k - lo_).clamp(min=1)))
    # failure at k: the bracket (k, hi), or lo = k alone (Q0 tested if k = 0)
    lo_f = torch.maximum(lo_, k)
    q0_f = q0_ | (k == 0)
    alone = ceil_log2((size_ - lo_f + 1 + ((lo_f >= 0) & ~q0_f).long()).clamp(min=1))
    after_failure = torch.where(has_hi, ceil_log2((hi_ - k).clamp(min=1)), alone)
    return inside & (torch.maximum(after_success, after_failure) <= left.unsqueeze(1) - 1)


def _crossing(linear: torch.Tensor, shift: torch.Tensor, j_size: torch.Tensor, margin: float) -> torch.Tensor:
    """First candidate where ``linear + shift`` predicts success; ``|J|`` if none does.

    ``linear`` (``(A, n + 1)``, candidates ``0 .. n``) falls along the candidates, so the
    candidates predicted to fail form a prefix and their count (below ``|J|``) is the first
    predicted success. ``shift`` is a number per image or per candidate. Success is predicted
    at ``L_Q < 0`` (the winning class changes) for ``margin = 0``, at ``L_Q <= margin``
    otherwise.
    """
    value = linear[:, :-1] + (shift.unsqueeze(1) if shift.dim() == 1 else shift[:, :-1])
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
    succeeding), ``-1`` while unknown; it stops at a boundary (``hi = lo + 1``), at ``hi =
    0``, or once Q-infinity and Q0 both failed (:func:`_need` is then 0). Each step tests
    where the model, corrected by what the network said, first predicts success: the first
    step uses Eq. 24 as it is; later ones shift it by its error at the tested candidates (the
    error at the bracket's two ends interpolated along the candidates once both are known;
    the last error before that). That candidate is replaced by the nearest one from which,
    whatever the outcome, a bisection still ends within the passes left of paper 000's bound
    ``2 + ceil(log2 |J|)`` (:func:`bisection_bound`, :func:`_safe_candidates`). Every test
    is of an untested candidate inside the bracket, so the state always moves; and since the
    passes left never fall below :func:`_need`, no image ever costs more forward passes than
    the paper's search. The loop is also capped at the largest bound (a guard: an image that
    reached its bound stops there with what it has).
    """
    batch = j_size.shape[0]
    device = j_size.device
    width = linear.shape[1]
    minus_one = torch.full((batch,), -1, dtype=torch.int64, device=device)
    lo, hi = minus_one.clone(), minus_one.clone()
    hi[known & known_success] = 0
    lo[known & ~known_success] = 0
    q0_tested = known.clone()
    budget = bisection_bound(j_size)
    used = torch.zeros(batch, dtype=torch.int64, device=device)
    last_error = torch.zeros(batch, dtype=torch.float64, device=device)  # model error at last test
    error_lo = torch.full((batch,), math.nan, dtype=torch.float64, device=device)  # ... at lo
    error_hi = torch.full((batch,), math.nan, dtype=torch.float64, device=device)  # ... at hi
    cand_axis = torch.arange(width, device=device)

    def searching(idx: torch.Tensor) -> torch.Tensor:
        return idx[(_need(lo[idx], hi[idx], j_size[idx], q0_tested[idx]) > 0) & (used[idx] < budget[idx])]

    active = searching(torch.arange(batch, device=device))
    for _ in range(int(budget.max()) if batch else 0):
        if not active.numel():
            break
        a_lo, a_hi, a_size, a_q0 = lo[active], hi[active], j_size[active], q0_tested[active]
        # The model's candidate: Eq. 24 shifted by its error (interpolated across a bracket).
        both = ~torch.isnan(error_lo[active]) & ~torch.isnan(error_hi[active])
        shift = last_error[active].unsqueeze(1).expand(-1, width)
        if bool(both.any()):
            e_lo, e_hi = error_lo[active], error_hi[active]
            slope = (e_hi - e_lo) / (a_hi - a_lo).clamp(min=1).to(torch.float64)
            offset = (cand_axis.unsqueeze(0) - a_lo.unsqueeze(1)).to(torch.float64)
            between = e_lo.unsqueeze(1) + slope.unsqueeze(1) * offset
            shift = torch.where(both.unsqueeze(1), torch.nan_to_num(between), shift)
        wanted = _crossing(linear[active], shift, a_size, margin)
        # ... replaced by the nearest candidate that keeps the bound (the lower one at a tie).
        safe = _safe_candidates(a_lo, a_hi, a_size, a_q0, budget[active] - used[active], width)
        gap = cand_axis.unsqueeze(0) - wanted.unsqueeze(1)
        distance = 2 * gap.abs() + (gap > 0).long()
        distance = torch.where(safe, distance, torch.iinfo(torch.int64).max)
        candidate = distance.argmin(dim=1)
        stuck = ~safe.any(dim=1)  # never (the invariant above); such an image stops here
        if bool(stuck.any()):
            used[active[stuck]] = budget[active[stuck]]
            active, candidate = active[~stuck], candidate[~stuck]
            if not active.numel():
                break

        ok, true_loss = test(active, candidate)
        used[active] += 1
        q0_tested[active[candidate == 0]] = True
        error = true_loss - linear[active].gather(1, candidate.unsqueeze(1)).squeeze(1)
        last_error[active] = error
        won = active[ok]
        hi[won] = torch.where(hi[won] >= 0, torch.minimum(hi[won], candidate[ok]), candidate[ok])
        error_hi[won] = error[ok]
        lost = active[~ok]
        lo[lost] = torch.maximum(lo[lost], candidate[~ok])
        error_lo[lost] = torch.where(candidate[~ok] >= lo[lost], error[~ok], error_lo[lost])
        active = searching(active)
    return hi
