"""The Square attack (Andriushchenko, Croce, Flammarion & Hein 2020, "Square Attack: a
query-efficient black-box adversarial attack via random search", ECCV).

Score-based: it reads the model's logits and never a gradient, so gradient masking (rounding,
soft quantization, binary weights, a saturated softmax) cannot fool it. It is a random
search that keeps a candidate only when it lowers ``L_A`` (the margin loss by default; the
authors' untargeted loss is the logit margin too).

L-inf (Algorithm 2)
    Start from vertical stripes: every column of every channel moves by ``+eps`` or ``-eps``
    (random). Iteration ``i`` draws a square window of side ``h^(i)`` at a uniformly random
    position and sets the perturbation of the whole window, per channel, to ``+eps`` or
    ``-eps`` (redrawn, up to 20 times, while that would leave the image unchanged).
L2 (Algorithm 3)
    Start from tiles of side ``h / 5``, each the pattern ``eta`` of Eq. 5 with a random sign,
    rescaled to norm ``eps``. Iteration ``i`` draws two windows ``W1``, ``W2`` of side
    ``h^(i)`` and, per channel, moves the mass of the perturbation on ``W1 u W2`` (plus the
    unused budget ``eps^2 - ||nu||^2``, spread over the channels) into ``W1``, as
    ``rho eta* + nu_W1 / ||nu_W1||`` rescaled (``rho`` a random sign, ``eta*`` the
    normalised two-rectangle pattern ``(eta, -eta)``, randomly transposed). The pattern's
    weights are ``sum_{j=dist+1}^{m} 1/j^2`` at Chebyshev distance ``dist`` from the
    rectangle's centre, ``m`` the larger half-side plus one (Eq. 5 written for both sides,
    so that no pixel of a non-square rectangle gets weight 0, as in the authors' code).

Both: the window's area is the fraction ``p`` of the image, ``h^(i) = round(sqrt(p H W))``
(at least 1 for L-inf, at least 3 and odd for L2, at most ``min(H, W) - 1``); ``p`` starts
at ``p_init`` (0.8) and is halved at iterations 10, 50, 200, 500, 1000, 2000, 4000, 6000 and
8000 of a 10,000-query budget (Sec. 3 of the paper), rescaled to the budget given (as in
AutoAttack). Every candidate is clipped to the eps-ball and to [0, 1].

On the shared loop (:mod:`quantadv.attacks.engine`): one forward pass per query and image,
judged from the logits of the accepted point (no extra pass), and an image leaves as soon as
its accepted point is adversarial. ``queries`` counts every forward evaluation, the start
included. ``temperature`` scales the logits inside the loss (it changes nothing for the margin
loss, whose sign is the success criterion), ``eot=m`` averages the logits of ``m`` passes
per query (a randomised model), ``restarts`` reruns from a fresh random start on the images
not yet broken, and ``info["pred"]`` is filled in.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .._validate import check_choice, check_int, check_positive
from ..errors import InputError
from .engine import State, info, iterate, make_problem, random_like, restartable
from .gradient import NORMS, project

__all__ = ["square", "square_p"]

#: Iterations (of a 10,000-query budget) at which the paper halves p.
HALVINGS = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)


def square_p(p_init: float, iteration: int, queries: int) -> float:
    """The fraction ``p`` of pixels a Square update changes at ``iteration`` (0-based).

    ``p_init`` halved at each of :data:`HALVINGS` passed, on the schedule of a 10,000-query
    budget rescaled to ``queries``.
    """
    it = int(iteration / max(queries, 1) * 10000)
    return p_init / 2 ** sum(it > h for h in HALVINGS)


def _randint(high: int, n: int, generator, device) -> torch.Tensor:
    """``n`` integers uniform in ``[0, high]``, drawn on the generator's device."""
    gen_device = generator.device if generator is not None else device
    return torch.randint(0, high + 1, (n,), generator=generator, device=gen_device).to(device)


