"""JPEG files as integer DCT coefficients: read, write, decode, and a differentiable decoder.

A JPEG file stores, per colour component, 8x8 blocks of integer DCT coefficients ``C`` and a
quantization table ``T`` per component; the decoder computes ``IDCT(C * T) + 128``, rounds
and clamps it to 0..255 (and converts YCbCr to RGB for colour files). An adversarial *JPEG*
is therefore a choice of integer coefficients (issue 12; paper 000's idea, Sec. 4, carried
to the DCT domain): see :func:`quantadv.quantize.lagrangian_jpeg`.

- :func:`read_coefficients` / :meth:`JpegCoefficients.to_bytes`: lossless coefficient I/O
  with ``jpeglib`` (libjpeg bindings; ``pip install quantadv[jpeg]``), grayscale and YCbCr
  (any chroma sampling factors), baseline (sequential) files only. The quantization tables
  and sampling factors are kept as they are.
- :func:`decode`: the standard decoder (libjpeg through Pillow), the one that
  ``quantadv verify`` and any viewer use; every success claim is judged on its output.
- :func:`encode`: Pillow's baseline encoder at a quality and chroma subsampling (colour
  4:2:0 by default, as Pillow writes it at every quality; ``"4:4:4"``, ``"4:2:2"``).
- :func:`decoder_model`: a torch model of the decoder (IDCT, level shift, clamp, chroma
  upsampling for 4:2:2 / 4:2:0, YCbCr to RGB) for gradients; with ``rounding=True`` it
  matches libjpeg within 1 grey level per plane.
- :func:`save_jpeg` / :func:`load_jpeg` / :func:`load_jpeg_labels`: folders of ``.jpg`` files
  with the same ``labels.json`` sidecar as :func:`quantadv.io.save_png`.

Coefficient arrays use jpeglib's layout: ``(blocks_down, blocks_across, 8, 8)`` int16 per
component, row ``k`` / column ``l`` of a block being vertical / horizontal frequency. With
chroma subsampling the components' block grids differ (4:2:0: a chroma block covers 16x16
pixels); :class:`BlockLayout` packs them into one ``(B, N, 8, 8)`` tensor.
"""

from __future__ import annotations

import contextlib
import io
import math
import os
import struct
import sys
import tempfile
import threading
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..errors import DataError, InputError
from ._folder import file_names, list_files, read_labels, write_folder
from .png import _as_uint8

#: File suffixes read as JPEG by :func:`jpeg_files`.
JPEG_SUFFIXES = (".jpg", ".jpeg")
#: JFIF's YCbCr -> RGB matrix (ITU-R BT.601 full range), as libjpeg uses it.
_YCC_TO_RGB = ((1.0, 0.0, 1.402), (1.0, -0.344136, -0.714136), (1.0, 1.772, 0.0))
_RGB_TO_YCC = ((0.299, 0.587, 0.114), (-0.168736, -0.331264, 0.5), (0.5, -0.418688, -0.081312))
#: Chroma subsampling -> how many pixels (across, down) one chroma sample covers.
SUBSAMPLING = {"4:4:4": (1, 1), "4:2:2": (2, 1), "4:2:0": (2, 2)}
#: What Pillow writes for colour when not told (at every quality): libjpeg's default, 4:2:0.
PILLOW_SUBSAMPLING = "4:2:0"
#: Chroma upsampling of :func:`decoder_model`: libjpeg's default ("fancy", triangular) or
#: replication (libjpeg with ``do_fancy_upsampling = FALSE``).
UPSAMPLING = ("fancy", "replicate")


def _jpeglib():  # type: ignore[no-untyped-def]
    try:
        import jpeglib
    except ImportError:
        raise InputError(
            "JPEG coefficient I/O needs the optional dependency jpeglib: pip install 'quantadv[jpeg]'"
        ) from None
    return jpeglib


@dataclass
class JpegCoefficients:
    """The content of a baseline JPEG file that the decoder uses.

    Attributes
    ----------
    coefficients : list of ndarray
        Per component (Y, or Y, Cb, Cr) the int16 DCT coefficients, ``(bh, bw, 8, 8)``.
    tables : ndarray
        uint16 quantization tables ``(k, 8, 8)`` (natural order).
    table_index : list of int
        Which table each component uses.
    height, width : int
        Image size in pixels (the blocks cover it, padded to a multiple of 8).
    mode : str
        ``"L"`` (grayscale) or ``"RGB"`` (stored as YCbCr).
    sampling : tuple of (int, int)
        The file's sampling factors (horizontal, vertical) per component, e.g.
        ``((2, 2), (1, 1), (1, 1))`` for 4:2:0; default: 1x1 for every component (4:4:4).
    """

    coefficients: list[np.ndarray]
    tables: np.ndarray
    table_index: list[int]
    height: int
    width: int
    mode: str
    sampling: tuple[tuple[int, int], ...] = ()

    def __post_init__(self) -> None:
        if not self.sampling:
            self.sampling = ((1, 1),) * len(self.coefficients)
        self.sampling = tuple((int(h), int(v)) for h, v in self.sampling)

    @property
    def subsampling(self) -> str:
        """``"4:4:4"``, ``"4:2:2"`` or ``"4:2:0"`` (grayscale: ``"4:4:4"``).

        Raises :class:`~quantadv.errors.DataError` naming a combination of sampling factors
        that the decoder model does not handle (e.g. 4:4:0 or 4:1:1).
        """
        return subsampling_of(self.sampling)

    def layout(self) -> BlockLayout:
        """The :class:`BlockLayout` of this file's components."""
        return BlockLayout(self.height, self.width, len(self.coefficients), self.subsampling)

    def component_tables(self) -> np.ndarray:
        """The table of every component, ``(components, 8, 8)`` float64."""
        return np.stack([self.tables[i] for i in self.table_index]).astype(np.float64)

    def to_bytes(self) -> bytes:
        """Write the coefficients and tables as a baseline JPEG file (with jpeglib) and return it.

        Unchanged coefficients give a file that decodes to the same pixels, bit for bit.
        """
        jpeglib = _jpeglib()
        comps = [np.ascontiguousarray(c, dtype=np.int16) for c in self.coefficients]
        if self.mode == "L":
            obj = jpeglib.from_dct(Y=comps[0], qt=self.tables.astype(np.uint16))
        else:
            obj = jpeglib.from_dct(Y=comps[0], Cb=comps[1], Cr=comps[2], qt=self.tables.astype(np.uint16),
                                   quant_tbl_no=list(self.table_index))
            # jpeglib infers the factors from the grids' shapes, which is ambiguous for small images
            # (an 8x8 4:2:2 image has 1x1 blocks in every component): set the file's own (v, h).
            obj.samp_factor = np.array([[v, h] for h, v in self.sampling], dtype=np.int32)
        obj.height, obj.width = self.height, self.width
        folder = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
        fd, tmp = tempfile.mkstemp(suffix=".jpg", dir=folder)
        os.close(fd)
        try:
            with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
                warnings.simplefilter("ignore")
                obj.write_dct(tmp)
            return Path(tmp).read_bytes()
        except (OSError, ValueError, TypeError, IndexError) as exc:
            raise DataError(f"libjpeg cannot write these coefficients as a JPEG ({str(exc).replace(tmp, '<file>')}); "
                            "check the tables (steps 1..65535) and the coefficient shapes") from None
        finally:
            os.unlink(tmp)

    def with_coefficients(self, coefficients: list[np.ndarray]) -> JpegCoefficients:
        """A copy with other coefficients (same tables, size, mode and sampling)."""
        return JpegCoefficients([np.asarray(c, dtype=np.int16) for c in coefficients], self.tables,
                                list(self.table_index), self.height, self.width, self.mode, self.sampling)


