"""Deployed quantized models: a torchao int8/int4 forward with the float model's gradient.

:func:`deploy` turns a float model into what a user would ship: its weights (and, depending on
the scheme, its activations) quantized to integers with `torchao <https://github.com/pytorch/ao>`_
(PyPI ``torchao``, ``pip install 'quantadv[deploy]'``; not ``torch.ao.quantization``, which is
deprecated). Not every quantized model has a gradient: with dynamic int8 and PT2E static int8
the output of torchao's model has no ``grad_fn`` (a gradient attack stops with "element 0 of
tensors does not require grad"), while the weight-only schemes are differentiable in the input
through their dequantized weights. So :func:`deploy` returns a :class:`Deployed` module whose

* **forward** is the quantized model, bit for bit (every prediction, every success check of an
  attack, is the deployed model's), and whose
* **backward** is the float model's at the same input: BPDA with the float shadow (Athalye,
  Carlini & Wagner 2018, "Obfuscated Gradients Give a False Sense of Security", Sec. 4.1: replace
  a non-differentiable layer by a differentiable approximation on the backward pass only; here the
  approximation of the whole quantized network is the network it was quantized from).

Every attack of :mod:`quantadv.attacks` therefore runs on a :class:`Deployed` model unchanged,
and judges success on the quantized forward (the engine judges on the logits the forward
returns).

Schemes (``SCHEMES``), all on CPU with torch 2.13 and torchao 0.18:

``"int8-weight"``
    Weight-only int8: every ``nn.Linear`` weight symmetric int8, one scale per output row
    (torchao ``Int8WeightOnlyConfig``); activations stay float.
``"int8-dynamic"``
    Dynamic int8 activations and int8 weights on every ``nn.Linear``: each input row is
    quantized to int8 with its own scale at run time and the product is an int8 matmul
    (torchao ``Int8DynamicActivationInt8WeightConfig``; the reduced range is used on CPUs
    without VNNI, as torchao advises).
``"int8-static"``
    Static post-training quantization through PT2E: the model is captured with
    ``torch.export``, annotated by torchao's ``X86InductorQuantizer`` (uint8 activations with
    scales fixed from the ``calibration`` images, int8 per-channel weights, convolutions *and*
    linear layers), calibrated and converted (``prepare_pt2e`` / ``convert_pt2e``). The result
    is the quantize/dequantize reference graph, which runs in eager mode and computes what the
    x86 int8 kernels compute after ``torch.compile``. Needs ``calibration``.
``"int4-weight"``
    Weight-only int4, groups of 32 input features (torchao ``IntxWeightOnlyConfig`` with
    ``torch.int4``, values kept unpacked in int8 and dequantized at the matmul). torchao's own
    ``Int4WeightOnlyConfig`` does not run on CPU in 0.18: its ``plain`` and ``preshuffled``
    formats need the CUDA ``mslk`` kernels, ``plain_int32`` raises "does not support device
    'cpu' yet", and ``tile_packed_to_4d`` needs bfloat16 weights and then CUDA.

torchao's int8 tensors implement ``linear`` but not ``conv2d`` (``Int8Tensor`` raises
``NotImplementedError`` for ``aten.convolution``), so the three ``quantize_`` schemes leave
convolutions in float32; :attr:`Deployed.quantized_layers` lists what was quantized. For the
zoo's SmallCNN the linear layers hold 98.4% of the parameters.
"""

from __future__ import annotations

import copy
import logging
import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from .._validate import check_choice, check_images
from ..errors import InputError, ModelError

__all__ = ["SCHEMES", "Deployed", "deploy"]

#: the quantization schemes :func:`deploy` knows
SCHEMES = ("int8-weight", "int8-dynamic", "int8-static", "int4-weight")
#: input features per int4 scale (``"int4-weight"``)
INT4_GROUP = 32
_CALIBRATION_BATCH = 256


def _torchao() -> Any:
    # torchao warns at import about its CUDA-only extensions (mxfp8, cutlass) that cannot load on a
    # CPU build of torch, and torch about an Enum torchao registers with pytree; neither concerns
    # what is used here, so that one import is kept quiet
    logs = [logging.getLogger(name) for name in ("torchao", "torch.utils._pytree")]
    levels = [log.level for log in logs]
    for log in logs:
        log.setLevel(logging.ERROR)
    try:
        import torchao
    except ImportError:
        raise InputError(
            "deployed quantized models need the optional dependency torchao: pip install 'quantadv[deploy]'"
        ) from None
    finally:
        for log, level in zip(logs, levels, strict=True):
            log.setLevel(level)
    return torchao


