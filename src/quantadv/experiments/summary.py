"""Robust accuracy over repeats, adaptive modes, iterations and grids, and paired tests, from a store.

Axes of a config that turn one (model, attack, parameters) cell into several runs or outcomes:

- ``repeat: N`` on an attack entry: N independent runs (other seeds). Paper 001 reports, over
  such runs, the **average** accuracy (mean of the runs' accuracies) and the **worst-case**
  accuracy (an image counts as robust only if no run broke it); Tables 2-5 of paper 001.
- ``adaptive: [none, bpda, bpda+eot, "bpda:SPEC"]`` on a defended model: the same attack seeing
  the defense several ways. The **headline** robust accuracy is per image the minimum over the
  modes: an image is broken if any mode broke it (Athalye et al. 2018; issue 10).
- per-iterate tracking: attacks on the engine report ``first_adv``, the first iterate judged
  adversarial (:mod:`quantadv.attacks.engine`), stored per image. ``criterion=k`` judges an
  image broken when an iterate ``<= k`` was adversarial (an early-stopping ``k``-step attack:
  one long run gives the accuracy-vs-steps curve, paper 001 Fig. 4); ``criterion="any"`` when
  any iterate was (the criterion of attacks returning their best iterate, such as APGD).
- ``carry="eps"``: for a grid over ``eps`` on the same images, an image broken at a smaller
  eps counts as broken at every larger one (the same perturbation is admissible there).
- ``headline: [a, b, ...]``: several attack *entries* on the same model (an adaptive PGD and an
  oblivious transfer attack, say) combine into one row per grid value: an image is robust only
  if no run of any of them broke it (:func:`headline`).

:func:`robust_summary` computes all of it from a store: one row per (model, attack label, grid
parameters, post-processing), with the per-run accuracies, their mean and sample standard
deviation, per adaptive mode, and the worst case over everything. An image is *robust* in a run
when the model classifies it correctly and the attack did not break it (images the model
misclassifies count as not robust, attacked or not). :func:`paired` compares two cells on the
same images: McNemar's exact test on the per-image worst case and a bootstrap interval of the
difference in per-image average accuracy; :func:`compare` finds the cells of two named attack
entries. The ``summary:`` key of a config (``carry``, ``steps``, ``compare``) puts these tables
in ``quantadv report``.
"""

from __future__ import annotations

import json
import math
import os
from collections import Counter, defaultdict
from typing import Any

from ..errors import DataError
from .store import open_store

#: criteria of :func:`robust_summary`: the attack's output, any iterate, or an iterate <= k
CRITERIA = ("final", "any")


def _broken(row: dict, criterion: str | int, where: str) -> bool:
    if criterion == "final":
        return bool(row["success"])
    info = json.loads(row["info"]) if row.get("info") else {}
    if "skipped" in info:
        return bool(row["success"])
    first = info.get("attack", {}).get("first_adv")
    if first is None:
        raise DataError(
            f"{where}: no per-iterate record (first_adv) for image {row['idx']}; only attacks on the "
            "engine report it, and not transfer attacks; use criterion 'final' for this run"
        )
    if criterion == "any":
        return first >= 0 or bool(row["success"])
    return 0 <= first <= int(criterion)


def _robust(row: dict, criterion: str | int = "final", where: str = "") -> bool:
    return row["clean_pred"] == row["label"] and not _broken(row, criterion, where)


def _carry(outcomes: dict, runs: dict, param: str) -> None:
    """AND the outcomes of runs that differ only in ``param`` along increasing ``param``, in place."""
    chains: dict[tuple, list] = defaultdict(list)
    for (run_id, pp), outcome in outcomes.items():
        run = runs[run_id]
        params = json.loads(run["params"])
        if param not in params or not isinstance(params[param], int | float):
            continue
        config = json.loads(run["config"])
        rest = {k: v for k, v in params.items() if k != param}
        key = (run["model"], run["attack"], json.dumps(rest, sort_keys=True), pp,
               config.get("adaptive", "none"), int(config.get("repeat", 0)))
        chains[key].append((float(params[param]), outcome))
    for chain in chains.values():
        chain.sort(key=lambda c: c[0])
        for (_, lower), (_, upper) in zip(chain, chain[1:], strict=False):
            for i in upper:
                if i in lower and not lower[i]:
                    upper[i] = False


