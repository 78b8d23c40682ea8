"""Lossless PNG export and import of digital images (paper 000, Sec. 2 and Fig. 8).

An adversarial *image* must survive being written to a file: PNG is lossless, so a
digital batch (exactly ``k/255``) written by :func:`save_png` and read back by
:func:`load_png` is bit-identical. A non-digital batch is refused before anything is
written (use a quantizer from :mod:`quantadv.quantize` first): silently truncating it
would destroy the perturbation (Sec. 3.3).

Files are 8-bit grayscale (C = 1, PNG mode ``L``) or RGB (C = 3). Every file is written
to a temporary name in the same directory and renamed, so a reader never sees a partial
file. An optional sidecar ``labels.json`` records the true labels (and targets) per file,
so that ``quantadv verify`` can re-check the images without other input.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from ..digital import to_uint8
from ..errors import DataError, InputError
from ._folder import LABELS_FILE, file_names, list_files, read_labels, write_folder

__all__ = ["LABELS_FILE", "load_labels", "load_png", "png_files", "save_png"]
_MODES = {1: "L", 3: "RGB"}
_CHANNELS = {"L": 1, "RGB": 3}


def _as_uint8(images: object) -> torch.Tensor:
    if not isinstance(images, torch.Tensor):
        raise InputError(f"images must be a torch.Tensor, got {type(images).__name__}")
    if images.dim() != 4:
        raise InputError(
            f"images must be a 4-D NCHW batch, got shape {tuple(images.shape)}; "
            "add a batch dimension with x.unsqueeze(0)"
        )
    if images.shape[0] == 0:
        raise InputError("images is an empty batch: nothing to save")
    if images.shape[1] not in _MODES:
        raise InputError(
            f"images must have 1 (grayscale) or 3 (RGB) channels, got {images.shape[1]}"
        )
    if images.dtype == torch.uint8:
        return images.detach().cpu()
    if not images.dtype.is_floating_point:
        raise InputError(f"images must be uint8 or float in [0, 1], got dtype {images.dtype}")
    return to_uint8(images.detach()).cpu()


def save_png(
    images: torch.Tensor,
    directory: str | os.PathLike[str],
    names: Sequence[str] | None = None,
    *,
    labels: torch.Tensor | None = None,
    targets: torch.Tensor | None = None,
) -> list[Path]:
    """Write a digital image batch as lossless 8-bit PNG files, one per image.

    Parameters
    ----------
    images : Tensor
        ``uint8`` NCHW batch, or a float batch on the 1/255 grid (digital); C is 1 or 3.
        Anything else raises :class:`~quantadv.errors.InputError` before a file is written.
    directory : path
        Created if needed.
    names : sequence of str, optional
        File names (``.png`` is appended when missing); default ``00000.png``, ``00001.png``...
    labels, targets : Tensor, optional
        True labels (and targets) to record in ``labels.json`` beside the images, as
        ``{"files": [...], "labels": [...], "targets": [...]}``; ``targets`` needs ``labels``.

    Returns
    -------
    list of Path
        The files written, in batch order.
    """
    batch = _as_uint8(images)
    files = file_names(names, batch.shape[0], (".png",))
    writers = []
    for array in batch.permute(0, 2, 3, 1).numpy():
        picture = Image.fromarray(np.ascontiguousarray(array[:, :, 0] if array.shape[2] == 1 else array))
        writers.append(lambda fh, picture=picture: picture.save(fh, format="PNG"))
    return write_folder(directory, files, writers, labels, targets)


def png_files(directory: str | os.PathLike[str]) -> list[Path]:
    """The ``.png`` files of ``directory`` in the order :func:`load_png` reads them (by name)."""
    return list_files(directory, (".png",), "load_png")


def load_png(directory: str | os.PathLike[str]) -> torch.Tensor:
    """Read every ``*.png`` of ``directory`` (sorted by file name) into a ``uint8`` NCHW tensor.

    All files must be 8-bit grayscale (``L``) or RGB PNGs of the same size and mode;
    otherwise (or for an empty directory, or a file that is not a PNG) a
    :class:`~quantadv.errors.DataError` names the offending file. Convert with
    :func:`quantadv.to_float` to feed a model.
    """
    files = png_files(directory)
    arrays = []
    first: tuple[str, tuple[int, int]] | None = None
    for path in files:
        try:
            with Image.open(path) as picture:
                if picture.format != "PNG":
                    raise DataError(f"{path} is a {picture.format} file, not a PNG")
                mode, size = picture.mode, picture.size
                if mode not in _CHANNELS:
                    raise DataError(
                        f"{path} has PNG mode {mode!r}; only 8-bit grayscale ('L') or RGB "
                        "images are supported (convert it, e.g. with PIL's Image.convert)"
                    )
                array = np.asarray(picture, dtype=np.uint8)
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
            raise DataError(f"{path} is not a readable PNG file ({exc})") from None
        if first is None:
            first = (mode, size)
        elif (mode, size) != first:
            raise DataError(
                f"{path} is {mode} {size[0]}x{size[1]} but {files[0].name} is "
                f"{first[0]} {first[1][0]}x{first[1][1]}; all images must share mode and size"
            )
        arrays.append(array[:, :, None] if array.ndim == 2 else array)
    stacked = np.stack(arrays)
    return torch.from_numpy(stacked).permute(0, 3, 1, 2).contiguous()


def load_labels(
    directory: str | os.PathLike[str], labels_file: str | os.PathLike[str] | None = None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Read the labels (and targets, or None) that :func:`save_png` recorded for ``directory``.

    ``labels_file`` defaults to ``directory/labels.json``. The file list it records must
    match the ``.png`` files :func:`load_png` reads, so a stale sidecar is caught.
    """
    return read_labels(directory, labels_file, [p.name for p in png_files(directory)], "save_png")
