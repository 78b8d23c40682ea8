"""Reader for the IDX format used by MNIST and Fashion-MNIST.

Format (Y. LeCun, "THE MNIST DATABASE of handwritten digits", section "FILE FORMATS FOR THE
MNIST DATABASE"; the same files are used by Fashion-MNIST):

- bytes 0-1: always zero;
- byte 2: element type: ``0x08`` unsigned byte, ``0x09`` signed byte, ``0x0B`` int16,
  ``0x0C`` int32, ``0x0D`` float32, ``0x0E`` float64 (multi-byte types are big-endian);
- byte 3: number of dimensions ``d``;
- then ``d`` big-endian unsigned 32-bit sizes, then the elements in C (row-major) order.

So the magic number (first four bytes read as a big-endian int) is ``0x00000803`` for an
image file (uint8, 3 dimensions: count, rows, columns) and ``0x00000801`` for a label file
(uint8, 1 dimension). Files may be gzip-compressed (recognised by their content, not their
name). A file whose size differs from header + product of the sizes is rejected, naming the
file: that is what a truncated download or a wrong file looks like.

Parsed arrays are cached in memory per process, keyed on (path, modification time, size),
so loading the same split twice costs one copy, not one decompression.
"""

from __future__ import annotations

import gzip
import os
import struct
import zlib
from functools import lru_cache
from pathlib import Path

import numpy as np

from ..errors import DataError

#: IDX element type byte -> numpy dtype (big-endian where it matters).
IDX_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}

#: Magic number of an MNIST-family image file: uint8, 3 dimensions (N, rows, columns).
IMAGES_MAGIC = 0x00000803
#: Magic number of an MNIST-family label file: uint8, 1 dimension (N,).
LABELS_MAGIC = 0x00000801

_GZIP_MAGIC = b"\x1f\x8b"

#: Accepted file names for each split, in order of preference (uncompressed first, since
#: it reads faster). ``t10k`` is the official prefix of the test split; the dotted variant
#: (``train-images.idx3-ubyte``) is how some mirrors spell them.
_PREFIX = {"train": "train", "test": "t10k"}


def idx_file_names(split: str, kind: str) -> list[str]:
    """Candidate file names of the ``kind`` ("images" or "labels") file of ``split``."""
    prefix = _PREFIX[split]
    ndim = 3 if kind == "images" else 1
    names = []
    for sep in ("-", "."):
        base = f"{prefix}-{kind}{sep}idx{ndim}-ubyte"
        names += [base, base + ".gz"]
    return names


def find_idx_pair(directory: Path, split: str) -> tuple[Path | None, Path | None]:
    """Return the (images, labels) files of ``split`` in ``directory`` (None where missing)."""
    found: list[Path | None] = []
    for kind in ("images", "labels"):
        hit = None
        for name in idx_file_names(split, kind):
            candidate = directory / name
            if candidate.is_file():
                hit = candidate
                break
        found.append(hit)
    return found[0], found[1]


