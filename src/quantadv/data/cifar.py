"""Reader for the CIFAR-10 "python version" batches, with a restricted unpickler.

Format (A. Krizhevsky, https://www.cs.toronto.edu/~kriz/cifar.html, "Dataset layout"): the
archive ``cifar-10-python.tar.gz`` unpacks to ``cifar-10-batches-py/`` holding
``data_batch_1`` .. ``data_batch_5`` (train, 10,000 images each), ``test_batch`` (10,000) and
``batches.meta``. Each batch is a Python 2 pickle of a dict with keys ``data`` (a numpy
``uint8`` array of shape (N, 3072): each row is the 1024 red, then 1024 green, then 1024 blue
values of a 32 x 32 image in row-major order), ``labels`` (a list of N ints in 0..9),
``batch_label`` and ``filenames``. Keys are read as ``str`` or ``bytes`` alike.

Safety: a pickle can run arbitrary code when loaded. These files are read with
:class:`RestrictedUnpickler`, whose ``find_class`` returns only the numpy functions and
classes that rebuild an array (``numpy.core.multiarray._reconstruct``, ``numpy.ndarray``,
``numpy.dtype``, and ``numpy.core.numeric._frombuffer`` for protocol-5 pickles, under both
their NumPy 1 and NumPy 2 module names) and refuses every other global. Dicts, lists,
strings, bytes and ints need no global at all. A file that asks for anything else is
rejected with :class:`~quantadv.errors.DataError` before any of it runs.
"""

from __future__ import annotations

import io
import os
import pickle
import tarfile
from functools import lru_cache
from pathlib import Path

import numpy as np

from ..errors import DataError

TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_BATCHES = ("test_batch",)
#: Name of the official archive; batches are read from it directly (nothing is extracted).
ARCHIVE_NAME = "cifar-10-python.tar.gz"
#: Folder the official archive unpacks to.
BATCH_DIR_NAME = "cifar-10-batches-py"
NUM_CLASSES = 10
_ROW = 3 * 32 * 32


def _numpy_rebuilders() -> dict[tuple[str, str], object]:
    # Take the functions from numpy's own pickling, whatever module they live in for the
    # installed version, and register them under the NumPy 1 and NumPy 2 module names.
    reconstruct = np.zeros(1).__reduce__()[0]
    frombuffer = np.zeros(1).__reduce_ex__(5)[0]
    allowed: dict[tuple[str, str], object] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
    }
    for core in ("numpy.core", "numpy._core"):
        allowed[(f"{core}.multiarray", "_reconstruct")] = reconstruct
        allowed[(f"{core}.numeric", "_frombuffer")] = frombuffer
    return allowed


class RefusedGlobalError(pickle.UnpicklingError):
    """Raised by :class:`RestrictedUnpickler` for a global outside its allow-list."""


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that can rebuild dicts, lists, strings, ints and numpy arrays, nothing else.

    ``find_class`` is the only way a pickle reaches Python callables; it answers only the
    (module, name) pairs in :attr:`ALLOWED` and raises :class:`RefusedGlobalError` otherwise.
    Strings from Python 2 pickles are decoded as latin-1 (what numpy needs for array data).
    """

    ALLOWED = _numpy_rebuilders()

    def __init__(self, file: io.BufferedIOBase) -> None:
        super().__init__(file, encoding="latin1")

    def find_class(self, module: str, name: str) -> object:
        try:
            return self.ALLOWED[(module, name)]
        except KeyError:
            raise RefusedGlobalError(f"{module}.{name}") from None


def restricted_loads(data: bytes, source: str) -> object:
    """Unpickle ``data`` with :class:`RestrictedUnpickler`; any failure is a DataError."""
    try:
        return RestrictedUnpickler(io.BytesIO(data)).load()
    except RefusedGlobalError as exc:
        raise DataError(
            f"{source}: the pickle asks for {exc}, which a CIFAR-10 batch never needs; refused "
            "without running it (a pickle can execute code). Use the official CIFAR-10 python files"
        ) from None
    except Exception as exc:  # noqa: BLE001 - any unpickling failure means a bad file
        raise DataError(
            f"{source}: cannot unpickle ({type(exc).__name__}: {exc}); the file is corrupt or "
            "truncated, "
            "or is not a CIFAR-10 python batch"
        ) from None


def parse_batch(obj: object, source: str) -> tuple[np.ndarray, np.ndarray]:
    """Validate an unpickled batch dict and return (images (N,3,32,32) uint8, labels int64)."""
    if not isinstance(obj, dict):
        raise DataError(
            f"{source}: expected a pickled dict (a CIFAR-10 batch), got {type(obj).__name__}"
        )
    batch = {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in obj.items()}
    missing = [k for k in ("data", "labels") if k not in batch]
    if missing:
        raise DataError(
            f"{source}: batch dict lacks key(s) {missing} (has {sorted(map(str, batch))}); "
            "a CIFAR-10 batch has 'data' and 'labels' (a CIFAR-100 file has 'fine_labels' instead)"
        )
    data, labels = batch["data"], batch["labels"]
    if (
        not isinstance(data, np.ndarray)
        or data.dtype != np.uint8
        or data.ndim != 2
        or data.shape[1] != _ROW
    ):
        desc = (
            f"{data.dtype} array of shape {data.shape}"
            if isinstance(data, np.ndarray)
            else type(data).__name__
        )
        raise DataError(f"{source}: 'data' must be a uint8 array of shape (N, {_ROW}), got {desc}")
    if not isinstance(labels, list | tuple):
        raise DataError(f"{source}: 'labels' must be a list of ints, got {type(labels).__name__}")
    if any(type(v) is not int for v in labels):
        bad = next(v for v in labels if type(v) is not int)
        raise DataError(
            f"{source}: 'labels' must hold only ints, found {bad!r} ({type(bad).__name__})"
        )
    lab = np.asarray(labels, dtype=np.int64).reshape(-1)
    if lab.size and (lab.min() < 0 or lab.max() >= NUM_CLASSES):
        raise DataError(
            f"{source}: labels must lie in 0..{NUM_CLASSES - 1}, "
            f"found {int(lab.min())}..{int(lab.max())}"
        )
    if lab.shape[0] != data.shape[0]:
        raise DataError(
            f"{source}: {data.shape[0]} images but {lab.shape[0]} labels; the batch is inconsistent"
        )
    images = np.ascontiguousarray(data).reshape(-1, 3, 32, 32)
    images.flags.writeable = False
    lab.flags.writeable = False
    return images, lab


@lru_cache(maxsize=8)
def _read_batch_file(path: str, mtime_ns: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc.strerror or exc}") from None
    return parse_batch(restricted_loads(data, path), path)


def read_batch(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Read one CIFAR-10 batch file safely; cached per process on (path, mtime, size)."""
    p = Path(path)
    try:
        st = p.stat()
    except OSError as exc:
        raise DataError(f"cannot open CIFAR-10 batch {p}: {exc.strerror or exc}") from None
    return _read_batch_file(str(p.resolve()), st.st_mtime_ns, st.st_size)


