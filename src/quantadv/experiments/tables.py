"""Markdown tables of a results store (``quantadv report STORE --markdown``).

* :func:`best_effort_rows`: per (model, attack entry, post-processing), the best effort over the
  entry's grid (paper 000 Sec. 5.1.2: per image the lowest distortion ``d`` that succeeds) over
  the correctly classified images: success rate, median / mean ``d`` of the successes, and the
  operating characteristic ``P_suc(d_bar)`` (paper 000 Eq. 32; failures count against the attack)
  at chosen budgets. An entry with one grid point gives that run's own numbers.
* :func:`markdown`: any list of row dicts as a Markdown table, one format spec per column.

* :func:`robust_grid`: robust accuracy per model and eps, per adaptive mode and the headline
  (paper 003's Table 1 layout), from :func:`quantadv.experiments.summary.robust_summary`.

The robust-accuracy and paired tables come from :func:`quantadv.experiments.report.summary_tables`
(:mod:`quantadv.experiments.summary`); :func:`markdown_tables` prints them all.
"""

from __future__ import annotations

import json
import os
from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from ..errors import InputError
from ..eval.curves import operating_characteristic

#: a column: (key or function of the row, title, format spec such as ".3f", ".1%", "d" or "")
Column = tuple[str | Callable[[dict], Any], str, str]


def _cell(value: Any, spec: str) -> str:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return "-"
    if spec == "d":
        return str(int(value))
    return format(value, spec) if spec else str(value)


def markdown(rows: Sequence[dict], columns: Sequence[Column], *, align: bool = True) -> str:
    """``rows`` as a Markdown table; ``align`` right-aligns the columns with a format spec."""
    head = "| " + " | ".join(title for _, title, _ in columns) + " |"
    rule = "| " + " | ".join("---:" if align and spec else "---" for _, _, spec in columns) + " |"
    body = ["| " + " | ".join(_cell(key(r) if callable(key) else r.get(key), spec) for key, _, spec in columns)
            + " |" for r in rows]
    return "\n".join([head, rule, *body])


def p_suc_key(budget: float) -> str:
    """The key of ``P_suc(budget)`` in :func:`best_effort_rows`' dicts."""
    return f"P_suc({budget:g})"


def best_effort_rows(rows: Sequence[dict], *, at: Sequence[float] = (), inclusive: bool = False
                     ) -> list[dict[str, Any]]:
    """Best effort per (model, attack entry, post-processing) over the clean-correct images.

    ``rows`` are a store's result rows (:func:`quantadv.experiments.load_results` with
    ``as_frame=False``). Returns the fields of the report's best-effort table (``model``,
    ``attack``, ``postprocess``, ``grid_points``, ``images``, ``success_rate``, ``mean_d``,
    ``median_d``, ...; ``images`` counts the clean-correct ones) plus ``clean_accuracy`` (over all
    the images), ``successes``, ``P_suc(t)`` for every budget ``t`` in ``at`` (Eq. 32: fraction of
    the images with a success at ``d < t``, ``<=`` when ``inclusive``), and per image ``idx`` and
    ``d_min`` (``inf`` where no grid point succeeded), for curves.
    """
    from .report import best_efforts, best_table

    best = best_efforts(rows)
    out = []
    for row, entry in zip(best_table(best), best.values(), strict=True):
        cc = entry["clean_correct"]
        d_min = np.where(entry["success"][cc], entry["d"][cc], np.inf)
        row.update(idx=entry["images"][cc], d_min=d_min, successes=int(np.isfinite(d_min).sum()),
                   clean_accuracy=float(cc.mean()) if cc.size else None)
        if len(at) and d_min.size:
            _, p = operating_characteristic(d_min, np.isfinite(d_min), list(at), inclusive=inclusive)
            row.update({p_suc_key(t): float(v) for t, v in zip(at, p.tolist(), strict=True)})
        out.append(row)
    return out


#: the adaptive modes in the order of a cell of :func:`robust_grid` (others follow, sorted)
MODES = ("none", "bpda", "bpda+eot")


def _mode_cell(cell: dict) -> str:
    """Robust accuracy (%) of one cell of :func:`~quantadv.experiments.summary.robust_summary`: for
    several adaptive modes "none / bpda / bpda+eot / **headline**" (headline: the per-image minimum)."""
    if len(cell["by_mode"]) == 1:
        return f"{100 * cell['worst']:.0f} [{cell['images']}]"
    by = cell["by_mode"]
    modes = [*MODES, *sorted(m for m in by if m not in MODES)]
    shown = " / ".join(f"{100 * by[m]:.0f}" if m in by else "-" for m in modes)
    return f"{shown} / **{100 * cell['worst']:.0f}** [{cell['images']}]"


