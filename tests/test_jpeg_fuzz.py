"""Hostile JPEG files (issue 19): every reader refuses them with DataError or reads them whole."""

from __future__ import annotations

import collections
import io as stdio
import struct
import time
import zlib

import numpy as np
import pytest
from PIL import Image

from quantadv import errors
from quantadv import io as qio
from quantadv.data.folder import read_image_folder
from quantadv.io import _jpeg_fuzz as fuzz
from quantadv.io import jpeg as jio

pytest.importorskip("jpeglib")

SEEDS = fuzz.seeds()
SEED = dict(SEEDS)


def _with_frame_size(raw: bytes, height: int, width: int) -> bytes:
    marker, start, end = next(s for s in fuzz.segments(raw) if s[0] in fuzz.SOF_MARKERS)
    header = bytearray(raw[start:end])
    header[5:9] = struct.pack(">HH", height, width)
    return raw[:start] + bytes(header) + raw[end:]


def _zero_step(raw: bytes) -> bytes:
    """The first step of the first quantization table set to 0."""
    start = next(s for s in fuzz.segments(raw) if s[0] == 0xDB)[1]
    return raw[: start + 5] + b"\x00" + raw[start + 6:]


def _pillow_accepts(raw: bytes) -> bool:
    with Image.open(stdio.BytesIO(raw)) as picture:
        picture.load()
    return True


def test_fuzz_cases_never_escape() -> None:
    """225 mutated files (25 per seed), each read in a forked child: no escape, no crash, no hang."""
    verdicts = collections.Counter()
    escapes = []
    for number in range(225):
        what, raw = fuzz.case(SEEDS, number)
        verdict = fuzz.run_forked(raw, timeout=30.0)
        verdicts["escape" if verdict.startswith("escape") else verdict] += 1
        if verdict.startswith("escape"):
            escapes.append(f"case {number} ({what}): {verdict}")
    assert escapes == []
    # the cases exercise both outcomes: files refused, and mutated files still read consistently
    assert verdicts["refused"] > 100 and verdicts["ok"] > 20, verdicts


