"""Binary networks (paper 004, Sec. 3): six binarisation methods on the SmallCNN.

The binarisation methods the paper attacks (its Sec. 3 and 7), on the SmallCNN layout of
:class:`~quantadv.models.SmallCNN` (conv 5x5/32 - conv 5x5/64 - FC 1024 - FC classes). Each
binary layer keeps a latent float weight ``w`` during training; the deployed network computes
with ``sign(w)`` (``+1`` for ``w >= 0``) only.

``bc`` -- BinaryConnect (Courbariaux et al. 2015)
    Forward with ``sign(w)``; backward with the straight-through estimator (the gradient
    with respect to ``sign(w)`` is applied to the latent float weight ``w``, times
    ``1{|w| <= 1}``); latent weights are clipped to ``[-1, 1]`` before every training
    forward pass (equivalent to clipping after each optimizer step).
``mdtanh`` -- MD-tanh-S (Ajanthan et al., "Mirror descent view for neural network quantization",
    AISTATS 2021, Sec. 3.3, the numerically stable form of mirror descent)
    Forward with ``tanh(beta * w)``; the auxiliary (dual) variable ``w`` is updated with the
    gradient with respect to the *projected* weight ``tanh(beta * w)`` unchanged (the paper's
    ``x~ <- x~ - eta g_x``; its reference code runs this as ``TANH_PROJECTION --full-ste``):
    a straight-through estimator through the tanh. Sign at test.
``gdtanh`` -- GD-tanh (same paper; its Table 5 trains it adversarially)
    Forward with ``tanh(beta * w)`` and plain gradient descent on ``w`` *through* the tanh
    (``dL/dw = beta * (1 - tanh^2(beta w)) * dL/dtanh``; the reference code's
    ``TANH_PROJECTION`` without ``--full-ste``). Sign at test.
``pmf`` -- Proximal Mean-Field (Ajanthan, Dokania, Hartley, Torr, ICCV 2019)
    Each weight has one logit per level of ``{-1, +1}`` (``weight`` holds ``u(+1)``,
    ``weight_neg`` holds ``u(-1)``); training uses the mean of the level distribution
    ``p = softmax(beta * u)`` (temperature ``1 / beta``), i.e. ``p(+1) - p(-1)`` (computed as
    ``tanh(beta * (u(+1) - u(-1)) / 2)``, the same function for two levels), with the
    exact softmax derivative (the paper's; the reference code substitutes ``I - p p^T`` for
    ``diag(p) - p p^T``, we do not). At test the argmax level: ``sign(u(+1) - u(-1))``.
``pq`` -- ProxQuant (Bai, Wang, Liberty, ICLR 2019)
    Training forward with the float weights themselves; after every optimizer step the
    proximal step of ``lambda_t * R`` with the W-shaped regulariser
    ``R(w) = dist(w, {-1, +1})``: each weight moves toward its sign by ``lr * lambda_t``
    (soft thresholding, never past it), then is clipped to ``[-1, 1]`` -- the reference
    code's ``prox_operator(lr * br, 'binary')`` followed by ``clip()``. ``lambda_t`` grows
    *linearly* (``lambda_0 = 0``, ``+beta_growth`` per optimizer step; the reference code adds
    ``reg_rate`` per epoch, the paper's "lambda_t = lambda * t"; we add per step so the
    schedule does not depend on the epoch length). Hard sign at deploy. The reference code's
    "freeze" (binarise and stop updating the signs at epoch 200 of 300) is not built: the
    schedule's default makes the prox collapse the weights onto exactly +-1 well before the
    end of a 30-epoch run (cumulative prox ``lr * growth * t^2 / 2`` reaches 1 at about
    4,500 steps with lr 1e-3), after which they stay there unless a gradient step exceeds
    the prox step.
``waq`` -- BNN-WAQ (Hubara et al. 2016)
    Weights as in ``bc``, *and* the hidden activations binarised: ``sign(hardtanh(h))`` in the
    forward pass, straight-through with the hard-tanh derivative ``1{|h| <= 1}`` backward.

Annealing (one mechanism for ``mdtanh``, ``gdtanh``, ``pmf`` and ``pq``): every binary layer
has a 0-dim buffer ``beta`` (the tanh slope, the softmax inverse temperature, or ProxQuant's
``lambda_t``), advanced once per optimizer step by :meth:`BinarySmallCNN.after_optimizer_step`
(``quantadv.models.train`` calls it after ``optimizer.step()``): ``beta <- min(beta *
beta_growth, beta_max)`` (``mdtanh``, ``gdtanh``, ``pmf``: geometric, ``beta_0 = 1``) or
``beta <- min(beta + beta_growth, beta_max)`` (``pq``: linear, ``beta_0 = 0``). ``beta`` is
a buffer, so checkpoints resume it exactly; it advances per step, not per forward pass, so
losses that run the model twice per step (TRADES) anneal at the same rate. The defaults
(:data:`ANNEALING`) are set for about 30 epochs of Fashion-MNIST at batch 128 (14,070 steps);
the papers anneal per ``k`` iterations (PMF ``x1.05`` per 500 to ``x1.1`` per 1,000 on
CIFAR-10, MD ``x1.02`` per 200), which is ``growth ** (1 / k)`` per step here; ``gdtanh``
and ``pmf`` default to ``x1.0005`` per step (``beta`` ~1,100 after 14,070 steps). ``mdtanh``
keeps its original ``x1.015`` (it saturates at 1e4 after ~620 steps; pass ``--beta-growth``
for long runs).

What is binary and what stays float (say-so of the brief; the paper, Sec. 7, keeps "biases,
batchnorm and last layer parameters floating-point" for PQ and BNN-WAQ):

- binary (+-1, no scale): the weights of the second convolution and of the 1024-unit FC
  layer (99.7% of the 3.27 M parameters);
- float: the first convolution and the last FC layer (the usual practice for BNNs since
  Courbariaux/Hubara), all biases, and three batch-norm layers (after conv1, conv2, FC1024).
  Batch norm takes the place of a per-layer scale: the binary weights are exactly +-1.

The network an attack sees is the **deployed** one: ``model.eval()`` computes with
``sign(w)`` only; a model loaded from the zoo holds the +-1 weights themselves (the latent
float weights are not stored). Gradients with respect to the *input* go through the
binarised weights exactly; for ``waq`` they go through the activation's straight-through
estimator (the sign itself has zero derivative almost everywhere, so without it every input
gradient would be 0; this is also what the paper's PyTorch models do).

Storage (:func:`packed_state` / :func:`load_packed`): the binary weights as bits
(``numpy.packbits`` of the deployed sign ``>= 0``, uint8), everything else float32: about
0.5 MB per SmallCNN instead of 13 MB.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InputError, ModelError
from .architectures import Normalize

__all__ = [
    "ANNEALING",
    "BINARY_METHODS",
    "BinaryConv2d",
    "BinaryLinear",
    "BinarySmallCNN",
    "binary_layers",
    "deployed_weights",
    "anneal_schedule",
    "from_float",
    "load_packed",
    "packed_state",
    "prox_binary",
    "sign_ste",
]

#: Binarisation methods accepted by ``quantadv train --method``.
BINARY_METHODS = ("bc", "mdtanh", "waq", "pq", "pmf", "gdtanh")

#: The annealed methods: (shape of the ``beta`` schedule, default ``beta_growth`` per
#: optimizer step, default ``beta_max``). See the module docstring.
ANNEALING: dict[str, tuple[str, float, float]] = {
    "mdtanh": ("geometric", 1.015, 1e4),
    "gdtanh": ("geometric", 1.0005, 1e4),
    "pmf": ("geometric", 1.0005, 1e4),
    "pq": ("linear", 1e-4, 1e4),
}

#: Largest allowed ``beta_max``: ``beta * w`` must stay far from float32 overflow (3.4e38)
#: and a float32 ``beta`` must still change when multiplied by the growth factor.
BETA_LIMIT = 1e6

#: Format tag written into the manifest of packed binary models.
PACKED_FORMAT = "binary-signbits-v1"


class _SignSTE(torch.autograd.Function):
    """``sign`` forward (``+1`` for ``x >= 0``, else ``-1``), ``1{|x| <= 1}`` backward."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return torch.where(x >= 0, torch.ones_like(x), -torch.ones_like(x))

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:  # type: ignore[override]
        ctx.save_for_backward(inputs[0])

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        (x,) = ctx.saved_tensors
        return grad * (x.abs() <= 1).to(grad.dtype)