class _Substitute(torch.autograd.Function):
    """Forward: ``quantized(x)``; backward: the gradient flows to ``f`` (the float model's output).

    The quantized model runs inside the Function's forward, where autograd (and ``torch.func``'s
    grad transforms) do not record, so torchao's own autograd Functions never see a transform.
    Written with ``setup_context`` and a generated vmap rule so that ``torch.func.vjp`` + ``vmap``
    (:func:`quantadv.diagnostics.input_jacobian` off the CPU) work too.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(f, x, quantized):  # type: ignore[override]
        return quantized(x)

    @staticmethod
    def setup_context(ctx, inputs, output):  # type: ignore[override]
        pass

    @staticmethod
    def backward(ctx, grad_out):  # type: ignore[override]
        return grad_out, None, None


class Deployed(nn.Module):
    """A quantized model for inference whose backward pass is its float model's.

    Built by :func:`deploy`; see the module docstring. ``forward(x)`` returns the quantized
    model's logits exactly. When gradients are being recorded for ``x`` (``x.requires_grad``
    under grad mode) the float model is run on ``x`` as well and the gradient of the output
    with respect to ``x`` is the float model's: BPDA with the float shadow (Athalye et al.
    2018, Sec. 4.1). Otherwise only the quantized model runs.

    Attributes
    ----------
    float_model : nn.Module
        A copy of the model that was quantized (the shadow that gives the gradients).
    quantized : nn.Module
        The torchao-quantized model (a ``torch.fx.GraphModule`` for ``"int8-static"``).
    scheme : str
        One of :data:`SCHEMES`.
    quantized_layers : tuple of str
        The names (in ``float_model``) of the layers whose weights are integers.

    The module is always in eval mode (``train()`` raises): a deployed model is not trained.
    Inputs are never modified.
    """

    def __init__(self, float_model: nn.Module, quantized: nn.Module, scheme: str,
                 quantized_layers: tuple[str, ...]) -> None:
        super().__init__()
        self.float_model = float_model
        self.quantized = quantized
        self.scheme = scheme
        self.quantized_layers = tuple(quantized_layers)
        self.float_model.eval()
        self.training = False

    def train(self, mode: bool = True) -> Deployed:
        if mode:
            raise InputError("a Deployed model is for inference and cannot be put in training mode; "
                             "train the float model and call quantadv.models.deploy again")
        self.float_model.eval()
        self.training = False
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (torch.is_grad_enabled() and x.requires_grad):
            with torch.no_grad():
                return self.quantized(x)
        f = self.float_model(x)
        return _Substitute.apply(f, x.detach(), self.quantized)

    def extra_repr(self) -> str:
        return f"scheme={self.scheme!r}, quantized_layers={list(self.quantized_layers)}"


def _linear_layers(model: nn.Module, scheme: str) -> list[str]:
    """Names of the ``nn.Linear`` layers to quantize; a layer that cannot be is named in a ModelError."""
    names = []
    for name, module in model.named_modules():
        if not isinstance(module, nn.Linear):
            continue
        if type(module).forward is not nn.Linear.forward:
            raise ModelError(
                f"layer {name!r} ({type(module).__name__}) cannot be quantized with {scheme!r}: it is an nn.Linear "
                "with its own forward, and torchao's integer weights only implement F.linear; "
                "replace it by a plain nn.Linear or choose 'int8-static'"
            )
        if scheme == "int4-weight" and module.in_features % INT4_GROUP:
            raise ModelError(
                f"layer {name!r} has {module.in_features} input features, not a multiple of the int4 group size "
                f"{INT4_GROUP}; 'int4-weight' cannot quantize it (use an int8 scheme)"
            )
        names.append(name)
    if not names:
        raise ModelError(
            f"the model has no nn.Linear layer, so {scheme!r} has nothing to quantize (torchao's int8 and int4 "
            "weights implement linear layers only, not convolutions); use 'int8-static', which also quantizes "
            "convolutions"
        )
    return names


def _quantize_linear(model: nn.Module, scheme: str, calibration: torch.Tensor | None) -> tuple[nn.Module, list[str]]:
    _torchao()
    from torchao.quantization import (
        Int8DynamicActivationInt8WeightConfig,
        Int8WeightOnlyConfig,
        IntxWeightOnlyConfig,
        quantize_,
    )
    from torchao.quantization.granularity import PerGroup
    from torchao.utils import should_reduce_range

    names = _linear_layers(model, scheme)
    config: Any
    if scheme == "int8-weight":
        config = Int8WeightOnlyConfig(set_inductor_config=False)
    elif scheme == "int8-dynamic":
        device = next(model.parameters()).device
        config = Int8DynamicActivationInt8WeightConfig(set_inductor_config=False,
                                                       reduce_range=should_reduce_range(device))
    else:
        config = IntxWeightOnlyConfig(weight_dtype=torch.int4, granularity=PerGroup(INT4_GROUP))
    quantized = copy.deepcopy(model).eval()
    modules = dict(quantized.named_modules())
    for name in names:  # one layer at a time, so a failure names its layer
        try:
            quantize_(modules[name], config, filter_fn=lambda m, fqn: isinstance(m, nn.Linear))
        except Exception as exc:  # torchao raises AssertionError/ValueError/NotImplementedError
            raise ModelError(f"torchao cannot quantize layer {name!r} with {scheme!r}: "
                             f"{_first_line(exc)}") from None
    if calibration is not None:
        _probe(quantized, calibration[:_CALIBRATION_BATCH], scheme)
    return quantized, names


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:300]


def _probe(model: nn.Module, x: torch.Tensor, scheme: str) -> None:
    """Run ``model`` on ``x``; a failure is a ModelError naming the innermost layer that raised."""
    stack: list[str] = []
    failed: list[str] = []

    def pre(name: str) -> Callable[..., None]:
        def hook(module: nn.Module, args: Any) -> None:
            stack.append(name)
        return hook

    def post(name: str) -> Callable[..., None]:
        def hook(module: nn.Module, args: Any, out: Any) -> None:
            stack.pop()
        return hook

    handles = []
    for name, module in model.named_modules():
        if name:
            handles.append(module.register_forward_pre_hook(pre(name)))
            handles.append(module.register_forward_hook(post(name)))
    try:
        with torch.no_grad():
            model(x)
    except Exception as exc:
        failed = stack[-1:] or ["<model>"]
        raise ModelError(f"the {scheme!r} model fails in layer {failed[0]!r}: {_first_line(exc)}") from None
    finally:
        for h in handles:
            h.remove()


def _quantize_static(model: nn.Module, calibration: torch.Tensor) -> tuple[nn.Module, list[str]]:
    _torchao()
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
    from torchao.quantization.pt2e.quantizer.x86_inductor_quantizer import (
        X86InductorQuantizer,
        get_default_x86_inductor_quantization_config,
    )

    example = calibration[:2] if calibration.shape[0] >= 2 else calibration.repeat(2, 1, 1, 1)
    batch = torch.export.Dim("batch", min=1)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            exported = torch.export.export(copy.deepcopy(model).eval(), (example,),
                                           dynamic_shapes=({0: batch},)).module()
            quantizer = X86InductorQuantizer().set_global(get_default_x86_inductor_quantization_config())
            prepared = prepare_pt2e(exported, quantizer)  # type: ignore[arg-type]
            with torch.no_grad():
                for start in range(0, calibration.shape[0], _CALIBRATION_BATCH):
                    prepared(calibration[start:start + _CALIBRATION_BATCH])
            converted = convert_pt2e(prepared)
    except Exception as exc:
        raise ModelError(f"PT2E static quantization ('int8-static') failed: {_first_line(exc)}") from None
    names = []
    for node in converted.graph.nodes:
        if node.op != "call_function" or node.target not in (torch.ops.aten.conv2d.default,
                                                             torch.ops.aten.linear.default):
            continue
        weight = node.args[1]
        if getattr(weight, "target", None) is torch.ops.quantized_decomposed.dequantize_per_channel.default:
            stack = node.meta.get("nn_module_stack") or {}
            names.append(list(stack.values())[-1][0] if stack else node.name)
    return converted, names


def deploy(model: nn.Module, scheme: str, *, calibration: torch.Tensor | None = None) -> Deployed:
    """Quantize ``model`` with torchao and wrap it so that attacks get the float gradient.

    Parameters
    ----------
    model : nn.Module
        A float model taking NCHW images in ``[0, 1]`` and returning logits (e.g. from
        :func:`quantadv.models.load`). It is copied, not modified.
    scheme : str
        One of :data:`SCHEMES` (see the module docstring).
    calibration : torch.Tensor, optional
        Images in ``[0, 1]`` of the shape the model takes (N, C, H, W), a few hundred are
        plenty. Required by ``"int8-static"`` (they fix the activation scales); with the other
        schemes they are used to check that the quantized model runs.

    Returns
    -------
    Deployed
        Forward: the quantized model; backward: the float model's (BPDA with the float shadow).

    Raises
    ------
    InputError
        An unknown scheme, calibration images that are not a float NCHW batch in ``[0, 1]``,
        no calibration for ``"int8-static"``, or torchao missing.
    ModelError
        A layer that cannot be quantized (named), or calibration images whose shape the model
        does not take.
    """
    if not isinstance(model, nn.Module):
        raise InputError(f"model must be a torch.nn.Module returning logits, got {type(model).__name__}")
    check_choice(scheme, "scheme", SCHEMES)
    if isinstance(model, Deployed):
        raise InputError(f"the model is already deployed ({model.scheme!r}); deploy its .float_model instead")
    if calibration is None and scheme == "int8-static":
        raise InputError("'int8-static' needs calibration images: deploy(model, 'int8-static', calibration=images) "
                         "with a few hundred training images")
    float_model = copy.deepcopy(model).eval()
    for p in float_model.parameters():
        p.requires_grad_(False)
    if calibration is not None:
        check_images(calibration, "calibration")
        calibration = calibration.detach()
        try:
            with torch.no_grad():
                logits = float_model(calibration[:2])
        except Exception as exc:
            raise ModelError(f"the model does not take calibration images of shape {tuple(calibration.shape)}: "
                             f"{_first_line(exc)}; pass images of the shape it was trained on") from None
        if not isinstance(logits, torch.Tensor) or logits.dim() != 2:
            raise ModelError("the model must return logits of shape (batch, classes), got "
                             f"{tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__}")
    if scheme == "int8-static":
        assert calibration is not None
        quantized, names = _quantize_static(float_model, calibration)
    else:
        quantized, names = _quantize_linear(float_model, scheme, calibration)
    return Deployed(float_model, quantized, scheme, tuple(names))
