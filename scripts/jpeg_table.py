"""Markdown tables of docs/jpeg.md from results/jpeg/results.json (written by scripts/jpeg_experiments.py).

    .venv/bin/python scripts/jpeg_table.py [results/jpeg/results.json]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

NAMES = {"reencode": "(a) Pillow re-encoding of DDN's output", "round_dct": "(b) DCT rounding",
         "lagrangian_jpeg": "(c) Lagrangian in the DCT domain"}


def fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:.3f}"


def main() -> None:
    path = Path(sys.argv[1] if len(sys.argv) > 1 else "results/jpeg/results.json")
    r = json.loads(path.read_text())
    grid = np.array(r["grid"])
    for name, e in r["models"].items():
        n = e["attacked"]
        print(f"\n### {name}: {n} attacked images (correctly classified among the first {r['n']})\n")
        print("| format | method | success kept | verified from the file | median d | mean d |")
        print("| --- | --- | ---: | ---: | ---: | ---: |")
        for key, label in (("float", "DDN float output (not an image)"), ("round", "R (round the pixels)"),
                           ("lagrangian", "Q-lambda* (paper 000)")):
            s = e["png"][key]
            print(f"| PNG | {label} | {s['success']}/{n} ({100 * s['success'] / n:.1f}%) | - | {fmt(s['median_d'])} | "
                  f"{fmt(s['mean_d'])} |")
        for q, row in e["jpeg"].items():
            c = row["clean_jpeg"]
            print(f"| JPEG q{q} | the clean original saved as JPEG (reference) | "
                  f"{n - c['still_correct']}/{n} misclassified | - | {fmt(c['median_d'])} | - |")
            for m, label in NAMES.items():
                s = row[m]
                print(f"| JPEG q{q} | {label} | {s['success']}/{n} ({100 * s['success'] / n:.1f}%) | "
                      f"{s['verified']}/{s['success']} | {fmt(s['median_d'])} | {fmt(s['mean_d'])} |")
        print(f"\nOperating characteristic of {name} (success rate with d <= D):\n")
        points = (2.0, 5.0, 8.0, 12.0)
        print("| curve | " + " | ".join(f"D = {p:g}" for p in points) + " |")
        print("| --- |" + " ---: |" * len(points))
        for label, values in e["curves"].items():
            vals = [values[int(np.argmin(np.abs(grid - p)))] for p in points]
            print(f"| {label} | " + " | ".join(f"{100 * v:.1f}%" for v in vals) + " |")


if __name__ == "__main__":
    main()