def sign_ste(x: torch.Tensor) -> torch.Tensor:
    """Binarise to +-1 with the straight-through estimator of Hubara et al. (2016).

    Forward: ``+1`` where ``x >= 0``, ``-1`` elsewhere (never 0). Backward: the incoming
    gradient times ``1{|x| <= 1}`` (the derivative of hard-tanh). Works under
    ``torch.func`` transforms (``vmap``, ``jacrev``).
    """
    return _SignSTE.apply(x)


def anneal_schedule(method: str, beta_growth: float | None = None,
                    beta_max: float | None = None) -> tuple[str, float, float] | None:
    """The checked ``(shape, beta_growth, beta_max)`` of ``method`` (``None``: not annealed).

    ``None`` arguments take the method's default from :data:`ANNEALING`. Raises
    :class:`~quantadv.errors.InputError` for a schedule that would stall, run backwards, reach
    ``beta = 0`` (a division by zero in the temperature ``1 / beta``) or overflow.
    """
    if method not in BINARY_METHODS:
        raise InputError(f"unknown binarisation method {method!r}; choose one of {', '.join(BINARY_METHODS)}")
    if method not in ANNEALING:
        if beta_growth is not None or beta_max is not None:
            raise InputError(f"--beta-growth/--beta-max set an annealing schedule, which --method {method} "
                             f"does not have; they go with {', '.join(ANNEALING)}")
        return None
    shape, growth0, max0 = ANNEALING[method]
    growth = growth0 if beta_growth is None else beta_growth
    cap = max0 if beta_max is None else beta_max
    try:
        growth, cap = float(growth), float(cap)
    except (TypeError, ValueError):
        raise InputError(f"beta_growth and beta_max must be numbers, got {beta_growth!r}, {beta_max!r}") from None
    if shape == "geometric" and not (math.isfinite(growth) and growth > 1.0):
        raise InputError(f"--beta-growth for {method} multiplies beta (from 1) after every optimizer step and "
                         f"must be a finite number > 1, got {growth!r} (<= 0 reaches beta = 0, a division "
                         "by zero in the temperature 1/beta; 1 or less never anneals)")
    if shape == "linear" and not (math.isfinite(growth) and growth > 0.0):
        raise InputError(f"--beta-growth for pq is the increase of lambda per optimizer step and must be a "
                         f"finite number > 0, got {growth!r}")
    if not (math.isfinite(cap) and 0.0 < cap <= BETA_LIMIT) or (shape == "geometric" and cap < 1.0):
        low = "[1" if shape == "geometric" else "(0"
        raise InputError(f"--beta-max for {method} must be a finite number in {low}, {BETA_LIMIT:g}] (larger "
                         f"overflows beta * w in float32), got {cap!r}")
    return shape, growth, cap


