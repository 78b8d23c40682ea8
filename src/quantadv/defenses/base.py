"""The adaptive-attack toolkit: defended models, BPDA, and what an attack should see.

A *preprocessing defense* is any ``nn.Module`` that maps a float NCHW batch in ``[0, 1]`` to
another one (a quantizer, a denoiser, ...). :class:`Defended` puts one in front of a
classifier, keeping both parts reachable by name so that an attack can treat them
differently. :func:`bpda` is the Backward Pass Differentiable Approximation of Athalye,
Carlini & Wagner (ICML 2018, "Obfuscated gradients give a false sense of security", Sec.
4.1): the forward pass is the defense itself, the backward pass the identity (or the
vector-Jacobian product of a differentiable approximation you choose). Expectation over
Transformation (EOT, same paper Sec. 4.2) is the ``eot=m`` option every gradient attack of
:mod:`quantadv.attacks` has. :func:`adaptive` turns a defended model into the model an attack
should see and the EOT sample count it should use, for the three evaluation modes
``none``, ``bpda`` and ``bpda+eot``.

Randomness. A randomized preprocess (paper 003's quantizers) takes an optional
``generator=`` keyword on ``forward``; :class:`Defended` forwards it when given. A module says
whether it draws random numbers with a class or instance attribute ``randomized: bool``
(:class:`~quantadv.defenses.SoftQuantization` and :class:`~quantadv.defenses.HardQuantization`
say ``False``); a module without the attribute counts as randomized exactly when its
``forward`` accepts a ``generator`` keyword. Set ``randomized = True`` on your own module if it
draws from torch's global generator without taking a ``generator=``.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

import torch
from torch import nn

from ..errors import InputError

__all__ = ["ADAPTIVE_MODES", "BPDA", "Defended", "adaptive", "bpda", "is_randomized", "parse_adaptive"]

#: The evaluation modes of :func:`adaptive` (the runner's ``adaptive:`` axis). ``bpda`` and
#: ``bpda+eot`` may name a backward pass: ``"bpda:softq:levels=1,alpha=20"`` (see
#: :func:`parse_adaptive`).
ADAPTIVE_MODES = ("none", "bpda", "bpda+eot")


def parse_adaptive(mode: object) -> tuple[str, str | None]:
    """Split an adaptive mode into (``none`` | ``bpda`` | ``bpda+eot``, backward spec or None).

    ``"bpda"`` is BPDA with the identity backward; ``"bpda:SPEC"`` (and ``"bpda+eot:SPEC"``)
    takes as backward pass the vector-Jacobian product of the defense spec ``SPEC``
    (:func:`quantadv.defenses.parse_defense`), e.g. ``"bpda:softq:levels=1,alpha=20"``, a
    smooth version of a steep soft quantizer (Athalye et al. 2018 Sec. 4.1; paper 002 Sec. 5).
    The spec is built once here, so an unknown or malformed one raises
    :class:`~quantadv.errors.InputError` at once.
    """
    if not isinstance(mode, str):
        raise InputError(f"adaptive mode must be a string, got {type(mode).__name__}")
    base, sep, spec = mode.strip().partition(":")
    if base not in ADAPTIVE_MODES:
        raise InputError(
            f"unknown adaptive mode {mode!r}; allowed: {', '.join(ADAPTIVE_MODES)}, or bpda:SPEC / "
            "bpda+eot:SPEC with a defense spec as backward pass (e.g. bpda:softq:levels=1,alpha=20)"
        )
    if not sep:
        return base, None
    if base == "none":
        raise InputError(f"adaptive mode {mode!r}: 'none' takes no backward spec")
    from .spec import format_spec

    try:
        return base, format_spec(spec)
    except InputError as exc:
        raise InputError(f"adaptive mode {mode!r}: backward {exc}") from None


def _accepts_generator(module: nn.Module) -> bool:
    try:
        params = inspect.signature(module.forward).parameters
    except (TypeError, ValueError):
        return False
    return "generator" in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


def is_randomized(module: nn.Module) -> bool:
    """Whether ``module`` draws random numbers in its forward pass (see the module docstring).

    The ``randomized`` attribute when the module has one; otherwise ``True`` exactly when its
    ``forward`` takes a ``generator`` keyword.
    """
    flag = getattr(module, "randomized", None)
    if flag is not None:
        return bool(flag)
    return _accepts_generator(module)


def _call(module: nn.Module, x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    if generator is not None and _accepts_generator(module):
        return module(x, generator=generator)
    return module(x)


class Defended(nn.Module):
    """``classifier(preprocess(x))``: a classifier behind a preprocessing defense.

    Parameters
    ----------
    preprocess : nn.Module
        The defense, mapping float NCHW images in ``[0, 1]`` to images the classifier takes
        (e.g. :class:`~quantadv.defenses.SoftQuantization`, :class:`~quantadv.defenses.RandDisc`,
        or a :func:`bpda` wrapper of one).
    classifier : nn.Module
        Any model returning logits.

    ``forward(x, generator=None)`` passes ``generator`` on to ``preprocess`` when its forward
    accepts one (and ignores it otherwise: a deterministic defense needs no randomness).
    ``randomized`` is the preprocess's (:func:`is_randomized`). The two parts are submodules
    named ``preprocess`` and ``classifier``, so ``state_dict`` keys are prefixed with them and
    ``defended.classifier.state_dict()`` is the classifier's own.
    """

    def __init__(self, preprocess: nn.Module, classifier: nn.Module) -> None:
        super().__init__()
        for name, part in (("preprocess", preprocess), ("classifier", classifier)):
            if not isinstance(part, nn.Module):
                raise InputError(
                    f"Defended({name}=...) must be a torch.nn.Module, got {type(part).__name__}; "
                    "wrap a plain function in a small nn.Module"
                )
        self.preprocess = preprocess
        self.classifier = classifier

    @property
    def randomized(self) -> bool:
        return is_randomized(self.preprocess)

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.classifier(_call(self.preprocess, x, generator))


class _BPDAFunction(torch.autograd.Function):
    """Forward: the wrapped module's output as is; backward: identity or a given VJP."""

    @staticmethod
    def forward(ctx, x, out, backward):  # type: ignore[override]
        # ``out`` was computed outside (without autograd) so that the forward is exactly the
        # module's; returning it as a fresh view-free tensor keeps its bits.
        ctx.approx = backward
        if backward is not None:
            ctx.save_for_backward(x)
        return out.clone()

    @staticmethod
    def backward(ctx, grad_out):  # type: ignore[override]
        if ctx.approx is None:
            return grad_out, None, None
        (x,) = ctx.saved_tensors
        with torch.enable_grad():
            xg = x.detach().requires_grad_(True)
            approx = ctx.approx(xg)
            if not isinstance(approx, torch.Tensor) or approx.shape != xg.shape:
                raise InputError(
                    "the BPDA backward function must return a tensor of the input's shape, got "
                    f"{tuple(approx.shape) if isinstance(approx, torch.Tensor) else type(approx).__name__}"
                )
            if not approx.requires_grad:  # a constant approximation: zero gradient
                return torch.zeros_like(x), None, None
            (grad,) = torch.autograd.grad(approx, xg, grad_out)
        return grad, None, None


