"""The attack loop, written once.

Every attack in :mod:`quantadv.attacks` is a *step function* run by :func:`iterate`.
:class:`Problem` holds what an attack is about (model, original images, labels, optional
targets, the loss ``L_A``) and counts network calls per image. :func:`iterate` owns the
iteration, the set of images still being worked on (early stop), the keeping of the best
(smallest-L2) adversarial iterate, and the final success check.

A step function has the signature ``step(problem, idx, state, iteration) -> (adv, new_state)``:
``idx`` are the (global) indices of the images still active, ``state`` a dict of per-image
tensors restricted to those images (it always holds ``"x"``, the current point in image
space), ``adv`` a boolean tensor telling whether ``state["x"]`` is adversarial (computed
from the forward pass the step made anyway), and ``new_state`` the state after the update.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from .._validate import (
    check_choice,
    check_images,
    check_label_range,
    check_labels,
)
from ..errors import InputError
from .losses import LOSSES, attack_loss

State = dict[str, torch.Tensor]
StepFn = Callable[["Problem", torch.Tensor, State, int], tuple[torch.Tensor, State]]
KEEP_MODES = ("last", "best")


@dataclass
class Problem:
    """An attack problem: what to attack, against which labels, with which loss.

    ``margin`` (``m <= 0`` of paper 000, Eq. 9) tightens the success criterion: an image
    counts as adversarial only when it is misclassified (or classified as its target) *and*
    ``L_A <= margin`` with the Eq. 5 margin loss.
    """

    model: nn.Module
    x_orig: torch.Tensor
    labels: torch.Tensor
    targets: torch.Tensor | None
    loss_name: str
    margin: float = 0.0
    calls: torch.Tensor = field(init=False)
    grads: torch.Tensor = field(init=False)
    _checked_classes: bool = field(init=False, default=False)

    def __post_init__(self) -> None:
        n = self.x_orig.shape[0]
        self.calls = torch.zeros(n, dtype=torch.int64)
        self.grads = torch.zeros(n, dtype=torch.int64)

    @property
    def size(self) -> int:
        return self.x_orig.shape[0]

    def _targets(self, idx: torch.Tensor) -> torch.Tensor | None:
        return None if self.targets is None else self.targets[idx]

    def _forward(self, x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        logits = self.model(x)
        if not self._checked_classes:
            if logits.dim() != 2 or logits.shape[0] != x.shape[0]:
                raise InputError(
                    f"the model must return logits of shape (batch, classes); got {tuple(logits.shape)}"
                )
            check_label_range(self.labels, logits.shape[1])
            if self.targets is not None:
                check_label_range(self.targets, logits.shape[1], "targets")
            self._checked_classes = True
        self.calls[idx.cpu()] += 1
        return logits

    def logits(self, x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """Forward pass without gradient on the images ``idx`` (one network call each)."""
        with torch.no_grad():
            return self._forward(x, idx)

    def loss_and_grad(
        self,
        x: torch.Tensor,
        idx: torch.Tensor,
        extra: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(L_A, d objective / d x, logits)`` at ``x`` for the images ``idx``.

        The objective is ``L_A`` per image, or ``extra(x, logits)`` when given (e.g. the
        Lagrangian of CW). Gradients are taken with respect to ``x`` only: the model's
        parameters and their ``.grad`` are not touched.
        """
        with torch.enable_grad():
            xg = x.detach().requires_grad_(True)
            logits = self._forward(xg, idx)
            loss = attack_loss(logits, self.labels[idx], self._targets(idx), self.loss_name)
            objective = loss if extra is None else extra(xg, loss)
            (grad,) = torch.autograd.grad(objective.sum(), xg)
        self.grads[idx.cpu()] += 1
        return loss.detach(), grad.detach(), logits.detach()

    def adversarial(self, logits: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """Success at the points whose logits are given (argmax criterion, plus the margin)."""
        labels = self.labels[idx]
        targets = self._targets(idx)
        pred = logits.argmax(dim=1)
        adv = pred == targets if targets is not None else pred != labels
        if self.margin < 0:
            adv = adv & (attack_loss(logits, labels, targets, "margin") <= self.margin)
        return adv


def make_problem(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    targets: torch.Tensor | None = None,
    loss: str = "ce",
    margin: float = 0.0,
) -> Problem:
    """Validate an attack's inputs (DESIGN.md section 1) and build its :class:`Problem`."""
    if not isinstance(model, nn.Module):
        raise InputError(f"model must be a torch.nn.Module returning logits, got {type(model).__name__}")
    check_images(images)
    labels = check_labels(labels, images.shape[0]).to(images.device)
    if targets is not None:
        targets = check_labels(targets, images.shape[0], "targets").to(images.device)
        if bool((targets == labels).any()):
            raise InputError("targets must differ from labels for every image (a targeted attack "
                             "toward the true class is meaningless)")
    check_choice(loss, "loss", LOSSES)
    try:
        margin = float(margin)
    except (TypeError, ValueError):
        raise InputError(f"margin must be a number <= 0, got {margin!r}") from None
    if not margin <= 0:
        raise InputError(
            f"margin is m <= 0 of paper 000 Eq. 9 (L_A must fall below it), got {margin}; "
            "for a Carlini-Wagner confidence kappa pass margin=-kappa"
        )
    return Problem(model, images.detach(), labels, targets, loss, margin)


@dataclass
class Outcome:
    """What :func:`iterate` returns: the output images and per-image success.

    ``best_norm`` is the L2 norm (in [0, 1] units) of the best adversarial point seen, or
    ``inf`` where none was; it is shared across several calls when a tracker is passed in.
    """

    x: torch.Tensor
    success: torch.Tensor
    best_norm: torch.Tensor


class BestTracker:
    """Keeps, per image, the adversarial point of smallest L2 distance to the original."""

    def __init__(self, x_orig: torch.Tensor):
        self.x_orig = x_orig
        self.x = x_orig.clone()
        self.norm = torch.full((x_orig.shape[0],), float("inf"), device=x_orig.device, dtype=torch.float64)

    def update(self, idx: torch.Tensor, x: torch.Tensor, adv: torch.Tensor) -> None:
        if not bool(adv.any()):
            return
        norms = (x - self.x_orig[idx]).flatten(1).norm(dim=1).to(torch.float64)
        better = adv & (norms < self.norm[idx])
        rows = idx[better]
        self.x[rows] = x[better]
        self.norm[rows] = norms[better]

    @property
    def found(self) -> torch.Tensor:
        return torch.isfinite(self.norm)


def iterate(
    problem: Problem,
    state: State,
    step: StepFn,
    *,
    steps: int,
    early_stop: bool = False,
    keep: str = "last",
    final_check: bool = True,
    tracker: BestTracker | None = None,
) -> Outcome:
    """Run ``step`` for ``steps`` iterations on every image of ``problem``.

    - ``early_stop``: an image leaves the loop at the first iterate that is adversarial,
      and that iterate is its output (IFGSM, paper 000 Eq. 7).
    - ``keep="last"``: the output is the last iterate; ``keep="best"``: the adversarial
      iterate of smallest L2 distortion seen (CW, DDN), or the original image where none was.
    - ``final_check``: evaluate the last iterate with one more forward pass so that its
      success is known (needed for ``keep="best"``; optional otherwise, to save a call).
    - ``tracker``: a :class:`BestTracker` shared across several calls (CW's search steps).
    """
    check_choice(keep, "keep", KEEP_MODES)
    n = problem.size
    device = problem.x_orig.device
    state = {k: v.clone() for k, v in state.items()}
    active = torch.ones(n, dtype=torch.bool, device=device)
    success = torch.zeros(n, dtype=torch.bool, device=device)
    if tracker is None and keep == "best":
        tracker = BestTracker(problem.x_orig)
    all_idx = torch.arange(n, device=device)

    for i in range(steps):
        full = bool(active.all())
        idx = all_idx if full else all_idx[active]
        if idx.numel() == 0:
            break
        sub = state if full else {k: v[idx] for k, v in state.items()}
        adv, new = step(problem, idx, sub, i)
        success[idx] = adv
        if tracker is not None:
            tracker.update(idx, sub["x"], adv)
        if early_stop and bool(adv.any()):
            active[idx[adv]] = False
            moving = ~adv
            for k, v in new.items():
                state[k][idx[moving]] = v[moving]
        elif full:
            state = new
        else:
            for k, v in new.items():
                state[k][idx] = v

    if final_check or keep == "best":
        idx = all_idx[active]
        if idx.numel():
            adv = problem.adversarial(problem.logits(state["x"][idx], idx), idx)
            success[idx] = adv
            if tracker is not None:
                tracker.update(idx, state["x"][idx], adv)

    if keep == "best":
        assert tracker is not None
        return Outcome(tracker.x.clone(), tracker.found.clone(), tracker.norm.clone())
    norms = torch.where(
        success,
        (state["x"] - problem.x_orig).flatten(1).norm(dim=1).to(torch.float64),
        torch.full((n,), float("inf"), device=device, dtype=torch.float64),
    )
    return Outcome(state["x"], success, norms)


def info(problem: Problem, outcome: Outcome) -> dict[str, torch.Tensor]:
    """The per-image ``info`` dict attacks return with ``return_info=True``."""
    return {
        "success": outcome.success.clone(),
        "calls": problem.calls.clone(),
        "grads": problem.grads.clone(),
    }


def make_generator(seed: int | None, generator: torch.Generator | None) -> torch.Generator | None:
    """The generator an attack draws from: ``generator`` if given, else one seeded with ``seed``."""
    if generator is not None:
        if seed is not None:
            raise InputError("pass either seed= or generator=, not both")
        if not isinstance(generator, torch.Generator):
            raise InputError(f"generator must be a torch.Generator, got {type(generator).__name__}")
        return generator
    if seed is None:
        return None
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise InputError(f"seed must be an integer, got {seed!r}")
    return torch.Generator().manual_seed(seed)


def random_like(
    x: torch.Tensor, generator: torch.Generator | None, kind: str = "uniform"
) -> torch.Tensor:
    """Random tensor shaped like ``x`` on ``x``'s device; drawn on the generator's device."""
    gen_device = generator.device if generator is not None else x.device
    draw = torch.rand if kind == "uniform" else torch.randn
    return draw(x.shape, generator=generator, device=gen_device, dtype=x.dtype).to(x.device)
