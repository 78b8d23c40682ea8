"""The model zoo: trained weights shipped with the package, each with a manifest.

A zoo entry ``NAME`` is two files in ``quantadv/zoo/``: ``NAME.safetensors`` (the model's
``state_dict``; safetensors cannot carry code, so loading never executes anything) and
``NAME.json``, the manifest written by ``quantadv train``. The manifest names the
architecture and its constructor arguments, the data, the training method and budget, the
command that reproduces the weights, the clean test accuracy and the sha256 of the weight
file. :func:`load` checks that digest before it builds the model, so a corrupted or swapped
file is refused instead of silently giving other numbers.

The same format works for a user's own models: :func:`load_file` loads any
``X.safetensors`` that has an ``X.json`` manifest beside it (``quantadv train --out-dir``
writes exactly such a pair).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from torch import nn

from ..errors import InputError, ModelError
from ._files import sha256_bytes
from .architectures import build

__all__ = ["ZOO_DIR", "list_models", "load", "load_file", "manifest", "read_manifest", "verify"]

#: Directory holding the shipped ``*.safetensors`` + ``*.json`` pairs.
ZOO_DIR = Path(__file__).resolve().parent.parent / "zoo"

#: Keys every manifest must have for :func:`load_file` to rebuild the model.
REQUIRED_KEYS = ("arch", "arch_kwargs", "sha256")

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def list_models() -> list[str]:
    """Names of the shipped models (those with both a weight file and a manifest), sorted."""
    if not ZOO_DIR.is_dir():
        return []
    return sorted(
        p.stem for p in ZOO_DIR.glob("*.json") if p.with_suffix(".safetensors").is_file()
    )


def _zoo_path(name: object) -> Path:
    names = list_models()
    if not isinstance(name, str) or not _NAME.match(name) or name not in names:
        valid = ", ".join(names) if names else "(none: the zoo directory is empty)"
        raise ModelError(
            f"unknown model {name!r}; shipped models are: {valid}. For your own weights use "
            "quantadv.models.load_file('path/to/model.safetensors')"
        )
    return ZOO_DIR / f"{name}.safetensors"


def read_manifest(path: str | Path) -> dict[str, Any]:
    """Read and check the manifest beside weight file ``path`` (or the manifest ``path``)."""
    p = Path(path)
    json_path = p.with_suffix(".json")
    try:
        data = json.loads(json_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelError(
            f"no manifest {json_path} next to {p.with_suffix('.safetensors')}; a model file "
            "needs the .json manifest written by 'quantadv train' beside it"
        ) from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelError(f"manifest {json_path} is not readable JSON ({exc})") from None
    if not isinstance(data, dict):
        raise ModelError(f"manifest {json_path} must be a JSON object")
    missing = [k for k in REQUIRED_KEYS if k not in data]
    if missing:
        raise ModelError(
            f"manifest {json_path} lacks {', '.join(missing)}; it must name the architecture "
            "('arch', 'arch_kwargs') and the weight file's 'sha256'"
        )
    if not isinstance(data["arch_kwargs"], dict):
        raise ModelError(f"manifest {json_path}: 'arch_kwargs' must be a JSON object")
    return data


def manifest(name: str) -> dict[str, Any]:
    """The manifest of shipped model ``name`` as a dict (a fresh copy each call)."""
    return read_manifest(_zoo_path(name))


def _verified_bytes(weights: Path, meta: dict[str, Any]) -> bytes:
    try:
        data = weights.read_bytes()
    except OSError as exc:
        raise ModelError(f"cannot read weight file {weights} ({exc})") from None
    digest = sha256_bytes(data)
    if digest != meta["sha256"]:
        raise ModelError(
            f"weight file {weights} does not match its manifest: sha256 is {digest}, the "
            f"manifest says {meta['sha256']}. The file is corrupt or was replaced; reinstall "
            "quantadv (zoo models) or retrain with the manifest's command"
        )
    return data


def load_file(path: str | Path, device: str | torch.device = "cpu") -> nn.Module:
    """Load a model from ``X.safetensors`` and its manifest ``X.json``, verified, in eval mode.

    Raises :class:`~quantadv.errors.ModelError` if the manifest is missing or malformed, the
    sha256 does not match, or the weights do not fit the architecture the manifest names.
    """
    weights = Path(path).with_suffix(".safetensors")
    if not weights.is_file():
        raise ModelError(f"weight file {weights} does not exist")
    meta = read_manifest(weights)
    dev = _device(device)
    data = _verified_bytes(weights, meta)
    try:
        state = st_load(data)
    except (SafetensorError, ValueError) as exc:
        raise ModelError(f"weight file {weights} is not a valid safetensors file ({exc})") from None
    if isinstance(meta.get("binary"), dict):  # packed binary network (paper 004): sign bits + float layers
        from .binary import load_packed

        return load_packed(state, meta).to(dev).eval()
    model = build(str(meta["arch"]), **meta["arch_kwargs"])
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ModelError(
            f"weights in {weights} do not fit architecture {meta['arch']!r} with "
            f"{meta['arch_kwargs']}: {exc}"
        ) from None
    model = _with_defense(model, meta, weights)
    return model.to(dev).eval()


def _with_defense(classifier: nn.Module, meta: dict[str, Any], weights: Path) -> nn.Module:
    """A manifest with a ``defense`` spec (paper 002/003 defended models) loads as a ``Defended``.

    The weight file holds only the classifier; the defense is rebuilt from its spec string.
    """
    spec = meta.get("defense")
    if not spec:
        return classifier
    from ..defenses import Defended, parse_defense

    try:
        preprocess = parse_defense(spec)
    except ValueError as exc:
        raise ModelError(f"manifest of {weights} names defense {spec!r}, which cannot be built: {exc}") from None
    return Defended(preprocess, classifier)


def load(name: str, device: str | torch.device = "cpu") -> nn.Module:
    """Load shipped model ``name`` (see :func:`list_models`) in eval mode on ``device``.

    The weight file's sha256 is checked against the manifest first. Unknown names raise
    :class:`~quantadv.errors.ModelError` listing the valid ones.
    """
    return load_file(_zoo_path(name), device=device)


def verify(name: str | None = None) -> dict[str, str | None]:
    """Check the sha256 of one shipped model (or all): name -> None if fine, else the error."""
    names = [name] if name is not None else list_models()
    out: dict[str, str | None] = {}
    for n in names:
        try:
            path = _zoo_path(n)
            _verified_bytes(path, read_manifest(path))
            out[n] = None
        except ModelError as exc:
            out[n] = str(exc)
    return out


def _device(device: str | torch.device) -> torch.device:
    try:
        return torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise InputError(f"device {device!r} is not a torch device ({exc}); use 'cpu' or 'cuda'") from None