def robust_summary(
    path: str | os.PathLike, *, criterion: str | int = "final", carry: str | None = None
) -> list[dict[str, Any]]:
    """Robust accuracy per cell, over repeats and adaptive modes (see the module docstring).

    Parameters
    ----------
    criterion : ``"final"`` (the stored outcome), ``"any"`` (any iterate was adversarial) or
        an iteration count ``k`` (an iterate ``<= k`` was adversarial).
    carry : a numeric grid parameter (``"eps"``) along which breaks are carried upward.

    Returns a list of dicts with keys ``model``, ``attack``, ``params`` (the grid point, JSON),
    ``postprocess``, ``images`` (number of images in every run of the cell), ``runs``,
    ``accuracies`` (per run, in repeat order, grouped by mode), ``by_mode`` (mode -> mean over
    repeats), ``mean``, ``std`` (sample std over runs; 0 for one run), ``lowest`` (the lowest
    run's accuracy: paper 001's "worst" over runs), ``worst`` (per-image:
    robust in every run of every mode), ``modes``, ``idx`` (the common images, sorted) and
    ``robust`` (per run, the per-image robust flags over ``idx``).
    """
    if criterion not in CRITERIA and (isinstance(criterion, bool) or not isinstance(criterion, int)
                                      or criterion < 0):
        raise DataError(f"criterion must be 'final', 'any' or an iteration count >= 0, got {criterion!r}")
    with open_store(path) as store:
        runs = {r["run_id"]: r for r in store.runs()}
        rows = store.results()
    outcomes: dict[tuple[str, str], dict[int, bool]] = defaultdict(dict)
    for row in rows:
        run = runs[row["run_id"]]
        where = f"run {row['run_id']} ({run['model']} / {run['attack']})"
        outcomes[(row["run_id"], row["postprocess"])][row["idx"]] = _robust(row, criterion, where)
    if carry is not None:
        _carry(outcomes, runs, carry)
    cells: dict[tuple, list[tuple[str, int, dict[int, bool]]]] = defaultdict(list)
    for (run_id, pp), outcome in outcomes.items():
        run = runs[run_id]
        config = json.loads(run["config"])
        mode = config.get("adaptive", "none")
        repeat = int(config.get("repeat", 0))
        key = (run["model"], run["attack"], run["params"], pp)
        cells[key].append((mode, repeat, outcome))
    out = []
    for (model, attack, params, pp), members in sorted(cells.items()):
        members.sort(key=lambda m: (m[0], m[1]))
        common = sorted(set.intersection(*(set(o) for _, _, o in members)))
        if not common:
            continue
        robust = [[o[i] for i in common] for _, _, o in members]
        accs = [sum(r) / len(common) for r in robust]
        by_mode: dict[str, list[float]] = defaultdict(list)
        for (mode, _, _), acc in zip(members, accs, strict=True):
            by_mode[mode].append(acc)
        worst = sum(all(col) for col in zip(*robust, strict=True)) / len(common)
        mean = sum(accs) / len(accs)
        std = math.sqrt(sum((a - mean) ** 2 for a in accs) / (len(accs) - 1)) if len(accs) > 1 else 0.0
        out.append({
            "model": model, "attack": attack, "params": params, "postprocess": pp,
            "images": len(common), "runs": len(members), "accuracies": accs,
            "by_mode": {m: sum(v) / len(v) for m, v in by_mode.items()},
            "modes": sorted(by_mode), "mean": mean, "std": std, "lowest": min(accs), "worst": worst,
            "idx": common, "robust": robust,
        })
    return out


# ---------------------------------------------------------------------------------------------
# Paired statistics