class BPDA(nn.Module):
    """A module whose forward is ``module`` and whose backward is the identity or ``backward``.

    Built by :func:`bpda`; see there. ``.module`` is the wrapped defense, ``.backward_fn`` the
    approximation (``None`` for the identity); ``randomized`` is the wrapped module's.
    """

    def __init__(self, module: nn.Module, backward: Callable[[torch.Tensor], torch.Tensor] | None) -> None:
        super().__init__()
        self.module = module
        self.backward_fn = backward

    @property
    def randomized(self) -> bool:
        return is_randomized(self.module)

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        with torch.no_grad():
            out = _call(self.module, x.detach(), generator)
        if out.shape != x.shape:
            raise InputError(
                f"BPDA needs a defense whose output has the input's shape (got {tuple(out.shape)} "
                f"for an input of {tuple(x.shape)}); pass backward= a function with that output shape"
                if self.backward_fn is None else
                f"BPDA: the defense's output shape {tuple(out.shape)} differs from its input's "
                f"{tuple(x.shape)}"
            )
        if not (torch.is_grad_enabled() and x.requires_grad):
            return out
        return _BPDAFunction.apply(x, out, self.backward_fn)

    def extra_repr(self) -> str:
        name = "identity" if self.backward_fn is None else getattr(
            self.backward_fn, "__name__", type(self.backward_fn).__name__)
        return f"backward={name}"