def robust_grid(cells: Sequence[dict], rows: Sequence[dict], param: str = "eps") -> str | None:
    """The cells of :func:`~quantadv.experiments.summary.robust_summary` with a numeric grid
    parameter ``param`` as a Markdown table: one row per (model, attack entry, post-processing)
    with the model's clean accuracy (% of all its stored outcomes: one draw per image and run behind
    a randomised defense), one column per value of ``param``; each cell the robust accuracy (%),
    per adaptive mode and the headline for defended models (paper 003's Table 1 layout), images in
    brackets. ``None`` when no cell has ``param``."""
    def value(c: dict) -> Any:
        v = json.loads(c["params"]).get(param)
        return v if isinstance(v, int | float) and not isinstance(v, bool) else None

    cells = [c for c in cells if value(c) is not None]
    if not cells:
        return None
    clean: dict[str, list[bool]] = defaultdict(list)
    for r in rows:
        clean[r["model"]].append(r["clean_pred"] == r["label"])
    table: dict[tuple, dict] = {}
    for c in cells:
        key = (c["model"], c["attack"], c["postprocess"])
        row = table.setdefault(key, {"model": key[0], "attack": key[1], "postprocess": key[2],
                                     "clean": 100 * float(np.mean(clean[key[0]]))})
        row.setdefault(value(c), _mode_cell(c))
    values = sorted({value(c) for c in cells})
    columns: list[Column] = [("model", "model", ""), ("attack", "attack", ""), ("postprocess", "postprocess", ""),
                             ("clean", "clean", ".0f")]
    columns += [(lambda r, v=v: r.get(v, "not run"), f"{param} {v:g}", "") for v in values]
    return markdown(list(table.values()), columns, align=False)


def accuracy_columns(cells: Sequence[dict], selectors: Sequence[str], models: Sequence[str] = ()) -> str:
    """Robust accuracy (%) as a paper's table: one row per model (in the order of ``models``, then
    by name), one column per attack entry ``selectors`` (``label`` or ``label:key=value,...``, as
    in ``summary.compare``); each cell the mean over runs of the un-post-processed cell of
    :func:`~quantadv.experiments.summary.robust_summary`, ``-`` where the model has no such cell
    and ``?`` where the selector matches several (name a grid value to choose)."""
    from .summary import select

    cells = [c for c in cells if c["postprocess"] == "none"]
    for sel in selectors:
        if not select(cells, sel):
            labels = ", ".join(sorted({c["attack"] for c in cells}))
            raise InputError(f"--columns {sel!r} matches no attack entry of the store; its entries are: {labels}")
    order = list(models)
    names = sorted({c["model"] for c in cells}, key=lambda m: (order.index(m) if m in order else len(order), m))
    rows = []
    for m in names:
        here = [c for c in cells if c["model"] == m]
        row = {"model": m}
        for sel in selectors:
            hit = select(here, sel)
            row[sel] = "-" if not hit else "?" if len(hit) > 1 else f"{100 * hit[0]['mean']:.1f} [{hit[0]['images']}]"
        rows.append(row)
    columns: list[Column] = [("model", "model", "")] + [(s, s, "") for s in selectors]
    return markdown(rows, columns, align=False)


BEST_COLUMNS: list[Column] = [("model", "model", ""), ("attack", "attack", ""), ("postprocess", "postprocess", ""),
                              ("grid_points", "grid points", "d"), ("clean_accuracy", "clean", ".1%"),
                              ("images", "attacked", "d"),
                              ("successes", "successes", "d"), ("success_rate", "success", ".1%"),
                              ("median_d", "median min d", ".3f"), ("mean_d", "mean min d", ".3f"),
                              ("calls_per_image", "calls/img", ".1f"), ("grads_per_image", "grads/img", ".1f")]


def markdown_tables(store: str | os.PathLike, *, at: Sequence[float] = (), inclusive: bool = False,
                 options: dict | None = None, columns: Sequence[str] = ()) -> str:
    """The best-effort table (with ``P_suc`` at ``at``), the robust-accuracy table and the paired
    comparisons of a store (``options``: a config's ``summary:`` mapping; default the store's
    own) as Markdown text; with ``columns`` (attack-entry selectors) first the model x entry
    table of :func:`accuracy_columns`."""
    from .report import PAIRED_TABLE, ROBUST_TABLE, stored_summary_options, summary_tables
    from .store import load_results, open_store
    from .summary import robust_summary

    rows = load_results(store, as_frame=False)
    with open_store(store) as st:  # config order: runs as registered, post-processing as listed
        entries = list(dict.fromkeys((r["model"], r["attack"]) for r in st.runs()))
        pps = json.loads(st.meta().get("postprocess", "[]") or "[]")
    best = sorted(best_effort_rows(rows, at=at, inclusive=inclusive), key=lambda r: (
        entries.index((r["model"], r["attack"])) if (r["model"], r["attack"]) in entries else len(entries),
        pps.index(r["postprocess"]) if r["postprocess"] in pps else len(pps)))
    cols = BEST_COLUMNS + [(p_suc_key(t), f"P_suc({t:g})", ".1%") for t in at]
    cells = robust_summary(store)  # read once: the columns table and the eps grid share it
    parts = []
    if columns:
        models = list(dict.fromkeys(m for m, _ in entries))
        parts += ["## Robust accuracy (%) per model and attack entry (the attack's output; clean errors count as "
                  "broken; images in brackets)\n", accuracy_columns(cells, columns, models), ""]
    parts += ["## Best effort per attack entry (correctly classified images)\n", markdown(best, cols)]
    options = stored_summary_options(store) if options is None else options
    robust, pairs = summary_tables(store, options)
    parts += ["\n## Robust accuracy over repeats and adaptive modes\n", markdown(robust, ROBUST_TABLE)]
    grid = robust_grid(cells, rows)
    if grid:
        parts += ["\n## Robust accuracy (%) by eps (the attack's output, each eps on its own; defended models: "
                  "none / bpda / bpda+eot / **headline**, the per-image minimum over the modes; images in "
                  "brackets)\n", grid]
    if pairs:
        parts += ["\n## Paired comparisons\n", markdown(pairs, PAIRED_TABLE)]
    return "\n".join(parts) + "\n"