def mcnemar_exact(broken_a: list[bool], broken_b: list[bool]) -> tuple[int, int, float]:
    """Discordant counts (a broken and b not, b broken and a not) and McNemar's exact two-sided
    p-value (the binomial test of the smaller count among the discordant pairs, p = 1/2)."""
    from scipy.stats import binomtest

    if len(broken_a) != len(broken_b):
        raise DataError(f"paired outcomes must cover the same images, got {len(broken_a)} and {len(broken_b)}")
    n01 = sum(a and not b for a, b in zip(broken_a, broken_b, strict=True))
    n10 = sum(b and not a for a, b in zip(broken_a, broken_b, strict=True))
    p = 1.0 if n01 + n10 == 0 else float(binomtest(min(n01, n10), n01 + n10, 0.5).pvalue)
    return n01, n10, p


def bootstrap_diff(acc_a: list[float], acc_b: list[float], n: int = 5000, seed: int = 0,
                   level: float = 0.95) -> tuple[float, float]:
    """``level`` percentile interval of mean(acc_a - acc_b) over images resampled with replacement."""
    import numpy as np

    d = np.asarray(acc_a, dtype=float) - np.asarray(acc_b, dtype=float)
    if d.size == 0:
        raise DataError("a bootstrap interval needs at least one image")
    rng = np.random.default_rng(seed)
    means = d[rng.integers(0, d.size, size=(n, d.size))].mean(axis=1)
    tail = 100 * (1 - level) / 2
    return float(np.percentile(means, tail)), float(np.percentile(means, 100 - tail))


def paired(cell_a: dict, cell_b: dict, n_boot: int = 5000, seed: int = 0) -> dict[str, Any]:
    """Compare two cells of :func:`robust_summary` on their common images.

    ``diff`` is mean accuracy of a minus b (per-image average over each cell's runs), with a
    95% bootstrap interval ``low``..``high`` over images; McNemar's exact test compares the
    per-image worst case (broken by any run): ``a_only`` images broken by a and not b,
    ``b_only`` the reverse, ``p`` the two-sided p-value.
    """
    common = sorted(set(cell_a["idx"]) & set(cell_b["idx"]))
    if not common:
        raise DataError(f"cells {cell_a['attack']!r} and {cell_b['attack']!r} share no image")

    def per_image(cell: dict) -> tuple[list[float], list[bool]]:
        pos = {i: j for j, i in enumerate(cell["idx"])}
        cols = [[run[pos[i]] for run in cell["robust"]] for i in common]
        return [sum(c) / len(c) for c in cols], [not all(c) for c in cols]

    acc_a, broken_a = per_image(cell_a)
    acc_b, broken_b = per_image(cell_b)
    a_only, b_only, p = mcnemar_exact(broken_a, broken_b)
    low, high = bootstrap_diff(acc_a, acc_b, n_boot, seed)
    return {"images": len(common), "diff": (sum(acc_a) - sum(acc_b)) / len(common), "low": low, "high": high,
            "a_only": a_only, "b_only": b_only, "p": p}


def select(cells: list[dict], selector: str) -> list[dict]:
    """Cells of the attack entry ``label`` or ``label:key=value,...`` (values as in the params)."""
    label, _, cond = selector.partition(":")
    want = dict(part.split("=", 1) for part in filter(None, cond.split(",")))
    out = []
    for c in cells:
        if c["attack"] != label:
            continue
        params = json.loads(c["params"])
        if all(k in params and _same(params[k], v) for k, v in want.items()):
            out.append(c)
    return out


def _same(value: Any, text: str) -> bool:
    if isinstance(value, int | float) and not isinstance(value, bool):
        try:
            return math.isclose(float(value), float(text))
        except ValueError:
            return False
    return str(value).lower() == text.lower() or json.dumps(value) == text


def _grid_keys(cells: list[dict]) -> set[str]:
    """The parameters whose value differs between the cells of one attack entry (its grid)."""
    params = [json.loads(c["params"]) for c in cells]
    keys = set().union(*params) if params else set()
    return {k for k in keys if len({json.dumps(p.get(k), sort_keys=True) for p in params}) > 1}


