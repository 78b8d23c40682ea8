"""Hostile JPEG files for testing the readers (issue 19): seeds and seeded mutations.

:func:`seeds` makes small valid JPEGs of every kind a reader meets (grayscale, colour 4:4:4
and 4:2:0, odd sizes, restart markers, optimized Huffman tables, an EXIF block, progressive,
CMYK); :func:`case` turns ``(seed index, case number)`` into one mutated file, deterministically
(the case number seeds the generator), with a short description of what was done:

- ``flip``: 1-16 random bits flipped anywhere after the start-of-image marker;
- ``truncate``: cut at a random length (sometimes inside the headers, sometimes in the scan);
- ``insert`` / ``overwrite``: 1-64 random bytes inserted / overwritten at a random place;
- ``frame``: the frame header (SOFn) rewritten to 65535x65535, 0x0, 0 x w, h x 0, odd or
  random sizes, or another component count / sampling factors / table number;
- ``drop`` / ``duplicate``: a marker segment (APPn, DQT, DHT, SOFn, SOS, DRI, COM) removed or
  repeated; ``swap``: two segments exchanged;
- ``combo``: two of the above in sequence.

Used by ``tests/test_jpeg_fuzz.py`` (a few hundred cases, each in a forked child) and
``benchmarks/jpeg_fuzz.py`` (10,000 cases).
"""

from __future__ import annotations

import io
import struct

import numpy as np
from PIL import Image

#: Start-of-frame markers (SOF0..SOF15 minus DHT 0xC4, JPG 0xC8, DAC 0xCC).
SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
KINDS = ("flip", "truncate", "insert", "overwrite", "frame", "drop", "duplicate", "swap", "combo")


