"""A folder of image files with a ``labels.json`` sidecar: what PNG and JPEG export share.

:mod:`quantadv.io.png` and :mod:`quantadv.io.jpeg` differ only in how one image becomes file
bytes and back; naming the files, writing them atomically, recording the labels (and targets)
beside them and reading that record back are the same for both formats and live here.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO

import torch

from .._validate import check_labels
from ..errors import DataError, InputError

LABELS_FILE = "labels.json"


def write_atomic(path: Path, write: Callable[[IO[bytes]], object]) -> None:
    """Write ``path`` through a temporary file in the same directory, renamed into place."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def file_names(names: Sequence[str] | None, count: int, suffixes: tuple[str, ...]) -> list[str]:
    """``count`` file names: ``names`` (``suffixes[0]`` appended unless one of ``suffixes``
    ends it), or ``00000<suffix>``, ``00001<suffix>``, ... Refuses paths and duplicates."""
    suffix = suffixes[0]
    if names is None:
        width = max(5, len(str(count - 1)))
        return [f"{i:0{width}d}{suffix}" for i in range(count)]
    if isinstance(names, str):
        raise InputError("names must be a sequence of file names (one per image), not a string")
    names = list(names)
    if len(names) != count:
        raise InputError(f"names has {len(names)} entries but there are {count} images")
    out = []
    for name in names:
        if not isinstance(name, str) or not name or name in (".", ".."):
            raise InputError(f"file name {name!r} is not a non-empty string")
        if "/" in name or "\\" in name or os.sep in name:
            raise InputError(f"file name {name!r} must not contain a path separator")
        out.append(name if name.lower().endswith(suffixes) else name + suffix)
    if len(set(out)) != len(out):
        raise InputError(f"names must be unique (after adding the {suffix} suffix)")
    return out


def write_folder(
    directory: str | os.PathLike[str],
    files: list[str],
    writers: Sequence[Callable[[IO[bytes]], object]],
    labels: torch.Tensor | None,
    targets: torch.Tensor | None,
) -> list[Path]:
    """Write one file per writer (atomically) and the ``labels.json`` sidecar when labels are given.

    Everything the caller can get wrong (targets without labels, label counts, a directory
    path that is a file) is checked before the first file is written.
    """
    count = len(files)
    sidecar = None
    if targets is not None and labels is None:
        raise InputError("targets were given without labels; pass labels= as well")
    if labels is not None:
        sidecar = {"files": files, "labels": check_labels(labels, count).cpu().tolist()}
        if targets is not None:
            sidecar["targets"] = check_labels(targets, count, "targets").cpu().tolist()
    out_dir = Path(directory)
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError(f"{out_dir} exists and is not a directory")
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for write, name in zip(writers, files, strict=True):
        path = out_dir / name
        write_atomic(path, write)
        paths.append(path)
    if sidecar is not None:
        text = json.dumps(sidecar, indent=1).encode()
        write_atomic(out_dir / LABELS_FILE, lambda fh: fh.write(text))
    return paths


def list_files(directory: str | os.PathLike[str], suffixes: tuple[str, ...], reader: str) -> list[Path]:
    """The files of ``directory`` ending in one of ``suffixes`` (any case), sorted by name."""
    path = Path(directory)
    what = suffixes[0]
    if not path.exists():
        raise DataError(f"{path} does not exist")
    if not path.is_dir():
        raise DataError(f"{path} is not a directory; {reader} reads a directory of {what} files")
    files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in suffixes)
    if not files:
        raise DataError(f"{path} contains no {what} files")
    return files


def read_labels(
    directory: str | os.PathLike[str],
    labels_file: str | os.PathLike[str] | None,
    files: list[str],
    saver: str,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The labels (and targets, or None) recorded for ``files`` (the folder's image files).

    ``labels_file`` defaults to ``directory/labels.json``. The file list it records must
    match ``files``, so a stale sidecar is caught; labels come back in the order of ``files``.
    """
    path = Path(labels_file) if labels_file is not None else Path(directory) / LABELS_FILE
    if not path.is_file():
        raise DataError(
            f"no label file {path}; save the images with {saver}(..., labels=...) "
            "or pass a JSON file with a 'labels' list"
        )
    try:
        content = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"{path} is not valid JSON ({exc})") from None
    if not isinstance(content, dict) or not isinstance(content.get("labels"), list):
        raise DataError(f"{path} must hold a JSON object with a 'labels' list")
    count = len(files)
    recorded = content.get("files")
    if recorded is not None and sorted(recorded) != files:
        raise DataError(
            f"{path} lists {len(recorded)} files that do not match the {count} image files "
            f"of {directory}; the label file is stale or belongs to another directory"
        )
    order = [recorded.index(name) for name in files] if recorded is not None else range(count)
    result = []
    for key in ("labels", "targets"):
        values = content.get(key)
        if values is None:
            result.append(None)
            continue
        if (
            not isinstance(values, list)
            or len(values) != count
            or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in values)
        ):
            raise DataError(f"{path}: '{key}' must be a list of {count} non-negative integers")
        result.append(torch.tensor([values[i] for i in order], dtype=torch.int64))
    return result[0], result[1]  # type: ignore[return-value]
