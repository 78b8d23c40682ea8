"""Markdown tables of a results store (``quantadv report STORE --markdown``).

* :func:`best_effort_rows`: per (model, attack entry, post-processing), the best effort over the
  entry's grid (paper 000 Sec. 5.1.2: per image the lowest distortion ``d`` that succeeds) over
  the correctly classified images: success rate, median / mean ``d`` of the successes, and the
  operating characteristic ``P_suc(d_bar)`` (paper 000 Eq. 32; failures count against the attack)
  at chosen budgets. An entry with one grid point gives that run's own numbers.
* :func:`markdown`: any list of row dicts as a Markdown table, one format spec per column.

The robust-accuracy and paired tables come from :func:`quantadv.experiments.report.summary_tables`
(:mod:`quantadv.experiments.summary`); :func:`markdown_tables` prints all three.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

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
    ``median_d``, ...) plus ``successes``, ``P_suc(t)`` for every budget ``t`` in ``at`` (Eq. 32:
    fraction of the images with a success at ``d < t``, ``<=`` when ``inclusive``), and per image
    ``idx`` and ``d_min`` (``inf`` where no grid point succeeded), for curves.
    """
    from .report import best_efforts, best_table

    best = best_efforts(rows)
    out = []
    for row, entry in zip(best_table(best), best.values(), strict=True):
        cc = entry["clean_correct"]
        d_min = np.where(entry["success"][cc], entry["d"][cc], np.inf)
        row.update(idx=entry["images"][cc], d_min=d_min, successes=int(np.isfinite(d_min).sum()))
        if len(at) and d_min.size:
            _, p = operating_characteristic(d_min, np.isfinite(d_min), list(at), inclusive=inclusive)
            row.update({p_suc_key(t): float(v) for t, v in zip(at, p.tolist(), strict=True)})
        out.append(row)
    return out


BEST_COLUMNS: list[Column] = [("model", "model", ""), ("attack", "attack", ""), ("postprocess", "postprocess", ""),
                              ("grid_points", "grid points", "d"), ("images", "images", "d"),
                              ("successes", "successes", "d"), ("success_rate", "success", ".1%"),
                              ("median_d", "median min d", ".3f"), ("mean_d", "mean min d", ".3f")]


def markdown_tables(store: str | os.PathLike, *, at: Sequence[float] = (), inclusive: bool = False,
                 options: dict | None = None) -> str:
    """The best-effort table (with ``P_suc`` at ``at``), the robust-accuracy table and the paired
    comparisons of a store (``options``: a config's ``summary:`` mapping; default the store's
    own) as Markdown text."""
    from .report import PAIRED_TABLE, ROBUST_TABLE, stored_summary_options, summary_tables
    from .store import load_results

    rows = load_results(store, as_frame=False)
    cols = BEST_COLUMNS + [(p_suc_key(t), f"P_suc({t:g})", ".1%") for t in at]
    parts = ["## Best effort per attack entry (correctly classified images)\n",
             markdown(best_effort_rows(rows, at=at, inclusive=inclusive), cols)]
    robust, pairs = summary_tables(store, stored_summary_options(store) if options is None else options)
    parts += ["\n## Robust accuracy over repeats and adaptive modes\n", markdown(robust, ROBUST_TABLE)]
    if pairs:
        parts += ["\n## Paired comparisons\n", markdown(pairs, PAIRED_TABLE)]
    return "\n".join(parts) + "\n"
