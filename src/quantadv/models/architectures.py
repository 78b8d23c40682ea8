"""Network architectures used by the zoo and by the experiments.

Every model takes float NCHW images with values in ``[0, 1]`` and returns logits. The
per-channel normalisation ``(x - mean) / std`` is the model's first layer
(:class:`Normalize`), never a preprocessing step, so attacks and quantizers work in image
space (DESIGN.md section 1).

* :class:`SmallCNN` is the MNIST network of Madry et al., "Towards Deep Learning Models
  Resistant to Adversarial Attacks" (ICLR 2018): two 5x5 convolutions (32 and 64 channels,
  "same" padding) each followed by ReLU and 2x2 max-pooling, a 1024-unit fully connected
  layer and the output layer.
* :class:`ResNet18` is the CIFAR-style ResNet-18 of He et al. (2016) as used throughout the
  adversarial-robustness literature: a 3x3 stem without max-pooling, four stages of two
  basic blocks (64, 128, 256, 512 channels), global average pooling and a linear layer.

Architectures are registered by name in :data:`ARCHITECTURES`; zoo manifests name the
architecture and its constructor keyword arguments, and :func:`build` rebuilds it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from ..errors import InputError, ModelError

__all__ = ["ARCHITECTURES", "Normalize", "ResNet18", "SmallCNN", "build"]


def _as_channel_vector(value: float | Sequence[float] | torch.Tensor, name: str) -> torch.Tensor:
    """Turn a scalar or a per-channel sequence into a float32 ``(1, C, 1, 1)`` tensor."""
    try:
        t = torch.as_tensor(value, dtype=torch.float32).flatten()
    except (TypeError, ValueError, RuntimeError):
        raise InputError(
            f"{name} must be a number or a sequence of per-channel numbers, got {value!r}"
        ) from None
    if t.numel() == 0:
        raise InputError(f"{name} must not be empty; give one value per input channel")
    if not torch.isfinite(t).all():
        raise InputError(f"{name} must be finite, got {value!r}")
    return t.view(1, -1, 1, 1)


class Normalize(nn.Module):
    """Per-channel normalisation ``(x - mean) / std`` as a layer.

    ``mean`` and ``std`` are numbers (shared by all channels) or sequences with one value per
    channel. They are registered as buffers, so they follow ``.to(device)`` / ``.double()``
    and are saved in the ``state_dict`` (and therefore in zoo weight files).

    Raises :class:`~quantadv.errors.InputError` if a standard deviation is not positive, or
    (at call time) if the input's channel count does not match the number of per-channel
    values.
    """

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(
        self,
        mean: float | Sequence[float] | torch.Tensor = 0.0,
        std: float | Sequence[float] | torch.Tensor = 1.0,
    ) -> None:
        super().__init__()
        m = _as_channel_vector(mean, "mean")
        s = _as_channel_vector(std, "std")
        if m.shape[1] != s.shape[1] and 1 not in (m.shape[1], s.shape[1]):
            raise InputError(
                f"mean has {m.shape[1]} values but std has {s.shape[1]}; give one value per "
                "channel for both, or a single number"
            )
        if (s <= 0).any():
            raise InputError(f"std must be > 0 for every channel, got {s.flatten().tolist()}")
        channels = max(m.shape[1], s.shape[1])
        self.register_buffer("mean", m.expand(1, channels, 1, 1).clone())
        self.register_buffer("std", s.expand(1, channels, 1, 1).clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = self.mean.shape[1]
        if x.dim() != 4:
            raise InputError(
                f"Normalize expects a 4-D NCHW batch, got shape {tuple(x.shape)}; add a batch "
                "dimension with x.unsqueeze(0)"
            )
        if c != 1 and x.shape[1] != c:
            raise InputError(
                f"the model normalises {c} channels but the input has {x.shape[1]} "
                f"(shape {tuple(x.shape)}); pass images with {c} channels"
            )
        return (x - self.mean) / self.std

    def extra_repr(self) -> str:
        return f"mean={self.mean.flatten().tolist()}, std={self.std.flatten().tolist()}"


class PoolTo(nn.Module):
    """Adaptive average pooling to ``size`` that is skipped when the input already has it.

    ``nn.AdaptiveAvgPool2d`` costs a full pass even when it is the identity (about 3% of
    SmallCNN's forward+backward time on 28x28 inputs); this module has no parameters, so
    weight files are the same either way.
    """

    def __init__(self, size: tuple[int, int]) -> None:
        super().__init__()
        self.size = tuple(size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[-2:]) == self.size:
            return x
        return nn.functional.adaptive_avg_pool2d(x, self.size)

    def extra_repr(self) -> str:
        return f"size={self.size}"


class SmallCNN(nn.Module):
    """The Madry et al. (2018) MNIST convolutional network, with normalisation inside.

    Layers: ``Normalize`` -> conv 5x5, 32 (padding 2) -> ReLU -> max-pool 2 -> conv 5x5, 64
    (padding 2) -> ReLU -> max-pool 2 -> adaptive average pool to 7x7 -> FC 1024 -> ReLU ->
    FC ``num_classes``.

    For 28x28 inputs the feature map is already 7x7, so the adaptive pooling is the identity
    and the network is exactly Madry's (3,274,634 parameters for 10 classes). For other
    sizes (e.g. 32x32 CIFAR images, feature map 8x8) the pooling maps the features to 7x7,
    so the same constructor and weight shapes work for any input of at least 4x4 pixels.

    Parameters
    ----------
    in_channels:
        Number of input channels (1 for MNIST-like data, 3 for colour images).
    num_classes:
        Number of output logits.
    mean, std:
        Normalisation constants in ``[0, 1]`` image units: a number or one per channel.
        The defaults (0 and 1) mean "no normalisation".
    """

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 10,
        mean: float | Sequence[float] = 0.0,
        std: float | Sequence[float] = 1.0,
    ) -> None:
        super().__init__()
        _check_sizes(in_channels, num_classes)
        self.normalize = Normalize(mean, std)
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 32, kernel_size=5, padding=2),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(32, 64, kernel_size=5, padding=2),
            nn.ReLU(),
            nn.MaxPool2d(2),
            PoolTo((7, 7)),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(64 * 7 * 7, 1024),
            nn.ReLU(),
            nn.Linear(1024, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(self.normalize(x)))


class BasicBlock(nn.Module):
    """The two-convolution residual block of ResNet-18/34 (He et al. 2016, Fig. 2 left)."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut: nn.Module
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False),
                nn.BatchNorm2d(planes),
            )
        else:
            self.shortcut = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