def prox_binary(w: torch.Tensor, amount: float) -> torch.Tensor:
    """ProxQuant's binary proximal step (Bai et al. 2019, Sec. 3.2, W-shaped regulariser).

    The prox of ``amount * dist(w, {-1, +1})``: soft thresholding of ``w`` toward its sign
    ``s`` (``+1`` for ``w >= 0``): ``s + sign(w - s) * max(|w - s| - amount, 0)``. Each entry
    moves by ``min(amount, |w - s|)`` and never crosses its sign.
    """
    if not (math.isfinite(amount) and amount >= 0):
        raise InputError(f"the prox amount must be a finite number >= 0, got {amount!r}")
    s = torch.where(w >= 0, torch.ones_like(w), -torch.ones_like(w))
    d = w - s
    return torch.where(d.abs() <= amount, s, w - torch.sign(d) * amount)


class _BinaryMixin:
    """Shared weight binarisation of :class:`BinaryConv2d` and :class:`BinaryLinear`."""

    weight: nn.Parameter
    method: str
    beta: torch.Tensor
    training: bool

    def _init_binary(self, method: str, beta_growth: float | None, beta_max: float | None) -> None:
        schedule = anneal_schedule(method, beta_growth, beta_max)
        self.method = method
        self.anneal_shape, self.beta_growth, self.beta_max = schedule or ("none", 1.0, 1.0)
        # annealing state (tanh slope, softmax inverse temperature, or ProxQuant's lambda_t);
        # unused by bc/waq, kept for a uniform state_dict
        self.register_buffer("beta", torch.zeros(()) if method == "pq" else torch.ones(()))  # type: ignore[attr-defined]
        if method == "pmf":  # the logit of level -1 (``weight`` is the logit of +1)
            self.weight_neg = nn.Parameter(torch.empty_like(self.weight))
            nn.init.kaiming_uniform_(self.weight_neg, a=math.sqrt(5))  # as nn.Linear/nn.Conv2d init ``weight``

    def latent_sign(self) -> torch.Tensor:
        """The float tensor whose sign (``>= 0`` -> ``+1``) is the deployed weight."""
        if self.method == "pmf":  # argmax over the two levels; ties go to +1
            return self.weight - self.weight_neg
        return self.weight

    def deployed_weight(self) -> torch.Tensor:
        """The deployed weight: exactly +-1, a constant for any gradient."""
        z = self.latent_sign().detach()
        return torch.where(z >= 0, torch.ones_like(z), -torch.ones_like(z))

    def binary_weight(self) -> torch.Tensor:
        """The weight the forward pass uses: ``sign(w)`` (eval) or the training surrogate."""
        if not self.training:  # deployed: exactly +-1, constants for any input gradient
            return self.deployed_weight()
        w = self.weight
        beta = self.beta.clone()  # the buffer may be annealed before this graph is used
        if self.method == "mdtanh":  # forward tanh(beta w), gradient straight through to w
            return w + (torch.tanh(beta * w) - w).detach()
        if self.method == "gdtanh":  # plain gradient through tanh(beta w)
            return torch.tanh(beta * w)
        if self.method == "pmf":  # mean of softmax(beta * u) over the levels (+1, -1):
            # p(+1) - p(-1) = tanh(beta * (u(+1) - u(-1)) / 2) exactly, with the same exact
            # derivative (2 beta p(+1) p(-1) w.r.t. u(+1)), without a stacked softmax
            return torch.tanh(0.5 * beta * (w - self.weight_neg))
        if self.method == "pq":  # float weights in training; the prox step follows each update
            return w
        with torch.no_grad():
            w.clamp_(-1.0, 1.0)  # BinaryConnect: latent weights live in [-1, 1]
        return sign_ste(w)

    @torch.no_grad()
    def anneal(self) -> None:
        """Advance ``beta`` by one optimizer step of its schedule (no-op for bc/waq)."""
        if self.anneal_shape == "geometric":
            self.beta.mul_(self.beta_growth).clamp_(max=self.beta_max)
        elif self.anneal_shape == "linear":
            self.beta.add_(self.beta_growth).clamp_(max=self.beta_max)

    @torch.no_grad()
    def after_optimizer_step(self, lr: float) -> None:
        """PQ's prox step (amount ``lr * lambda_t``, then clip to [-1, 1]); then anneal ``beta``."""
        if self.method == "pq":
            self.weight.copy_(prox_binary(self.weight, float(lr) * float(self.beta)).clamp_(-1.0, 1.0))
        self.anneal()