def bpda(
    module: nn.Module, backward: str | Callable[[torch.Tensor], torch.Tensor] = "identity"
) -> BPDA:
    """Backward Pass Differentiable Approximation of ``module`` (Athalye et al. 2018, Sec. 4.1).

    Parameters
    ----------
    module : nn.Module
        The defense ``g`` (its output must have its input's shape). Its forward pass is used
        unchanged: the wrapper's output equals ``module(x)`` bit for bit (the same ``generator``
        draws, when given one).
    backward : ``"identity"`` or a callable
        ``"identity"``: the gradient passes through ``g`` unchanged (``g(x) ~ x``, the
        approximation paper 002 Sec. 5 uses for its soft-quantization layer). A callable ``h``
        (e.g. ``SoftQuantization(levels, alpha=low)``, a smooth version of the defense):
        the backward pass is the vector-Jacobian product of ``h`` at ``x``, i.e. the gradient
        flows as if the forward pass had been ``h(x)``.

    Returns
    -------
    BPDA
        An ``nn.Module``; use it as ``Defended(bpda(defended.preprocess), defended.classifier)``
        or call :func:`adaptive`.
    """
    if not isinstance(module, nn.Module):
        raise InputError(f"bpda() wraps an nn.Module (the defense), got {type(module).__name__}")
    if isinstance(backward, str):
        if backward != "identity":
            raise InputError(f"backward must be 'identity' or a callable, got {backward!r}")
        return BPDA(module, None)
    if not callable(backward):
        raise InputError(f"backward must be 'identity' or a callable, got {type(backward).__name__}")
    return BPDA(module, backward)


def _device_of(model: nn.Module) -> torch.device:
    for t in (*model.parameters(), *model.buffers()):
        return t.device
    return torch.device("cpu")


def adaptive(model: nn.Module, mode: str, eot_samples: int = 10) -> tuple[nn.Module, int]:
    """The model an attack should see, and the ``eot`` it should use, for one evaluation mode.

    Parameters
    ----------
    model : nn.Module
        A :class:`Defended` model (or any other model: then every mode is a plain attack on it,
        ``eot = 1``, since there is no defense to approximate).
    mode : ``"none"``, ``"bpda"``, ``"bpda+eot"`` (optionally ``:SPEC``, :func:`parse_adaptive`)
        ``none``: the defended model as is (the naive, non-adaptive attack; a randomized defense
        is still attacked with one draw per gradient). ``bpda``: the defense's preprocess
        wrapped in :func:`bpda` (identity backward, or the defense ``SPEC`` of
        ``bpda:SPEC`` as backward), ``eot = 1``. ``bpda+eot``: the same model,
        with ``eot = eot_samples`` when the preprocess is randomized (:func:`is_randomized`),
        else ``1`` (EOT over a deterministic defense would repeat the same gradient).
    eot_samples : int
        The EOT sample count ``m`` for randomized defenses (default 10).

    Returns
    -------
    (nn.Module, int)
        The model to attack and the ``eot=`` to pass to the attack. Success must still be
        judged on the real defended model; the returned model's forward *is* the real model
        (BPDA changes only the backward pass), so the attack's own success check is honest.

    Examples
    --------
    How the experiment runner (or a user) evaluates a defense three ways::

        for mode in ("none", "bpda", "bpda+eot"):
            attacked, eot = adaptive(defended, mode, eot_samples=10)
            x_adv, info = attacks.pgd(attacked, x, y, eps=0.3, step=0.01, steps=100,
                                      eot=eot, return_info=True)
            broken |= info["success"]          # headline: an image is broken by any mode
    """
    mode, backward = parse_adaptive(mode)
    if isinstance(eot_samples, bool) or not isinstance(eot_samples, int) or eot_samples < 1:
        raise InputError(f"eot_samples must be an integer >= 1, got {eot_samples!r}")
    if not isinstance(model, nn.Module):
        raise InputError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(model, Defended) or mode == "none":
        return model, 1
    if backward is not None:
        from .spec import parse_defense

        inner = model.preprocess.module if isinstance(model.preprocess, BPDA) else model.preprocess
        preprocess = bpda(inner, backward=parse_defense(backward).to(_device_of(model)))
    else:
        preprocess = model.preprocess if isinstance(model.preprocess, BPDA) else bpda(model.preprocess)
    attacked = Defended(preprocess, model.classifier).train(model.training)
    eot = eot_samples if mode == "bpda+eot" and is_randomized(model.preprocess) else 1
    return attacked, eot
