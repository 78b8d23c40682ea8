"""Gradient-masking checks of paper 004, Sec. 3.1 (after Athalye, Carlini & Wagner 2018).

Each check runs real attacks on the given images and returns a :class:`Check` that PASSes
or FLAGs with the numbers behind the verdict. Accuracies are fractions of *all* given
images still classified correctly after the attack (robust accuracy); ``tol`` (default 2
percentage points) absorbs noise.

``iterations``
    PGD with ``steps // 4``, ``steps`` and ``5 * steps`` iterations. FLAG when the
    accuracy still falls by more than ``tol`` from ``steps`` to ``5 * steps`` (the attack
    at the usual budget has not converged: the robustness it reports is the attack's
    weakness) or rises with more iterations.
``radius``
    PGD at ``eps * [1, 2, 4]`` and at ``eps_max`` (1.0 for L-inf, where every image in
    [0, 1] is reachable). FLAG when accuracy at ``eps_max`` is above ``tol`` (an unbounded
    attack must reach 0%) or accuracy rises with the radius.
``transfer``
    PGD on a float surrogate, evaluated on the model, vs white-box PGD. FLAG when the
    black-box transfer attack is stronger than the white-box one.
``one-step``
    FGSM vs PGD. FLAG when the single step is stronger than the iterative attack.
``temperature``
    PGD vs PGD++ (NJS and HNS, paper 004). FLAG when temperature scaling alone -- which
    cannot change any prediction -- breaks more than ``tol`` more images: the gradients
    PGD saw were vanishing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn

from .._validate import check_choice, check_images, check_labels
from .jacobian import JacobianStats, input_jacobian, jacobian_stats

__all__ = ["Check", "margin_shares", "masking_checks", "signal_report"]

CHECKS = ("iterations", "radius", "transfer", "one-step", "temperature")

#: float32 softmax: above a logit margin of 24 ln 2 ~ 16.6 the runner-up's ``e^-m`` is below half an
#: ulp of 1, so ``p_y`` rounds to exactly 1 and the true-class term of ``psi = p - y`` is 0 (the CE
#: gradient loses ``-grad z_y``; a clipped-probability CE has no gradient at all); above
#: 126 ln 2 ~ 87.3 ``e^-m`` is subnormal and soon 0, so even ``log_softmax``'s gradient vanishes.
#: (The margin here is to the runner-up: with several close classes the rounding starts a little later.)
MARGIN_ROUNDS = 24 * math.log(2)
MARGIN_UNDERFLOWS = 126 * math.log(2)


def margin_shares(margins: torch.Tensor) -> dict[str, float]:
    """How saturated a softmax is (paper 004's over-confidence, in float32 terms): the median clean
    logit margin (true logit minus the largest other) and the fractions of ``margins`` above
    :data:`MARGIN_ROUNDS` (``p_y`` rounds to 1) and :data:`MARGIN_UNDERFLOWS` (the other ``p_j``
    underflow). ``margins`` are those of correctly classified images (``signal_report``'s
    ``values["margin"]``)."""
    m = margins.detach().to(torch.float64).flatten()
    if m.numel() == 0:
        return {"images": 0, "median": math.nan, "rounds": math.nan, "underflows": math.nan}
    return {"images": int(m.numel()), "median": float(m.median()),
            "rounds": float((m > MARGIN_ROUNDS).double().mean()),
            "underflows": float((m > MARGIN_UNDERFLOWS).double().mean())}


@dataclass
class Check:
    """One masking check: its name, the verdict and the evidence."""

    name: str
    passed: bool
    evidence: str
    values: dict[str, float] = field(default_factory=dict)

    @property
    def verdict(self) -> str:
        return "PASS" if self.passed else "FLAG"

    def __str__(self) -> str:
        return f"{self.verdict}  {self.name:<12} {self.evidence}"


@torch.no_grad()
def _accuracy(model: nn.Module, x: torch.Tensor, labels: torch.Tensor) -> float:
    pred = torch.cat([model(x[i : i + 500]).argmax(1) for i in range(0, x.shape[0], 500)])
    return float((pred == labels).to(torch.float64).mean())


def _pct(v: float) -> str:
    return f"{100 * v:.1f}%"


def signal_report(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    samples: int = 500,
    grid: int = 100,
    chunk: int = 500,
    per_image: bool = False,
) -> list[JacobianStats] | tuple[list[JacobianStats], dict]:
    """Table 1 / Table 7 of paper 004 on the first ``samples`` correctly classified images.

    Rows: the original network (``beta = 1``), NJS (``beta1`` of Eq. 10 from these images;
    without Prop. 1's per-step ``beta2``, as in Table 7) and HNS (per-image beta, App. B.1).
    One Jacobian serves all three rows; HNS's grid search runs ``chunk`` images at a time
    (its ``(N, grid, d, d)`` intermediates stay small for a whole test set).

    With ``per_image=True`` returns ``(rows, values)``: ``values`` holds per-image tensors
    over the images used: ``index`` (position in ``images``), ``label``, ``margin`` (true
    logit minus the largest other), ``beta_hns``, and for each of ``orig``, ``njs``, ``hns``
    the ``psi_norm``, ``grad_norm`` and ``zero_fraction`` of
    :func:`~quantadv.diagnostics.signal_per_image` plus ``jsv_mean`` (the image's mean
    singular value of ``J``, at ``beta = 1``); ``beta_njs`` is the scalar ``beta1``.
    """
    from ..attacks.losses import best_other_logit
    from ..attacks.temperature import hns_from_jacobian
    from .jacobian import signal_per_image

    check_images(images)
    labels = check_labels(labels, images.shape[0]).to(images.device)
    with torch.no_grad():
        correct = torch.cat([model(images[i : i + 500]).argmax(1) == labels[i : i + 500]
                             for i in range(0, images.shape[0], 500)])
    index = correct.nonzero().flatten()[:samples]
    if index.numel() == 0:
        index = torch.arange(min(samples, images.shape[0]), device=images.device)
    x, y = images[index], labels[index]
    jac, logits = input_jacobian(model, x)
    sv = torch.linalg.svdvals(jac)
    beta1 = float(sv.numel() / sv.to(torch.float64).sum().clamp_min(1e-300))
    beta_hns = torch.cat([hns_from_jacobian(jac[i : i + chunk], logits[i : i + chunk], grid=grid)[0]
                          for i in range(0, jac.shape[0], chunk)])
    betas = {"orig": 1.0, "njs": beta1, "hns": beta_hns.to(jac.dtype)}
    names = {"orig": "orig", "njs": f"NJS {beta1:.3g}", "hns": "HNS"}
    rows = [jacobian_stats(jac, logits, y, b, name=names[k]) for k, b in betas.items()]
    if not per_image:
        return rows
    values: dict = {"index": index, "label": y, "beta_njs": beta1, "beta_hns": beta_hns,
                    "margin": logits.gather(1, y.unsqueeze(1)).squeeze(1) - best_other_logit(logits, y),
                    "jsv_mean": sv.mean(dim=1)}
    for k, b in betas.items():
        one = signal_per_image(jac, logits, y, b)
        for q in ("psi_norm", "grad_norm", "zero_fraction"):
            values[f"{q}_{k}"] = one[q]
    return rows, values


def masking_checks(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    eps: float,
    norm: str = "linf",
    step: float | None = None,
    steps: int = 20,
    surrogate: nn.Module | None = None,
    eps_max: float | None = None,
    tol: float = 0.02,
    seed: int = 0,
    checks: tuple[str, ...] = CHECKS,
    log=None,
) -> list[Check]:
    """Run the Sec. 3.1 masking checks (see the module docstring); returns one :class:`Check` each.

    ``step`` defaults to ``eps / 4`` (CIFAR-10's 2/255 for 8/255 in the paper). The
    ``transfer`` check is skipped (not returned) without a ``surrogate``. ``log`` is called
    with a line of progress per attack.
    """
    from ..attacks import fgsm, pgd, pgd_pp

    check_images(images)
    check_choice(norm, "norm", ("linf", "l2"))
    labels = check_labels(labels, images.shape[0]).to(images.device)
    step = eps / 4 if step is None else step
    if eps_max is None:
        eps_max = 1.0 if norm == "linf" else float(images[0].numel()) ** 0.5
    say = log or (lambda _line: None)
    cache: dict[tuple, float] = {}

    def pgd_acc(e: float, t: int, st: float | None = None) -> float:
        key = ("pgd", e, t)
        if key not in cache:
            x = pgd(model, images, labels, norm=norm, eps=e, step=st if st is not None else e / 4, steps=t,
                    random_start=True, seed=seed)
            cache[key] = _accuracy(model, x, labels)
            say(f"  PGD eps={e:g} steps={t}: accuracy {_pct(cache[key])}")
        return cache[key]

    out: list[Check] = []
    base = pgd_acc(eps, steps, step)
    if "iterations" in checks:
        few, many = max(1, steps // 4), 5 * steps
        a_few, a_many = pgd_acc(eps, few, step), pgd_acc(eps, many, step)
        ok = (base - a_many) <= tol and a_many <= base + tol and base <= a_few + tol
        out.append(Check("iterations", ok,
                         f"PGD accuracy {_pct(a_few)} / {_pct(base)} / {_pct(a_many)} after {few} / {steps} / {many} "
                         f"iterations" + ("" if ok else " (still falling or rising with iterations)"),
                         {f"steps={few}": a_few, f"steps={steps}": base, f"steps={many}": a_many}))
    if "radius" in checks:
        radii = [eps, 2 * eps, 4 * eps, eps_max]
        radii = sorted({r for r in radii if r <= eps_max})
        accs = [pgd_acc(r, steps, step if r == eps else r / 4) for r in radii]
        monotone = all(b <= a + tol for a, b in zip(accs, accs[1:], strict=False))
        ok = accs[-1] <= tol and monotone
        out.append(Check("radius", ok,
                         "PGD accuracy "
                         + ", ".join(f"{_pct(a)} at eps={r:g}" for r, a in zip(radii, accs, strict=True))
                         + ("" if ok else f" (must fall to <= {_pct(tol)} at eps={eps_max:g})"),
                         {f"eps={r:g}": a for r, a in zip(radii, accs, strict=True)}))
    if "transfer" in checks and surrogate is not None:
        x_t = pgd(surrogate, images, labels, norm=norm, eps=eps, step=step, steps=steps, random_start=True, seed=seed)
        a_t = _accuracy(model, x_t, labels)
        say(f"  transfer PGD from the surrogate: accuracy {_pct(a_t)}")
        ok = a_t >= base - tol
        out.append(Check("transfer", ok,
                         f"black-box transfer from the float surrogate {_pct(a_t)} vs white-box PGD {_pct(base)}"
                         + ("" if ok else " (transfer is stronger than white box)"),
                         {"transfer": a_t, "white-box": base}))
    if "one-step" in checks:
        a_f = _accuracy(model, fgsm(model, images, labels, eps=eps), labels) if norm == "linf" else \
            pgd_acc(eps, 1, eps)
        say(f"  one step: accuracy {_pct(a_f)}")
        ok = a_f >= base - tol
        out.append(Check("one-step", ok,
                         f"one-step (FGSM) {_pct(a_f)} vs iterative PGD {_pct(base)}"
                         + ("" if ok else " (one step is stronger than iterating)"),
                         {"one-step": a_f, "iterative": base}))
    if "temperature" in checks:
        accs = {}
        for scaling in ("njs", "hns"):
            x_pp = pgd_pp(model, images, labels, norm=norm, eps=eps, step=step, steps=steps, scaling=scaling,
                          seed=seed)
            accs[scaling] = _accuracy(model, x_pp, labels)
            say(f"  PGD++ {scaling.upper()}: accuracy {_pct(accs[scaling])}")
        best = min(accs.values())
        ok = best >= base - tol
        out.append(Check("temperature", ok,
                         f"PGD {_pct(base)} vs PGD++ NJS {_pct(accs['njs'])} / HNS {_pct(accs['hns'])}"
                         + ("" if ok else " (temperature alone breaks more: PGD's gradients were vanishing)"),
                         {"pgd": base, "pgd_pp_njs": accs["njs"], "pgd_pp_hns": accs["hns"]}))
    return out