def subsampling_of(sampling: Sequence[tuple[int, int]]) -> str:
    """The name (``"4:4:4"``, ``"4:2:2"``, ``"4:2:0"``) of per-component (h, v) sampling factors.

    Raises :class:`~quantadv.errors.DataError` for another combination, naming it.
    """
    factors = [(int(h), int(v)) for h, v in sampling]
    if len(factors) == 1:
        return "4:4:4"
    (hy, vy), chroma = factors[0], factors[1:]
    ratio = None
    if all(c == chroma[0] for c in chroma) and hy % chroma[0][0] == 0 and vy % chroma[0][1] == 0:
        ratio = (hy // chroma[0][0], vy // chroma[0][1])
    for name, value in SUBSAMPLING.items():
        if ratio == value:
            return name
    named = {(1, 2): " (4:4:0)", (4, 1): " (4:1:1)", (4, 2): " (4:1:0)"}.get(ratio or (0, 0), "")
    text = ", ".join(f"{c} {h}x{v}" for c, (h, v) in zip(("Y", "Cb", "Cr", "K"), factors, strict=False))
    raise DataError(
        f"the JPEG's sampling factors {text}{named} are not supported: the decoder model handles 4:4:4, "
        "4:2:2 and 4:2:0; re-encode it (e.g. PIL's Image.save(..., subsampling='4:2:0'))"
    )


def check_subsampling(subsampling: object) -> str:
    """``"4:4:4"``, ``"4:2:2"`` or ``"4:2:0"`` (an :class:`~quantadv.errors.InputError` otherwise)."""
    if subsampling not in SUBSAMPLING:
        raise InputError(f"subsampling must be one of {', '.join(SUBSAMPLING)}, got {subsampling!r}")
    return str(subsampling)


@dataclass(frozen=True)
class BlockLayout:
    """The block grids of a JPEG's components and their packing into one ``(B, N, 8, 8)`` tensor.

    Component ``c`` of an ``height x width`` image is sampled on a ``ceil(height / fy) x
    ceil(width / fx)`` grid (``(fx, fy)`` = :data:`SUBSAMPLING` for chroma, ``(1, 1)`` for Y),
    covered by ``ceil(. / 8)`` blocks each way, as libjpeg lays them out (no MCU padding). The
    packed tensor holds the blocks of Y, then Cb, then Cr, each in row-major order.
    """

    height: int
    width: int
    components: int
    subsampling: str = "4:4:4"

    def factors(self) -> list[tuple[int, int]]:
        """Pixels (across, down) covered by one sample of each component."""
        chroma = SUBSAMPLING[check_subsampling(self.subsampling)]
        return [(1, 1)] + [chroma] * (self.components - 1)

    def samples(self) -> list[tuple[int, int]]:
        """The sampled (downsampled) size ``(rows, columns)`` of each component."""
        return [(-(-self.height // fy), -(-self.width // fx)) for fx, fy in self.factors()]

    def grids(self) -> list[tuple[int, int]]:
        """The ``(blocks_down, blocks_across)`` of each component."""
        return [(-(-h // 8), -(-w // 8)) for h, w in self.samples()]

    def pack(self, components: Sequence[torch.Tensor]) -> torch.Tensor:
        """Per-component ``(B, bh, bw, 8, 8)`` tensors -> one ``(B, N, 8, 8)`` tensor."""
        grids = self.grids()
        if len(components) != len(grids) or any(tuple(c.shape[-4:-2]) != g for c, g in zip(components, grids,
                                                                                          strict=False)):
            raise InputError(f"{self.subsampling} {self.height}x{self.width} components need block grids {grids}, "
                             f"got {[tuple(c.shape[-4:-2]) for c in components]}")
        return torch.cat([c.reshape(c.shape[0], -1, 8, 8) for c in components], dim=1)

    def unpack(self, packed: torch.Tensor) -> list[torch.Tensor]:
        """``(B, N, 8, 8)`` -> per-component ``(B, bh, bw, 8, 8)`` tensors (views)."""
        grids = self.grids()
        sizes = [bh * bw for bh, bw in grids]
        if packed.dim() != 4 or packed.shape[1] != sum(sizes):
            raise InputError(f"a packed {self.subsampling} {self.height}x{self.width} tensor has shape "
                             f"(B, {sum(sizes)}, 8, 8), got {tuple(packed.shape)}")
        parts = torch.split(packed, sizes, dim=1)
        return [p.reshape(p.shape[0], bh, bw, 8, 8) for p, (bh, bw) in zip(parts, grids, strict=True)]

    def per_block(self, values: torch.Tensor) -> torch.Tensor:
        """Broadcast per-component values ``(C, ...)`` to every block: ``(N, ...)``."""
        counts = torch.tensor([bh * bw for bh, bw in self.grids()], device=values.device)
        return torch.repeat_interleave(values, counts, dim=0)

    def pixels_per_sample(self) -> torch.Tensor:
        """How many pixels each block's samples cover (1 for Y; 4 for 4:2:0 chroma): ``(N,)``."""
        return self.per_block(torch.tensor([float(fx * fy) for fx, fy in self.factors()], dtype=torch.float64))


def _as_bytes(source: str | os.PathLike[str] | bytes, what: str = "source") -> tuple[bytes, str]:
    if isinstance(source, bytes | bytearray):
        return bytes(source), "the JPEG data"
    if isinstance(source, str | os.PathLike):
        path = Path(source)
        if not path.is_file():
            raise DataError(f"{path} does not exist or is not a file")
        return path.read_bytes(), str(path)
    raise InputError(f"{what} must be a file path or bytes, got {type(source).__name__}")


#: Default of ``max_pixels`` (8192 x 8192): larger frames are refused before decoding.
MAX_PIXELS = 8192 * 8192
#: Start-of-frame markers: SOF0 baseline, SOF1 extended and SOF2 progressive (Huffman) are
#: decodable here; the others (lossless, hierarchical, arithmetic coding) are refused.
_SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
_SOF_SUPPORTED = {0xC0: "baseline", 0xC1: "extended sequential", 0xC2: "progressive"}
_CORRUPT = "re-download it or re-encode it from a good copy"
#: Pillow raises these (and only these, in our fuzzing) on hostile data.
_PILLOW_ERRORS = (OSError, SyntaxError, ValueError, TypeError, KeyError, IndexError, EOFError, struct.error,
                  ZeroDivisionError, OverflowError, MemoryError, Image.DecompressionBombError)
_CAPTURE_LOCK = threading.Lock()


@dataclass(frozen=True)
class FrameHeader:
    """What a JPEG's frame header (SOFn) declares, read without decoding (:func:`frame_header`).

    ``components`` holds ``(id, horizontal sampling, vertical sampling, table)`` per component.
    """

    process: str
    precision: int
    height: int
    width: int
    components: tuple[tuple[int, int, int, int], ...]

    @property
    def pixels(self) -> int:
        return self.height * self.width


def check_max_pixels(max_pixels: object) -> int | None:
    """``max_pixels``: a positive integer, or None for no limit."""
    if max_pixels is None:
        return None
    if isinstance(max_pixels, bool) or not isinstance(max_pixels, int | np.integer) or int(max_pixels) < 1:
        raise InputError(f"max_pixels must be a positive integer (or None for no limit), got {max_pixels!r}")
    return int(max_pixels)


def frame_header(source: str | os.PathLike[str] | bytes, *, max_pixels: int | None = MAX_PIXELS) -> FrameHeader:
    """Read and check a JPEG's marker segments up to its first scan, without decoding anything.

    Raises :class:`~quantadv.errors.DataError` (naming the file and the problem) when the
    headers are malformed: no start-of-image marker, stray bytes between segments, a segment
    running past the end, no frame header or two of them, an unsupported process (lossless,
    hierarchical, arithmetic), a precision other than 8 bits, a 0-pixel side, bad sampling
    factors, a scan naming unknown components or undefined tables, a zero quantization step,
    a frame of more than ``max_pixels`` pixels (None: no limit), or fewer bytes of image data
    than the declared size needs (every 8x8 block costs at least one bit).
    """
    raw, name = _as_bytes(source)
    return _frame_header(raw, name, check_max_pixels(max_pixels))


def _frame_header(raw: bytes, name: str, max_pixels: int | None) -> FrameHeader:
    if raw[:2] != b"\xff\xd8":
        kind = "a PNG file" if raw[:8] == b"\x89PNG\r\n\x1a\n" else "not a JPEG file"
        raise DataError(f"{name} is {kind} (no JPEG start-of-image marker); give a .jpg file")
    n = len(raw)
    pos = 2
    frame: FrameHeader | None = None
    quant: set[int] = set()
    huffman: set[tuple[int, int]] = set()
    while True:
        if pos >= n:
            raise DataError(f"{name} is truncated: it ends at byte {n} before its first scan; {_CORRUPT}")
        if raw[pos] != 0xFF:
            raise DataError(f"{name} is corrupt: byte {pos} should start a marker but is {raw[pos]:#04x}; {_CORRUPT}")
        while pos < n and raw[pos] == 0xFF:
            pos += 1
        if pos + 3 > n:
            raise DataError(f"{name} is truncated: it ends at byte {n} inside a marker; {_CORRUPT}")
        marker, start = raw[pos], pos - 1
        pos += 1
        if marker == 0xD9:
            raise DataError(f"{name} has no image data (end-of-image marker at byte {start} before any scan)")
        if marker in (0x00, 0x01, 0xD8) or 0xD0 <= marker <= 0xD7:
            raise DataError(f"{name} is corrupt: unexpected marker 0xff{marker:02x} at byte {start} in its "
                            f"headers; {_CORRUPT}")
        (length,) = struct.unpack(">H", raw[pos: pos + 2])
        if length < 2 or pos + length > n:
            raise DataError(f"{name} is {'corrupt' if length < 2 else 'truncated'}: marker segment 0xff{marker:02x} "
                            f"at byte {start} declares {length} bytes, the file has {n - pos} left; {_CORRUPT}")
        body = raw[pos + 2: pos + length]
        pos += length
        if marker in _SOF_MARKERS:
            if frame is not None:
                raise DataError(f"{name} is corrupt: a second frame header (SOF) at byte {start}; {_CORRUPT}")
            frame = _parse_frame(marker, body, name, max_pixels)
        elif marker == 0xDB:
            quant |= _parse_quant(body, name)
        elif marker == 0xC4:
            huffman |= _parse_huffman(body, name)
        elif marker == 0xDA:
            if frame is None:
                raise DataError(f"{name} is corrupt: its first scan (byte {start}) comes before any frame header "
                                f"(SOF); {_CORRUPT}")
            _check_scan(frame, body, quant, huffman, name)
            break
    blocks = _min_blocks(frame)
    if (n - pos) * 8 < blocks:
        raise DataError(
            f"{name} declares a {frame.width}x{frame.height} image ({blocks:,} blocks of 8x8, at least one bit each) "
            f"but holds only {n - pos} bytes of image data: it is truncated or its frame header is corrupt; {_CORRUPT}"
        )
    return frame


def _parse_frame(marker: int, body: bytes, name: str, max_pixels: int | None) -> FrameHeader:
    if marker not in _SOF_SUPPORTED:
        raise DataError(f"{name} uses JPEG process SOF{marker - 0xC0} (lossless, hierarchical or arithmetic-coded); "
                        "only baseline and progressive Huffman JPEGs are supported: re-encode it")
    if len(body) < 6 or len(body) != 6 + 3 * body[5]:
        raise DataError(f"{name} is corrupt: its frame header (SOF) has a wrong length ({len(body) + 2} bytes); "
                        f"{_CORRUPT}")
    precision, height, width, count = body[0], *struct.unpack(">HH", body[1:5]), body[5]
    if precision != 8:
        raise DataError(f"{name} has {precision}-bit samples; only 8-bit JPEGs are supported: convert it to 8 bits")
    if height == 0 or width == 0:
        raise DataError(f"{name} declares a {width}x{height} image (a side of 0 pixels); it is corrupt or uses a DNL "
                        "marker, which is not supported")
    if max_pixels is not None and height * width > max_pixels:
        raise DataError(f"{name} declares a {width}x{height} image ({height * width:,} pixels), more than "
                        f"max_pixels={max_pixels:,}; refused before decoding: pass a larger max_pixels= if you "
                        "trust the file")
    if count not in (1, 3, 4):
        raise DataError(f"{name} has {count} colour components; only 1 (grayscale), 3 (YCbCr) or 4 (CMYK) exist")
    components = []
    for i in range(count):
        ident, sampling, table = body[6 + 3 * i: 9 + 3 * i]
        h, v = sampling >> 4, sampling & 15
        if not (1 <= h <= 4 and 1 <= v <= 4) or table > 3:
            raise DataError(f"{name} is corrupt: component {ident} has sampling factors {h}x{v} (1..4) and table "
                            f"{table} (0..3); {_CORRUPT}")
        components.append((ident, h, v, table))
    if len({c[0] for c in components}) != count:
        raise DataError(f"{name} is corrupt: two components share an id in its frame header; {_CORRUPT}")
    return FrameHeader(_SOF_SUPPORTED[marker], precision, height, width, tuple(components))


def _parse_quant(body: bytes, name: str) -> set[int]:
    tables, pos = set(), 0
    while pos < len(body):
        precision, index = body[pos] >> 4, body[pos] & 15
        size = 128 if precision else 64
        values = body[pos + 1: pos + 1 + size]
        if precision > 1 or index > 3 or len(values) != size:
            raise DataError(f"{name} is corrupt: a malformed quantization table (DQT); {_CORRUPT}")
        steps = np.frombuffer(values, dtype=">u2" if precision else np.uint8)
        if not steps.all():
            raise DataError(f"{name} is corrupt: quantization table {index} has a step of 0; {_CORRUPT}")
        tables.add(index)
        pos += 1 + size
    return tables


def _parse_huffman(body: bytes, name: str) -> set[tuple[int, int]]:
    tables, pos = set(), 0
    while pos < len(body):
        kind, index = body[pos] >> 4, body[pos] & 15
        counts = body[pos + 1: pos + 17]
        if kind > 1 or index > 3 or len(counts) != 16 or pos + 17 + sum(counts) > len(body) or sum(counts) > 256:
            raise DataError(f"{name} is corrupt: a malformed Huffman table (DHT); {_CORRUPT}")
        tables.add((kind, index))
        pos += 17 + sum(counts)
    return tables


def _check_scan(frame: FrameHeader, body: bytes, quant: set[int], huffman: set[tuple[int, int]], name: str) -> None:
    count = body[0] if body else 0
    if not 1 <= count <= 4 or len(body) != 4 + 2 * count:
        raise DataError(f"{name} is corrupt: a malformed scan header (SOS); {_CORRUPT}")
    known = {c[0]: c for c in frame.components}
    progressive = frame.process == "progressive"
    spectral_start = body[1 + 2 * count]
    for i in range(count):
        ident, tables = body[1 + 2 * i], body[2 + 2 * i]
        if ident not in known:
            raise DataError(f"{name} is corrupt: its first scan names component {ident}, which the frame header "
                            f"does not declare; {_CORRUPT}")
        if known[ident][3] not in quant:
            raise DataError(f"{name} is corrupt: quantization table {known[ident][3]} is used but never defined; "
                            f"{_CORRUPT}")
        if not progressive:
            needed = [(0, tables >> 4), (1, tables & 15)]
        elif spectral_start == 0:  # a DC scan: the first one codes with a DC table, refinements need none
            needed = [(0, tables >> 4)] if body[-1] >> 4 == 0 else []
        else:
            needed = [(1, tables & 15)]
        for kind, index in needed:
            if (kind, index) not in huffman:
                raise DataError(f"{name} is corrupt: Huffman table {'DC' if kind == 0 else 'AC'} {index} is used "
                                f"but never defined; {_CORRUPT}")


def _min_blocks(frame: FrameHeader) -> int:
    """A lower bound on the 8x8 blocks the file must code (each costs at least one bit)."""
    hmax = max(c[1] for c in frame.components)
    vmax = max(c[2] for c in frame.components)
    return sum(math.ceil(math.ceil(frame.width * h / hmax) / 8) * math.ceil(math.ceil(frame.height * v / vmax) / 8)
               for _, h, v, _ in frame.components)


def _libjpeg_read(raw: bytes, name: str):  # type: ignore[no-untyped-def]
    """Read the coefficients with libjpeg (jpeglib); any libjpeg warning or error is a DataError.

    libjpeg reports corrupt data ("Corrupt JPEG data: premature end of data segment", ...) as a
    *warning* on standard error and carries on, filling what it could not read with zeros; a
    file read that way would be half-read. The warnings are captured (file descriptor 2 is
    redirected for the duration of the call, under a lock) and turned into errors.
    """
    jpeglib = _jpeglib()
    folder = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
    fd, tmp = tempfile.mkstemp(suffix=".jpg", dir=folder)
    failure: BaseException | None = None
    obj = None
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(raw)
        with _CAPTURE_LOCK, tempfile.TemporaryFile(dir=folder) as sink:
            sys.stderr.flush()
            try:
                saved: int | None = os.dup(2)
                os.dup2(sink.fileno(), 2)
            except OSError:  # no usable file descriptor 2: libjpeg's warnings go nowhere we can see
                saved = None
            try:
                with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
                    warnings.simplefilter("ignore")
                    obj = jpeglib.read_dct(tmp)
                    obj.load()
            except (OSError, ValueError, RuntimeError, IndexError, TypeError, MemoryError) as exc:
                failure = exc
            finally:
                if saved is not None:
                    os.dup2(saved, 2)
                    os.close(saved)
            sink.seek(0)
            messages = sink.read().decode("utf-8", "replace").strip()
    finally:
        os.unlink(tmp)
    if messages or failure is not None:
        detail = messages.splitlines()[0] if messages else str(failure).replace(tmp, "<file>")
        state = "truncated" if "premature end of jpeg file" in detail.lower() else "corrupt"
        raise DataError(f"{name} is {state} (libjpeg: {detail}); it would be read only partly: {_CORRUPT}")
    return obj


def _check_coefficient_range(obj, name: str) -> None:  # type: ignore[no-untyped-def]
    """Refuse coefficients no 8-bit JPEG encoder produces (libjpeg decodes them, but cannot write them).

    An 8-bit DCT block has DC in -1024..1016 and AC within +-1023 (libjpeg's 10 coefficient
    bits); a corrupt Huffman table decodes to larger values.
    """
    for plane in (obj.Y, obj.Cb, obj.Cr, getattr(obj, "K", None)):
        if plane is None:
            continue
        values = np.asarray(plane)
        dc = values[..., 0, 0]
        ac = values.reshape(*values.shape[:-2], 64)[..., 1:]
        if dc.size and (dc.min() < -1024 or dc.max() > 1023) or ac.size and np.abs(ac).max() > 1023:
            raise DataError(f"{name} is corrupt: it decodes to DCT coefficients outside the 8-bit JPEG range "
                            f"(DC -1024..1023, AC -1023..1023); {_CORRUPT}")


def _pillow_open(raw: bytes, name: str) -> Image.Image:
    """Decode with Pillow; its warnings (other than the pixel-count one, checked before) are errors."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            picture = Image.open(io.BytesIO(raw), formats=["JPEG"])
            picture.load()
        except Image.DecompressionBombError as exc:
            raise DataError(f"{name} is larger than Pillow's own limit ({exc}); raise PIL.Image.MAX_IMAGE_PIXELS "
                            "as well as max_pixels= if you trust the file") from None
        except _PILLOW_ERRORS as exc:
            raise DataError(f"{name} is not a readable JPEG file ({type(exc).__name__}: {exc}); is it truncated or "
                            "corrupt?") from None
    problems = [w for w in caught if not issubclass(w.category, Image.DecompressionBombWarning)]
    if problems:
        raise DataError(f"{name} is corrupt (Pillow warns: {problems[0].message}); {_CORRUPT}")
    return picture


def _read_checked(
    raw: bytes, name: str, max_pixels: int | None = MAX_PIXELS, *, strict_mode: bool = True,
    sequential: bool = True,
) -> tuple[Image.Image, object]:
    """Check ``raw`` every way and decode it: ``(Pillow image, jpeglib object or None)``.

    The headers are checked first (:func:`frame_header`: size limits before any decoding),
    then libjpeg reads the coefficients with its warnings as errors (when jpeglib is
    installed), then Pillow decodes with its warnings as errors. ``strict_mode`` refuses
    what the coefficient tools cannot handle (modes other than L / RGB); ``sequential``
    refuses progressive files.
    """
    header = _frame_header(raw, name, check_max_pixels(max_pixels))
    if sequential and header.process == "progressive":
        raise DataError(
            f"{name} is a progressive JPEG; only baseline (sequential) JPEGs are supported: re-encode it "
            "without progressive=True (e.g. PIL's Image.save(..., progressive=False))"
        )
    if strict_mode and len(header.components) == 4:
        raise DataError(f"{name} has JPEG mode 'CMYK'; only grayscale ('L') and YCbCr/RGB JPEGs are supported "
                        "(CMYK and other colour spaces are not): convert it to RGB first")
    # The end-of-image marker must follow the last scan (0xFF 0xD9 cannot occur inside entropy-coded
    # data; an EXIF thumbnail's own markers come before the main scan). Trailing bytes are allowed.
    if raw.rfind(b"\xff\xd9") < raw.rfind(b"\xff\xda"):
        raise DataError(f"{name} is truncated (no JPEG end-of-image marker after its scan); re-download or "
                        "re-encode it")
    try:
        obj = _libjpeg_read(raw, name)
    except InputError:  # jpeglib is not installed: Pillow alone judges the data
        obj = None
    else:
        _check_coefficient_range(obj, name)
    picture = _pillow_open(raw, name)
    if (picture.height, picture.width) != (header.height, header.width):
        raise DataError(f"{name} decodes to {picture.width}x{picture.height} but its frame header declares "
                        f"{header.width}x{header.height}; {_CORRUPT}")
    if strict_mode and picture.mode not in ("L", "RGB"):
        raise DataError(
            f"{name} has JPEG mode {picture.mode!r}; only grayscale ('L') and YCbCr/RGB JPEGs are "
            "supported (CMYK and other colour spaces are not): convert it to RGB first"
        )
    return picture, obj


def _check_jpeg(raw: bytes, name: str, max_pixels: int | None = MAX_PIXELS) -> Image.Image:
    """Open ``raw`` with Pillow and refuse what the coefficient tools cannot handle."""
    return _read_checked(raw, name, max_pixels)[0]


def read_coefficients(
    source: str | os.PathLike[str] | bytes, *, max_pixels: int | None = MAX_PIXELS
) -> JpegCoefficients:
    """Read the DCT coefficients and quantization tables of a baseline JPEG (path or bytes).

    Raises :class:`~quantadv.errors.DataError`, naming the file and the problem, for a file
    that is not a JPEG (e.g. a PNG), malformed headers, a frame larger than ``max_pixels``
    (refused before decoding; None for no limit), corrupt or truncated data (libjpeg's and
    Pillow's warnings count as errors: a file is read whole or not at all), a progressive
    JPEG, or a colour space other than grayscale/YCbCr (CMYK). See docs/jpeg.md.
    """
    raw, name = _as_bytes(source)
    _jpeglib()
    picture, obj = _read_checked(raw, name, max_pixels)
    comps = [np.array(obj.Y, dtype=np.int16)]
    if picture.mode == "RGB":
        comps += [np.array(obj.Cb, dtype=np.int16), np.array(obj.Cr, dtype=np.int16)]
    tables = np.array(obj.qt, dtype=np.uint16)
    index = [int(i) for i in np.asarray(obj.quant_tbl_no).tolist()][: len(comps)]
    height, width = int(obj.height), int(obj.width)
    # jpeglib stores (vertical, horizontal) per component.
    sampling = tuple((int(h), int(v)) for v, h in np.asarray(obj.samp_factor).reshape(-1, 2).tolist())
    if picture.mode == "L":
        sampling = ((1, 1),)
    return JpegCoefficients(comps, tables, index, height, width, picture.mode, sampling[: len(comps)])


def decode(
    sources: Sequence[JpegCoefficients | bytes] | JpegCoefficients | bytes, *, max_pixels: int | None = MAX_PIXELS
) -> torch.Tensor:
    """Decode JPEGs with the standard decoder (libjpeg through Pillow) into ``uint8`` NCHW.

    Accepts bytes, :class:`JpegCoefficients` (written with jpeglib first), or a sequence of
    them of equal size and mode (grayscale or RGB; progressive files are decoded too). Bytes
    are checked as :func:`read_coefficients` checks them: malformed, corrupt or truncated
    data, or a frame over ``max_pixels`` pixels, raise :class:`~quantadv.errors.DataError`.
    """
    single = isinstance(sources, JpegCoefficients | bytes | bytearray)
    if single:
        sources = [sources]  # type: ignore[list-item]
    arrays = []
    for i, src in enumerate(sources):
        raw = src.to_bytes() if isinstance(src, JpegCoefficients) else bytes(src)
        name = "the JPEG data" if single else f"JPEG {i} of the sequence"
        picture, _ = _read_checked(raw, name, max_pixels, sequential=False)
        array = np.asarray(picture, dtype=np.uint8)
        arrays.append(array[:, :, None] if array.ndim == 2 else array)
    if not arrays:
        raise InputError("nothing to decode: the sequence of JPEGs is empty")
    shapes = {a.shape for a in arrays}
    if len(shapes) != 1:
        raise DataError(f"the JPEGs have different sizes or modes {sorted(shapes)}; decode them one by one")
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


def encode(images: torch.Tensor, quality: int, subsampling: str | None = None) -> list[bytes]:
    """Encode a digital batch (uint8, or float on the 1/255 grid) as baseline JPEGs with Pillow.

    ``quality`` 1..100 selects the IJG tables scaled as libjpeg does. ``subsampling``
    (``"4:4:4"``, ``"4:2:2"``, ``"4:2:0"``) is the chroma sampling of colour images; default
    :data:`PILLOW_SUBSAMPLING`, what Pillow writes when not told (4:2:0 at every quality).
    Grayscale images have no chroma and ignore it.
    """
    quality = check_quality(quality)
    pil_sampling = {"4:4:4": 0, "4:2:2": 1, "4:2:0": 2}[
        PILLOW_SUBSAMPLING if subsampling is None else check_subsampling(subsampling)]
    batch = _as_uint8(images)
    out = []
    for array in batch.permute(0, 2, 3, 1).numpy():
        picture = Image.fromarray(np.ascontiguousarray(array[:, :, 0] if array.shape[2] == 1 else array))
        buf = io.BytesIO()
        picture.save(buf, format="JPEG", quality=quality, subsampling=pil_sampling, optimize=False,
                     progressive=False)
        out.append(buf.getvalue())
    return out


def encode_like(image: torch.Tensor, template: JpegCoefficients) -> bytes:
    """Encode one digital image ``(C, H, W)`` with Pillow using ``template``'s quantization tables
    (per component) and chroma subsampling: what re-saving an edited JPEG with its own settings
    does (``qtables=``, ``subsampling=``)."""
    array = _as_uint8(image.unsqueeze(0))[0].permute(1, 2, 0).numpy()
    if array.shape[2] != len(template.coefficients) or array.shape[:2] != (template.height, template.width):
        raise InputError(f"the image is {array.shape[2]}x{array.shape[0]}x{array.shape[1]} but the template JPEG is "
                         f"{len(template.coefficients)}x{template.height}x{template.width}")
    index = list(template.table_index)
    # Pillow gives component i table i (the last table to the rest): pass the file's own tables when
    # its assignment is that one (the usual Y / chroma pair), else one table per component.
    pillow_order = [min(i, max(index)) for i in range(len(index))]
    qtables = template.tables[: max(index) + 1] if index == pillow_order else template.component_tables()
    picture = Image.fromarray(np.ascontiguousarray(array[:, :, 0] if array.shape[2] == 1 else array))
    buf = io.BytesIO()
    picture.save(buf, format="JPEG", qtables=[[int(v) for v in t.flatten()] for t in qtables],
                 subsampling={"4:4:4": 0, "4:2:2": 1, "4:2:0": 2}[template.subsampling], optimize=False,
                 progressive=False)
    return buf.getvalue()


def check_quality(quality: object) -> int:
    """A JPEG quality factor: an integer in 1..100."""
    if isinstance(quality, bool) or not isinstance(quality, int | np.integer) or not 1 <= int(quality) <= 100:
        raise InputError(f"quality must be an integer in 1..100 (IJG scale), got {quality!r}")
    return int(quality)


# ---------------------------------------------------------------------------------------------
# Differentiable model of the decoder


def dct_matrix(dtype: torch.dtype = torch.float64, device: torch.device | str | None = None) -> torch.Tensor:
    """The orthonormal 8x8 DCT-II matrix ``A`` of JPEG: ``F = A f A^T``, ``f = A^T F A``."""
    k = torch.arange(8, dtype=torch.float64).unsqueeze(1)
    n = torch.arange(8, dtype=torch.float64).unsqueeze(0)
    a = torch.cos((2 * n + 1) * k * math.pi / 16) * 0.5
    a[0] = a[0] / math.sqrt(2.0)
    return a.to(dtype=dtype, device=device)


def _blocks_to_image(blocks: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """``(..., bh, bw, 8, 8)`` -> ``(..., height, width)`` (cropping the padding)."""
    *lead, bh, bw, _, _ = blocks.shape
    img = blocks.transpose(-3, -2).reshape(*lead, bh * 8, bw * 8)
    return img[..., :height, :width]


def _image_to_blocks(image: torch.Tensor) -> torch.Tensor:
    """``(..., H, W)`` -> ``(..., bh, bw, 8, 8)``, padded by repeating the last row/column (libjpeg)."""
    h, w = image.shape[-2:]
    ph, pw = (-h) % 8, (-w) % 8
    if ph or pw:
        lead = image.shape[:-2]
        flat = image.reshape(-1, 1, h, w)
        flat = torch.nn.functional.pad(flat, (0, pw, 0, ph), mode="replicate")
        image = flat.reshape(*lead, h + ph, w + pw)
    *lead, hh, ww = image.shape
    return image.reshape(*lead, hh // 8, 8, ww // 8, 8).transpose(-3, -2)


def _round_ste(x: torch.Tensor) -> torch.Tensor:
    """Round to nearest in the forward pass, identity in the backward pass."""
    return x + (torch.round(x) - x).detach()


def _floor_ste(x: torch.Tensor) -> torch.Tensor:
    """Round down in the forward pass, identity in the backward pass."""
    return x + (torch.floor(x) - x).detach()


def _shift(plane: torch.Tensor, dim: int, step: int) -> torch.Tensor:
    """``plane`` moved by one sample along ``dim`` (``step`` -1: each sample's predecessor, +1:
    its successor), the edge sample repeated (libjpeg's edge handling of its upsamplers)."""
    n = plane.shape[dim]
    if step < 0:
        return torch.cat([plane.narrow(dim, 0, 1), plane.narrow(dim, 0, n - 1)], dim=dim)
    return torch.cat([plane.narrow(dim, 1, n - 1), plane.narrow(dim, n - 1, 1)], dim=dim)


def _interleave(even: torch.Tensor, odd: torch.Tensor, dim: int) -> torch.Tensor:
    """Samples ``even[0], odd[0], even[1], odd[1], ...`` along ``dim`` (-1: columns, -2: rows)."""
    if dim == -1:
        return torch.stack([even, odd], dim=-1).flatten(-2)
    return torch.stack([even, odd], dim=-2).flatten(-3, -2)


def upsample_chroma(
    plane: torch.Tensor, factors: tuple[int, int], height: int, width: int, *, method: str = "fancy",
    rounding: bool = False,
) -> torch.Tensor:
    """Upsample a chroma plane ``(..., rows, columns)`` to ``(..., height, width)`` as libjpeg-turbo does.

    ``factors`` (across, down) is ``(2, 1)`` (4:2:2), ``(2, 2)`` (4:2:0) or ``(1, 1)``.
    ``method="fancy"`` is libjpeg's default triangular filter (jdsample.c): 4:2:2 gives
    output pixels ``(3 s[j] + s[j-1] + 1) >> 2`` and ``(3 s[j] + s[j+1] + 2) >> 2``; 4:2:0 first
    forms column sums ``3 s[i] + s[i -/+ 1]`` (the nearer and the farther row) and then
    ``(3 c[j] + c[j-1] + 8) >> 4``, ``(3 c[j] + c[j+1] + 7) >> 4``; at the plane's edges the
    edge sample is repeated. libjpeg falls back to replication for planes 2 samples wide or
    less, and so does this. ``method="replicate"`` repeats every sample (libjpeg with
    ``do_fancy_upsampling = FALSE``). With ``rounding`` the shifts are floors (straight-through);
    without, the output is the filter's exact real value (no bias).
    """
    fx, fy = factors
    if method not in UPSAMPLING:
        raise InputError(f"upsampling must be one of {', '.join(UPSAMPLING)}, got {method!r}")
    if (fx, fy) not in SUBSAMPLING.values():
        raise InputError(f"chroma factors must be one of {sorted(SUBSAMPLING.values())}, got {factors!r}")
    if (fx, fy) == (1, 1):
        return plane[..., :height, :width]
    fancy = method == "fancy" and plane.shape[-1] > 2
    if not fancy:
        out = plane.repeat_interleave(fx, dim=-1)
        if fy == 2:
            out = out.repeat_interleave(2, dim=-2)
        return out[..., :height, :width]
    floor = _floor_ste if rounding else (lambda x: x)
    if fy == 1:  # 4:2:2
        left = 3.0 * plane + _shift(plane, -1, -1)
        right = 3.0 * plane + _shift(plane, -1, 1)
        if rounding:
            left, right = left + 1.0, right + 2.0
        out = _interleave(floor(left / 4.0), floor(right / 4.0), -1)
        return out[..., :height, :width]
    # 4:2:0: vertical then horizontal triangle; column sums are exact (integers when rounded).
    above = 3.0 * plane + _shift(plane, -2, -1)
    below = 3.0 * plane + _shift(plane, -2, 1)
    colsum = _interleave(above, below, -2)
    left = 3.0 * colsum + _shift(colsum, -1, -1)
    right = 3.0 * colsum + _shift(colsum, -1, 1)
    if rounding:
        left, right = left + 8.0, right + 7.0
    out = _interleave(floor(left / 16.0), floor(right / 16.0), -1)
    return out[..., :height, :width]


def decoder_model(
    coefficients: torch.Tensor | Sequence[torch.Tensor],
    tables: torch.Tensor,
    height: int,
    width: int,
    *,
    rounding: bool = False,
    subsampling: str = "4:4:4",
    upsampling: str = "fancy",
) -> torch.Tensor:
    """Differentiable model of a baseline JPEG decoder: coefficients -> pixels (0..255 scale).

    Parameters
    ----------
    coefficients : Tensor or sequence of Tensor
        DCT coefficients in units of each one's quantization step (integers for a real file;
        any float for gradients): either one ``(B, C, bh, bw, 8, 8)`` tensor (``C`` = 1,
        grayscale, or 3, Y Cb Cr at 4:4:4), or one ``(B, bh_c, bw_c, 8, 8)`` tensor per
        component (any ``subsampling``; the grids of :meth:`BlockLayout.grids`), e.g.
        ``BlockLayout(...).unpack(packed)``.
    tables : Tensor
        ``(C, 8, 8)`` quantization table of each component.
    height, width : int
        The image size (the blocks' padding is cropped).
    rounding : bool
        Round each component and the RGB values as libjpeg does (straight-through: the
        gradient is that of the unrounded model). With it the output matches libjpeg's
        (Pillow's) decode within 1 grey level per plane (its integer IDCT differs from the
        exact one by at most that; RGB within 3, see docs/jpeg.md); without it the output is
        the exact real-valued decode, clamped.
    subsampling : str
        ``"4:4:4"``, ``"4:2:2"`` or ``"4:2:0"``: the chroma sampling of the coefficients.
    upsampling : str
        ``"fancy"`` (libjpeg's default triangular filter) or ``"replicate"``; see
        :func:`upsample_chroma`.

    Returns
    -------
    Tensor
        ``(B, 1 or 3, height, width)`` pixels in 0..255 (float, dtype of ``coefficients``).
    """
    if isinstance(coefficients, torch.Tensor):
        if coefficients.dim() != 6 or coefficients.shape[-2:] != (8, 8) or coefficients.shape[1] not in (1, 3):
            raise InputError("coefficients must have shape (B, C, bh, bw, 8, 8) with C = 1 or 3 (or be a list of "
                             f"(B, bh, bw, 8, 8) tensors, one per component), got {tuple(coefficients.shape)}")
        if coefficients.shape[1] == 3 and check_subsampling(subsampling) != "4:4:4":
            raise InputError(f"{subsampling} coefficients have a different block grid per component: pass a list "
                             "of (B, bh, bw, 8, 8) tensors, one per component (BlockLayout.unpack)")
        components = list(coefficients.unbind(1))
    else:
        components = list(coefficients)
    if len(components) not in (1, 3):
        raise InputError(f"coefficients must have 1 or 3 components, got {len(components)}")
    layout = BlockLayout(int(height), int(width), len(components), check_subsampling(subsampling))
    grids, samples = layout.grids(), layout.samples()
    for c, grid in zip(components, grids, strict=True):
        if c.dim() != 5 or tuple(c.shape[-4:]) != (*grid, 8, 8):
            raise InputError(f"{layout.subsampling} {height}x{width} coefficients need per-component shapes "
                             f"(B, bh, bw, 8, 8) with (bh, bw) = {grids}, got {[tuple(x.shape) for x in components]}")
    if upsampling not in UPSAMPLING:
        raise InputError(f"upsampling must be one of {', '.join(UPSAMPLING)}, got {upsampling!r}")
    ref = components[0]
    a = dct_matrix(ref.dtype, ref.device)
    tables = tables.to(ref)
    planes = []
    for i, (c, (rows, cols), factors) in enumerate(zip(components, samples, layout.factors(), strict=True)):
        pixels = a.transpose(0, 1) @ (c * tables[i]) @ a + 128.0
        plane = _blocks_to_image(pixels, rows, cols).clamp(0.0, 255.0)
        if rounding:
            plane = _round_ste(plane)
        planes.append(upsample_chroma(plane, factors, int(height), int(width), method=upsampling,
                                      rounding=rounding))
    if len(planes) == 1:
        return planes[0].unsqueeze(1)
    ycc = torch.stack(planes, dim=1)
    m = torch.tensor(_YCC_TO_RGB, dtype=ycc.dtype, device=ycc.device)
    centred = ycc - torch.tensor([0.0, 128.0, 128.0], dtype=ycc.dtype, device=ycc.device).reshape(1, 3, 1, 1)
    rgb = torch.einsum("oc,bchw->bohw", m, centred).clamp(0.0, 255.0)
    return _round_ste(rgb) if rounding else rgb


def forward_dct(pixels: torch.Tensor, tables: torch.Tensor) -> torch.Tensor:
    """Real-valued JPEG coefficients (in quantization steps) of ``(B, C, H, W)`` pixels (0..255).

    The inverse of :func:`decoder_model` before clamping: colour is converted to YCbCr (JFIF),
    blocks are padded like libjpeg pads them, ``DCT(x - 128) / table``. Returns
    ``(B, C, bh, bw, 8, 8)``.
    """
    if pixels.shape[1] == 3:
        m = torch.tensor(_RGB_TO_YCC, dtype=pixels.dtype, device=pixels.device)
        pixels = torch.einsum("oc,bchw->bohw", m, pixels)
        pixels = pixels + torch.tensor([0.0, 128.0, 128.0], dtype=pixels.dtype, device=pixels.device).reshape(
            1, 3, 1, 1)
    a = dct_matrix(pixels.dtype, pixels.device)
    blocks = _image_to_blocks(pixels - 128.0)
    return (a @ blocks @ a.transpose(0, 1)) / tables.to(pixels).reshape(1, -1, 1, 1, 8, 8)


def stack_coefficients(jpegs: Sequence[JpegCoefficients]) -> torch.Tensor:
    """The coefficients of 4:4:4 (or grayscale) JPEGs of one size and mode as a ``(B, C, bh, bw, 8, 8)``
    int64 tensor; for subsampled files see :func:`stack_components`."""
    if any(len(set(j.sampling)) > 1 for j in jpegs):
        raise InputError("these JPEGs have subsampled chroma (block grids differ per component): use "
                         "stack_components(jpegs), one tensor per component")
    return torch.stack([torch.from_numpy(np.stack(j.coefficients).astype(np.int64)) for j in jpegs])


def stack_components(jpegs: Sequence[JpegCoefficients]) -> list[torch.Tensor]:
    """The coefficients of JPEGs of one layout, one ``(B, bh, bw, 8, 8)`` int64 tensor per component."""
    layouts = {j.layout() for j in jpegs}
    if len(layouts) != 1:
        raise InputError(f"the JPEGs differ in size, mode or subsampling ({sorted(map(str, layouts))}); "
                         "stack them group by group")
    return [torch.from_numpy(np.stack([j.coefficients[c] for j in jpegs]).astype(np.int64))
            for c in range(len(jpegs[0].coefficients))]


def downsample_chroma(plane: torch.Tensor, factors: tuple[int, int]) -> torch.Tensor:
    """Average ``(..., H, W)`` over ``factors`` (across, down) pixels, the edge padded by repetition:
    the real-valued version of libjpeg's encoder (jcsample.c), whose integer version alternates
    its rounding bias."""
    fx, fy = factors
    if (fx, fy) == (1, 1):
        return plane
    h, w = plane.shape[-2:]
    lead = plane.shape[:-2]
    flat = plane.reshape(-1, 1, h, w)
    ph, pw = (-h) % fy, (-w) % fx
    if ph or pw:
        flat = torch.nn.functional.pad(flat, (0, pw, 0, ph), mode="replicate")
    pooled = torch.nn.functional.avg_pool2d(flat, kernel_size=(fy, fx))
    return pooled.reshape(*lead, *pooled.shape[-2:])


def forward_dct_components(
    pixels: torch.Tensor, tables: torch.Tensor, subsampling: str = "4:4:4"
) -> list[torch.Tensor]:
    """Real-valued coefficients (in quantization steps) of ``(B, C, H, W)`` pixels, one
    ``(B, bh, bw, 8, 8)`` tensor per component, chroma downsampled to ``subsampling``
    (:func:`downsample_chroma`) as an encoder does; the grids of :class:`BlockLayout`."""
    layout = BlockLayout(pixels.shape[-2], pixels.shape[-1], pixels.shape[1], check_subsampling(subsampling))
    if pixels.shape[1] == 3:
        m = torch.tensor(_RGB_TO_YCC, dtype=pixels.dtype, device=pixels.device)
        pixels = torch.einsum("oc,bchw->bohw", m, pixels)
        pixels = pixels + torch.tensor([0.0, 128.0, 128.0], dtype=pixels.dtype, device=pixels.device).reshape(
            1, 3, 1, 1)
    a = dct_matrix(pixels.dtype, pixels.device)
    tables = tables.to(pixels)
    out = []
    for i, factors in enumerate(layout.factors()):
        blocks = _image_to_blocks(downsample_chroma(pixels[:, i], factors) - 128.0)
        out.append((a @ blocks @ a.transpose(0, 1)) / tables[i])
    return out


# ---------------------------------------------------------------------------------------------
# Folders of .jpg files


def save_jpeg(
    images: torch.Tensor | Sequence[bytes | JpegCoefficients],
    directory: str | os.PathLike[str],
    names: Sequence[str] | None = None,
    *,
    quality: int | None = None,
    labels: torch.Tensor | None = None,
    targets: torch.Tensor | None = None,
) -> list[Path]:
    """Write JPEG files, one per image, with an optional ``labels.json`` sidecar.

    Parameters
    ----------
    images : Tensor or sequence of bytes / JpegCoefficients
        Either JPEGs already made (the bytes returned in the info of
        :func:`quantadv.quantize.lagrangian_jpeg`, or :class:`JpegCoefficients`), written as
        they are, or a digital image batch (uint8 or float on the 1/255 grid), encoded here
        with Pillow at ``quality`` (re-encoding: an adversarial image usually does not survive
        it, see docs/jpeg.md).
    directory : path
        Created if needed. Files are written to a temporary name and renamed.
    names : sequence of str, optional
        File names (``.jpg`` appended when missing); default ``00000.jpg``, ``00001.jpg``...
    quality : int, optional
        Needed (only) when ``images`` is a tensor.
    labels, targets : Tensor, optional
        Recorded in ``labels.json`` as :func:`quantadv.io.save_png` does.

    Returns
    -------
    list of Path
        The files written, in order.
    """
    if isinstance(images, torch.Tensor):
        if quality is None:
            raise InputError("save_jpeg of an image tensor needs quality= (1..100); or pass JPEG bytes")
        blobs = encode(images, quality)
    else:
        if isinstance(images, bytes | bytearray | JpegCoefficients) or not isinstance(images, Sequence):
            raise InputError("images must be an image tensor or a sequence of JPEG bytes / JpegCoefficients")
        blobs = [j.to_bytes() if isinstance(j, JpegCoefficients) else bytes(j) for j in images]
        for i, blob in enumerate(blobs):
            if blob[:2] != b"\xff\xd8":
                raise InputError(f"images[{i}] is not JPEG data (no start-of-image marker)")
    if not blobs:
        raise InputError("nothing to save: no images")
    files = file_names(names, len(blobs), JPEG_SUFFIXES)
    return write_folder(directory, files, [lambda fh, blob=blob: fh.write(blob) for blob in blobs],
                        labels, targets)


def jpeg_files(directory: str | os.PathLike[str]) -> list[Path]:
    """The ``.jpg`` / ``.jpeg`` files of ``directory``, sorted by name."""
    return list_files(directory, JPEG_SUFFIXES, "load_jpeg")


def load_jpeg(directory: str | os.PathLike[str], *, max_pixels: int | None = MAX_PIXELS) -> torch.Tensor:
    """Decode every ``.jpg`` of ``directory`` (sorted by name) with libjpeg (Pillow): ``uint8`` NCHW.

    Each file is checked as :func:`read_coefficients` checks it (a PNG renamed .jpg, malformed
    headers, a frame over ``max_pixels`` pixels, corrupt, truncated, progressive or CMYK data
    raise :class:`~quantadv.errors.DataError` naming the file); all must share size and mode.
    """
    files = jpeg_files(directory)
    arrays = []
    first: tuple[str, tuple[int, int]] | None = None
    for path in files:
        picture = _check_jpeg(path.read_bytes(), str(path), max_pixels)
        array = np.asarray(picture, dtype=np.uint8)
        if first is None:
            first = (picture.mode, picture.size)
        elif (picture.mode, picture.size) != first:
            raise DataError(
                f"{path} is {picture.mode} {picture.size[0]}x{picture.size[1]} but {files[0].name} is "
                f"{first[0]} {first[1][0]}x{first[1][1]}; all images must share mode and size"
            )
        arrays.append(array[:, :, None] if array.ndim == 2 else array)
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


def load_jpeg_labels(
    directory: str | os.PathLike[str], labels_file: str | os.PathLike[str] | None = None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The labels (and targets, or None) recorded by :func:`save_jpeg` for ``directory``'s files."""
    return read_labels(directory, labels_file, [p.name for p in jpeg_files(directory)], "save_jpeg")
