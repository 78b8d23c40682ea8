"""Options shared by several subcommands."""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Iterator, Sequence
from typing import Any

import torch

from ..errors import InputError


def add_device_seed(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda (default: cpu)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")


def add_threads(p: argparse.ArgumentParser) -> None:
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")


def apply_threads(args: argparse.Namespace) -> None:
    """``--threads N``: checked (N >= 1) and applied to torch."""
    if getattr(args, "threads", None) is not None:
        if args.threads < 1:
            raise InputError(f"--threads must be >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)


def add_model_threat(p: argparse.ArgumentParser, *, count: str, count_default: int,
                     eps_default: float | None) -> None:
    """``--model``, ``--data``, the image count (``--n`` or ``--images``), ``--norm`` and ``--eps``:
    the options of the commands that judge one model on the first test images (evaluate,
    diagnose). ``eps_default=None`` makes ``--eps`` required."""
    p.add_argument("--model", required=True, help="zoo name or path of a .safetensors file with manifest")
    p.add_argument("--data", default=None, help="data set (default: the model's manifest 'data', else fashion-mnist)")
    p.add_argument(count, type=int, default=count_default, help=f"first N test images (default: {count_default})")
    p.add_argument("--norm", default="linf", choices=("linf", "l2"), help="threat model (default: linf)")
    if eps_default is None:
        p.add_argument("--eps", type=float, required=True, help="radius in [0, 1] units (L-inf: in [0, 1])")
    else:
        p.add_argument("--eps", type=float, default=eps_default,
                       help=f"radius in [0, 1] units (default: {eps_default:g})")


def model_manifest(spec: str) -> dict:
    """The manifest of ``--model`` (zoo name or ``X.safetensors``), or ``{}`` when it has none: the
    manifest only supplies defaults (data set, float surrogate) to the commands."""
    from .. import models

    try:
        if spec.endswith(".safetensors"):
            return models.read_manifest(spec)
        return models.manifest(spec)
    except Exception:  # noqa: BLE001 - the manifest only supplies defaults here
        return {}


def first_test_images(data_name: str, n: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``n`` test images of ``data_name`` as floats in [0, 1] on ``device``, and their labels."""
    from .. import data, to_float

    images, labels = data.load(data_name, "test")
    return to_float(images[:n]).to(device), labels[:n].to(device)


def resolve_device(name: str) -> torch.device:
    try:
        dev = torch.device(name)
    except RuntimeError as exc:
        raise InputError(f"--device {name!r} is not a torch device ({exc}); use cpu or cuda") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InputError("--device cuda was asked for but no CUDA device is available; use --device cpu")
    return dev


def load_model(spec: str, device: torch.device):
    """A model from ``--model``: a shipped zoo name, or a path to ``X.safetensors`` (with ``X.json``)."""
    from .. import models

    if spec.endswith(".safetensors"):
        return models.load_file(spec, device=device)
    return models.load(spec, device=device)


#: training images that calibrate ``--deploy`` (they fix int8-static's activation scales)
DEPLOY_CALIBRATION = 500


def add_deploy(p: argparse.ArgumentParser) -> None:
    p.add_argument("--deploy", default=None, metavar="SCHEME",
                   help="quantize the model with torchao first (int8-weight, int8-dynamic, int8-static, "
                        "int4-weight; pip install 'quantadv[deploy]'): predictions are the quantized model's, "
                        "gradients the float model's (see docs/deployed-quantization.md)")


def deploy_model(model, scheme: str, data_name: str, device: torch.device):
    """``--deploy SCHEME``: ``model`` quantized by :func:`quantadv.models.deploy`, calibrated on the
    first :data:`DEPLOY_CALIBRATION` training images of ``data_name``."""
    from .. import data, models, to_float

    images, _ = data.load(data_name, "train")
    calibration = to_float(images[:DEPLOY_CALIBRATION]).to(device)
    return models.deploy(model, scheme, calibration=calibration)


def format_table(rows: list[list[str]], header: list[str]) -> str:
    """A left-aligned plain-text table with a rule under the header (used by every subcommand)."""
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in [header, *rows]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def add_progress(p: argparse.ArgumentParser) -> None:
    """``--no-progress``: every long command shows a tqdm bar on stderr unless this (or ``--quiet``) is given."""
    p.add_argument("--no-progress", action="store_true",
                   help="no progress bar on stderr (--quiet implies it); the output is otherwise the same")


def show_progress(args: argparse.Namespace) -> bool:
    """Whether a progress bar is wanted: neither ``--quiet`` nor ``--no-progress``."""
    return not (getattr(args, "quiet", False) or getattr(args, "no_progress", False))


@contextlib.contextmanager
def network_progress(
    modules: Sequence[torch.nn.Module | None], *, desc: str, enabled: bool, total: int | None = None
) -> Iterator[Any]:
    """A tqdm bar on stderr counting the images that pass through the forward of ``modules``.

    A forward hook on each module advances the bar by the batch size, so any computation
    (attacks, Jacobians, sampling) shows its progress without being changed; ``total`` is
    the expected image count when known (else the bar counts and shows the rate). Lines to
    print while it runs go through ``bar.write`` (to stdout) so they do not garble it.
    """
    from tqdm.auto import tqdm

    bar = tqdm(total=total, desc=desc, unit="img", unit_scale=True, disable=not enabled, file=sys.stderr,
               dynamic_ncols=True, mininterval=0.5)

    def advance(_module: torch.nn.Module, inputs: tuple[Any, ...], _output: Any) -> None:
        if inputs and isinstance(inputs[0], torch.Tensor) and inputs[0].dim() > 0:
            bar.update(int(inputs[0].shape[0]))

    hooks = [m.register_forward_hook(advance) for m in modules if m is not None] if enabled else []
    try:
        yield bar
    finally:
        for hook in hooks:
            hook.remove()
        bar.close()


def write_line(bar: Any, line: str) -> None:
    """Print ``line`` to stdout above a progress bar (or plainly when the bar is disabled)."""
    if getattr(bar, "disable", True):
        print(line, flush=True)
    else:
        bar.write(line, file=sys.stdout)
        sys.stdout.flush()