class BinaryConv2d(_BinaryMixin, nn.Conv2d):
    """``nn.Conv2d`` whose weight is binarised as its ``method`` says (bias stays float)."""

    def __init__(self, *args: Any, method: str = "bc", beta_growth: float | None = None,
                 beta_max: float | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._init_binary(method, beta_growth, beta_max)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(x, self.binary_weight(), self.bias)


class BinaryLinear(_BinaryMixin, nn.Linear):
    """``nn.Linear`` whose weight is binarised as its ``method`` says (bias stays float)."""

    def __init__(self, *args: Any, method: str = "bc", beta_growth: float | None = None,
                 beta_max: float | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._init_binary(method, beta_growth, beta_max)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.binary_weight(), self.bias)


class BinarySmallCNN(nn.Module):
    """SmallCNN with binary conv2 and FC1024 (see the module docstring for what stays float).

    Layers: ``Normalize`` -> conv 5x5/32 (float) -> BN -> act -> max-pool 2 -> conv 5x5/64
    (binary) -> BN -> act -> max-pool 2 -> FC 1024 (binary) -> BN -> act -> FC classes (float).
    ``act`` is ReLU, except ``sign_ste(hardtanh)`` for ``waq``. Inputs must
    be 28x28 (Fashion-MNIST/MNIST size).
    """

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 10,
        mean: float | Sequence[float] = 0.0,
        std: float | Sequence[float] = 1.0,
        method: str = "bc",
        beta_growth: float | None = None,
        beta_max: float | None = None,
    ) -> None:
        super().__init__()
        anneal_schedule(method, beta_growth, beta_max)  # one-line errors before any layer is built
        self.method = method
        kw = {"method": method, "beta_growth": beta_growth, "beta_max": beta_max}
        self.normalize = Normalize(mean, std)
        self.conv1 = nn.Conv2d(in_channels, 32, 5, padding=2)
        self.bn1 = nn.BatchNorm2d(32)
        self.conv2 = BinaryConv2d(32, 64, 5, padding=2, **kw)
        self.bn2 = nn.BatchNorm2d(64)
        self.fc1 = BinaryLinear(64 * 7 * 7, 1024, **kw)
        self.bn3 = nn.BatchNorm1d(1024)
        self.fc2 = nn.Linear(1024, num_classes)

    def after_optimizer_step(self, lr: float) -> None:
        """Per-step update of every binary layer: PQ's prox step, then the ``beta`` annealing.

        ``quantadv.models.train`` calls this after each ``optimizer.step()`` with the current
        learning rate; a hand-written training loop must do the same.
        """
        for layer in binary_layers(self).values():
            layer.after_optimizer_step(lr)

    def _act(self, h: torch.Tensor) -> torch.Tensor:
        if self.method == "waq":
            return sign_ste(F.hardtanh(h))
        return F.relu(h)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or tuple(x.shape[-2:]) != (28, 28):
            raise InputError(f"BinarySmallCNN expects NCHW 28x28 images, got shape {tuple(x.shape)}")
        h = F.max_pool2d(self._act(self.bn1(self.conv1(self.normalize(x)))), 2)
        h = F.max_pool2d(self._act(self.bn2(self.conv2(h))), 2)
        h = self._act(self.bn3(self.fc1(h.flatten(1))))
        return self.fc2(h)


