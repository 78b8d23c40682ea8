"""Lossless import and export of digital images (PNG), with an optional label sidecar."""

from .png import LABELS_FILE, load_labels, load_png, png_files, save_png

__all__ = ["LABELS_FILE", "load_labels", "load_png", "png_files", "save_png"]
