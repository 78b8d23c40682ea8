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

Options every gradient attack gets from here rather than implementing them itself:

- ``temperature`` (beta): the loss is computed on ``beta * logits`` (paper 004's temperature
  scaling; a per-image tensor or a float, fixed for the problem or given per call). Success
  is always judged on the unscaled logits (argmax is invariant to beta > 0).
- ``eot`` (m draws): each gradient is the average over ``m`` forward/backward passes, so a
  randomised model (a defense with fresh noise per call, paper 003) is attacked through the
  expectation of its randomness (Athalye et al. 2018, "Expectation over Transformation");
  the logits used to judge success are the average of the ``m`` draws' logits.
- restarts: :func:`with_restarts` reruns any attack from fresh random starts on the images not
  yet broken (paper 001 Sec. 4.1, "Practical issues"); the :func:`restartable` decorator gives
  an attack its ``restarts=``/``seed=``/``generator=`` prologue (pgd, pqgd, daa_blob, pgd_pp,
  apgd, square).
- ``scores``: score-based attacks (Square) read ``L_A`` and logits without a gradient,
  averaged over ``eot`` draws, through :meth:`Problem.scores`.
- ``pred``: the info dict of every attack holds the model's prediction at the returned image
  (from the forward pass that judged it, so callers need no extra pass).
- ``first_adv``: the info dict of every attack run by :func:`iterate` holds, per image, the
  first iterate that was judged adversarial (0 is the start point, ``k`` the point after ``k``
  updates, counted across the calls of :func:`iterate` on one problem), or -1 when none was.
  ``first_adv <= k`` is "an early-stopping ``k``-step attack would have broken the image", so
  one long run gives the whole accuracy-vs-steps curve; ``first_adv >= 0`` is the
  "any iterate" criterion of attacks that return their best iterate (APGD).
