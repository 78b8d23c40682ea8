"""Reports: a results store -> one static, self-contained HTML page plus PNG/SVG plots and CSVs.

The page (``index.html``) embeds every plot as a base64 PNG and needs no other file; the same
plots are also written as ``.png`` and ``.svg`` files and every table as a ``.csv`` file, so
they can go into papers and spreadsheets. Contents:

* **Per run and post-processing**: clean accuracy, success rate over the correctly classified
  images, accuracy under attack, mean / median distortion ``d`` of the successes (paper 000
  Eq. 31, pixel units), mean L2 / L-inf, network calls, gradients and seconds per image.
* **Best effort** per (model, attack entry, post-processing): per image the lowest distortion
  that succeeds over the entry's parameter grid (paper 000 Sec. 5.1.2), and its statistics.
* **Operating characteristics** ``P_suc(d_bar)`` (paper 000 Eq. 32) of the best efforts over
  the correctly classified images, one plot per model.
* **Robust accuracy** vs L2 and L-inf budgets from the best-effort minimal norms, and, for
  attack entries with a one-parameter grid (e.g. ``eps``), accuracy under attack vs that
  parameter.
* **Image grids** (original / adversarial / amplified perturbation) for the images the run
  stored (``save_images``).
* The config, the machines (sessions) and the code versions.

Every file is written under a temporary name and renamed, so a report directory never holds
half-written files.
"""

from __future__ import annotations

import base64
import contextlib
import csv
import html
import io
import json
import logging
import math
import os
import tempfile
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DataError
from ..eval.curves import best_effort, operating_characteristic, robust_accuracy
from .store import open_store

log = logging.getLogger("quantadv.experiments")

