"""Temperature-scaled attacks FGSM++ and PGD++ (paper 004, Gupta & Ajanthan, Sec. 5).

Binary (and many float) networks are over-confident: ``softmax(a)`` is one-hot to float
precision, the error signal ``psi = p - y`` (Eq. 9) vanishes and with it the input gradient
``psi J`` (Eq. 6): PGD stalls and the network *looks* robust. PGD++ computes the loss on
``beta * logits`` (Eq. 7): the prediction (argmax) is unchanged for every ``beta > 0``, but
the gradient ``beta psi(beta) J`` (Eq. 8) comes back. Two ways to choose ``beta``:

NJS (network Jacobian scaling, Sec. 5.1, Algorithm 1)
    ``beta1 = M d / sum_i sum_j mu_j(J_i)`` (Eq. 10) over ``M`` correctly classified images
    (:func:`njs_temperature`, cached by the weights' sha256 and the images), so that the
    singular values of ``beta1 J`` have mean 1; then, **per image and per step**, if
    ``1 - p_k(beta1) <= rho`` (``k`` the true class) the temperature becomes
    ``beta1 * beta2`` with ``beta2`` of Proposition 1 (:func:`prop1_temperature`), computed
    from the logits of the step's own forward pass (no extra network call).
HNS (Hessian norm scaling, Sec. 5.2, Algorithm 2, App. B.1)
    Per image, once, at the original image: a grid of 100 equally spaced ``beta`` between the
    Prop. 1 values for ``rho = 1 - 1/d - 0.01`` and ``rho = 1e-72`` maximising the Frobenius
    norm of the input Hessian ``beta^2 J^T S(beta) J`` (Eq. 11, ``S`` the softmax Jacobian).
    The grid reuses one Jacobian through the ``d x d`` Gram matrix ``G = J J^T``:
    ``||J^T S J||_F^2 = tr(S G S G)``. ``beta = 1`` when the maximum is at the grid's edge.
    Eq. 11's other term, ``psi dJ/dx``, is zero for piecewise-linear networks (ReLU,
    max-pool, and the straight-through binary activations), i.e. for every model here; for
    smooth networks this is the Gauss-Newton part of the Hessian.

Both run on the shared attack loop (:mod:`quantadv.attacks.engine`): HNS is PGD with a
per-image temperature; NJS is PGD's projected step with the loss taken on the per-step
temperature. Success is always judged on the unscaled logits.
"""

from __future__ import annotations

import hashlib
import math
from collections import OrderedDict

import torch
from torch import nn

from .._jacobian import input_jacobian, jacobian_singular_values, weights_sha256
from .._validate import check_choice, check_images, check_int, check_labels, check_positive
from ..errors import InputError
from .engine import info, iterate, make_problem, restartable
from .gradient import NORMS, _l2_normalize, _projected_step, _random_start, project
from .losses import attack_loss

__all__ = [
    "fgsm_pp", "hessian_norms", "hns_from_jacobian", "hns_temperature", "njs_temperature", "pgd_pp",
    "prop1_temperature",
]

SCALINGS = ("njs", "hns")

#: Prop. 1 values of rho bounding HNS's grid (App. B.1): 1e-72 and 1 - 1/d - 1e-2.
HNS_RHO_SMALL = 1e-72
HNS_RHO_MARGIN = 1e-2

_NJS_CACHE: OrderedDict[tuple[str, str, int], float] = OrderedDict()
_NJS_CACHE_SIZE = 64


def _prop1_bound(rho: float | torch.Tensor, d: int, gamma: torch.Tensor) -> torch.Tensor:
    """``-log(rho / ((d - 1)(1 - rho))) / gamma`` in float64 (Prop. 1 of paper 004)."""
    rho64 = torch.as_tensor(rho, dtype=torch.float64, device=gamma.device)
    c = -(torch.log(rho64) - math.log(d - 1) - torch.log1p(-rho64))
    return c / gamma.to(torch.float64).clamp_min(1e-30)