def _picture(height: int, width: int, channels: int, seed: int) -> np.ndarray:
    """Smooth gradients plus noise: a natural-looking image whose scan has all kinds of codes."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    planes = []
    for c in range(channels):
        base = 128 + 90 * np.sin(xx / (3.0 + c) + yy / (5.0 + 2 * c) + c)
        planes.append(base + rng.normal(0, 25, (height, width)))
    array = np.clip(np.stack(planes, axis=-1), 0, 255).astype(np.uint8)
    return array[:, :, 0] if channels == 1 else array


def _save(array: np.ndarray, mode: str | None = None, **options: object) -> bytes:
    picture = Image.fromarray(array)
    if mode is not None:
        picture = picture.convert(mode)
    buf = io.BytesIO()
    picture.save(buf, format="JPEG", **options)
    return buf.getvalue()


def seeds() -> list[tuple[str, bytes]]:
    """Valid JPEG files to mutate: ``(name, bytes)``, deterministic."""
    exif = Image.Exif()
    exif[0x010E] = "quantadv fuzz seed"  # ImageDescription
    return [
        ("gray-28x28-q90", _save(_picture(28, 28, 1, 0), quality=90)),
        ("rgb-32x32-444-q75", _save(_picture(32, 32, 3, 1), quality=75, subsampling=0)),
        ("rgb-24x40-420-q50", _save(_picture(24, 40, 3, 2), quality=50, subsampling=2)),
        ("gray-13x21-odd-q95", _save(_picture(13, 21, 1, 3), quality=95)),
        ("rgb-17x9-odd-444", _save(_picture(17, 9, 3, 4), quality=85, subsampling=0)),
        ("gray-32x32-restart", _save(_picture(32, 32, 1, 5), quality=80, restart_marker_blocks=2)),
        ("rgb-16x16-optimize-exif", _save(_picture(16, 16, 3, 6), quality=70, subsampling=0, optimize=True,
                                          exif=exif.tobytes())),
        ("rgb-24x24-progressive", _save(_picture(24, 24, 3, 7), quality=80, progressive=True)),
        ("cmyk-16x16", _save(_picture(16, 16, 3, 8), mode="CMYK", quality=85)),
    ]


def segments(raw: bytes) -> list[tuple[int, int, int]]:
    """The marker segments before the first scan's data: ``(marker, start, end)`` byte spans.

    ``start`` is the 0xFF of the marker and ``end`` is one past the segment's last byte; the
    SOS segment is the last one listed (its entropy-coded data follows). Stops quietly at
    anything malformed (the fuzzer only needs the spans it can find).
    """
    out: list[tuple[int, int, int]] = []
    pos = 2
    while pos + 4 <= len(raw) and raw[pos] == 0xFF:
        marker = raw[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        (length,) = struct.unpack(">H", raw[pos + 2: pos + 4])
        end = pos + 2 + length
        if length < 2 or end > len(raw):
            break
        out.append((marker, pos, end))
        if marker == 0xDA:
            break
        pos = end
    return out


def _rewrite_frame(raw: bytes, rng: np.random.Generator) -> tuple[bytes, str]:
    frames = [s for s in segments(raw) if s[0] in SOF_MARKERS]
    if not frames:
        return _flip(raw, rng)
    _, start, end = frames[0]
    header = bytearray(raw[start:end])  # FF Cn Lh Ll P Yh Yl Xh Xl Nf (Ci Hi|Vi Tqi)*
    if len(header) < 10:
        return _flip(raw, rng)
    choice = int(rng.integers(0, 10))
    if choice < 6:
        sizes = [(65535, 65535), (0, 0), (0, int(rng.integers(1, 65536))), (int(rng.integers(1, 65536)), 0),
                 (int(rng.integers(1, 64)) | 1, int(rng.integers(1, 64)) | 1),
                 (int(rng.integers(1, 65536)), int(rng.integers(1, 65536)))][choice]
        header[5:9] = struct.pack(">HH", *sizes)
        what = f"frame size {sizes[0]}x{sizes[1]}"
    elif choice == 6:
        header[9] = int(rng.choice([0, 2, 3, 4, 5, 255]))
        what = f"frame component count {header[9]}"
    elif choice == 7:
        comp = int(rng.integers(0, max(1, (len(header) - 10) // 3)))
        if 10 + 3 * comp + 1 >= len(header):
            return _flip(raw, rng)
        header[10 + 3 * comp + 1] = int(rng.choice([0x00, 0x12, 0x21, 0x22, 0x44, 0x55, 0xFF]))
        what = f"sampling factors of component {comp} = {header[10 + 3 * comp + 1]:#04x}"
    elif choice == 8:
        comp = int(rng.integers(0, max(1, (len(header) - 10) // 3)))
        if 10 + 3 * comp + 2 >= len(header):
            return _flip(raw, rng)
        header[10 + 3 * comp + 2] = int(rng.choice([1, 2, 3, 4, 255]))
        what = f"table number of component {comp} = {header[10 + 3 * comp + 2]}"
    else:
        header[4] = int(rng.choice([0, 12, 16, 255]))
        what = f"sample precision {header[4]}"
    return raw[:start] + bytes(header) + raw[end:], what


def _flip(raw: bytes, rng: np.random.Generator) -> tuple[bytes, str]:
    data = bytearray(raw)
    if len(data) <= 2:
        return raw + b"\x00", "1 byte appended (too short to flip bits)"
    count = int(rng.integers(1, 17))
    for _ in range(count):
        pos = int(rng.integers(2, len(data)))
        data[pos] ^= 1 << int(rng.integers(0, 8))
    return bytes(data), f"{count} bit flips"


def _mutate(raw: bytes, kind: str, rng: np.random.Generator) -> tuple[bytes, str]:
    if kind == "flip":
        return _flip(raw, rng)
    if kind == "truncate":
        cut = int(rng.integers(0, max(len(raw), 1)))
        return raw[:cut], f"truncated to {cut} of {len(raw)} bytes"
    if kind in ("insert", "overwrite"):
        count = int(rng.integers(1, 65))
        pos = int(rng.integers(0, max(len(raw), 1)))
        junk = rng.integers(0, 256, count, dtype=np.uint8).tobytes()
        if kind == "insert":
            return raw[:pos] + junk + raw[pos:], f"{count} bytes inserted at {pos}"
        return raw[:pos] + junk + raw[pos + count:], f"{count} bytes overwritten at {pos}"
    if kind == "frame":
        return _rewrite_frame(raw, rng)
    spans = segments(raw)
    if not spans:
        return _flip(raw, rng)
    marker, start, end = spans[int(rng.integers(0, len(spans)))]
    if kind == "drop":
        return raw[:start] + raw[end:], f"segment {marker:#04x} dropped"
    if kind == "duplicate":
        return raw[:end] + raw[start:end] + raw[end:], f"segment {marker:#04x} duplicated"
    # swap: exchange two segments (headers out of order)
    other = spans[int(rng.integers(0, len(spans)))]
    (a, b) = sorted([(start, end, marker), (other[1], other[2], other[0])])
    if a[0] == b[0]:
        return raw[:start] + raw[end:], f"segment {marker:#04x} dropped"
    swapped = raw[: a[0]] + raw[b[0]: b[1]] + raw[a[1]: b[0]] + raw[a[0]: a[1]] + raw[b[1]:]
    return swapped, f"segments {a[2]:#04x} and {b[2]:#04x} swapped"


def kind_of(number: int) -> str:
    """The mutation kind of case ``number`` (one of :data:`KINDS`)."""
    rng = np.random.default_rng([19, number])
    return KINDS[int(rng.integers(0, len(KINDS)))]


def case(seed_files: list[tuple[str, bytes]], number: int) -> tuple[str, bytes]:
    """Fuzz case ``number``: a description and the mutated bytes (deterministic in ``number``)."""
    rng = np.random.default_rng([19, number])
    name, raw = seed_files[number % len(seed_files)]
    kind = KINDS[int(rng.integers(0, len(KINDS)))]
    if kind == "combo":
        first, second = (KINDS[int(k)] for k in rng.integers(0, len(KINDS) - 1, 2))
        raw, what1 = _mutate(raw, first, rng)
        raw, what2 = _mutate(raw, second, rng)
        return f"{name}: {what1}; {what2}", raw
    raw, what = _mutate(raw, kind, rng)
    return f"{name}: {what}", raw


# ---------------------------------------------------------------------------------------------
# Running a case: the readers' contract


def check_case(raw: bytes, directory: str) -> str:
    """Feed ``raw`` to every JPEG reader; return ``"ok"``, ``"refused"`` or ``"escape: ..."``.

    The readers are :func:`quantadv.io.load_jpeg` (on ``directory`` holding the file as its
    only ``.jpg``), :func:`quantadv.io.jpeg.read_coefficients` followed by
    :meth:`~quantadv.io.jpeg.JpegCoefficients.to_bytes` and :func:`quantadv.io.jpeg.decode`,
    and :func:`quantadv.data.folder.read_image_folder`. The contract: each either refuses the
    file with a :class:`~quantadv.errors.DataError` whose message names it, or returns
    consistent data (the folder decodes equal :func:`~quantadv.io.jpeg.decode` of the file,
    and the coefficients written back decode to the same pixels, bit for bit). Anything else
    (another exception, a message without the file's name, a mismatch) is an escape.
    """
    from pathlib import Path

    import torch

    from ..data.folder import read_image_folder
    from ..errors import DataError
    from . import jpeg as jio

    path = Path(directory) / "case.jpg"
    path.write_bytes(raw)
    klass = Path(directory) / "images" / "a"
    klass.mkdir(parents=True)
    (klass / "case.jpg").write_bytes(raw)
    readers = {
        "load_jpeg": lambda: jio.load_jpeg(directory),
        "read_coefficients": lambda: jio.decode(jio.read_coefficients(path).to_bytes()),
        "decode": lambda: jio.decode(raw),
        "image_folder": lambda: torch.from_numpy(read_image_folder(Path(directory) / "images")[0]),
    }
    got: dict[str, torch.Tensor] = {}
    refused: dict[str, str] = {}
    for reader, read in readers.items():
        try:
            got[reader] = read()
        except DataError as exc:
            name = "the JPEG data" if reader == "decode" else "case.jpg"
            if name not in str(exc):
                return f"escape: {reader} raised DataError without naming the file: {exc}"
            refused[reader] = str(exc)
        except Exception as exc:  # noqa: BLE001 - classifying what escapes is the point
            return f"escape: {reader} raised {type(exc).__name__}: {exc}"
    if not got:
        return "refused"
    if ("load_jpeg" in got) != ("read_coefficients" in got):
        return f"escape: load_jpeg and read_coefficients disagree (refusal: {list(refused.values())[0]})"
    if "load_jpeg" in got and "decode" not in got:
        return f"escape: load_jpeg accepted what decode refused ({refused['decode']})"
    if "decode" in got and "load_jpeg" not in got and "progressive" not in refused["load_jpeg"]:
        return f"escape: decode accepted what load_jpeg refused ({refused['load_jpeg']})"
    if "image_folder" in got and "decode" not in got and "mode" not in refused["decode"]:
        return f"escape: the image folder reader accepted what decode refused ({refused['decode']})"
    reference = got.get("decode")
    for reader, pixels in got.items():
        if reference is not None and reader != "decode" and not torch.equal(pixels.reshape(reference.shape), reference):
            return f"escape: {reader} gives other pixels than decode"
    return "ok"


def run_forked(raw: bytes, timeout: float = 20.0) -> str:
    """:func:`check_case` in a forked child: a crash or a hang becomes an ``"escape: ..."`` result."""
    import faulthandler
    import os
    import pickle
    import select
    import signal
    import tempfile
    import time

    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: run the case, send the verdict, exit without cleanup handlers
        code = 0
        try:
            faulthandler.disable()  # a crash is reported by the parent, not dumped by the child
            os.close(read_end)
            shm = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
            with tempfile.TemporaryDirectory(dir=shm) as directory:
                verdict = check_case(raw, directory)
            os.write(write_end, pickle.dumps(verdict))
        except BaseException as exc:  # noqa: BLE001 - reported to the parent
            os.write(write_end, pickle.dumps(f"escape: harness error {type(exc).__name__}: {exc}"))
            code = 1
        finally:
            os._exit(code)
    os.close(write_end)
    chunks = []
    deadline = time.monotonic() + timeout
    try:
        while True:
            left = deadline - time.monotonic()
            ready, _, _ = select.select([read_end], [], [], max(left, 0))
            if not ready:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                return f"escape: hang (no verdict in {timeout:.0f} s)"
            chunk = os.read(read_end, 65536)
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        os.close(read_end)
    _, status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(status):
        return f"escape: crash (signal {os.WTERMSIG(status)})"
    if not chunks:
        return f"escape: child exited with status {os.WEXITSTATUS(status)} and no verdict"
    return pickle.loads(b"".join(chunks))


def run_stream_forked(raws: list[bytes], timeout: float = 30.0) -> list[str]:
    """:func:`check_case` on each of ``raws``, in forked children that stream one verdict per case.

    Cheaper than :func:`run_forked` per case (one fork for many cases) with the same safety:
    the child reports each verdict as soon as it has it, so when it dies (a C-level crash) or
    stops answering for ``timeout`` seconds (a hang), the case it was on is the one that
    escaped; that case gets the ``"escape: crash ..."`` / ``"escape: hang ..."`` verdict and a
    new child carries on with the next one.
    """
    import faulthandler
    import os
    import pickle
    import select
    import signal
    import struct as _struct
    import tempfile
    import time

    verdicts: list[str] = []
    while len(verdicts) < len(raws):
        todo = raws[len(verdicts):]
        read_end, write_end = os.pipe()
        pid = os.fork()
        if pid == 0:
            code = 0
            try:
                faulthandler.disable()
                os.close(read_end)
                shm = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
                for raw in todo:
                    try:
                        with tempfile.TemporaryDirectory(dir=shm) as directory:
                            verdict = check_case(raw, directory)
                    except Exception as exc:  # noqa: BLE001 - reported as the case's verdict
                        verdict = f"escape: harness error {type(exc).__name__}: {exc}"
                    data = pickle.dumps(verdict)
                    os.write(write_end, _struct.pack(">I", len(data)) + data)
            except BaseException:  # noqa: BLE001 - the parent sees the missing verdicts
                code = 1
            finally:
                os._exit(code)
        os.close(write_end)
        buffer = b""
        died = None
        try:
            deadline = time.monotonic() + timeout
            while len(verdicts) < len(raws):
                ready, _, _ = select.select([read_end], [], [], max(deadline - time.monotonic(), 0))
                if not ready:
                    os.kill(pid, signal.SIGKILL)
                    died = f"escape: hang (no verdict in {timeout:.0f} s)"
                    break
                chunk = os.read(read_end, 65536)
                if not chunk:
                    break
                buffer += chunk
                while len(buffer) >= 4 and len(buffer) >= 4 + _struct.unpack(">I", buffer[:4])[0]:
                    size = _struct.unpack(">I", buffer[:4])[0]
                    verdicts.append(pickle.loads(buffer[4: 4 + size]))
                    buffer = buffer[4 + size:]
                    deadline = time.monotonic() + timeout
        finally:
            os.close(read_end)
        _, status = os.waitpid(pid, 0)
        if len(verdicts) < len(raws):
            if died is None:
                died = (f"escape: crash (signal {os.WTERMSIG(status)})" if os.WIFSIGNALED(status)
                        else f"escape: child exited with status {os.WEXITSTATUS(status)} and no verdict")
            verdicts.append(died)
    return verdicts
