"""Binary networks (paper 004, Sec. 3): BinaryConnect, MD-tanh-S and BNN-WAQ on the SmallCNN.

Three binarisation methods the paper attacks, on the SmallCNN layout of
:class:`~quantadv.models.SmallCNN` (conv 5x5/32 - conv 5x5/64 - FC 1024 - FC classes):

``bc`` -- BinaryConnect (Courbariaux et al. 2015)
    Forward with ``sign(w)``; backward with the straight-through estimator (the gradient
    with respect to ``sign(w)`` is applied to the latent float weight ``w``, times
    ``1{|w| <= 1}``); latent weights are clipped to ``[-1, 1]`` before every training
    forward pass (equivalent to clipping after each optimizer step).
``mdtanh`` -- MD-tanh-S (Ajanthan et al., "Mirror descent view for neural network quantization")
    Training uses ``tanh(beta * w)`` with ``beta`` annealed upward (multiplied by
    ``beta_growth`` after every training forward pass, capped at ``beta_max``; ``beta`` is a
    buffer, so checkpoints resume it exactly); at test time the weights are ``sign(w)``.
``waq`` -- BNN-WAQ (Hubara et al. 2016)
    Weights as in ``bc``, *and* the hidden activations binarised: ``sign(hardtanh(h))`` in the
    forward pass, straight-through with the hard-tanh derivative ``1{|h| <= 1}`` backward.

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
(``numpy.packbits`` of ``w >= 0``, uint8), everything else float32: about 0.5 MB per
SmallCNN instead of 13 MB.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InputError, ModelError
from .architectures import Normalize

__all__ = [
    "BINARY_METHODS",
    "BinaryConv2d",
    "BinaryLinear",
    "BinarySmallCNN",
    "binary_layers",
    "deployed_weights",
    "from_float",
    "load_packed",
    "packed_state",
    "sign_ste",
]

#: Binarisation methods accepted by ``quantadv train --method``.
BINARY_METHODS = ("bc", "mdtanh", "waq")

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


class _BinaryMixin:
    """Shared weight binarisation of :class:`BinaryConv2d` and :class:`BinaryLinear`."""

    weight: nn.Parameter
    method: str
    beta: torch.Tensor
    training: bool

    def _init_binary(self, method: str, beta_growth: float, beta_max: float) -> None:
        if method not in BINARY_METHODS:
            raise InputError(f"unknown binarisation method {method!r}; choose one of {', '.join(BINARY_METHODS)}")
        self.method = method
        self.beta_growth = float(beta_growth)
        self.beta_max = float(beta_max)
        # annealing state of MD-tanh-S (unused by the other methods, kept for a uniform state_dict)
        self.register_buffer("beta", torch.ones(()))  # type: ignore[attr-defined]

    def binary_weight(self) -> torch.Tensor:
        """The weight the forward pass uses: ``sign(w)`` (eval) or the training surrogate."""
        w = self.weight
        if not self.training:  # deployed: exactly +-1, constants for any input gradient
            return torch.where(w >= 0, torch.ones_like(w), -torch.ones_like(w)).detach()
        if self.method == "mdtanh":
            out = torch.tanh(self.beta.clone() * w)
            with torch.no_grad():
                self.beta.mul_(self.beta_growth).clamp_(max=self.beta_max)
            return out
        with torch.no_grad():
            w.clamp_(-1.0, 1.0)  # BinaryConnect: latent weights live in [-1, 1]
        return sign_ste(w)


class BinaryConv2d(_BinaryMixin, nn.Conv2d):
    """``nn.Conv2d`` whose weight is binarised as its ``method`` says (bias stays float)."""

    def __init__(self, *args: Any, method: str = "bc", beta_growth: float = 1.015,
                 beta_max: float = 1e4, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._init_binary(method, beta_growth, beta_max)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(x, self.binary_weight(), self.bias)


class BinaryLinear(_BinaryMixin, nn.Linear):
    """``nn.Linear`` whose weight is binarised as its ``method`` says (bias stays float)."""

    def __init__(self, *args: Any, method: str = "bc", beta_growth: float = 1.015,
                 beta_max: float = 1e4, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._init_binary(method, beta_growth, beta_max)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.binary_weight(), self.bias)


class BinarySmallCNN(nn.Module):
    """SmallCNN with binary conv2 and FC1024 (see the module docstring for what stays float).

    Layers: ``Normalize`` -> conv 5x5/32 (float) -> BN -> act -> max-pool 2 -> conv 5x5/64
    (binary) -> BN -> act -> max-pool 2 -> FC 1024 (binary) -> BN -> act -> FC classes (float).
    ``act`` is ReLU for ``bc``/``mdtanh`` and ``sign_ste(hardtanh)`` for ``waq``. Inputs must
    be 28x28 (Fashion-MNIST/MNIST size).
    """

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 10,
        mean: float | Sequence[float] = 0.0,
        std: float | Sequence[float] = 1.0,
        method: str = "bc",
        beta_growth: float = 1.015,
        beta_max: float = 1e4,
    ) -> None:
        super().__init__()
        if method not in BINARY_METHODS:
            raise InputError(f"unknown binarisation method {method!r}; choose one of {', '.join(BINARY_METHODS)}")
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
    return {f"{n}.weight": torch.where(m.weight >= 0, 1.0, -1.0).to(m.weight.dtype)
            for n, m in binary_layers(model).items()}


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
    except (KeyError, RuntimeError) as exc:
        raise ModelError(f"cannot initialise a binary SmallCNN from this model ({exc}); "
                         "--init must be a small-cnn with the same input and class count") from None
    return model


@torch.no_grad()
def packed_state(model: BinarySmallCNN) -> dict[str, torch.Tensor]:
    """The deployed model as tensors: binary weights as sign bits, the rest float32.

    Each binary layer ``L`` becomes ``L.weight_bits`` (uint8, ``numpy.packbits`` of
    ``w >= 0`` in row-major order); its shape is known from the architecture. Latent float
    weights and the MD-tanh annealing state are not stored (the deployed network has no use
    for them).
    """
    state = {}
    binary = binary_layers(model)
    for key, value in model.state_dict().items():
        layer = key.rsplit(".", 1)[0]
        if layer in binary and key.endswith(".weight"):
            bits = np.packbits((value.detach().cpu() >= 0).numpy().astype(np.uint8).ravel())
            state[f"{layer}.weight_bits"] = torch.from_numpy(bits)
        elif layer in binary and key.endswith(".beta"):
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
            elif key.endswith(".beta") or key.endswith("num_batches_tracked"):
                full[key] = ref
            else:
                full[key] = state[key]
        model.load_state_dict(full, strict=True)
    except (KeyError, RuntimeError) as exc:
        raise ModelError(f"packed binary weights do not fit BinarySmallCNN({method}): {exc}") from None
    return model.eval()


def binary_training_model(init: nn.Module | None, method: str, arch: str, kwargs: dict[str, Any]) -> BinarySmallCNN:
    """The model ``quantadv train --method bc|mdtanh|waq`` trains.

    ``init`` is the ``--init`` model: a float SmallCNN (fine-tuning through :func:`from_float`)
    or a binary one of the same method (trained further); ``None`` builds a fresh one.
    """
    if arch != "small-cnn":
        raise InputError(f"binary methods are implemented for --arch small-cnn only, got {arch!r}")
    arch_kwargs = {k: kwargs[k] for k in ("in_channels", "num_classes", "mean", "std") if k in kwargs}
    if init is None:
        return BinarySmallCNN(method=method, **arch_kwargs)
    if isinstance(init, BinarySmallCNN):
        if init.method != method:
            raise InputError(f"--init is a {init.method!r} binary network but --method is {method!r}")
        return init
    return from_float(init, method, **arch_kwargs)


def binary_manifest(model: BinarySmallCNN) -> dict[str, Any]:
    """The ``binary`` entry of a packed model's manifest (what is binary, what is float)."""
    return {
        "method": model.method,
        "format": PACKED_FORMAT,
        "binary_layers": sorted(binary_layers(model)),
        "float_layers": ["conv1", "fc2", "bn1", "bn2", "bn3", "all biases"],
        "activations": "binary (sign, hard-tanh STE)" if model.method == "waq" else "float ReLU",
    }
