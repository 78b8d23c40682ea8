"""Lossless import and export of digital images (PNG), with an optional label sidecar; JPEG files
as DCT coefficients (:mod:`quantadv.io.jpeg`, issue 12)."""

from .jpeg import JpegCoefficients, jpeg_files, load_jpeg, load_jpeg_labels, read_coefficients, save_jpeg
from .png import LABELS_FILE, load_labels, load_png, png_files, save_png

__all__ = [
    "LABELS_FILE",
    "JpegCoefficients",
    "jpeg_files",
    "load_jpeg",
    "load_jpeg_labels",
    "load_labels",
    "load_png",
    "png_files",
    "read_coefficients",
    "save_jpeg",
    "save_png",
]