"""

from __future__ import annotations

import functools
import inspect
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from .._validate import (
    check_choice,
    check_images,
    check_int,
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

    ``untargeted_goal``: the loss is targeted (``targets``) but success is any
    misclassification, as in APGD-T (Croce & Hein 2020), which uses targeted losses toward
    several classes to find untargeted adversarials.
    """

    model: nn.Module
    x_orig: torch.Tensor
    labels: torch.Tensor
    targets: torch.Tensor | None
    loss_name: str
    margin: float = 0.0
    temperature: float | torch.Tensor = 1.0
    eot: int = 1
    untargeted_goal: bool = False
    calls: torch.Tensor = field(init=False)
    grads: torch.Tensor = field(init=False)
    pred: torch.Tensor = field(init=False)
    _checked_classes: bool = field(init=False, default=False)

    def __post_init__(self) -> None:
        n = self.x_orig.shape[0]
        self.calls = torch.zeros(n, dtype=torch.int64)
        self.grads = torch.zeros(n, dtype=torch.int64)
        #: argmax of the logits at the last point judged by :meth:`adversarial` (-1: none yet)
        self.pred = torch.full((n,), -1, dtype=torch.int64, device=self.x_orig.device)
        #: first iterate judged adversarial per image (-1: none yet) and iterates judged so far
        self.first_adv = torch.full((n,), -1, dtype=torch.int64, device=self.x_orig.device)
        self.iterations = 0

    def note_adversarial(self, idx: torch.Tensor, adv: torch.Tensor, iteration: int) -> None:
        """Record ``iteration`` as the first adversarial iterate of the images ``idx[adv]``."""
        rows = idx[adv]
        fresh = rows[self.first_adv[rows] < 0]
        self.first_adv[fresh] = iteration

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

    def scores(self, x: torch.Tensor, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(L_A, logits)`` at ``x`` without gradient, for score-based attacks (Square).

        ``L_A`` is taken on the problem's temperature times the logits; with ``eot = m > 1``
        the logits are the average of ``m`` forward passes (``m`` calls per image).
        """
        scale = self._scale(None, idx)
        logits = self.logits(x, idx)
        for _ in range(self.eot - 1):
            logits = logits + self.logits(x, idx)
        if self.eot > 1:
            logits = logits / self.eot
        scaled = logits if isinstance(scale, float) and scale == 1.0 else logits * scale
        return attack_loss(scaled, self.labels[idx], self._targets(idx), self.loss_name), logits

    def _scale(self, temperature: float | torch.Tensor | None, idx: torch.Tensor) -> float | torch.Tensor:
        t = self.temperature if temperature is None else temperature
        if isinstance(t, torch.Tensor):
            if temperature is None and t.dim() == 1 and t.shape[0] == self.size:
                t = t[idx]  # the problem's per-image temperature, restricted to idx
            return t.view(-1, 1) if t.dim() == 1 else t
        return t

    def loss_and_grad(
        self,
        x: torch.Tensor,
        idx: torch.Tensor,
        extra: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
        temperature: float | torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(L_A, d objective / d x, logits)`` at ``x`` for the images ``idx``.

        The objective is ``L_A`` per image, or ``extra(x, L_A)`` when given (e.g. the
        Lagrangian of CW). ``L_A`` is computed on ``temperature * logits`` (default: the
        problem's temperature, 1; a float or one value per image of ``idx``); the returned
        logits are unscaled. With ``eot = m > 1`` loss, gradient and logits are averages over
        ``m`` passes (m network calls and m gradients per image). Gradients are taken with
        respect to ``x`` only: the model's parameters and their ``.grad`` are not touched.
        """
        scale = self._scale(temperature, idx)
        loss_sum = grad_sum = logit_sum = None
        for _ in range(self.eot):
            with torch.enable_grad():
                xg = x.detach().requires_grad_(True)
                logits = self._forward(xg, idx)
                scaled = logits if isinstance(scale, float) and scale == 1.0 else logits * scale
                loss = attack_loss(scaled, self.labels[idx], self._targets(idx), self.loss_name)
                objective = loss if extra is None else extra(xg, loss)
                (grad,) = torch.autograd.grad(objective.sum(), xg)
            self.grads[idx.cpu()] += 1
            if loss_sum is None:
                loss_sum, grad_sum, logit_sum = loss.detach(), grad.detach(), logits.detach()
            else:
                loss_sum = loss_sum + loss.detach()
                grad_sum = grad_sum + grad.detach()
                logit_sum = logit_sum + logits.detach()
        assert loss_sum is not None and grad_sum is not None and logit_sum is not None
        if self.eot == 1:
            return loss_sum, grad_sum, logit_sum
        return loss_sum / self.eot, grad_sum / self.eot, logit_sum / self.eot

    def adversarial(self, logits: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """Success at the points whose logits are given (argmax criterion, plus the margin)."""
        labels = self.labels[idx]
        targets = None if self.untargeted_goal else self._targets(idx)
        pred = logits.argmax(dim=1)
        self.pred[idx] = pred
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
    temperature: float | torch.Tensor = 1.0,
    eot: int = 1,
    untargeted_goal: bool = False,
) -> Problem:
    """Validate an attack's inputs (DESIGN.md section 1) and build its :class:`Problem`.

    ``temperature`` (beta > 0, a float or one value per image) scales the logits inside the
    loss; ``eot`` is the number of draws a gradient averages (see the module docstring).
    """
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
    if isinstance(temperature, torch.Tensor):
        temperature = temperature.detach().to(images.device, images.dtype).flatten()
        if temperature.numel() == 1:
            temperature = float(temperature)
        elif temperature.shape[0] != images.shape[0]:
            raise InputError(f"temperature must be a number or one value per image ({images.shape[0]}), "
                             f"got {temperature.shape[0]} values")
        elif not bool((temperature > 0).all()) or not bool(torch.isfinite(temperature).all()):
            raise InputError("temperature must be finite and > 0 for every image")
    if not isinstance(temperature, torch.Tensor):
        try:
            temperature = float(temperature)
        except (TypeError, ValueError):
            raise InputError(f"temperature must be a number > 0, got {temperature!r}") from None
        if not (temperature > 0 and math.isfinite(temperature)):
            raise InputError(f"temperature (beta) must be finite and > 0, got {temperature}")
    if isinstance(eot, bool) or not isinstance(eot, int) or eot < 1:
        raise InputError(f"eot must be an integer >= 1 (the number of draws a gradient averages), got {eot!r}")
    return Problem(model, images.detach(), labels, targets, loss, margin, temperature, eot, bool(untargeted_goal))


@dataclass
class Outcome:
    """What :func:`iterate` returns: the output images and per-image success.

    ``best_norm`` is the L2 norm (in [0, 1] units) of the best adversarial point seen, or
    ``inf`` where none was; it is shared across several calls when a tracker is passed in.
    """

    x: torch.Tensor
    success: torch.Tensor
    best_norm: torch.Tensor
    #: prediction at ``x`` where a forward pass judged it, else -1 (:func:`info` fills it in)
    pred: torch.Tensor | None = None


class BestTracker:
    """Keeps, per image, the adversarial point of smallest L2 distance to the original."""

    def __init__(self, x_orig: torch.Tensor):
        self.x_orig = x_orig
        self.x = x_orig.clone()
        self.norm = torch.full((x_orig.shape[0],), float("inf"), device=x_orig.device, dtype=torch.float64)
        self.pred = torch.full((x_orig.shape[0],), -1, device=x_orig.device, dtype=torch.int64)

    def update(self, idx: torch.Tensor, x: torch.Tensor, adv: torch.Tensor,
               pred: torch.Tensor | None = None) -> None:
        """Keep ``x[j]`` for image ``idx[j]`` if it is adversarial and closer than the best so far."""
        if not bool(adv.any()):
            return
        norms = (x - self.x_orig[idx]).flatten(1).norm(dim=1).to(torch.float64)
        better = adv & (norms < self.norm[idx])
        rows = idx[better]
        self.x[rows] = x[better]
        self.norm[rows] = norms[better]
        self.pred[rows] = pred[better] if pred is not None else -1

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
        problem.note_adversarial(idx, adv, problem.iterations + i)
        if tracker is not None:
            tracker.update(idx, sub["x"], adv, problem.pred[idx])
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
            problem.note_adversarial(idx, adv, problem.iterations + steps)
            if tracker is not None:
                tracker.update(idx, state["x"][idx], adv, problem.pred[idx])

    problem.iterations += steps
    if keep == "best":
        assert tracker is not None
        return Outcome(tracker.x.clone(), tracker.found.clone(), tracker.norm.clone(), tracker.pred.clone())
    norms = torch.where(
        success,
        (state["x"] - problem.x_orig).flatten(1).norm(dim=1).to(torch.float64),
        torch.full((n,), float("inf"), device=device, dtype=torch.float64),
    )
    # problem.pred holds, per image, the prediction at the last point judged: the output when
    # the last iterate was checked (final_check) or the image stopped early.
    pred = problem.pred.clone() if final_check else None
    return Outcome(state["x"], success, norms, pred)


def info(problem: Problem, outcome: Outcome) -> dict[str, torch.Tensor]:
    """The per-image ``info`` dict attacks return with ``return_info=True``.

    ``success``, ``calls`` (forward passes), ``grads`` (gradient computations) and ``pred``
    (the model's class at the returned image). ``pred`` comes from the forward pass that
    judged the returned image; only images whose output was never judged (e.g. a minimum-norm
    attack that found nothing returns the original) cost one more call here.
    """
    pred = outcome.pred.clone() if outcome.pred is not None else torch.full(
        (problem.size,), -1, dtype=torch.int64, device=outcome.x.device)
    missing = (pred < 0).nonzero().flatten()
    if missing.numel():
        logits = problem.logits(outcome.x[missing], missing)
        pred[missing] = logits.argmax(dim=1)
    return {
        "success": outcome.success.clone(),
        "calls": problem.calls.clone(),
        "grads": problem.grads.clone(),
        "pred": pred,
        "first_adv": problem.first_adv.clone(),
    }


def with_restarts(
    attack: Callable[..., tuple[torch.Tensor, dict[str, torch.Tensor]]],
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    restarts: int,
    generator: torch.Generator | None,
    targets: torch.Tensor | None = None,
    return_info: bool = False,
    per_image: tuple[str, ...] = (),
    **params: object,
):
    """Run ``attack`` up to ``restarts`` times, each time on the images not yet broken.

    Paper 001, Sec. 4.1 ("Practical issues"): an image counts as broken when any restart
    breaks it. Restart ``r`` draws its random start from ``generator`` after restarts
    ``0..r-1`` did (independent draws; reproducible from the seed), and runs only on the
    images every earlier restart failed on, so broken images cost nothing more. The output
    of a broken image is the first restart's image that broke it; an image never broken
    keeps the first restart's output, so ``restarts=R`` is never worse than ``restarts=1``
    with the same seed and equals it on the images the first run breaks. ``info`` sums
    ``calls`` and ``grads`` over restarts and adds ``restart`` (the 0-based restart that
    broke the image, -1 if none).

    ``attack`` must accept ``generator=``, ``return_info=`` and (if given) ``targets=``, and be
    called with ``restarts=1`` semantics (this function passes no ``restarts``). The
    parameters named in ``per_image`` that hold one value per image (a tensor whose first
    dimension is the batch, e.g. a per-image ``temperature``) are restricted to the images a
    restart runs on, as ``targets`` is.
    """
    restarts = int(restarts)
    if restarts < 1:
        raise InputError(f"restarts must be an integer >= 1, got {restarts!r}")
    n = images.shape[0]
    device = images.device
    out = images.detach().clone()
    total: dict[str, torch.Tensor] = {}
    success = torch.zeros(n, dtype=torch.bool, device=device)
    which = torch.full((n,), -1, dtype=torch.int64, device=device)
    todo = torch.arange(n, device=device)
    for r in range(restarts):
        kw = dict(params)
        for name in per_image:
            value = kw.get(name)
            if isinstance(value, torch.Tensor) and value.dim() >= 1 and value.shape[0] == n:
                kw[name] = value[todo.to(value.device)]
        if targets is not None:
            kw["targets"] = targets[todo]
        x_r, info_r = attack(model, images[todo], labels[todo], generator=generator, return_info=True, **kw)
        ok = info_r["success"].to(device).bool()
        if r == 0:
            out = x_r.detach().clone()
            for key, value in info_r.items():
                total[key] = value.clone()
        else:
            rows = todo[ok]
            out[rows] = x_r[ok]
            for key, value in info_r.items():
                if key in ("calls", "grads"):
                    total[key][todo.to(total[key].device)] += value
                elif key != "success" and value.shape[:1] == (todo.numel(),):
                    total[key][rows.to(total[key].device)] = value[ok.to(value.device)]
        success[todo[ok]] = True
        which[todo[ok]] = r
        todo = todo[~ok]
        if todo.numel() == 0:
            break
    total["success"] = success
    total["restart"] = which
    return (out, total) if return_info else out


#: Parameters of an attack that may hold one value per image (restricted per restart).
PER_IMAGE_PARAMS = ("temperature",)


def restartable(
    attack: Callable | None = None,
    *,
    before_restarts: Callable[[dict[str, object]], None] | None = None,
):
    """Decorator: the validate-then-restart prologue of a random-start attack, written once.

    The decorated attack has the parameters ``restarts``, ``seed``, ``generator`` and
    ``return_info`` (and optionally ``random_start``, ``targets`` and per-image parameters
    such as ``temperature``). The wrapper binds the call to the attack's signature, checks
    ``restarts``, turns ``seed``/``generator`` into one generator (:func:`make_generator`),
    and then either

    - ``restarts == 1``: calls the attack once with ``generator=`` that generator and
      ``seed=None`` (so the body never calls :func:`make_generator` itself), or
    - ``restarts > 1``: refuses ``random_start=False`` (the restarts would repeat one
      deterministic run), calls ``before_restarts(arguments)`` (which may fill in values that
      all restarts must share, e.g. PGD++'s NJS ``beta1``), and runs the attack under
      :func:`with_restarts`, restricting ``targets`` and the per-image tensors of
      :data:`PER_IMAGE_PARAMS` to the images each restart runs on.

    The signature (``inspect.signature``) and docstring stay the attack's own.
    """

    def decorate(fn: Callable) -> Callable:
        sig = inspect.signature(fn)
        names = sig.parameters

        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            bound = sig.bind(*args, **kwargs)
            bound.apply_defaults()
            arguments = dict(bound.arguments)
            restarts = check_int(arguments.get("restarts", 1), "restarts", minimum=1)
            generator = make_generator(arguments.pop("seed", None), arguments.pop("generator", None))
            if restarts == 1:
                if "restarts" in names:
                    arguments["restarts"] = 1
                return fn(**arguments, seed=None, generator=generator)
            if "random_start" in names and not arguments["random_start"]:
                raise InputError("restarts > 1 repeats the same deterministic attack unless random_start=True")
            images = check_images(arguments["images"])
            check_labels(arguments["labels"], images.shape[0])
            if before_restarts is not None:
                before_restarts(arguments)
            model, labels = arguments.pop("model"), arguments.pop("labels")
            arguments.pop("images")
            arguments.pop("restarts")
            targets = arguments.pop("targets", None)
            return_info = arguments.pop("return_info", False)
            return with_restarts(wrapper, model, images, labels, restarts=restarts, generator=generator,
                                 targets=targets, return_info=return_info,
                                 per_image=tuple(p for p in PER_IMAGE_PARAMS if p in names), **arguments)

        return wrapper

    return decorate if attack is None else decorate(attack)


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
