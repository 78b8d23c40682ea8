"""Tests of the lossless PNG round trip (quantadv.io) and of ``quantadv verify``."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from quantadv import DataError, InputError, to_float
from quantadv.cli import main
from quantadv.io import LABELS_FILE, load_labels, load_png, png_files, save_png

# ----------------------------------------------------------------------------- save / load


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    st.integers(1, 4),
    st.sampled_from([1, 3]),
    st.integers(1, 9),
    st.integers(1, 9),
    st.integers(0, 2**31 - 1),
)
def test_uint8_round_trip_is_exact(tmp_path_factory, batch, channels, height, width, seed):
    gen = torch.Generator().manual_seed(seed)
    images = torch.randint(
        0, 256, (batch, channels, height, width), generator=gen, dtype=torch.uint8
    )
    directory = tmp_path_factory.mktemp("png")
    paths = save_png(images, directory)
    assert [p.name for p in paths] == [f"{i:05d}.png" for i in range(batch)]
    loaded = load_png(directory)
    assert loaded.dtype == torch.uint8
    assert torch.equal(loaded, images)
    with Image.open(paths[0]) as picture:
        assert picture.format == "PNG" and picture.mode == ("L" if channels == 1 else "RGB")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_digital_float_round_trip_is_exact(tmp_path, dtype):
    gen = torch.Generator().manual_seed(0)
    k = torch.randint(0, 256, (3, 3, 6, 5), generator=gen)
    k[0, 0, 0, :2] = torch.tensor([0, 255])  # both ends of the range
    images = k.to(dtype) / 255.0
    save_png(images, tmp_path / "out")
    assert torch.equal(to_float(load_png(tmp_path / "out"), dtype), images)


def test_non_digital_input_raises_and_writes_nothing(tmp_path):
    images = torch.full((2, 1, 4, 4), 10 / 255)
    images[1, 0, 2, 2] += 0.4 / 255  # one value off the grid, in the second image
    target = tmp_path / "never"
    with pytest.raises(InputError, match="digital"):
        save_png(images, target)
    assert not target.exists()
    existing = tmp_path / "existing"
    existing.mkdir()
    with pytest.raises(InputError):
        save_png(images, existing)
    assert list(existing.iterdir()) == []


@pytest.mark.parametrize(
    ("images", "match"),
    [
        (torch.zeros(2, 2, 4, 4, dtype=torch.uint8), "channels"),
        (torch.zeros(1, 4, 4, dtype=torch.uint8), "4-D"),
        (torch.zeros(0, 1, 4, 4, dtype=torch.uint8), "empty"),
        (torch.zeros(1, 1, 4, 4, dtype=torch.int32), "dtype"),
        (np.zeros((1, 1, 4, 4), dtype=np.uint8), "torch.Tensor"),
    ],
)
def test_bad_batches_raise(tmp_path, images, match):
    with pytest.raises(InputError, match=match):
        save_png(images, tmp_path / "x")
    assert not (tmp_path / "x").exists()


def test_names_labels_and_sidecar(tmp_path):
    images = torch.arange(3 * 4, dtype=torch.uint8).view(3, 1, 2, 2)
    labels, targets = torch.tensor([7, 1, 4]), torch.tensor([0, 2, 5])
    paths = save_png(images, tmp_path, names=["c", "a.png", "b"], labels=labels, targets=targets)
    assert [p.name for p in paths] == ["c.png", "a.png", "b.png"]
    assert [p.name for p in png_files(tmp_path)] == ["a.png", "b.png", "c.png"]
    loaded = load_png(tmp_path)  # file-name order
    assert torch.equal(loaded, images[[1, 2, 0]])
    got_labels, got_targets = load_labels(tmp_path)
    assert torch.equal(got_labels, labels[[1, 2, 0]]) and torch.equal(
        got_targets, targets[[1, 2, 0]]
    )
    content = json.loads((tmp_path / LABELS_FILE).read_text())
    assert content["files"] == ["c.png", "a.png", "b.png"] and content["labels"] == [7, 1, 4]
    # no temporary files are left behind
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png", "b.png", "c.png", LABELS_FILE]


def test_bad_names_raise(tmp_path):
    images = torch.zeros(2, 1, 2, 2, dtype=torch.uint8)
    for names, match in [
        (["a"], "entries"),
        (["a", "a.png"], "unique"),
        (["x/a", "b"], "separator"),
        ("ab", "sequence"),
    ]:
        with pytest.raises(InputError, match=match):
            save_png(images, tmp_path / "n", names=names)
    with pytest.raises(InputError, match="labels"):
        save_png(images, tmp_path / "n", targets=torch.tensor([1, 2]))
    with pytest.raises(InputError, match="entries"):
        save_png(images, tmp_path / "n", labels=torch.tensor([1, 2, 3]))
    assert not (tmp_path / "n").exists()


def test_load_errors(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_png(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no .png"):
        load_png(tmp_path / "empty")

    mixed = tmp_path / "mixed"
    save_png(torch.zeros(1, 1, 3, 3, dtype=torch.uint8), mixed, names=["a"])
    save_png(torch.zeros(1, 1, 4, 3, dtype=torch.uint8), mixed, names=["b"])
    with pytest.raises(DataError, match="share mode and size"):
        load_png(mixed)

    modes = tmp_path / "modes"
    save_png(torch.zeros(1, 1, 3, 3, dtype=torch.uint8), modes, names=["a"])
    save_png(torch.zeros(1, 3, 3, 3, dtype=torch.uint8), modes, names=["b"])
    with pytest.raises(DataError, match="share mode and size"):
        load_png(modes)

    fake = tmp_path / "fake"
    fake.mkdir()
    (fake / "x.png").write_bytes(b"this is not an image")
    with pytest.raises(DataError, match="x.png"):
        load_png(fake)

    jpeg = tmp_path / "jpeg"
    jpeg.mkdir()
    Image.new("L", (4, 4)).save(jpeg / "y.png", format="JPEG")
    with pytest.raises(DataError, match="not a PNG"):
        load_png(jpeg)

    rgba = tmp_path / "rgba"
    rgba.mkdir()
    Image.new("RGBA", (4, 4)).save(rgba / "z.png")
    with pytest.raises(DataError, match="RGBA"):
        load_png(rgba)


def test_stale_or_missing_label_file(tmp_path):
    save_png(torch.zeros(2, 1, 2, 2, dtype=torch.uint8), tmp_path, labels=torch.tensor([1, 2]))
    save_png(torch.zeros(1, 1, 2, 2, dtype=torch.uint8), tmp_path, names=["extra"])
    with pytest.raises(DataError, match="stale"):
        load_labels(tmp_path)
    other = tmp_path / "other"
    save_png(torch.zeros(1, 1, 2, 2, dtype=torch.uint8), other)
    with pytest.raises(DataError, match="no label file"):
        load_labels(other)
    (other / "bad.json").write_text('{"labels": [1, -2]}')
    with pytest.raises(DataError, match="non-negative"):
        load_labels(other, other / "bad.json")


# ----------------------------------------------------------------------------- verify


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    """A SmallCNN (random weights) saved as a safetensors + manifest pair."""
    from safetensors.torch import save_file

    from quantadv.models import SmallCNN

    torch.manual_seed(0)
    model = SmallCNN().eval()
    directory = tmp_path_factory.mktemp("model")
    weights = directory / "tiny.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(weights))
    digest = hashlib.sha256(weights.read_bytes()).hexdigest()
    manifest = {"arch": "small-cnn", "arch_kwargs": {}, "sha256": digest}
    (directory / "tiny.json").write_text(json.dumps(manifest))
    return weights, model


def test_verify_reports_which_images_are_still_adversarial(tmp_path, model_file, capsys):
    weights, model = model_file
    gen = torch.Generator().manual_seed(1)
    images = torch.randint(0, 256, (6, 1, 28, 28), generator=gen, dtype=torch.uint8)
    with torch.no_grad():
        predicted = model(to_float(images)).argmax(1)
    labels = (predicted + 1) % 10  # every image is misclassified...
    labels[[1, 4]] = predicted[[1, 4]]  # ...except two
    save_png(images, tmp_path, labels=labels)
    code = main(["verify", str(tmp_path), "--model-file", str(weights)])
    out = capsys.readouterr().out
    assert code == 1
    assert "4/6 images" in out and "untargeted" in out
    assert "00001.png" in out and "00004.png" in out and "00002.png" not in out

    everything = tmp_path / "all"
    save_png(images, everything, labels=(predicted + 1) % 10)
    assert main(["verify", str(everything), "--model-file", str(weights)]) == 0
    assert "6/6 images" in capsys.readouterr().out

    # targeted: success means predicted == target
    targeted = tmp_path / "targeted"
    targets = predicted.clone()
    targets[0] = (predicted[0] + 3) % 10
    save_png(images, targeted, labels=(predicted + 1) % 10, targets=targets)
    assert main(["verify", str(targeted), "--model-file", str(weights), "--quiet"]) == 1
    out = capsys.readouterr().out
    assert "5/6 images" in out and "targeted" in out and "not adversarial" not in out

    # a separate label file
    label_file = tmp_path / "mine.json"
    label_file.write_text(json.dumps({"labels": ((predicted + 1) % 10).tolist()}))
    assert (
        main(["verify", str(everything), "--model-file", str(weights), "--labels", str(label_file)])
        == 0
    )


def test_verify_user_errors_exit_2(tmp_path, model_file, capsys):
    weights, _ = model_file
    save_png(torch.zeros(2, 1, 28, 28, dtype=torch.uint8), tmp_path)  # no labels.json
    assert main(["verify", str(tmp_path), "--model-file", str(weights)]) == 2
    assert "no label file" in capsys.readouterr().err
    assert main(["verify", str(tmp_path / "nowhere"), "--model-file", str(weights)]) == 2
    wrong = tmp_path / "wrong"
    save_png(torch.zeros(2, 3, 28, 28, dtype=torch.uint8), wrong, labels=torch.tensor([0, 1]))
    assert main(["verify", str(wrong), "--model-file", str(weights)]) == 2
    assert "cannot classify" in capsys.readouterr().err
    many = tmp_path / "many"
    save_png(torch.zeros(1, 1, 28, 28, dtype=torch.uint8), many, labels=torch.tensor([12]))
    assert main(["verify", str(many), "--model-file", str(weights)]) == 2
    assert "classes" in capsys.readouterr().err


def test_verify_with_a_shipped_model(tmp_path, capsys):
    from quantadv import models

    if "mnist-cnn" not in models.list():
        pytest.skip("the zoo does not ship mnist-cnn")
    model = models.load("mnist-cnn")
    images = torch.randint(
        0, 256, (4, 1, 28, 28), generator=torch.Generator().manual_seed(2), dtype=torch.uint8
    )
    with torch.no_grad():
        predicted = model(to_float(images)).argmax(1)
    save_png(images, tmp_path, labels=(predicted + 1) % 10)
    assert main(["verify", str(tmp_path), "--model", "mnist-cnn"]) == 0
    assert "4/4 images" in capsys.readouterr().out