def binary_layers(model: nn.Module) -> dict[str, nn.Module]:
    """The binarised layers of ``model`` by qualified name."""
    return {n: m for n, m in model.named_modules() if isinstance(m, _BinaryMixin)}


@torch.no_grad()
def deployed_weights(model: nn.Module) -> dict[str, torch.Tensor]:
    """The weights the deployed (eval-mode) network computes with: exactly +-1 per layer."""
    return {f"{n}.weight": m.deployed_weight() for n, m in binary_layers(model).items()}


@torch.no_grad()
def from_float(float_model: nn.Module, method: str, **arch_kwargs: Any) -> BinarySmallCNN:
    """A :class:`BinarySmallCNN` initialised from a trained float :class:`SmallCNN` (fine-tuning).

    The first convolution, the last layer and all biases are copied; the binary layers'
    latent weights start at ``w / max|w|`` (so their signs are the float network's signs).
    Batch norm starts at the identity.
    """
    model = BinarySmallCNN(method=method, **arch_kwargs)
    src = dict(float_model.state_dict())
    pairs = {"conv1": "features.0", "conv2": "features.3", "fc1": "classifier.1", "fc2": "classifier.3"}
    try:
        model.normalize.load_state_dict({"mean": src["normalize.mean"], "std": src["normalize.std"]})
        for dst, s in pairs.items():
            layer = getattr(model, dst)
            w = src[f"{s}.weight"]
            if dst in ("conv2", "fc1"):
                w = w / w.abs().max().clamp_min(1e-12)
            layer.weight.copy_(w)
            layer.bias.copy_(src[f"{s}.bias"])
            if dst in ("conv2", "fc1") and method == "pmf":
                layer.weight_neg.zero_()  # argmax level = sign of the float weight
    except (KeyError, RuntimeError) as exc:
        raise ModelError(f"cannot initialise a binary SmallCNN from this model ({exc}); "
                         "--init must be a small-cnn with the same input and class count") from None
    return model


@torch.no_grad()
def packed_state(model: BinarySmallCNN) -> dict[str, torch.Tensor]:
    """The deployed model as tensors: binary weights as sign bits, the rest float32.

    Each binary layer ``L`` becomes ``L.weight_bits`` (uint8, ``numpy.packbits`` of the
    deployed sign ``>= 0`` in row-major order); its shape is known from the architecture.
    Latent float weights (PMF: both level logits) and the annealing state ``beta`` are not
    stored (the deployed network has no use for them).
    """
    state = {}
    binary = binary_layers(model)
    for key, value in model.state_dict().items():
        layer = key.rsplit(".", 1)[0]
        if layer in binary and key.endswith(".weight"):
            signs = binary[layer].latent_sign().detach().cpu() >= 0
            bits = np.packbits(signs.numpy().astype(np.uint8).ravel())
            state[f"{layer}.weight_bits"] = torch.from_numpy(bits)
        elif layer in binary and (key.endswith(".beta") or key.endswith(".weight_neg")):
            continue
        elif key.endswith("num_batches_tracked"):
            continue
        else:
            state[key] = value.detach().contiguous().cpu()
    return state


