"""``quantadv verify``: are the PNG images in a folder still adversarial after the round trip?

Paper 000 (Sec. 2, Fig. 8) warns that an adversarial sample saved as an image may no
longer fool the classifier. This command closes that loop: it reads the 8-bit PNGs written
by :func:`quantadv.io.save_png` (or ``quantadv attack --png``), re-classifies them with the
model, and reports which images are still adversarial. Exit code 0 if all are, 1 otherwise.
A folder of ``.jpg`` files (and no ``.png``; written by :func:`quantadv.io.save_jpeg` or
``quantadv attack --quantize lagrangian-jpeg --jpeg DIR``) is decoded with libjpeg through Pillow
(issue 12, docs/jpeg.md).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from ..digital import to_float
from ..errors import InputError
from ..eval import adversarial_from_logits
from ._common import add_progress, network_progress, resolve_device, show_progress


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "verify",
        help="re-classify saved PNG (or JPEG) images and report how many are still adversarial",
        description=(
            "Load the .png files of DIR (sorted by name), classify them with a model and check "
            "that each is still adversarial: predicted class != its label, or == its target "
            "when the label file records targets. Labels come from DIR/labels.json (written "
            "by save_png(..., labels=...) and 'quantadv attack --png') or from --labels. "
            "Exit code 0 if every image is adversarial, 1 if some are not, 2 on an error."
        ),
    )
    p.add_argument("directory", metavar="DIR",
                   help="folder of .png images, or of .jpg images (decoded by libjpeg through Pillow)")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--model", help="a shipped model name (see 'quantadv zoo list')")
    which.add_argument(
        "--model-file",
        metavar="PATH",
        help="your own model: X.safetensors with its manifest X.json (quantadv.models.load_file)",
    )
    p.add_argument(
        "--labels",
        metavar="FILE",
        default=None,
        help="JSON file with a 'labels' list (and optionally 'targets'); default DIR/labels.json",
    )
    p.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda (default: cpu)")
    p.add_argument(
        "--batch-size", type=int, default=500, help="images per forward pass (default 500)"
    )
    p.add_argument("--quiet", action="store_true", help="print only the summary line (no progress bar)")
    add_progress(p)
    return p


def run(args: argparse.Namespace) -> int:
    from .. import models
    from ..io import load_labels, load_png, png_files

    if args.batch_size < 1:
        raise InputError(f"--batch-size must be >= 1, got {args.batch_size}")
    device = resolve_device(args.device)
    if _is_jpeg_folder(args.directory):
        from ..io import jpeg_files, load_jpeg, load_jpeg_labels

        images = load_jpeg(args.directory)
        names = [p.name for p in jpeg_files(args.directory)]
        labels, targets = load_jpeg_labels(args.directory, args.labels)
    else:
        images = load_png(args.directory)
        names = [p.name for p in png_files(args.directory)]
        labels, targets = load_labels(args.directory, args.labels)
    if args.model is not None:
        model = models.load(args.model, device=device)
        model_name = args.model
    else:
        model = models.load_file(args.model_file, device=device)
        model_name = Path(args.model_file).name

    predictions = []
    with torch.no_grad(), network_progress([model], desc="verify", total=images.shape[0],
                                           enabled=show_progress(args)):
        for start in range(0, images.shape[0], args.batch_size):
            chunk = to_float(images[start : start + args.batch_size]).to(device)
            try:
                logits = model(chunk)
            except RuntimeError as exc:
                raise InputError(
                    f"model {model_name} cannot classify images of shape "
                    f"{tuple(images.shape[1:])} (C, H, W): {exc}"
                ) from None
            predictions.append(logits.argmax(dim=1).cpu())
    num_classes = int(logits.shape[1])
    for name, values in (("labels", labels), ("targets", targets)):
        if values is not None and int(values.max()) >= num_classes:
            raise InputError(
                f"the {name} contain class {int(values.max())} but model {model_name} has "
                f"{num_classes} classes; are these the right labels for this model?"
            )
    predicted = torch.cat(predictions)
    one_hot = torch.nn.functional.one_hot(predicted, num_classes)
    adversarial = adversarial_from_logits(one_hot, labels, targets)

    total = len(names)
    kept = int(adversarial.sum())
    mode = "targeted" if targets is not None else "untargeted"
    print(f"{kept}/{total} images in {args.directory} are still adversarial ({mode}, {model_name})")
    if not args.quiet:
        for i in (~adversarial).nonzero().flatten().tolist():
            goal = f"target {int(targets[i])}" if targets is not None else f"label {int(labels[i])}"
            print(f"  not adversarial: {names[i]} ({goal}, predicted {int(predicted[i])})")
    return 0 if kept == total else 1


def _is_jpeg_folder(directory: str) -> bool:
    """A folder with .jpg/.jpeg files and no .png file is verified as JPEG files."""
    path = Path(directory)
    if not path.is_dir():
        return False
    suffixes = {p.suffix.lower() for p in path.iterdir() if p.is_file()}
    return ".png" not in suffixes and bool(suffixes & {".jpg", ".jpeg"})