def _read_bytes(path: Path) -> bytes:
    """The file's bytes, gunzipped if the file starts with the gzip magic."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DataError(
            f"cannot read {path}: {exc.strerror or exc}; check the path and permissions"
        ) from None
    if raw[:2] != _GZIP_MAGIC:
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(
            f"{path} is not a valid gzip file ({exc}); it is corrupt or was cut short: "
            "delete it and download it again"
        ) from None


def parse_idx(data: bytes, source: str, expect_magic: int | None = None) -> np.ndarray:
    """Parse the bytes of an (uncompressed) IDX file into a read-only numpy array.

    ``source`` names the file in error messages. With ``expect_magic`` the file must have
    exactly that magic number (e.g. :data:`IMAGES_MAGIC`). Multi-byte types are converted to
    native byte order.
    """
    if len(data) < 4:
        raise DataError(
            f"{source}: only {len(data)} bytes, too short for an IDX header; the file is truncated"
        )
    magic = struct.unpack(">I", data[:4])[0]
    if data[0] != 0 or data[1] != 0 or data[2] not in IDX_DTYPES:
        raise DataError(
            f"{source}: bad IDX magic number 0x{magic:08x} (expected 0x000008XX-0x00000EXX); "
            "this is not an IDX file (MNIST/Fashion-MNIST format)"
        )
    if expect_magic is not None and magic != expect_magic:
        raise DataError(
            f"{source}: IDX magic number is 0x{magic:08x} but 0x{expect_magic:08x} was expected "
            f"(type 0x{expect_magic >> 8 & 0xFF:02x}, {expect_magic & 0xFF} dimensions); "
            "an image file and a label file may have been swapped"
        )
    ndim = data[3]
    if ndim == 0:
        raise DataError(
            f"{source}: IDX header declares 0 dimensions; the file is not a valid IDX file"
        )
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(
            f"{source}: {len(data)} bytes, shorter than its own {header}-byte IDX header; "
            "the file is truncated"
        )
    dims = struct.unpack(f">{ndim}I", data[4:header])
    dtype = IDX_DTYPES[data[2]]
    expected = header + int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    if len(data) != expected:
        what = "truncated" if len(data) < expected else "followed by extra bytes"
        raise DataError(
            f"{source}: {len(data)} bytes but its IDX header (dims {tuple(dims)}) "
            f"requires {expected}; "
            f"the file is {what}: delete it and download it again"
        )
    arr = np.frombuffer(data, dtype=dtype, offset=header).reshape(dims)
    if dtype.byteorder == ">":
        arr = arr.astype(dtype.newbyteorder("="))
    arr.flags.writeable = False
    return arr


@lru_cache(maxsize=16)
def _read_idx_cached(path: str, mtime_ns: int, size: int, expect_magic: int | None) -> np.ndarray:
    # mtime_ns and size are part of the key only, so that a replaced file is read again.
    return parse_idx(_read_bytes(Path(path)), path, expect_magic)


def read_idx(path: str | os.PathLike, expect_magic: int | None = None) -> np.ndarray:
    """Read an IDX file (raw or gzipped) into a **read-only** numpy array.

    Cached per process on (path, mtime, size); copy the result before modifying it.
    Raises :class:`~quantadv.errors.DataError` for a missing, corrupt or truncated file.
    """
    p = Path(path)
    try:
        st = p.stat()
    except OSError as exc:
        raise DataError(f"cannot open IDX file {p}: {exc.strerror or exc}") from None
    return _read_idx_cached(str(p.resolve()), st.st_mtime_ns, st.st_size, expect_magic)


def read_idx_header(path: str | os.PathLike) -> tuple[int, tuple[int, ...]]:
    """Return (magic, dims) of an IDX file, reading only its first bytes (cheap, even gzipped)."""
    p = Path(path)
    try:
        with open(p, "rb") as fh:
            head = fh.read(2)
            fh.seek(0)
            stream = gzip.GzipFile(fileobj=fh) if head == _GZIP_MAGIC else fh
            first = stream.read(4)
            if len(first) < 4 or first[0] != 0 or first[1] != 0 or first[2] not in IDX_DTYPES:
                raise DataError(f"{p}: not an IDX file (bad or missing magic number)")
            ndim = first[3]
            rest = stream.read(4 * ndim)
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(f"cannot read the IDX header of {p}: {exc}") from None
    if len(rest) < 4 * ndim:
        raise DataError(f"{p}: IDX header is truncated")
    return struct.unpack(">I", first)[0], struct.unpack(f">{ndim}I", rest)


def read_mnist_pair(
    images_path: str | os.PathLike, labels_path: str | os.PathLike, num_classes: int = 10
) -> tuple[np.ndarray, np.ndarray]:
    """Read an MNIST-family image file and label file and check that they belong together.

    Returns ``(images, labels)``: a read-only uint8 array of shape (N, 1, rows, columns) and a
    read-only int64 array of shape (N,). Checks the magic numbers (0x00000803 and 0x00000801),
    that both files hold the same N, and that labels lie in ``0..num_classes-1``.
    """
    images = read_idx(images_path, IMAGES_MAGIC)
    labels = read_idx(labels_path, LABELS_MAGIC)
    if images.shape[0] != labels.shape[0]:
        raise DataError(
            f"{images_path} holds {images.shape[0]} images but {labels_path} holds "
            f"{labels.shape[0]} labels; the two files do not belong to the same split"
        )
    if labels.size and int(labels.max()) >= num_classes:
        raise DataError(
            f"{labels_path}: label {int(labels.max())} is out of range 0..{num_classes - 1}; "
            "this is not an MNIST-family label file"
        )
    n, rows, cols = images.shape
    out_images = images.reshape(n, 1, rows, cols)
    out_labels = labels.astype(np.int64)
    out_labels.flags.writeable = False
    return out_images, out_labels