def prop1_temperature(logits: torch.Tensor, rho: float = 0.01) -> torch.Tensor:
    """Proposition 1 of paper 004: a per-row ``beta`` with ``1 - softmax(beta a)_1 > rho``.

    ``gamma = max(a) - min(a)`` per row; returns ``0.999 * (-log(rho / ((d-1)(1-rho))) /
    gamma)``: the proposition holds for every ``beta`` strictly below its bound, so the value
    is taken a hair (0.1%) below it, which keeps ``1 - p_1 > rho`` strict in float32 too.
    Rows with all logits equal (``gamma = 0``) get ``inf`` clipped to 1e30 (any beta works).
    """
    d = logits.shape[1]
    if d < 2:
        raise InputError("Proposition 1 needs at least 2 classes")
    if not 0 < rho < (d - 1) / d:
        raise InputError(f"rho must lie in (0, (d-1)/d) = (0, {(d - 1) / d:.4f}) for d={d} classes, got {rho}")
    gamma = logits.amax(dim=1) - logits.amin(dim=1)
    beta = 0.999 * _prop1_bound(rho, d, gamma.detach())
    return beta.clamp(max=1e30).to(logits.dtype)


def _one_minus_pk(scaled: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``1 - softmax(scaled)_k`` computed without cancellation: ``sum_{j != k} p_j``."""
    others = scaled.scatter(1, labels.unsqueeze(1), float("-inf"))
    return torch.exp(torch.logsumexp(others, dim=1) - torch.logsumexp(scaled, dim=1))


def _images_digest(x: torch.Tensor) -> str:
    t = x.detach().cpu().contiguous()
    head = f"{t.dtype}|{tuple(t.shape)}|".encode()
    return hashlib.sha256(head + t.reshape(-1).view(torch.uint8).numpy().tobytes()).hexdigest()


def njs_temperature(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor | None = None,
    *,
    samples: int = 100,
) -> float:
    """``beta1`` of Eq. 10 (paper 004): ``M d / sum of the Jacobian singular values``.

    Computed on the first ``samples`` (M, default 100) of ``images`` that the model
    classifies correctly when ``labels`` are given (all images are candidates otherwise;
    if none is correct, the first ``samples`` images are used). The mean singular value of
    ``beta1 J`` over these images is then exactly 1. Cached by (sha256 of the weights,
    sha256 of the images used, M), so repeated attacks on one model pay for the Jacobian
    once.
    """
    check_images(images)
    samples = check_int(samples, "samples", minimum=1)
    x = images
    if labels is not None:
        labels = check_labels(labels, images.shape[0]).to(images.device)
        with torch.no_grad():
            correct = torch.cat([model(images[i : i + 500]).argmax(1) == labels[i : i + 500]
                                 for i in range(0, images.shape[0], 500)])
        if bool(correct.any()):
            x = images[correct]
    x = x[:samples].detach()
    key = (weights_sha256(model), _images_digest(x), samples)
    if key in _NJS_CACHE:
        _NJS_CACHE.move_to_end(key)
        return _NJS_CACHE[key]
    sv = jacobian_singular_values(model, x)
    total = float(sv.to(torch.float64).sum())
    if not total > 0:
        raise InputError("the model's input-output Jacobian is zero on every sample: NJS cannot scale it "
                         "(the network's output does not depend on its input; no gradient attack can work)")
    beta = sv.numel() / total
    _NJS_CACHE[key] = beta
    if len(_NJS_CACHE) > _NJS_CACHE_SIZE:
        _NJS_CACHE.popitem(last=False)
    return beta


def hessian_norms(logits: torch.Tensor, gram: torch.Tensor, betas: torch.Tensor) -> torch.Tensor:
    """``||beta^2 J^T S(beta) J||_F`` for each row's betas (Eq. 11, Gauss-Newton term).

    ``logits`` (N, d), ``gram = J J^T`` (N, d, d), ``betas`` (N, K) -> (N, K). ``S(beta) =
    diag(p) - p p^T`` with ``p = softmax(beta a)`` is the Hessian of the cross-entropy with
    respect to the scaled logits; ``||J^T S J||_F^2 = tr(S G S G)``. Computed in float64.
    """
    a = logits.to(torch.float64)
    g = gram.to(torch.float64)
    b = betas.to(torch.float64)
    p = torch.softmax(b.unsqueeze(-1) * a.unsqueeze(1), dim=-1)  # (N, K, d)
    s = torch.diag_embed(p) - p.unsqueeze(-1) * p.unsqueeze(-2)
    sg = s @ g.unsqueeze(1)  # (N, K, d, d)
    tr = torch.einsum("nkij,nkji->nk", sg, sg).clamp_min(0)
    return b * b * tr.sqrt()


def hns_temperature(
    model: nn.Module,
    images: torch.Tensor,
    *,
    grid: int = 100,
    return_grid: bool = False,
):
    """Per-image ``beta`` of HNS (paper 004, Sec. 5.2, App. B.1), a tensor (N,).

    One Jacobian per image (one forward, one batched backward); the grid of ``grid`` betas
    runs between Prop. 1's values for ``rho = 1 - 1/d - 0.01`` (small beta) and
    ``rho = 1e-72`` (large beta), ``gamma = max - min`` of the image's logits; ``beta = 1``
    where the maximum lies on the grid's first or last point. ``return_grid=True`` also
    returns ``(betas (N, grid), norms (N, grid))``.
    """
    grid = check_int(grid, "grid", minimum=3)
    jac, logits = input_jacobian(model, images)
    beta, betas, norms = hns_from_jacobian(jac, logits, grid=grid)
    beta = beta.to(images.dtype)
    return (beta, (betas, norms)) if return_grid else beta


def hns_from_jacobian(jac: torch.Tensor, logits: torch.Tensor, *, grid: int = 100):
    """HNS's grid search from a precomputed Jacobian ``(N, d, n)`` and logits ``(N, d)``.

    Returns ``(beta (N,), betas (N, grid), norms (N, grid))``; see :func:`hns_temperature`.
    """
    d = logits.shape[1]
    gram = jac.to(torch.float64) @ jac.to(torch.float64).transpose(1, 2)
    gamma = (logits.amax(dim=1) - logits.amin(dim=1)).to(torch.float64)
    lo = _prop1_bound(1.0 - 1.0 / d - HNS_RHO_MARGIN, d, gamma)
    hi = _prop1_bound(HNS_RHO_SMALL, d, gamma)
    t = torch.linspace(0, 1, grid, dtype=torch.float64, device=logits.device)
    betas = lo.unsqueeze(1) + (hi - lo).unsqueeze(1) * t
    norms = hessian_norms(logits, gram, betas)
    best = norms.argmax(dim=1)
    beta = betas.gather(1, best.unsqueeze(1)).squeeze(1)
    edge = (best == 0) | (best == grid - 1) | ~torch.isfinite(beta)
    beta = torch.where(edge, torch.ones_like(beta), beta).to(logits.dtype)
    return beta, betas, norms


def _njs_step(norm: str, eps: float, step: float, beta1: float, rho: float, recorder: _Recorder, used: dict):
    """PGD's projected step with Algorithm 1's temperature, from the step's own logits."""

    def run(problem, idx, state, iteration):
        labels = problem.labels[idx]
        targets = None if problem.targets is None else problem.targets[idx]

        def objective(xg, _unscaled_loss):
            logits = recorder.last
            with torch.no_grad():
                scaled = beta1 * logits.detach()
                beta = torch.full_like(labels, 1.0, dtype=logits.dtype)
                if rho > 0:
                    saturated = _one_minus_pk(scaled, labels) <= rho
                    beta = torch.where(saturated, prop1_temperature(scaled, rho), beta)
                beta = beta1 * beta
                used["beta"][idx] = beta
            return attack_loss(logits * beta.view(-1, 1), labels, targets, problem.loss_name)

        x = state["x"]
        _, grad, logits = problem.loss_and_grad(x, idx, extra=objective)
        direction = grad.sign() if norm == "linf" else _l2_normalize(grad)
        x_new = project(x - step * direction, problem.x_orig[idx], norm, eps)
        return problem.adversarial(logits, idx), {"x": x_new}

    return run


class _Recorder(nn.Module):
    """Wraps a model and keeps its last output (so a step can read the logits it produced)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.inner = model
        self.last: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.inner(x)
        self.last = out
        return out


def _shared_beta1(arguments: dict) -> None:
    """Before PGD++'s restarts: one NJS ``beta1`` (Eq. 10, on all the images) for every restart."""
    if arguments["scaling"] == "njs" and arguments["beta1"] is None and arguments["temperature"] is None:
        arguments["beta1"] = njs_temperature(arguments["model"], arguments["images"], arguments["labels"],
                                             samples=arguments["samples"])


@restartable(before_restarts=_shared_beta1)
def pgd_pp(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    norm: str = "linf",
    eps: float,
    step: float,
    steps: int,
    scaling: str = "njs",
    rho: float = 0.01,
    random_start: bool = True,
    samples: int = 100,
    beta1: float | None = None,
    temperature: float | torch.Tensor | None = None,
    grid: int = 100,
    early_stop: bool = False,
    loss: str = "ce",
    targets: torch.Tensor | None = None,
    eot: int = 1,
    restarts: int = 1,
    seed: int | None = None,
    generator: torch.Generator | None = None,
    return_info: bool = False,
):
    """PGD++: PGD on the temperature-scaled loss (paper 004, Algorithms 1 and 2).

    Parameters
    ----------
    model, images, labels, norm, eps, step, steps, early_stop, loss, targets, eot, restarts,
    seed, generator, return_info :
        As for :func:`~quantadv.attacks.pgd` (budgets in [0, 1] units); ``random_start``
        defaults to True here, as in the paper ("we always use this random initialization").
    scaling : ``"njs"`` (Algorithm 1) or ``"hns"`` (Algorithm 2); see the module docstring.
    rho : NJS's threshold on ``1 - p_k`` (0.01 in the paper; 0 disables ``beta2``).
    samples : M, the number of correctly classified images of ``images`` Eq. 10 averages
        over (NJS; the first ones in the batch).
    beta1 : fix NJS's ``beta1`` instead of computing it (e.g. once per model for a whole
        test set, with :func:`njs_temperature`).
    temperature : fix ``beta`` (a float or one per image) and skip NJS/HNS; with
        ``temperature=1.0`` PGD++ *is* :func:`~quantadv.attacks.pgd` (bit for bit, same seed).
    grid : number of HNS grid points (100 in App. B.1).

    Returns
    -------
    The adversarial images, or ``(images, info)``; ``info`` adds ``temperature`` (per image:
    HNS's beta, or NJS's ``beta1 * beta2`` at the image's last step) to PGD's keys.
    """
    check_choice(norm, "norm", NORMS)
    check_choice(scaling, "scaling", SCALINGS)
    eps = check_positive(eps, "eps", allow_zero=True)
    step = check_positive(step, "step", allow_zero=True)
    steps = check_int(steps, "steps", minimum=1)
    try:
        rho = float(rho)
    except (TypeError, ValueError):
        raise InputError(f"rho must be a number in [0, 1), got {rho!r}") from None
    if not 0 <= rho < 1:
        raise InputError(f"rho is the lower bound on 1 - p_k of Algorithm 1, in [0, 1); got {rho}")
    problem = make_problem(model, images, labels, targets, loss, eot=eot)
    n = problem.size
    used = {"beta": torch.ones(n, dtype=images.dtype, device=images.device)}
    if temperature is not None or scaling == "hns":
        if temperature is None:
            temperature = hns_temperature(model, problem.x_orig, grid=grid)
        problem = make_problem(model, images, labels, targets, loss, temperature=temperature, eot=eot)
        t = problem.temperature
        used["beta"] = t.clone() if isinstance(t, torch.Tensor) else torch.full_like(used["beta"], float(t))
        step_fn = _projected_step(norm, eps, step)
    else:
        if beta1 is None:
            beta1 = njs_temperature(model, problem.x_orig, problem.labels, samples=samples)
        beta1 = check_positive(beta1, "beta1")
        recorder = _Recorder(model)
        problem = make_problem(recorder, images, labels, targets, loss, eot=eot)
        used["beta"].fill_(beta1)
        step_fn = _njs_step(norm, eps, step, float(beta1), rho, recorder, used)
    x0 = problem.x_orig.clone()
    if random_start:
        x0 = _random_start(x0, norm, eps, generator)
    out = iterate(problem, {"x": x0}, step_fn, steps=steps, early_stop=early_stop, keep="last",
                  final_check=return_info)
    x_adv = out.x.detach().clone()
    if not return_info:
        return x_adv
    result = info(problem, out)
    result["temperature"] = used["beta"].detach().clone()
    return x_adv, result


def fgsm_pp(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    eps: float,
    scaling: str = "njs",
    rho: float = 0.01,
    random_start: bool = False,
    samples: int = 100,
    beta1: float | None = None,
    temperature: float | torch.Tensor | None = None,
    grid: int = 100,
    loss: str = "ce",
    targets: torch.Tensor | None = None,
    eot: int = 1,
    seed: int | None = None,
    generator: torch.Generator | None = None,
    return_info: bool = False,
):
    """FGSM++ (paper 004, Sec. 5 and Table 3): one L-inf step of size ``eps`` on the scaled loss.

    :func:`pgd_pp` with ``norm="linf", step=eps, steps=1``. ``random_start`` defaults to
    False, like :func:`~quantadv.attacks.fgsm` (the paper's FGSM has ``eta = eps`` and no
    projection; a random start inside the ball would make the ``eps`` step leave it).
    """
    eps = check_positive(eps, "eps", allow_zero=True)
    return pgd_pp(model, images, labels, norm="linf", eps=eps, step=eps, steps=1, scaling=scaling, rho=rho,
                  random_start=random_start, samples=samples, beta1=beta1, temperature=temperature, grid=grid,
                  loss=loss, targets=targets, eot=eot, seed=seed, generator=generator, return_info=return_info)
