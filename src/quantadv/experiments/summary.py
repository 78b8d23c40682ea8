"""Robust accuracy over independent repeats and over adaptive attack modes, from a results store.

Two axes of a config turn one (model, attack, parameters) cell into several runs:

- ``repeat: N`` on an attack entry: N independent runs (other seeds). Paper 001 reports, over
  such runs, the **average** accuracy (mean of the runs' accuracies) and the **worst-case**
  accuracy (an image counts as robust only if no run broke it); Tables 2-5 of paper 001.
- ``adaptive: [none, bpda, bpda+eot]`` on a defended model: the same attack seeing the defense
  three ways. The **headline** robust accuracy is per image the minimum over the modes: an
  image is broken if any mode broke it (Athalye et al. 2018; issue 10).

:func:`robust_summary` computes both from a store: one row per (model, attack label, grid
parameters, post-processing), with the per-run accuracies, their mean and standard deviation,
per adaptive mode, and the worst case over everything. An image is *robust* in a run when the
model classifies it correctly and the attack did not succeed (images the model misclassifies
count as not robust, attacked or not).
"""

from __future__ import annotations

import json
import math
import os
from collections import defaultdict
from typing import Any

from .store import open_store


def _robust(row: dict) -> bool:
    return (not row["success"]) and row["clean_pred"] == row["label"]


def robust_summary(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Robust accuracy per cell, over repeats and adaptive modes (see the module docstring).

    Returns a list of dicts with keys ``model``, ``attack``, ``params`` (the grid point, JSON),
    ``postprocess``, ``images`` (number of images in every run of the cell), ``runs``,
    ``accuracies`` (per run, in repeat order, grouped by mode), ``by_mode`` (mode -> mean over
    repeats), ``mean``, ``std`` (sample std over runs; 0 for one run), ``worst`` (per-image:
    robust in every run of every mode) and ``modes``.
    """
    with open_store(path) as store:
        runs = {r["run_id"]: r for r in store.runs()}
        rows = store.results()
    per_run: dict[str, dict[int, bool]] = defaultdict(dict)
    pps: dict[str, set] = defaultdict(set)
    for row in rows:
        per_run[(row["run_id"], row["postprocess"])][row["idx"]] = _robust(row)  # type: ignore[index]
        pps[row["run_id"]].add(row["postprocess"])
    cells: dict[tuple, list[tuple[str, int, dict[int, bool]]]] = defaultdict(list)
    for (run_id, pp), outcome in per_run.items():  # type: ignore[misc]
        run = runs[run_id]
        config = json.loads(run["config"])
        mode = config.get("adaptive", "none")
        repeat = int(config.get("repeat", 0))
        key = (run["model"], run["attack"], run["params"], pp)
        cells[key].append((mode, repeat, outcome))
    out = []
    for (model, attack, params, pp), members in sorted(cells.items()):
        members.sort(key=lambda m: (m[0], m[1]))
        common = set.intersection(*(set(o) for _, _, o in members))
        if not common:
            continue
        accs = [sum(o[i] for i in common) / len(common) for _, _, o in members]
        by_mode: dict[str, list[float]] = defaultdict(list)
        for (mode, _, _), acc in zip(members, accs, strict=True):
            by_mode[mode].append(acc)
        worst = sum(all(o[i] for _, _, o in members) for i in common) / len(common)
        mean = sum(accs) / len(accs)
        std = math.sqrt(sum((a - mean) ** 2 for a in accs) / (len(accs) - 1)) if len(accs) > 1 else 0.0
        out.append({
            "model": model, "attack": attack, "params": params, "postprocess": pp,
            "images": len(common), "runs": len(members), "accuracies": accs,
            "by_mode": {m: sum(v) / len(v) for m, v in by_mode.items()},
            "modes": sorted(by_mode), "mean": mean, "std": std, "worst": worst,
        })
    return out