def _signs(shape: tuple[int, ...], generator, like: torch.Tensor) -> torch.Tensor:
    """Random signs +-1 of ``shape``, dtype and device of ``like``."""
    u = random_like(torch.empty(shape, dtype=like.dtype, device=like.device), generator)
    return torch.where(u < 0.5, -1.0, 1.0).to(like.dtype)


def _window_mask(top: torch.Tensor, left: torch.Tensor, side: int, h: int, w: int, like: torch.Tensor) -> torch.Tensor:
    """Boolean masks (N, 1, H, W) of the ``side x side`` windows at per-image ``(top, left)``."""
    rows = torch.arange(h, device=like.device).view(1, h)
    cols = torch.arange(w, device=like.device).view(1, w)
    in_r = (rows >= top.view(-1, 1)) & (rows < top.view(-1, 1) + side)
    in_c = (cols >= left.view(-1, 1)) & (cols < left.view(-1, 1) + side)
    return (in_r.unsqueeze(2) & in_c.unsqueeze(1)).unsqueeze(1)


def eta_rectangle(h1: int, h2: int, dtype=torch.float32, device=None) -> torch.Tensor:
    """The ``h1 x h2`` pattern of Eq. 5 (paper): ``sum_{j=dist+1}^{m} 1/j^2`` per pixel.

    ``dist`` is the Chebyshev distance of the pixel to the centre ``(h1 // 2, h2 // 2)`` and
    ``m = max(h1, h2) // 2 + 1``: nested rectangles, heaviest at the centre.
    """
    r = torch.arange(h1, device=device).view(-1, 1)
    s = torch.arange(h2, device=device).view(1, -1)
    dist = torch.maximum((r - h1 // 2).abs(), (s - h2 // 2).abs())
    m = max(h1, h2) // 2 + 1
    tail = torch.tensor([sum(1.0 / j**2 for j in range(k + 1, m + 1)) for k in range(m + 1)],
                        dtype=torch.float64, device=device)
    return tail[dist.clamp(max=m)].to(dtype)


def _pattern(side: int, dtype, device) -> torch.Tensor:
    """``eta*``: ``(eta(side//2, side), -eta(side - side//2, side))`` stacked, unit L2 norm."""
    top = eta_rectangle(side // 2, side, torch.float64, device)
    bottom = -eta_rectangle(side - side // 2, side, torch.float64, device)
    eta = torch.cat([top, bottom], dim=0)
    return (eta / eta.norm()).to(dtype)


def _place(pattern: torch.Tensor, top: torch.Tensor, left: torch.Tensor, transpose: torch.Tensor,
           h: int, w: int) -> torch.Tensor:
    """Per image, the ``side x side`` pattern (transposed where asked) at ``(top, left)``, 0 elsewhere.

    Returns (N, 1, H, W).
    """
    side = pattern.shape[0]
    both = torch.stack([pattern, pattern.T])[transpose.long()]  # (N, side, side)
    rr = torch.arange(h, device=pattern.device).view(1, h) - top.view(-1, 1)  # (N, H)
    cc = torch.arange(w, device=pattern.device).view(1, w) - left.view(-1, 1)  # (N, W)
    inside = ((rr >= 0) & (rr < side)).unsqueeze(2) & ((cc >= 0) & (cc < side)).unsqueeze(1)
    n = both.shape[0]
    rows = rr.clamp(0, side - 1).unsqueeze(2).expand(n, h, w)
    cols = cc.clamp(0, side - 1).unsqueeze(1).expand(n, h, w)
    flat = both.flatten(1).gather(1, (rows * side + cols).flatten(1)).view(n, h, w)
    return (flat * inside).unsqueeze(1)


def _start(x: torch.Tensor, norm: str, eps: float, generator) -> torch.Tensor:
    n, c, h, w = x.shape
    if norm == "linf":
        return (x + eps * _signs((n, c, 1, w), generator, x)).clamp(0.0, 1.0)
    side = max(h // 5, 1)
    pattern = _pattern(side, x.dtype, x.device) if side >= 2 else torch.ones(1, 1, dtype=x.dtype, device=x.device)
    delta = torch.zeros_like(x)
    r0, c0 = (h - side * (h // side)) // 2, (w - side * (w // side)) // 2
    for r in range(r0, r0 + side * (h // side), side):
        for col in range(c0, c0 + side * (w // side), side):
            flip = random_like(torch.empty(n, dtype=x.dtype, device=x.device), generator) < 0.5
            tile = torch.where(flip.view(n, 1, 1), pattern.T.unsqueeze(0), pattern.unsqueeze(0))  # (N, s, s)
            delta[:, :, r : r + side, col : col + side] = tile.unsqueeze(1) * _signs((n, c, 1, 1), generator, x)
    norms = delta.flatten(1).norm(dim=1).clamp_min(1e-12).view(n, 1, 1, 1)
    return (x + eps * delta / norms).clamp(0.0, 1.0)


def _propose_linf(x_best, x_orig, eps, side, generator):
    n, c, h, w = x_best.shape
    top = _randint(h - side, n, generator, x_best.device)
    left = _randint(w - side, n, generator, x_best.device)
    mask = _window_mask(top, left, side, h, w, x_best)
    signs = _signs((n, c, 1, 1), generator, x_best)
    cand = torch.where(mask, (x_orig + eps * signs).clamp(0.0, 1.0), x_best)
    for _ in range(20):  # redraw the signs of the windows that would not change the image
        same = ((cand - x_best).abs() < 1e-7).flatten(1).all(dim=1)
        if not bool(same.any()):
            break
        signs = torch.where(same.view(n, 1, 1, 1), _signs((n, c, 1, 1), generator, x_best), signs)
        cand = torch.where(mask, (x_orig + eps * signs).clamp(0.0, 1.0), x_best)
    return cand


def _propose_l2(x_best, x_orig, eps, side, generator):
    n, c, h, w = x_best.shape
    dev = x_best.device
    nu = x_best - x_orig
    top1, left1 = _randint(h - side, n, generator, dev), _randint(w - side, n, generator, dev)
    top2, left2 = _randint(h - side, n, generator, dev), _randint(w - side, n, generator, dev)
    m1 = _window_mask(top1, left1, side, h, w, x_best).to(x_best.dtype)
    m2 = _window_mask(top2, left2, side, h, w, x_best).to(x_best.dtype)
    union = torch.maximum(m1, m2)
    transpose = random_like(torch.empty(n, dtype=x_best.dtype, device=dev), generator) < 0.5
    eta = _place(_pattern(side, x_best.dtype, dev), top1, left1, transpose, h, w)  # (N, 1, H, W), unit norm
    unused = (eps**2 - nu.flatten(1).pow(2).sum(dim=1)).clamp_min(0.0).view(n, 1, 1, 1)
    norm1 = (nu * m1).pow(2).sum(dim=(2, 3), keepdim=True).sqrt()
    temp = _signs((n, c, 1, 1), generator, x_best) * eta + nu * m1 / (norm1 + 1e-12)
    avail = ((nu * union).pow(2).sum(dim=(2, 3), keepdim=True) + unused / c).sqrt()
    temp_norm = temp.pow(2).sum(dim=(2, 3), keepdim=True).sqrt().clamp_min(1e-12)
    nu_new = nu * (1 - union) + temp / temp_norm * avail
    return project(x_orig + nu_new, x_orig, "l2", eps)


def _square_step(norm: str, eps: float, queries: int, p_init: float, generator):
    def run(problem, idx, state: State, i: int):
        adv = problem.adversarial(state["logits"], idx)  # the accepted point, judged when accepted
        if i == queries - 1 or bool(adv.all()):
            return adv, state
        work = (~adv).nonzero().flatten()
        x_best, x_orig = state["x"][work], problem.x_orig[idx[work]]
        _, _, h, w = x_best.shape
        p = square_p(p_init, i, queries)
        side = int(round(math.sqrt(p * h * w)))
        if norm == "linf":
            side = min(max(side, 1), min(h, w) - 1)
            cand = _propose_linf(x_best, x_orig, eps, side, generator)
        else:
            side = max(side, 3)
            side = min(side + (side % 2 == 0), min(h, w) - 1)
            cand = _propose_l2(x_best, x_orig, eps, side, generator)
        loss, logits = problem.scores(cand, idx[work])
        better = loss < state["loss"][work]
        rows = work[better]
        new = {k: v.clone() for k, v in state.items()}
        new["x"][rows] = cand[better]
        new["loss"][rows] = loss[better]
        new["logits"][rows] = logits[better]
        return adv, new

    return run


@restartable
def square(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    norm: str = "linf",
    eps: float,
    queries: int = 5000,
    p_init: float = 0.8,
    loss: str = "margin",
    targets: torch.Tensor | None = None,
    temperature: float | torch.Tensor = 1.0,
    eot: int = 1,
    restarts: int = 1,
    seed: int | None = None,
    generator: torch.Generator | None = None,
    return_info: bool = False,
):
    """Square attack (Andriushchenko et al. 2020, Algorithms 2 and 3): score-based random search.

    Parameters
    ----------
    model : nn.Module returning logits; images : float NCHW in [0, 1]; labels : int64 (N,).
    norm : ``"linf"`` or ``"l2"``.
    eps : radius of the ball, in [0, 1] units.
    queries : forward evaluations per image (the random start included); AutoAttack: 5000.
    p_init : the initial fraction of pixels a square covers (0.8, the paper's L-inf and L2
        ImageNet value, AutoAttack's default).
    loss : ``L_A`` the search lowers: ``"margin"`` (default), ``"ce"`` or ``"dlr"``.
    targets : int64 (N,) target classes for a targeted attack.
    temperature, eot : see :mod:`quantadv.attacks.engine` (no gradient is ever taken).
    restarts : fresh random starts on the images not yet broken.
    seed, generator : all the randomness (start, windows, signs) is drawn from them.
    return_info : also return ``success``, ``calls`` (forward passes), ``grads`` (always 0)
        and ``pred`` per image (and ``restart`` with ``restarts > 1``).

    Returns
    -------
    The adversarial images (per image the first accepted adversarial point, else the point
    of lowest loss found), or ``(images, info)``.
    """
    check_choice(norm, "norm", NORMS)
    eps = check_positive(eps, "eps", allow_zero=True)
    queries = check_int(queries, "queries", minimum=1)
    p_init = check_positive(p_init, "p_init")
    if not p_init <= 1:
        raise InputError(f"p_init is a fraction of the image's pixels, in (0, 1]; got {p_init}")
    problem = make_problem(model, images, labels, targets, loss, temperature=temperature, eot=eot)
    _, _, h, w = problem.x_orig.shape
    if min(h, w) < 2 or (norm == "l2" and min(h, w) < 4):
        raise InputError(f"the Square attack needs images of at least {2 if norm == 'linf' else 4} pixels a side, "
                         f"got {h}x{w}")
    x0 = _start(problem.x_orig, norm, eps, generator)
    all_idx = torch.arange(problem.size, device=images.device)
    loss0, logits0 = problem.scores(x0, all_idx)
    state = {"x": x0, "loss": loss0, "logits": logits0}
    out = iterate(problem, state, _square_step(norm, eps, queries, p_init, generator), steps=queries,
                  early_stop=True, keep="last", final_check=False)
    x_adv = out.x.detach().clone()
    if not return_info:
        return x_adv
    out.pred = problem.pred.clone()
    return x_adv, info(problem, out)
