"""Issue 21: chroma-subsampled (4:2:2, 4:2:0) colour JPEGs: I/O, the decoder model, attacks in place."""

from __future__ import annotations

import io as stdio

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import quantadv
from quantadv import errors, quantize
from quantadv import io as qio
from quantadv.io import jpeg as jio

jpeglib = pytest.importorskip("jpeglib")


def _photo(n: int, height: int, width: int, seed: int = 0) -> torch.Tensor:
    """Photo-like colour images (uint8 NCHW): smooth gradients, a soft disc, a sharp vertical edge
    and a little sensor noise."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, height, dtype=torch.float64),
                            torch.linspace(0, 1, width, dtype=torch.float64), indexing="ij")
    out = []
    for _ in range(n):
        p = torch.rand(10, generator=g, dtype=torch.float64)
        red = 200 * (p[0] * xx + (1 - p[0]) * yy)
        green = 128 + 100 * torch.sin(6 * p[1] * xx + 4 * p[2] * yy + 3 * p[3])
        disc = ((xx - p[4]) ** 2 + (yy - p[5]) ** 2 < 0.05 + 0.1 * p[6]).double()
        blue = 40 + 180 * disc
        img = torch.stack([red, green, blue])
        edge = int(width * (0.2 + 0.6 * p[7]))
        img[:, :, :edge] = img[:, :, :edge] * 0.4 + torch.tensor([150.0, 60.0, 200.0]).reshape(3, 1, 1) * p[8]
        img = img + 6 * torch.randn(img.shape, generator=g, dtype=torch.float64)
        out.append(img)
    return torch.stack(out).round().clamp(0, 255).to(torch.uint8)


def _noise(n: int, height: int, width: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, height, width), generator=g, dtype=torch.uint8)


def _pillow(images: torch.Tensor, quality: int, subsampling: str) -> list[bytes]:
    """Encoded directly with Pillow (independently of io.jpeg.encode)."""
    blobs = []
    for array in images.permute(0, 2, 3, 1).numpy():
        buf = stdio.BytesIO()
        Image.fromarray(array).save(buf, format="JPEG", quality=quality, subsampling=subsampling)
        blobs.append(buf.getvalue())
    return blobs


def _model_inputs(blobs: list[bytes]) -> tuple[list[torch.Tensor], torch.Tensor, jio.BlockLayout]:
    jpegs = [qio.read_coefficients(b) for b in blobs]
    return [c.double() for c in jio.stack_components(jpegs)], torch.from_numpy(jpegs[0].component_tables()), \
        jpegs[0].layout()


def _pillow_ycc(blobs: list[bytes]) -> torch.Tensor:
    """libjpeg's upsampled Y, Cb, Cr planes (before colour conversion): Pillow's draft YCbCr mode."""
    planes = []
    for blob in blobs:
        picture = Image.open(stdio.BytesIO(blob))
        picture.draft("YCbCr", picture.size)
        assert picture.mode == "YCbCr"
        planes.append(np.asarray(picture))
    return torch.from_numpy(np.stack(planes)).permute(0, 3, 1, 2).double()


def _model_ycc(comps: list[torch.Tensor], tables: torch.Tensor, layout: jio.BlockLayout,
               method: str = "fancy") -> torch.Tensor:
    """The decoder model's planes with libjpeg's rounding, upsampled, before YCbCr -> RGB."""
    a = jio.dct_matrix()
    planes = []
    for i, (c, (rows, cols), factors) in enumerate(zip(comps, layout.samples(), layout.factors(), strict=True)):
        blocks = a.T @ (c * tables[i]) @ a + 128.0
        plane = blocks.transpose(-3, -2).reshape(c.shape[0], c.shape[1] * 8, c.shape[2] * 8)[:, :rows, :cols]
        planes.append(jio.upsample_chroma(plane.clamp(0, 255).round(), factors, layout.height, layout.width,
                                          method=method, rounding=True))
    return torch.stack(planes, dim=1)


# ---------------------------------------------------------------------------------------------
# I/O


@pytest.mark.parametrize("subsampling", ["4:2:2", "4:2:0"])
@pytest.mark.parametrize("size", [(32, 48), (21, 37), (8, 8), (9, 5)])
def test_subsampled_coefficients_round_trip_losslessly(subsampling: str, size: tuple[int, int]) -> None:
    blobs = _pillow(_photo(2, *size), 80, subsampling)
    for blob in blobs:
        jc = qio.read_coefficients(blob)
        assert jc.subsampling == subsampling
        assert [c.shape[:2] for c in jc.coefficients] == jc.layout().grids()
        again = qio.read_coefficients(jc.to_bytes())
        assert again.sampling == jc.sampling
        for a, b in zip(jc.coefficients, again.coefficients, strict=True):
            assert np.array_equal(a, b)
        assert np.array_equal(jc.tables, again.tables) and again.table_index == jc.table_index
        # An 8x8 4:2:2 image has one block per component, which jpeglib alone would call 4:4:4.
        assert torch.equal(jio.decode(jc.to_bytes()), jio.decode(blob))


def test_encode_defaults_to_pillows_subsampling() -> None:
    images = _photo(1, 24, 24)
    assert qio.read_coefficients(jio.encode(images, 90)[0]).subsampling == jio.PILLOW_SUBSAMPLING == "4:2:0"
    assert jio.encode(images, 90) == _pillow(images, 90, "4:2:0")
    for name in jio.SUBSAMPLING:
        assert qio.read_coefficients(jio.encode(images, 75, name)[0]).subsampling == name
    with pytest.raises(errors.InputError, match="subsampling must be one of"):
        jio.encode(images, 75, "4:1:1")
    grey = jio.encode(images[:, :1], 75, "4:2:0")[0]
    assert qio.read_coefficients(grey).subsampling == "4:4:4"


def test_unsupported_sampling_factors_are_named(tmp_path) -> None:  # type: ignore[no-untyped-def]
    # A 4:4:0 file (chroma halved vertically only), written with jpeglib.
    blob = _pillow(_photo(1, 32, 32), 80, "4:4:4")[0]
    jc = qio.read_coefficients(blob)
    half = [jc.coefficients[0]] + [c[::2] for c in jc.coefficients[1:]]
    obj = jpeglib.from_dct(Y=half[0], Cb=half[1], Cr=half[2], qt=jc.tables, quant_tbl_no=jc.table_index)
    obj.samp_factor = np.array([[2, 1], [1, 1], [1, 1]], dtype=np.int32)  # (v, h)
    obj.height, obj.width = 32, 32
    obj.write_dct(str(tmp_path / "440.jpg"))
    odd = qio.read_coefficients(tmp_path / "440.jpg")
    assert odd.sampling == ((1, 2), (1, 1), (1, 1))
    assert np.array_equal(odd.coefficients[1], qio.read_coefficients(odd.to_bytes()).coefficients[1])
    with pytest.raises(errors.DataError, match=r"Y 1x2, Cb 1x1, Cr 1x1 \(4:4:0\) are not supported"):
        _ = odd.subsampling
    x = quantadv.to_float(jio.decode(odd))
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 3)).eval()
    with pytest.raises(errors.DataError, match=r"originals\[0\].*4:4:0"):
        quantize.lagrangian_jpeg(model, x, x, torch.zeros(1, dtype=torch.int64), originals=[odd])


# ---------------------------------------------------------------------------------------------
# The decoder model against libjpeg


@pytest.mark.parametrize("subsampling", ["4:2:2", "4:2:0"])
@pytest.mark.parametrize("size", [(32, 48), (21, 37), (3, 4)])
@pytest.mark.parametrize("kind", ["photo", "noise"])
def test_subsampled_decoder_model_matches_libjpeg(subsampling: str, size: tuple[int, int], kind: str) -> None:
    images = (_photo if kind == "photo" else _noise)(4, *size, seed=size[0])
    for quality in (50, 90):
        blobs = _pillow(images, quality, subsampling)
        comps, tables, layout = _model_inputs(blobs)
        assert layout.subsampling == subsampling
        reference = jio.decode(blobs).double()
        out = jio.decoder_model(comps, tables, *size, rounding=True, subsampling=subsampling)
        # The same tolerance as 4:4:4 (tests/test_jpeg.py): RGB within 3 grey levels ...
        assert (out - reference).abs().max() <= 3.0
        # ... because every upsampled plane is within 1 of libjpeg's, and rarely off at all.
        planes = _model_ycc(comps, tables, layout)
        libjpeg = _pillow_ycc(blobs)
        assert (planes - libjpeg).abs().max() <= 1.0
        assert (planes != libjpeg).double().mean() < 0.05
        unrounded = jio.decoder_model(comps, tables, *size, subsampling=subsampling)
        assert (unrounded - reference).abs().max() <= 3.0


def test_fancy_upsampling_is_needed_and_replication_matches_libjpeg_without_it(tmp_path) -> None:  # type: ignore[no-untyped-def]
    images = _photo(3, 21, 37, seed=3)
    for subsampling in ("4:2:2", "4:2:0"):
        blobs = _pillow(images, 75, subsampling)
        comps, tables, layout = _model_inputs(blobs)
        replicated = jio.decoder_model(comps, tables, 21, 37, rounding=True, subsampling=subsampling,
                                       upsampling="replicate")
        # libjpeg's default is not replication: the model must do the triangular filter.
        assert (replicated - jio.decode(blobs).double()).abs().max() > 10
        plain = []
        for i, blob in enumerate(blobs):
            path = tmp_path / f"{i}.jpg"
            path.write_bytes(blob)
            plain.append(jpeglib.read_spatial(str(path), flags=["-DO_FANCY_UPSAMPLING"]).spatial)
        libjpeg = torch.from_numpy(np.stack(plain)).permute(0, 3, 1, 2).double()
        assert (replicated - libjpeg).abs().max() <= 3.0
    with pytest.raises(errors.InputError, match="upsampling must be one of"):
        jio.decoder_model(comps, tables, 21, 37, subsampling="4:2:0", upsampling="bicubic")
    with pytest.raises(errors.InputError, match="need per-component shapes"):
        jio.decoder_model(comps, tables, 21, 37, subsampling="4:2:2")


def test_forward_dct_components_invert_the_model_on_smooth_chroma() -> None:
    # Chroma constant over each 2x2 cell is exactly representable at 4:2:0 (replication upsampling).
    g = torch.Generator().manual_seed(0)
    luma = torch.rand(2, 1, 16, 24, generator=g, dtype=torch.float64) * 200 + 20
    chroma = (torch.rand(2, 2, 8, 12, generator=g, dtype=torch.float64) * 60 + 98).repeat_interleave(
        2, -1).repeat_interleave(2, -2)
    ycc = torch.cat([luma, chroma], dim=1) - torch.tensor([0.0, 128.0, 128.0]).reshape(1, 3, 1, 1).double()
    rgb = torch.einsum("oc,bchw->bohw", torch.tensor(jio._YCC_TO_RGB, dtype=torch.float64), ycc)
    tables = torch.full((3, 8, 8), 3.0, dtype=torch.float64)
    comps = jio.forward_dct_components(rgb, tables, "4:2:0")
    back = jio.decoder_model(comps, tables, 16, 24, subsampling="4:2:0", upsampling="replicate")
    assert torch.allclose(back, rgb.clamp(0, 255), atol=1e-3)  # the JFIF matrices are 6-digit inverses
    layout = jio.BlockLayout(16, 24, 3, "4:2:0")
    assert all(torch.equal(a, b) for a, b in zip(layout.unpack(layout.pack(comps)), comps, strict=True))


# ---------------------------------------------------------------------------------------------
# Attacks


def _colour_setup(n: int, height: int, width: int, seed: int = 0):  # type: ignore[no-untyped-def]
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * height * width, 3)).eval()
    return model


def _push(model: nn.Module, x: torch.Tensor, y: torch.Tensor, factor: float) -> torch.Tensor:
    w = model[1].weight.detach()
    with torch.no_grad():
        logits = model(x)
    other = logits.scatter(1, y.unsqueeze(1), float("-inf")).argmax(1)
    diff = w[other] - w[y]
    gap = (logits.gather(1, y.unsqueeze(1)) - logits.gather(1, other.unsqueeze(1))).squeeze(1)
    return (x + ((gap / (diff**2).sum(1)).unsqueeze(1) * diff * factor).reshape(x.shape)).clamp(0, 1)


@pytest.mark.parametrize("subsampling", ["4:2:0", "4:2:2"])
def test_photo_like_subsampled_jpeg_is_attacked_in_place(subsampling: str) -> None:
    height, width = 24, 40
    originals = _pillow(_photo(6, height, width, seed=7), 85, subsampling)
    model = _colour_setup(6, height, width)
    x = quantadv.to_float(jio.decode(originals))
    with torch.no_grad():
        y = model(x).argmax(1)
    x_a = _push(model, x, y, 2.0)
    x_q, info = quantize.lagrangian_jpeg(model, x, x_a, y, originals=originals, return_info=True)
    assert int(info["success"].sum()) >= 5
    reference = qio.read_coefficients(originals[0])
    for i, blob in enumerate(info["jpeg"]):
        written = qio.read_coefficients(blob)
        assert written.subsampling == subsampling and written.sampling == reference.sampling
        assert np.array_equal(written.tables, reference.tables)
        # Pillow, independently, decodes the written file to an adversarial image.
        decoded = np.array(Image.open(stdio.BytesIO(blob)).convert("RGB"))
        pixels = quantadv.to_float(torch.from_numpy(decoded).permute(2, 0, 1).unsqueeze(0))
        assert torch.equal(pixels[0], x_q[i])
        with torch.no_grad():
            pred = int(model(pixels).argmax(1))
        assert (pred != int(y[i])) == bool(info["success"][i])
    # The baselines keep the originals' subsampling and tables too; Lagrangian is at least as good.
    _, rounded = quantize.round_jpeg(model, x, x_a, y, originals=originals, return_info=True)
    _, reencoded = quantize.reencode_jpeg(model, x, x_a, y, originals=originals, return_info=True)
    for other in (rounded, reencoded):
        for blob in other["jpeg"]:
            written = qio.read_coefficients(blob)
            assert written.subsampling == subsampling and np.array_equal(written.tables, reference.tables)
        assert int(info["success"].sum()) >= int(other["success"].sum())
    with pytest.raises(errors.InputError, match="subsampling= goes with quality="):
        quantize.lagrangian_jpeg(model, x, x_a, y, originals=originals, subsampling="4:4:4")
    mixed = originals[:1] + _pillow(_photo(1, height, width, seed=7), 85, "4:4:4")
    x_mixed = quantadv.to_float(jio.decode(mixed))
    with pytest.raises(errors.InputError, match="one batch = one chroma subsampling"):
        quantize.lagrangian_jpeg(model, x_mixed, x_mixed, y[:2], originals=mixed)


def test_quality_path_writes_the_requested_subsampling() -> None:
    height, width = 16, 24
    model = _colour_setup(4, height, width, seed=1)
    x = quantadv.to_float(_photo(4, height, width, seed=2))
    with torch.no_grad():
        y = model(x).argmax(1)
    x_a = _push(model, x, y, 1.6)
    for subsampling, expected in ((None, "4:2:0"), ("4:2:2", "4:2:2"), ("4:4:4", "4:4:4")):
        x_q, info = quantize.lagrangian_jpeg(model, x, x_a, y, quality=80, subsampling=subsampling,
                                             return_info=True)
        assert info["success"].any()
        assert all(qio.read_coefficients(b).subsampling == expected for b in info["jpeg"])
        assert torch.equal(quantadv.to_float(jio.decode(info["jpeg"])), x_q)
        _, rounded = quantize.round_jpeg(model, x, x_a, y, quality=80, subsampling=subsampling, return_info=True)
        _, reenc = quantize.reencode_jpeg(model, x, x_a, y, quality=80, subsampling=subsampling, return_info=True)
        assert all(qio.read_coefficients(b).subsampling == expected for b in rounded["jpeg"] + reenc["jpeg"])


def test_cli_jpeg_subsampling_option(capsys) -> None:  # type: ignore[no-untyped-def]
    import argparse

    from quantadv.cli import main
    from quantadv.cli.attack import _postprocess

    args = argparse.Namespace(quantize="lagrangian-jpeg", jpeg_quality=85, jpeg_subsampling="4:2:2")
    assert _postprocess(args)[1] == {"name": "lagrangian_jpeg", "params": {"quality": 85, "subsampling": "4:2:2"}}
    args.jpeg_subsampling = None  # Pillow's default: the config (and its hash) stays as before
    assert _postprocess(args)[1] == {"name": "lagrangian_jpeg", "params": {"quality": 85}}
    assert main(["attack", "--model", "mnist-cnn", "--attack", "fgsm", "--jpeg-subsampling", "4:2:0"]) == 2
    assert "add --quantize lagrangian-jpeg" in capsys.readouterr().err