#: Columns of ``runs.csv`` (one row per run and post-processing).
RUN_TABLE = (
    ("model", "model", ""),
    ("attack", "attack", ""),
    ("params", "parameters", ""),
    ("postprocess", "postprocess", ""),
    ("images", "images", "d"),
    ("clean_accuracy", "clean acc.", ".3f"),
    ("success_rate", "success", ".3f"),
    ("attacked_accuracy", "acc. under attack", ".3f"),
    ("mean_d", "mean d", ".3f"),
    ("median_d", "median d", ".3f"),
    ("mean_l2", "mean L2", ".4f"),
    ("mean_linf", "mean L-inf", ".4f"),
    ("calls_per_image", "calls/img", ".1f"),
    ("grads_per_image", "grads/img", ".1f"),
    ("seconds_per_image", "s/img", ".4f"),
    ("run_id", "run id", ""),
)
#: Columns of ``best_effort.csv`` (one row per model, attack entry and post-processing).
BEST_TABLE = (
    ("model", "model", ""),
    ("attack", "attack", ""),
    ("postprocess", "postprocess", ""),
    ("grid_points", "grid points", "d"),
    ("images", "clean-correct images", "d"),
    ("success_rate", "success", ".3f"),
    ("mean_d", "mean min d", ".3f"),
    ("median_d", "median min d", ".3f"),
    ("median_l2", "median min L2", ".4f"),
    ("median_linf", "median min L-inf", ".4f"),
    ("calls_per_image", "calls/img", ".1f"),
    ("grads_per_image", "grads/img", ".1f"),
)

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:2em auto;
max-width:1200px;padding:0 1em;color:#222}
h1{font-size:1.6em}h2{font-size:1.25em;margin-top:2em;border-bottom:1px solid #ccc}
table{border-collapse:collapse;font-size:.85em;margin:.5em 0}
th,td{border:1px solid #ddd;padding:.25em .5em;text-align:right}
th{background:#f4f4f4}td.t,th.t{text-align:left}
pre{background:#f7f7f7;padding:.8em;overflow-x:auto;font-size:.85em}
figure{margin:1em 0}figcaption{font-size:.85em;color:#555}
img{max-width:100%}.note{color:#555;font-size:.9em}
"""


# ---------------------------------------------------------------------------------------------
# Files


def _atomic_write(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _csv_bytes(rows: Sequence[dict], columns: Sequence[str]) -> bytes:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(columns)
    for r in rows:
        w.writerow(["" if r.get(c) is None else r.get(c) for c in columns])
    return buf.getvalue().encode("utf-8")


def _slug(text: str) -> str:
    out = "".join(c if c.isalnum() or c in "-_." else "-" for c in text)
    while "--" in out:
        out = out.replace("--", "-")
    return out.strip("-")[:80] or "x"


# ---------------------------------------------------------------------------------------------
# Statistics


def _mean(values: Sequence[float]) -> float | None:
    return float(np.mean(values)) if len(values) else None


def _median(values: Sequence[float]) -> float | None:
    return float(np.median(values)) if len(values) else None


def _params_text(params: str) -> str:
    try:
        p = json.loads(params)
    except (TypeError, ValueError):
        return str(params)
    return ", ".join(f"{k}={v}" for k, v in sorted(p.items()))


def run_table(rows: Sequence[dict]) -> list[dict[str, Any]]:
    """Statistics per (run, post-processing), in store order."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in rows:
        groups[(r["run_id"], r["postprocess"])].append(r)
    out = []
    for (run_id, pp), g in groups.items():
        correct = [r for r in g if r["clean_pred"] == r["label"]]
        ok = [r for r in correct if r["success"]]
        calls = [r["calls"] for r in g if r["calls"] is not None]
        grads = [r["grads"] for r in g if r["grads"] is not None]
        out.append({
            "model": g[0]["model"],
            "attack": g[0]["attack"],
            "params": _params_text(g[0]["params"]),
            "postprocess": pp,
            "images": len(g),
            "clean_accuracy": len(correct) / len(g),
            "success_rate": len(ok) / len(correct) if correct else None,
            "attacked_accuracy": sum(r["adv_pred"] == r["label"] for r in g) / len(g),
            "mean_d": _mean([r["d"] for r in ok]),
            "median_d": _median([r["d"] for r in ok]),
            "mean_l2": _mean([r["l2"] for r in ok]),
            "mean_linf": _mean([r["linf"] for r in ok]),
            "calls_per_image": _mean(calls) if len(calls) == len(g) else None,
            "grads_per_image": _mean(grads) if len(grads) == len(g) else None,
            "seconds_per_image": _mean([r["seconds"] for r in g]),
            "run_id": run_id,
        })
    return out


def best_efforts(rows: Sequence[dict]) -> dict[tuple[str, str, str], dict[str, Any]]:
    """Per (model, attack entry, post-processing): the per-image best effort over the grid.

    Returns dicts with ``images`` (ids), ``clean_correct``, ``success``, and minimal ``d``,
    ``l2``, ``linf`` per image (``inf`` where no grid point succeeded), plus ``grid_points`` and
    the cost of the whole grid per image, ``calls`` and ``grads`` (summed over the grid points and
    runs; ``None`` when a row lacks the count).
    """
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in rows:
        groups[(r["model"], r["attack"], r["postprocess"])].append(r)
    out = {}
    for key, g in groups.items():
        idx = [r["idx"] for r in g]
        success = [bool(r["success"]) for r in g]
        entry: dict[str, Any] = {"grid_points": len({r["run_id"] for r in g})}
        for measure in ("d", "l2", "linf"):
            images, d_min, any_ok = best_effort(idx, [r[measure] for r in g], success)
            entry[measure] = d_min.numpy()
        entry["images"] = images.numpy()
        entry["success"] = any_ok.numpy()
        correct = {r["idx"]: r["clean_pred"] == r["label"] for r in g}
        entry["clean_correct"] = np.array([correct[int(i)] for i in images], dtype=bool)
        for cost in ("calls", "grads"):
            total: dict[int, float] = defaultdict(float)
            for r in g:
                total[r["idx"]] += np.nan if r.get(cost) is None else r[cost]
            per_image = np.array([total[int(i)] for i in images], dtype=float)
            entry[cost] = None if np.isnan(per_image).any() else per_image
        out[key] = entry
    return out


def best_table(best: dict[tuple[str, str, str], dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for (model, attack, pp), e in best.items():
        cc = e["clean_correct"]
        ok = e["success"] & cc
        out.append({
            "model": model,
            "attack": attack,
            "postprocess": pp,
            "grid_points": e["grid_points"],
            "images": int(cc.sum()),
            "success_rate": float(ok.sum() / cc.sum()) if cc.any() else None,
            "mean_d": _mean(e["d"][ok]),
            "median_d": _median(e["d"][ok]),
            "median_l2": _median(e["l2"][ok]),
            "median_linf": _median(e["linf"][ok]),
            # the cost of the whole grid per attacked image (misclassified images are not attacked)
            "calls_per_image": None if e["calls"] is None else _mean(e["calls"][cc]),
            "grads_per_image": None if e["grads"] is None else _mean(e["grads"][cc]),
        })
    return out


# ---------------------------------------------------------------------------------------------
# Plots


class _Plot:
    """A matplotlib figure rendered once to PNG (for the page and the file) and SVG."""

    def __init__(self, name: str, title: str, fig: Any, caption: str = ""):
        self.name = name
        self.title = title
        self.caption = caption
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=110, bbox_inches="tight", metadata={"Software": None})
        self.png = buf.getvalue()
        buf = io.BytesIO()
        fig.savefig(buf, format="svg", bbox_inches="tight", metadata={"Date": None})
        self.svg = buf.getvalue()


def _figure(width: float = 6.4, height: float = 4.2) -> tuple[Any, Any]:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height))
    return fig, fig.add_subplot(1, 1, 1)


_STYLES = ("-", "--", ":", "-.")


def _styles(best_keys: Sequence[tuple[str, str, str]]) -> dict[tuple[str, str], dict]:
    """A colour per attack entry and a line style per post-processing."""
    from matplotlib import colormaps

    attacks = list(dict.fromkeys(k[1] for k in best_keys))
    pps = list(dict.fromkeys(k[2] for k in best_keys))
    cmap = colormaps["tab10"]
    return {
        (a, p): {"color": cmap(i % 10), "linestyle": _STYLES[j % len(_STYLES)]}
        for i, a in enumerate(attacks) for j, p in enumerate(pps)
    }


def _oc_plots(best: dict) -> list[_Plot]:
    plots = []
    styles = _styles(list(best))
    for model in dict.fromkeys(k[0] for k in best):
        fig, ax = _figure()
        drawn = False
        xmax = 0.0
        for (m, attack, pp), e in best.items():
            if m != model or not e["clean_correct"].any():
                continue
            cc = e["clean_correct"]
            d, ok = e["d"][cc], e["success"][cc]
            if ok.any():
                x, p = operating_characteristic(d, ok)
                x, p = x.numpy(), p.numpy()
                xmax = max(xmax, float(x.max()))
            else:
                x, p = np.array([0.0]), np.array([0.0])
            ax.plot(np.concatenate([[0.0], x]), np.concatenate([[0.0], p]),
                    drawstyle="steps-post", label=f"{attack} / {pp}", **styles[(attack, pp)])
            drawn = True
        if not drawn:
            continue
        ax.set_xlim(0, xmax * 1.05 if xmax > 0 else 1)
        ax.set_ylim(0, 1.01)
        ax.set_xlabel("distortion budget d̄ (pixel units, paper 000 Eq. 31)")
        ax.set_ylabel("P_suc(d̄)")
        ax.set_title(f"Operating characteristic, {model}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="lower right")
        plots.append(_Plot(
            f"oc-{_slug(model)}", f"Operating characteristic — {model}", fig,
            "Best effort per image over each attack's grid; fraction of the correctly classified "
            "images made adversarial with distortion below d̄ (paper 000 Eq. 32); failures count "
            "against the attack.",
        ))
    return plots


def _robust_plots(best: dict) -> list[_Plot]:
    plots = []
    styles = _styles(list(best))
    for model in dict.fromkeys(k[0] for k in best):
        for measure, label in (("l2", "L2"), ("linf", "L-inf")):
            entries = {k: e for k, e in best.items() if k[0] == model}
            finite = [e[measure][e["success"]] for e in entries.values()]
            top = max((float(v.max()) for v in finite if v.size), default=0.0)
            if top <= 0:
                continue
            eps = np.linspace(0.0, top * 1.05, 200)
            fig, ax = _figure()
            for (_, attack, pp), e in entries.items():
                acc = robust_accuracy(e[measure], e["success"], eps,
                                      clean_correct=e["clean_correct"]).numpy()
                ax.plot(eps, acc, label=f"{attack} / {pp}", **styles[(attack, pp)])
            ax.set_ylim(0, 1.01)
            ax.set_xlim(0, eps[-1])
            ax.set_xlabel(f"{label} budget ε ([0, 1] units)")
            ax.set_ylabel("robust accuracy")
            ax.set_title(f"Robust accuracy vs {label} budget, {model}")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8, loc="upper right")
            plots.append(_Plot(
                f"robust-{measure}-{_slug(model)}", f"Robust accuracy vs {label} — {model}", fig,
                f"Fraction of all images correctly classified and not made adversarial within "
                f"{label} ≤ ε by the attack's best effort over its grid.",
            ))
    return plots


def _grid_plots(rows: Sequence[dict], runs: Sequence[dict]) -> list[_Plot]:
    """Accuracy under attack vs the parameter of one-parameter grids (e.g. eps of PGD)."""
    by_entry: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for r in runs:
        by_entry[(r["model"], r["attack"])].append(r)
    acc: dict[tuple[str, str], list[bool]] = defaultdict(list)
    for r in rows:
        acc[(r["run_id"], r["postprocess"])].append(r["adv_pred"] == r["label"])
    plots = []
    for (model, attack), entry_runs in by_entry.items():
        if len(entry_runs) < 2:
            continue
        params = [json.loads(r["params"]) for r in entry_runs]
        keys = set(params[0])
        varying = [k for k in keys if len({json.dumps(p.get(k)) for p in params}) > 1]
        if len(varying) == 1:
            key = varying[0]
        elif "eps" in varying:  # e.g. an explicit grid of (eps, step) pairs
            key = "eps"
        else:
            continue
        if not all(isinstance(p.get(key), int | float) and not isinstance(p.get(key), bool)
                   for p in params):
            continue
        fig, ax = _figure()
        drawn = False
        pps = list(dict.fromkeys(pp for (rid, pp) in acc if rid in {r["run_id"] for r in entry_runs}))
        for j, pp in enumerate(pps):
            pts = sorted(
                (p[key], float(np.mean(acc[(r["run_id"], pp)])))
                for p, r in zip(params, entry_runs, strict=True) if acc.get((r["run_id"], pp))
            )
            if pts:
                ax.plot([a for a, _ in pts], [b for _, b in pts], marker="o",
                        linestyle=_STYLES[j % len(_STYLES)], label=pp)
                drawn = True
        if not drawn:
            continue
        ax.set_ylim(0, 1.01)
        ax.set_xlabel(key)
        ax.set_ylabel("accuracy under attack")
        ax.set_title(f"{attack} on {model}: accuracy vs {key}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        plots.append(_Plot(
            f"grid-{_slug(model)}-{_slug(attack)}", f"{attack} on {model}: accuracy vs {key}", fig,
            f"Fraction of all images whose final image is still classified correctly, per value "
            f"of {key}.",
        ))
    return plots


def _gray(a: np.ndarray) -> np.ndarray:
    return np.clip(a[:, :, 0], 0, 1)


def _rgb(a: np.ndarray) -> np.ndarray:
    return np.clip(a, 0, 1)


def _to_hwc(data: bytes, shape: tuple[int, ...], dtype: Any) -> np.ndarray:
    arr = np.frombuffer(data, dtype=dtype).reshape(shape).astype(np.float64)
    if dtype == np.uint8:
        arr = arr / 255.0
    return np.transpose(arr, (1, 2, 0))


def _class_names(run: dict) -> list[str] | None:
    """The class names of the dataset a run attacked, when its config names a known dataset."""
    try:
        name = json.loads(run.get("config", "{}")).get("data", {}).get("name")
        if not name:
            return None
        from ..data import class_names

        return list(class_names(name))
    except Exception:  # noqa: BLE001 - an entry-point dataset, a folder gone: fall back to indices
        return None


def _class_text(names: list[str] | None, k: int) -> str:
    return names[k] if names is not None and 0 <= k < len(names) else str(k)


def _image_plots(store_rows: Sequence[dict], originals: dict, adversarials: Sequence[dict],
                 runs: Sequence[dict], max_images: int, max_figures: int = 24) -> list[_Plot]:
    outcome = {(r["run_id"], r["postprocess"], r["idx"]): r for r in store_rows}
    run_by_id = {r["run_id"]: r for r in runs}
    by_run: dict[str, list[dict]] = defaultdict(list)
    for a in adversarials:
        by_run[a["run_id"]].append(a)
    plots = []
    for run_id, advs in list(by_run.items())[:max_figures]:
        pps = list(dict.fromkeys(a["postprocess"] for a in advs))
        idxs = sorted({a["idx"] for a in advs if a["idx"] in originals})[:max_images]
        if not idxs:
            continue
        lookup = {(a["postprocess"], a["idx"]): a for a in advs}
        names = _class_names(run_by_id.get(run_id, {}))
        cols = 1 + 2 * len(pps)
        from matplotlib.figure import Figure

        fig = Figure(figsize=(1.45 * cols, 1.9 * len(idxs) + 0.6))
        axes = fig.subplots(len(idxs), cols, squeeze=False, gridspec_kw={"hspace": 0.85})
        for i, idx in enumerate(idxs):
            shape, data = originals[idx]
            orig = _to_hwc(data, shape, np.uint8)
            gray = orig.shape[2] == 1
            show = _gray if gray else _rgb
            cmap = "gray" if gray else None
            axes[i][0].imshow(show(orig), cmap=cmap, vmin=0, vmax=1)
            axes[i][0].set_title(f"#{idx}", fontsize=7)
            for j, pp in enumerate(pps):
                a = lookup.get((pp, idx))
                if a is None:
                    continue
                adv = _to_hwc(a["data"], a["shape"], np.float32)
                diff = adv - orig
                peak = float(np.abs(diff).max())
                amp = 0.5 / peak if peak > 0 else 1.0
                res = outcome.get((run_id, pp, idx))
                verdict = ""
                if res is not None:
                    verdict = (f"{_class_text(names, res['clean_pred'])}→{_class_text(names, res['adv_pred'])}"
                               f"\nd={res['d']:.2f}")
                axes[i][1 + 2 * j].imshow(show(adv), cmap=cmap, vmin=0, vmax=1)
                axes[i][1 + 2 * j].set_title(f"{pp}\n{verdict}", fontsize=6)
                axes[i][2 + 2 * j].imshow(show(0.5 + amp * diff), cmap=cmap, vmin=0, vmax=1)
                axes[i][2 + 2 * j].set_title(f"perturbation ×{amp:.1f}", fontsize=6)
        for ax in axes.flat:
            ax.set_xticks([])
            ax.set_yticks([])
        run = run_by_id.get(run_id, {})
        title = f"{run.get('model', '?')} / {run.get('attack', '?')} ({_params_text(run.get('params', '{}'))})"
        fig.suptitle(title, fontsize=8)
        plots.append(_Plot(
            f"images-{_slug(run.get('model', ''))}-{_slug(run.get('attack', ''))}-{run_id[:8]}",
            f"Images — {title}", fig,
            "Original, then per post-processing the final image (title: clean → adversarial "
            "prediction, distortion d) and the perturbation amplified around mid-gray.",
        ))
    return plots


# ---------------------------------------------------------------------------------------------
# HTML


def _fmt(value: Any, spec: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if spec == "d":
        return str(int(value))
    if spec:
        return format(value, spec)
    return str(value)


def _html_table(rows: Sequence[dict], columns: Sequence[tuple[str, str, str]]) -> str:
    head = "".join(
        f'<th class="{"t" if not spec else ""}">{html.escape(title)}</th>'
        for _, title, spec in columns
    )
    body = []
    for r in rows:
        cells = "".join(
            f'<td class="{"t" if not spec else ""}">{html.escape(_fmt(r.get(key), spec))}</td>'
            for key, _, spec in columns
        )
        body.append(f"<tr>{cells}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _figure_html(plot: _Plot) -> str:
    b64 = base64.b64encode(plot.png).decode("ascii")
    return (
        f'<figure id="{html.escape(plot.name)}"><img alt="{html.escape(plot.title)}" '
        f'src="data:image/png;base64,{b64}"><figcaption>{html.escape(plot.caption)} '
        f'Files: <a href="{html.escape(plot.name)}.png">PNG</a>, '
        f'<a href="{html.escape(plot.name)}.svg">SVG</a>.</figcaption></figure>'
    )


ROBUST_TABLE = [("model", "model", ""), ("attack", "attack", ""), ("params", "params", ""),
                ("postprocess", "post-processing", ""), ("criterion", "criterion", ""),
                ("images", "images", "d"), ("runs", "runs", "d"), ("mean", "average acc.", ".3f"),
                ("std", "std", ".3f"), ("lowest", "lowest run", ".3f"),
                ("worst", "worst-case acc.", ".3f"), ("by_mode", "average per mode", "")]
PAIRED_TABLE = [("model", "model", ""), ("postprocess", "post-processing", ""), ("a", "A", ""),
                ("b", "B", ""), ("images", "images", "d"), ("diff", "acc. A - B", ".3f"),
                ("low", "95% low", ".3f"), ("high", "95% high", ".3f"), ("a_only", "broken by A only", "d"),
                ("b_only", "broken by B only", "d"), ("p", "McNemar p", ".3g")]


def summary_tables(store: str | os.PathLike, options: dict) -> tuple[list[dict], list[dict]]:
    """The robust-accuracy rows (worst / average / std over repeats and adaptive modes, per
    criterion) and the paired comparisons a config's ``summary:`` options ask for
    (:mod:`quantadv.experiments.summary`)."""
    from .summary import compare, headline, robust_summary

    carry = options.get("carry")
    criteria: list = ["final", *(["any"] if options.get("any") else []), *options.get("steps", [])]
    robust: list[dict] = []
    final_cells: list[dict] = []
    for criterion in criteria:
        try:
            cells = robust_summary(store, criterion=criterion, carry=carry)
        except DataError as exc:  # an attack without per-iterate records: the other tables still come
            log.warning("summary criterion %r skipped: %s", criterion, exc)
            continue
        if criterion == "final":
            final_cells = cells
        if options.get("headline"):
            cells = cells + headline(cells, options["headline"], options.get("headline_by") or carry or "eps")
        text = {"final": "output", "any": "any iterate"}.get(criterion, f"iterate <= {criterion}")
        if carry:
            text += f", carried over {carry}"
        robust += [{**{k: c[k] for k in ("model", "attack", "postprocess", "images", "runs", "mean", "std",
                                          "lowest", "worst")}, "params": _params_text(c["params"]), "criterion": text,
                    "by_mode": "; ".join(f"{m}={v:.3f}" for m, v in sorted(c["by_mode"].items()))
                    if len(c["by_mode"]) > 1 else ""}
                   for c in cells]
    pairs = []
    for a, b in options.get("compare", []):
        rows = compare(final_cells, a, b)
        if not rows:
            log.warning("summary.compare [%s, %s]: no cell of %r pairs with one of %r (same model and "
                        "post-processing, and equal parameters or equal grid values); nothing to compare",
                        a, b, a, b)
        for row in rows:
            pairs.append({**row, "a": _params_text_pair(row["a"]), "b": _params_text_pair(row["b"])})
    return robust, pairs


def stored_summary_options(store: str | os.PathLike) -> dict:
    """The ``summary:`` mapping of the config a store was written by (``{}`` without one)."""
    with open_store(store) as st:
        text = st.meta().get("config_yaml", "") or "{}"
    with contextlib.suppress(Exception):  # a config without (or with an unreadable) summary: key
        import yaml

        stored = yaml.safe_load(text)
        if isinstance(stored, dict) and isinstance(stored.get("summary"), dict):
            return stored["summary"]
    return {}


def _params_text_pair(text: str) -> str:
    label, _, params = text.partition(" ")
    shown = _params_text(params) if params else ""
    return f"{label} ({shown})" if shown else label


def write_report(
    store: str | os.PathLike,
    out: str | os.PathLike,
    *,
    max_images: int = 8,
) -> Path:
    """Write the report of a results store into directory ``out``; returns ``out/index.html``.

    Parameters
    ----------
    store : a results store written by ``quantadv run`` (opened read-only, never modified).
    out : output directory (created if needed); existing files of the same names are replaced
        atomically, other files are left alone.
    max_images : rows per image grid.
    """
    store_path = Path(store)
    out_dir = Path(out)
    with open_store(store_path) as st:
        meta = st.meta()
        runs = st.runs()
        sessions = st.sessions()
        rows = st.results()
        originals = st.originals()
        adversarials = st.adversarials()
    if not rows:
        raise DataError(
            f"results store {str(store_path)!r} has no results yet; run the experiment first "
            "(quantadv run CONFIG)"
        )
    # Present everything in config order: runs as registered, post-processing as listed.
    try:
        pp_order = {p: i for i, p in enumerate(json.loads(meta.get("postprocess", "[]")))}
    except ValueError:
        pp_order = {}
    run_order = {r["run_id"]: i for i, r in enumerate(runs)}

    def order(r: dict) -> tuple:
        return (run_order.get(r["run_id"], len(run_order)), pp_order.get(r["postprocess"], 0),
                r["postprocess"], r["idx"])

    rows.sort(key=order)
    adversarials.sort(key=order)
    if out_dir.exists() and not out_dir.is_dir():
        raise DataError(f"--out {str(out_dir)!r} exists and is not a directory")
    out_dir.mkdir(parents=True, exist_ok=True)

    robust, pairs = summary_tables(store_path, stored_summary_options(store_path))
    _atomic_write(out_dir / "robust.csv", _csv_bytes(robust, [c for c, _, _ in ROBUST_TABLE]))
    if pairs:
        _atomic_write(out_dir / "paired.csv", _csv_bytes(pairs, [c for c, _, _ in PAIRED_TABLE]))
    table = run_table(rows)
    best = best_efforts(rows)
    btable = best_table(best)
    plots = [*_oc_plots(best), *_robust_plots(best), *_grid_plots(rows, runs)]
    image_plots = _image_plots(rows, originals, adversarials, runs, max_images)

    for p in [*plots, *image_plots]:
        _atomic_write(out_dir / f"{p.name}.png", p.png)
        _atomic_write(out_dir / f"{p.name}.svg", p.svg)
    _atomic_write(out_dir / "runs.csv", _csv_bytes(table, [c for c, _, _ in RUN_TABLE]))
    _atomic_write(out_dir / "best_effort.csv", _csv_bytes(btable, [c for c, _, _ in BEST_TABLE]))
    from .store import RESULT_COLUMNS

    axes = {}  # per run: the adaptive mode and the repeat index of its config (docs/experiments.md)
    for r in runs:
        with contextlib.suppress(TypeError, ValueError):
            config = json.loads(r["config"])
            axes[r["run_id"]] = {"adaptive": config.get("adaptive", "none"), "repeat": int(config.get("repeat", 0))}
    columns = ["model", "attack", "attack_name", "params", "adaptive", "repeat", *RESULT_COLUMNS]
    _atomic_write(out_dir / "results.csv", _csv_bytes([{**r, **axes.get(r["run_id"], {})} for r in rows], columns))

    name = meta.get("experiment", store_path.stem)
    versions = sorted({r["code_version"] for r in runs} | {s["code_version"] for s in sessions})
    session_rows = []
    for s in sessions:
        try:
            machine = json.loads(s["machine"])
        except ValueError:
            machine = {}
        session_rows.append({
            "started": s["started"], "finished": s["finished"] or "interrupted",
            "rank": f"{s['rank']}/{s['world_size']}", "host": machine.get("host"),
            "platform": machine.get("platform"), "cpus": machine.get("cpu_count"),
            "threads": machine.get("torch_threads"), "torch": machine.get("torch"),
            "device": machine.get("cuda_device") or machine.get("device"),
            "code": s["code_version"],
        })
    session_cols = [(k, k, "") for k in ("started", "finished", "rank", "host", "platform", "cpus",
                                         "threads", "torch", "device", "code")]
    n_images = len({r["idx"] for r in rows})
    description = ""
    with contextlib.suppress(Exception):  # the stored config text is informative only
        import yaml

        described = yaml.safe_load(meta.get("config_yaml", "") or "{}")
        if isinstance(described, dict) and isinstance(described.get("description"), str):
            description = f"<p>{html.escape(described['description'])}</p>"
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>quantadv report: {html.escape(name)}</title><style>{_CSS}</style></head><body>",
        f"<h1>Experiment <code>{html.escape(name)}</code></h1>",
        description,
        f"<p>Store <code>{html.escape(str(store_path))}</code>, created "
        f"{html.escape(meta.get('created', '?'))}; {len(runs)} runs, {n_images} images, "
        f"{len(rows)} outcomes. Code version: {html.escape(', '.join(versions))}.</p>",
        "<p class='note'>d is the distortion of paper 000 Eq. 31, ‖x<sub>q</sub> − "
        "x<sub>o</sub>‖<sub>2</sub>/√n in pixel units (0..255); L2 and L-inf are in [0, 1] "
        "units. Success rates are over the correctly classified images; accuracy under attack "
        "is over all images.</p>",
        "<h2>Operating characteristics and robust accuracy</h2>",
        *(_figure_html(p) for p in plots),
        "<h2>Robust accuracy over repeats and adaptive modes</h2>",
        "<p class='note'>Per cell: average and sample std of the runs' accuracies (repeats, adaptive "
        "modes), and the worst case (an image is robust only if no run broke it). Criterion: the "
        "attack's output, any iterate, or an iterate at most k (an early-stopping k-step attack). "
        "<a href='robust.csv'>CSV</a>.</p>",
        _html_table(robust, ROBUST_TABLE),
        *(["<h2>Paired comparisons</h2>",
           "<p class='note'>On the images both cells share: difference of per-image average accuracy "
           "with a 95% bootstrap interval (5,000 resamples of images), and McNemar's exact test on the "
           "per-image worst case. <a href='paired.csv'>CSV</a>.</p>",
           _html_table(pairs, PAIRED_TABLE)] if pairs else []),
        "<h2>Best effort per attack entry</h2>",
        "<p class='note'>Per image, the lowest distortion that succeeds over the entry's "
        "parameter grid (paper 000 Sec. 5.1.2). <a href='best_effort.csv'>CSV</a>.</p>",
        _html_table(btable, BEST_TABLE),
        "<h2>Runs</h2>",
        "<p class='note'><a href='runs.csv'>CSV</a>; every per-image outcome: "
        "<a href='results.csv'>results.csv</a>.</p>",
        _html_table(table, RUN_TABLE),
    ]
    if image_plots:
        parts += ["<h2>Images</h2>", *(_figure_html(p) for p in image_plots)]
    parts += [
        "<h2>Machines</h2>", _html_table(session_rows, session_cols),
        "<h2>Config</h2>",
        f"<pre>{html.escape(meta.get('config_yaml', '') or '(given as a mapping)')}</pre>",
        "</body></html>",
    ]
    index = out_dir / "index.html"
    _atomic_write(index, "\n".join(parts).encode("utf-8"))
    return index