def test_run_forked_reports_a_crash_and_a_hang(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import os
    import signal

    monkeypatch.setattr(fuzz, "check_case", lambda raw, directory: os.kill(os.getpid(), signal.SIGSEGV))
    assert fuzz.run_forked(SEED["gray-28x28-q90"]) == f"escape: crash (signal {int(signal.SIGSEGV)})"
    monkeypatch.setattr(fuzz, "check_case", lambda raw, directory: time.sleep(5))
    assert fuzz.run_forked(SEED["gray-28x28-q90"], timeout=0.5).startswith("escape: hang")


def test_streamed_children_pin_a_crash_and_a_hang_on_their_case(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import os
    import signal

    def check(raw, directory):  # type: ignore[no-untyped-def]
        if raw == b"crash":
            os.kill(os.getpid(), signal.SIGSEGV)
        if raw == b"hang":
            time.sleep(5)
        return "ok" if raw == b"good" else "refused"

    monkeypatch.setattr(fuzz, "check_case", check)
    verdicts = fuzz.run_stream_forked([b"good", b"bad", b"crash", b"good", b"hang", b"bad"], timeout=1.0)
    assert verdicts[:2] == ["ok", "refused"] and verdicts[3] == "ok" and verdicts[5] == "refused"
    assert verdicts[2] == f"escape: crash (signal {int(signal.SIGSEGV)})"
    assert verdicts[4].startswith("escape: hang")


def test_seed_files_read_as_documented(tmp_path) -> None:  # type: ignore[no-untyped-def]
    for name, raw in SEEDS:
        (tmp_path / name).mkdir()
        verdict = fuzz.check_case(raw, str(tmp_path / name))
        assert verdict == "ok", (name, verdict)  # CMYK: refused by the JPEG tools, converted by the folder reader
    for name, raw in SEEDS[:7]:  # baseline grayscale / colour: coefficients round-trip bit for bit
        assert np.array_equal(jio.decode(jio.read_coefficients(raw).to_bytes()), jio.decode(raw)), name
    with pytest.raises(errors.DataError, match="progressive"):
        jio.read_coefficients(SEED["rgb-24x24-progressive"])
    assert jio.decode(SEED["rgb-24x24-progressive"]).shape == (1, 3, 24, 24)
    with pytest.raises(errors.DataError, match="CMYK"):
        jio.decode(SEED["cmyk-16x16"])


def test_huge_frame_refused_before_decoding(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    raw = _with_frame_size(SEED["gray-28x28-q90"], 65535, 65535)
    (tmp_path / "huge.jpg").write_bytes(raw)

    def decoding(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise AssertionError("decoding started")

    monkeypatch.setattr(jio, "_libjpeg_read", decoding)
    monkeypatch.setattr(jio, "_pillow_open", decoding)
    for read in (jio.read_coefficients, jio.decode, jio.frame_header):
        with pytest.raises(errors.DataError, match=r"65535x65535 image \(4,294,836,225 pixels\), more than max_pixels"):
            read(raw)
    with pytest.raises(errors.DataError, match=r"huge\.jpg declares a 65535x65535"):
        qio.load_jpeg(tmp_path)
    # without a pixel limit the file is still refused before decoding: 4.3 G pixels cannot fit in ~900 bytes
    with pytest.raises(errors.DataError, match="holds only"):
        jio.read_coefficients(raw, max_pixels=None)


def test_max_pixels_keyword(tmp_path) -> None:  # type: ignore[no-untyped-def]
    raw = SEED["gray-28x28-q90"]
    assert jio.MAX_PIXELS == 8192 * 8192
    assert jio.frame_header(raw) == jio.FrameHeader("baseline", 8, 28, 28, ((1, 1, 1, 0),))
    assert jio.read_coefficients(raw, max_pixels=28 * 28).height == 28
    with pytest.raises(errors.DataError, match="more than max_pixels=783"):
        jio.read_coefficients(raw, max_pixels=28 * 28 - 1)
    with pytest.raises(errors.DataError, match="more than max_pixels=100"):
        jio.decode(raw, max_pixels=100)
    (tmp_path / "a.jpg").write_bytes(raw)
    assert qio.load_jpeg(tmp_path, max_pixels=None).shape == (1, 1, 28, 28)
    with pytest.raises(errors.DataError, match="a.jpg declares a 28x28"):
        qio.load_jpeg(tmp_path, max_pixels=500)
    for bad in (0, -1, 2.5, True, "big"):
        with pytest.raises(errors.InputError, match="max_pixels"):
            jio.read_coefficients(raw, max_pixels=bad)


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda raw: raw[:-2] + b"\x12\x34\x56" + raw[-2:], "extraneous bytes before marker 0xd9"),
        (lambda raw: raw[: len(raw) - 200] + b"\xff\xd9" + raw[len(raw) - 200:], "premature end of data segment"),
        (lambda raw: raw[: len(raw) - 120] + b"\xff\xd3" + raw[len(raw) - 120:], "Corrupt JPEG data"),
    ],
)
def test_corrupt_data_pillow_tolerates_is_refused(tmp_path, mutate, message) -> None:  # type: ignore[no-untyped-def]
    """libjpeg fills what it cannot read with zeros and only warns; Pillow then returns an image."""
    raw = mutate(SEED["gray-28x28-q90"])
    assert _pillow_accepts(raw)  # the point: Pillow alone would half-read this file
    for read in (jio.read_coefficients, jio.decode):
        with pytest.raises(errors.DataError, match=message):
            read(raw)
    (tmp_path / "x.jpg").write_bytes(raw)
    with pytest.raises(errors.DataError, match=r"x\.jpg is corrupt \(libjpeg"):
        qio.load_jpeg(tmp_path)
    (tmp_path / "set" / "cls").mkdir(parents=True)
    (tmp_path / "set" / "cls" / "y.jpg").write_bytes(raw)
    with pytest.raises(errors.DataError, match=r"y\.jpg is corrupt \(libjpeg"):
        read_image_folder(tmp_path / "set")


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda raw: raw[:2] + raw[2:].replace(b"\xff\xc4", b"\xff\xfe", 1), "Huffman table DC 0 is used but never"),
        (lambda raw: _with_frame_size(raw, 0, 0), "declares a 0x0 image"),
        (lambda raw: _with_frame_size(raw, 28, 3), "extraneous bytes"),
        (lambda raw: raw[:20] + b"\x00\x01" + raw[20:], "byte 20 should start a marker"),
        (lambda raw: _zero_step(raw), "quantization table 0 has a step of 0"),
    ],
)
def test_malformed_headers_are_named(mutate, message) -> None:  # type: ignore[no-untyped-def]
    raw = mutate(SEED["gray-28x28-q90"])
    with pytest.raises(errors.DataError, match=message):
        jio.read_coefficients(raw)


def test_writing_bad_coefficients_raises_data_error() -> None:
    coef = jio.read_coefficients(SEED["gray-28x28-q90"])
    bad = jio.JpegCoefficients(coef.coefficients, np.zeros_like(coef.tables), coef.table_index, 28, 28, "L")
    try:
        blob = bad.to_bytes()
    except errors.DataError as exc:
        assert "cannot write" in str(exc)
    else:  # libjpeg wrote it: then the readers must refuse the zero quantization step
        with pytest.raises(errors.DataError, match="step of 0"):
            jio.decode(blob)


def test_png_decompression_bomb_is_a_data_error(tmp_path) -> None:  # type: ignore[no-untyped-def]
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", 100000, 100000, 8, 0, 0, 0, 0)
    (tmp_path / "bomb.png").write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b""))
    with pytest.raises(errors.DataError, match=r"bomb\.png is not a readable PNG"):
        qio.load_png(tmp_path)
