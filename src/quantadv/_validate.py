"""Input checks shared by attacks, quantizers and evaluation helpers (DESIGN.md section 1)."""

from __future__ import annotations

import torch

from .errors import InputError

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def check_images(x: object, name: str = "images") -> torch.Tensor:
    """Check that ``x`` is a float NCHW tensor with finite values in [0, 1]."""
    if not isinstance(x, torch.Tensor):
        raise InputError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 4:
        raise InputError(
            f"{name} must be a 4-D NCHW batch, got shape {tuple(x.shape)}; "
            "add a batch dimension with x.unsqueeze(0) or a channel one with x.unsqueeze(1)"
        )
    if x.dtype not in FLOAT_DTYPES:
        hint = " (convert uint8 images with quantadv.to_float)" if x.dtype == torch.uint8 else ""
        raise InputError(f"{name} must be a floating-point tensor, got {x.dtype}{hint}")
    if x.numel() == 0:
        raise InputError(f"{name} is empty (shape {tuple(x.shape)})")
    if not torch.isfinite(x).all():
        raise InputError(f"{name} contains NaN or infinite values")
    lo, hi = float(x.min()), float(x.max())
    if lo < 0.0 or hi > 1.0:
        raise InputError(
            f"{name} must have values in [0, 1], got range [{lo:.4g}, {hi:.4g}]; "
            "divide 0..255 images by 255 and keep normalisation inside the model"
        )
    return x


def check_labels(labels: object, batch: int, name: str = "labels") -> torch.Tensor:
    """Check that ``labels`` is a 1-D integer tensor with one entry per image."""
    if not isinstance(labels, torch.Tensor):
        raise InputError(f"{name} must be a torch.Tensor of class indices, got {type(labels).__name__}")
    if labels.dim() != 1:
        raise InputError(f"{name} must be 1-D (one class index per image), got shape {tuple(labels.shape)}")
    if labels.dtype.is_floating_point or labels.dtype in (torch.bool, torch.complex64, torch.complex128):
        raise InputError(f"{name} must hold integer class indices, got dtype {labels.dtype}")
    if labels.shape[0] != batch:
        raise InputError(f"{name} has {labels.shape[0]} entries but there are {batch} images")
    if batch and int(labels.min()) < 0:
        raise InputError(f"{name} must be >= 0, got {int(labels.min())}")
    return labels.long()


def check_label_range(labels: torch.Tensor, num_classes: int, name: str = "labels") -> None:
    """Check class indices against the number of logits the model returns."""
    if labels.numel() and int(labels.max()) >= num_classes:
        raise InputError(
            f"{name} contains class {int(labels.max())} but the model returns only "
            f"{num_classes} logits (valid classes are 0..{num_classes - 1})"
        )


def check_same_shape(a: torch.Tensor, b: torch.Tensor, names: tuple[str, str]) -> None:
    if a.shape != b.shape:
        raise InputError(
            f"{names[0]} has shape {tuple(a.shape)} but {names[1]} has shape {tuple(b.shape)}; "
            "they must match"
        )


def check_positive(value: float, name: str, allow_zero: bool = False) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise InputError(f"{name} must be a number, got {value!r}") from None
    if v != v or (v < 0 if allow_zero else v <= 0):
        raise InputError(f"{name} must be {'>= 0' if allow_zero else '> 0'}, got {value!r}")
    return v


def check_int(value: object, name: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise InputError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return value


def check_choice(value: object, name: str, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise InputError(f"{name} must be one of {', '.join(map(repr, choices))}, got {value!r}")
    return value  # type: ignore[return-value]