class ResNet18(nn.Module):
    """CIFAR-style ResNet-18 with normalisation inside.

    Layers: ``Normalize`` -> conv 3x3, 64 -> BN -> ReLU (no max-pool) -> 4 stages of 2
    :class:`BasicBlock` s with 64, 128, 256, 512 channels (strides 1, 2, 2, 2) -> global
    average pooling -> FC ``num_classes``. About 11.2 M parameters for 10 classes. Works for
    any input size (32x32 is the intended one) and any number of input channels.

    Parameters are as for :class:`SmallCNN`; the input channel count defaults to 3.
    """

    def __init__(
        self,
        in_channels: int = 3,
        num_classes: int = 10,
        mean: float | Sequence[float] = 0.0,
        std: float | Sequence[float] = 1.0,
    ) -> None:
        super().__init__()
        _check_sizes(in_channels, num_classes)
        self.normalize = Normalize(mean, std)
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, 64, 3, stride=1, padding=1, bias=False),
            nn.BatchNorm2d(64),
            nn.ReLU(),
        )
        stages = []
        in_planes = 64
        for planes, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
            stages.append(nn.Sequential(BasicBlock(in_planes, planes, stride), BasicBlock(planes, planes)))
            in_planes = planes
        self.layers = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(512, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.layers(self.stem(self.normalize(x)))
        return self.fc(torch.flatten(self.pool(out), 1))


def _check_sizes(in_channels: object, num_classes: object) -> None:
    for value, name in ((in_channels, "in_channels"), (num_classes, "num_classes")):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise InputError(f"{name} must be a positive integer, got {value!r}")
    if num_classes < 2:  # type: ignore[operator]
        raise InputError(f"num_classes must be at least 2 for a classifier, got {num_classes}")


#: Architecture names accepted by ``quantadv train --arch`` and used in zoo manifests.
ARCHITECTURES: dict[str, type[nn.Module]] = {"small-cnn": SmallCNN, "resnet18": ResNet18}


def build(arch: str, **kwargs: Any) -> nn.Module:
    """Construct the architecture registered under ``arch`` with the given keyword arguments.

    Raises :class:`~quantadv.errors.ModelError` for an unknown name or keyword arguments the
    constructor does not accept (e.g. a manifest written by a newer version).
    """
    if arch not in ARCHITECTURES:
        raise ModelError(
            f"unknown architecture {arch!r}; valid architectures are {', '.join(ARCHITECTURES)}"
        )
    try:
        return ARCHITECTURES[arch](**kwargs)
    except TypeError as exc:
        raise ModelError(
            f"cannot build {arch!r} with arguments {kwargs}: {exc}; check the manifest's "
            "'arch_kwargs'"
        ) from None
