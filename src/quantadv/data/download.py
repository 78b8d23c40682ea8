"""Fetching Fashion-MNIST from its official source into the user cache.

Source: the Zalando Research repository (https://github.com/zalandoresearch/fashion-mnist,
folder ``data/fashion``), over HTTPS. Each file is checked against the MD5 the project
publishes in its README before it is kept. Files are streamed to a hidden temporary name
in the destination folder and renamed only once complete and verified, so an interrupted
download never leaves a file that looks valid.

Set ``QUANTADV_NO_DOWNLOAD=1`` to forbid any network access from :mod:`quantadv.data`.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import urllib.request
from pathlib import Path

from ..errors import DataError

FASHION_MNIST_URL = (
    "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/"
)
#: Official MD5 sums of the gzipped files (fashion-mnist README, "Get the Data").
FASHION_MNIST_MD5 = {
    "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
    "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
    "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
    "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
}
#: Seconds to wait for the server; the machines this runs on are often offline.
TIMEOUT = 5.0
#: No official file is larger than this; a bigger response is not what was asked for.
MAX_BYTES = 64 * 1024 * 1024


def downloads_disabled() -> bool:
    """True when ``QUANTADV_NO_DOWNLOAD`` is set to a non-empty value other than 0."""
    return os.environ.get("QUANTADV_NO_DOWNLOAD", "").strip() not in ("", "0")


def _md5(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def fetch(url: str, dest: Path, md5: str, timeout: float = TIMEOUT) -> None:
    """Download ``url`` to ``dest`` atomically, keeping it only if its MD5 is ``md5``.

    Network and file errors propagate as ``OSError`` (``urllib.error.URLError`` is one);
    a checksum mismatch or an oversized answer raises :class:`~quantadv.errors.DataError`.
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    tmp = Path(tmp_name)
    try:
        digest = hashlib.md5(usedforsecurity=False)
        total = 0
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as resp:
            for chunk in iter(lambda: resp.read(1 << 20), b""):
                total += len(chunk)
                if total > MAX_BYTES:
                    raise DataError(
                        f"{url}: answer larger than {MAX_BYTES} bytes; not the expected file"
                    )
                digest.update(chunk)
                out.write(chunk)
        if digest.hexdigest() != md5:
            raise DataError(
                f"{url}: MD5 {digest.hexdigest()} does not match the official {md5}; the download "
                "is corrupt or was altered, so it was not kept"
            )
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)


def download_fashion_mnist(dest: Path, timeout: float = TIMEOUT) -> None:
    """Download the four official Fashion-MNIST files into ``dest`` (skipping verified ones)."""
    for name, md5 in FASHION_MNIST_MD5.items():
        target = dest / name
        if target.is_file() and _md5(target) == md5:
            continue
        fetch(FASHION_MNIST_URL + name, target, md5, timeout)