def _pairs(ca: list[dict], cb: list[dict]) -> list[tuple[dict, dict]]:
    """Cells of two entries paired one to one: a single cell each; else equal params; else equal
    values of the grid parameters both entries vary (e.g. ``eps``, when the entries' other
    parameters differ: a transfer entry without early stop against PGD with it)."""
    if len(ca) == 1 and len(cb) == 1:
        return [(ca[0], cb[0])]
    by_params = {c["params"]: c for c in cb}
    if all(x["params"] in by_params for x in ca):
        return [(x, by_params[x["params"]]) for x in ca]
    grid = sorted(_grid_keys(ca) & _grid_keys(cb))
    if not grid:
        return [(x, by_params[x["params"]]) for x in ca if x["params"] in by_params]

    def key(c: dict) -> str:
        p = json.loads(c["params"])
        return json.dumps([p.get(k) for k in grid])

    count = Counter(key(c) for c in cb)
    by_grid = {key(c): c for c in cb if count[key(c)] == 1}  # an ambiguous grid value pairs nothing
    return [(x, by_grid[key(x)]) for x in ca if key(x) in by_grid]


def compare(cells: list[dict], a: str, b: str, n_boot: int = 5000, seed: int = 0) -> list[dict[str, Any]]:
    """Paired tests between attack entries ``a`` and ``b`` (selectors ``label`` or
    ``label:eps=0.3,b=200``), per model and post-processing: the cells pair up one to one, by
    equal parameters, or by equal values of the grid parameters both entries vary. Returns
    :func:`paired`'s dicts with ``model``, ``postprocess``, ``a``, ``b`` (the cells' attack and
    params); empty when no cell pairs up (the caller says so)."""
    out = []
    groups = sorted({(c["model"], c["postprocess"]) for c in cells})
    for model, pp in groups:
        here = [c for c in cells if c["model"] == model and c["postprocess"] == pp]
        for x, y in _pairs(select(here, a), select(here, b)):
            out.append({"model": model, "postprocess": pp, "a": f"{x['attack']} {x['params']}",
                        "b": f"{y['attack']} {y['params']}", **paired(x, y, n_boot, seed)})
    return out


def headline(cells: list[dict], labels: list[str], by: str = "eps") -> list[dict[str, Any]]:
    """The per-image minimum over several attack entries: one row per (model, value of grid
    parameter ``by``, post-processing) that the entries ``labels`` share.

    An image is robust in the headline when it is robust in every run (repeat and adaptive mode)
    of every listed entry's cell with that value of ``by`` -- the evaluation standard of
    Athalye et al. (2018) and Carlini et al. (2019): report the strongest attack per image,
    not per table. Entries may differ in their other parameters (an early-stopping adaptive
    attack beside a transfer attack without early stop). A model that faces only some of the
    entries gets the minimum over those it faces. Returns dicts shaped like
    :func:`robust_summary`'s (``attack`` is ``"min(a, b)"``, ``params`` the JSON of
    ``{by: value}``, ``accuracies`` the members' worst-case accuracies on the common images,
    ``mean`` = ``lowest`` = ``worst`` = the headline, ``std`` 0).
    """
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for c in cells:
        if c["attack"] not in labels:
            continue
        value = json.loads(c["params"]).get(by)
        groups[(c["model"], json.dumps(value), c["postprocess"])].append(c)
    out = []
    for (model, value, pp), members in sorted(groups.items()):
        common = sorted(set.intersection(*(set(c["idx"]) for c in members)))
        if not common:
            continue
        flags = []
        for c in members:
            pos = {i: j for j, i in enumerate(c["idx"])}
            flags.append([all(run[pos[i]] for run in c["robust"]) for i in common])
        robust = [all(col) for col in zip(*flags, strict=True)]
        worst = sum(robust) / len(common)
        names = [label for label in labels if any(c["attack"] == label for c in members)]
        out.append({
            "model": model, "attack": f"min({', '.join(names)})", "params": json.dumps({by: json.loads(value)}),
            "postprocess": pp, "images": len(common), "runs": sum(len(c["robust"]) for c in members),
            "accuracies": [sum(f) / len(common) for f in flags], "by_mode": {}, "modes": [],
            "mean": worst, "std": 0.0, "lowest": worst, "worst": worst, "idx": common, "robust": [robust],
        })
    return out