def load_packed(state: dict[str, torch.Tensor], meta: dict[str, Any]) -> BinarySmallCNN:
    """Rebuild a deployed :class:`BinarySmallCNN` from :func:`packed_state` tensors (eval mode)."""
    kwargs = dict(meta.get("arch_kwargs", {}))
    method = kwargs.pop("method", None) or meta.get("binary", {}).get("method")
    kwargs = {k: v for k, v in kwargs.items() if k in ("in_channels", "num_classes", "mean", "std")}
    model = BinarySmallCNN(method=method, **kwargs)
    full = {}
    reference = model.state_dict()
    binary = binary_layers(model)
    try:
        for key, ref in reference.items():
            layer = key.rsplit(".", 1)[0]
            if layer in binary and key.endswith(".weight"):
                bits = state[f"{layer}.weight_bits"].numpy()
                signs = np.unpackbits(bits)[: ref.numel()].astype(np.float32) * 2 - 1
                if signs.size != ref.numel():
                    raise KeyError(f"{layer}.weight_bits has too few bits")
                full[key] = torch.from_numpy(signs).view_as(ref).clone()
            elif key.endswith(".weight_neg"):  # PMF: logit of -1 at 0, so the argmax is the sign
                full[key] = torch.zeros_like(ref)
            elif key.endswith(".beta") or key.endswith("num_batches_tracked"):
                full[key] = ref
            else:
                full[key] = state[key]
        model.load_state_dict(full, strict=True)
    except (KeyError, RuntimeError) as exc:
        raise ModelError(f"packed binary weights do not fit BinarySmallCNN({method}): {exc}") from None
    return model.eval()


def check_binary_arch(method: str, arch: str) -> None:
    """One-line error unless ``arch`` has a binary variant (only ``small-cnn`` has)."""
    if arch != "small-cnn":
        raise InputError(f"--method {method} trains a binary network, which exists for --arch small-cnn only, "
                         f"got {arch!r}")


def binary_training_model(init: nn.Module | None, method: str, arch: str, kwargs: dict[str, Any],
                          beta_growth: float | None = None, beta_max: float | None = None) -> BinarySmallCNN:
    """The model ``quantadv train --method bc|mdtanh|waq|pq|pmf|gdtanh`` trains.

    ``init`` is the ``--init`` model: a float SmallCNN (fine-tuning through :func:`from_float`)
    or a binary one of the same method (trained further; its schedule is replaced by
    ``beta_growth``/``beta_max`` when given, its ``beta`` is kept); ``None`` builds a fresh one.
    """
    check_binary_arch(method, arch)
    schedule = anneal_schedule(method, beta_growth, beta_max)
    sched = {"beta_growth": beta_growth, "beta_max": beta_max}
    arch_kwargs = {k: kwargs[k] for k in ("in_channels", "num_classes", "mean", "std") if k in kwargs}
    if init is None:
        return BinarySmallCNN(method=method, **arch_kwargs, **sched)
    if isinstance(init, BinarySmallCNN):
        if init.method != method:
            raise InputError(f"--init is a {init.method!r} binary network but --method is {method!r}")
        if schedule is not None:
            for layer in binary_layers(init).values():
                layer.anneal_shape, layer.beta_growth, layer.beta_max = schedule
        return init
    return from_float(init, method, **arch_kwargs, **sched)


def binary_manifest(model: BinarySmallCNN) -> dict[str, Any]:
    """The ``binary`` entry of a packed model's manifest (what is binary, what is float)."""
    layer = next(iter(binary_layers(model).values()))
    schedule = None
    if model.method in ANNEALING:
        schedule = {"shape": layer.anneal_shape, "beta_growth": layer.beta_growth, "beta_max": layer.beta_max,
                    "per": "optimizer step", "final_beta": float(layer.beta)}
    return {
        "method": model.method,
        "annealing": schedule,
        "format": PACKED_FORMAT,
        "binary_layers": sorted(binary_layers(model)),
        "float_layers": ["conv1", "fc2", "bn1", "bn2", "bn3", "all biases"],
        "activations": "binary (sign, hard-tanh STE)" if model.method == "waq" else "float ReLU",
    }
