"""Image folders: one sub-folder per class, PNG or JPEG files read with Pillow.

Layout::

    root/
      cat/  001.png 002.png ...
      dog/  a.jpg b.jpeg ...

Classes are the sub-folder names in sorted order (label 0 is the first name). Files are
taken in sorted order of name; files with other extensions than ``.png``, ``.jpg`` or
``.jpeg`` (any case) and hidden files/folders (names starting with ``.``) are ignored. If
``root/train`` and ``root/test`` both exist, each is such a class folder and the split
chooses one; otherwise the whole folder is used whatever the split (so a folder with two
classes literally named ``train`` and ``test`` cannot be read as a class folder).

Pixel modes (Pillow modes): ``L`` (8-bit grayscale) gives 1 channel and ``RGB`` gives 3.
Bilevel ``1`` is read as ``L`` (0 or 255); ``LA`` drops its alpha and becomes ``L``;
``RGBA``, ``P`` (palette), ``PA``, ``CMYK`` and ``YCbCr`` are converted to ``RGB`` by Pillow
(alpha is dropped, not blended; a palette image becomes RGB even if its palette is gray).
16-bit and float modes (``I;16``, ``I``, ``F``) are refused: they cannot become uint8
without losing information, so convert them yourself. All images must end up with the same
size and the same number of channels.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..errors import DataError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")
_TO_GRAY = {"L": None, "1": "L", "LA": "L"}
_TO_RGB = {
    "RGB": None,
    "RGBA": "RGB",
    "RGBX": "RGB",
    "P": "RGB",
    "PA": "RGB",
    "CMYK": "RGB",
    "YCbCr": "RGB",
}


def _visible(p: Path) -> bool:
    return not p.name.startswith(".")


def resolve_split_root(root: Path, split: str) -> Path:
    """``root/split`` if ``root`` has both ``train`` and ``test`` sub-folders, else ``root``."""
    if (root / "train").is_dir() and (root / "test").is_dir():
        return root / split
    return root


def list_image_folder(root: Path) -> tuple[list[str], list[tuple[Path, int]]]:
    """Return (class names, [(file, label), ...]) for a class-per-sub-folder tree."""
    if not root.exists():
        raise DataError(
            f"image folder {root} does not exist; give an existing folder as folder:<path>"
        )
    if not root.is_dir():
        raise DataError(
            f"{root} is not a folder; folder:<path> needs a folder with one sub-folder per class"
        )
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and _visible(p))
    if not classes:
        loose = [p.name for p in root.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS]
        hint = (
            f" (found {len(loose)} image file(s) directly in it: move them into class sub-folders)"
            if loose
            else ""
        )
        raise DataError(
            f"image folder {root} has no class sub-folders{hint}; "
            "put each class's images in root/<class>/"
        )
    items: list[tuple[Path, int]] = []
    for label, name in enumerate(classes):
        files = sorted(
            p
            for p in (root / name).iterdir()
            if p.is_file() and _visible(p) and p.suffix.lower() in IMAGE_EXTENSIONS
        )
        if not files:
            raise DataError(
                f"class folder {root / name} holds no .png/.jpg/.jpeg image; "
                "every class sub-folder "
                "needs at least one image (remove the folder if the class is not wanted)"
            )
        items += [(f, label) for f in files]
    return classes, items


def _read_image(path: Path) -> np.ndarray:
    """One image as uint8 (H, W, C) after the mode rules of this module."""
    try:
        raw = path.read_bytes()
        if raw[:2] == b"\xff\xd8":  # JPEG: the hardened reader (headers, size limit, corrupt data)
            from ..io.jpeg import _read_checked

            picture = _read_checked(raw, str(path), strict_mode=False, sequential=False)[0]
        else:
            picture = Image.open(io.BytesIO(raw))
        with picture as im:
            im.load()
            mode = im.mode
            if mode in _TO_GRAY:
                target = _TO_GRAY[mode]
            elif mode in _TO_RGB:
                target = _TO_RGB[mode]
            else:
                raise DataError(
                    f"{path}: Pillow mode {mode!r} is not an 8-bit image mode; convert it to 8-bit "
                    "grayscale (L) or RGB first (no silent truncation is done here)"
                )
            img = im.convert(target) if target else im
            arr = np.asarray(img, dtype=np.uint8)
    except DataError:
        raise
    except (
        OSError,
        UnidentifiedImageError,
        ValueError,
        SyntaxError,
        Image.DecompressionBombError,
    ) as exc:
        raise DataError(
            f"cannot read image {path} ({exc}); the file is corrupt or not a PNG/JPEG"
        ) from None
    return arr[:, :, None] if arr.ndim == 2 else arr


def read_image_folder(root: str | os.PathLike) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Read a class-per-sub-folder image tree.

    Returns ``(images, labels, classes)``: uint8 array (N, C, H, W) with C = 1 (grayscale)
    or 3 (RGB), int64 labels (N,), and the class names (index = label). Raises
    :class:`~quantadv.errors.DataError` for an empty folder or class, an unreadable file, or
    images of different sizes or channel counts (naming the files that disagree).
    """
    root = Path(root).expanduser()
    classes, items = list_image_folder(root)
    first_path: Path | None = None
    first_shape: tuple[int, ...] = ()
    arrays = []
    for path, _ in items:
        arr = _read_image(path)
        if first_path is None:
            first_path, first_shape = path, arr.shape
        elif arr.shape != first_shape:
            h, w, c = arr.shape
            fh, fw, fc = first_shape
            if (h, w) != (fh, fw):
                what = f"is {w}x{h} pixels while {first_path} is {fw}x{fh}"
            else:
                what = f"has {c} channel(s) while {first_path} has {fc} (grayscale vs colour)"
            raise DataError(
                f"{path} {what}; all images of a folder dataset must have the same size and mode: "
                "resize or convert them first"
            )
        arrays.append(arr)
    images = np.ascontiguousarray(np.stack(arrays).transpose(0, 3, 1, 2))
    labels = np.fromiter((label for _, label in items), dtype=np.int64, count=len(items))
    return images, labels, classes