@lru_cache(maxsize=1)
def _read_archive(path: str, mtime_ns: int, size: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    # Members are read into memory and unpickled safely; nothing is written to disk, so
    # member names (absolute paths, "..") cannot escape anywhere.
    out: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    try:
        with tarfile.open(path, "r:*") as tar:
            for member in tar.getmembers():
                base = member.name.rsplit("/", 1)[-1]
                if member.isfile() and base in TRAIN_BATCHES + TEST_BATCHES:
                    fh = tar.extractfile(member)
                    if fh is None:
                        continue
                    source = f"{path}:{member.name}"
                    out[base] = parse_batch(restricted_loads(fh.read(), source), source)
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise DataError(
            f"{path}: cannot read the archive ({exc}); it is corrupt or truncated, "
            "download it again"
        ) from None
    return out


def read_archive(path: str | os.PathLike) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Read every batch of an official ``cifar-10-python.tar.gz`` archive (batch name -> arrays)."""
    p = Path(path)
    st = p.stat()
    return _read_archive(str(p.resolve()), st.st_mtime_ns, st.st_size)


def batch_names(split: str) -> tuple[str, ...]:
    """The batch files that make up ``split`` ("train" or "test")."""
    return TRAIN_BATCHES if split == "train" else TEST_BATCHES


def locate(directory: Path, split: str) -> tuple[str, Path] | None:
    """Where ``split`` of CIFAR-10 is in ``directory``: ("dir", folder) or ("archive", file).

    Looks at ``directory`` itself, then ``directory/cifar-10-batches-py``, then the archive
    ``directory/cifar-10-python.tar.gz``. A folder counts only if it holds every batch of
    the split.
    """
    names = batch_names(split)
    for folder in (directory, directory / BATCH_DIR_NAME):
        if all((folder / n).is_file() for n in names):
            return "dir", folder
    archive = directory / ARCHIVE_NAME
    if archive.is_file():
        return "archive", archive
    return None


def partial_batches(directory: Path, split: str) -> tuple[Path, list[str]] | None:
    """If a folder holds some but not all batches of ``split``, return it and the missing names."""
    names = batch_names(split)
    for folder in (directory, directory / BATCH_DIR_NAME):
        present = [n for n in names if (folder / n).is_file()]
        if present and len(present) < len(names):
            return folder, [n for n in names if n not in present]
    return None


def read_split(kind: str, where: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Read and concatenate the batches of ``split`` (from :func:`locate`'s answer)."""
    names = batch_names(split)
    if kind == "archive":
        batches = read_archive(where)
        missing = [n for n in names if n not in batches]
        if missing:
            raise DataError(
                f"{where}: the archive lacks {missing}; "
                "it is not the complete CIFAR-10 python archive"
            )
        parts = [batches[n] for n in names]
    else:
        parts = [read_batch(where / n) for n in names]
    if len(parts) == 1:
        return parts[0]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
