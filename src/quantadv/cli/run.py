"""``quantadv run CONFIG.yaml``: run a declarative experiment into its results store.

Every (run, post-processing, image) outcome goes to ``results/<experiment>.db`` (SQLite), one
transaction per batch; the log goes to ``results/<experiment>.log``. Running the same command
again skips what is stored, so a killed run resumes where it stopped. Under
``torchrun --nproc_per_node N -m quantadv run CONFIG.yaml`` the images are sharded across the
N processes and the shards are merged into the store at the end. See docs/experiments.md.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics

from ._common import format_table


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "run",
        help="run an experiment config (YAML) into a resumable results store",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("config", help="experiment config, e.g. configs/demo.yaml")
    p.add_argument("--store", help="results store to write (default: the config's 'store', "
                                   "results/<experiment>.db)")
    p.add_argument("--device", help="override the config's device (cpu, cuda, cuda:N)")
    p.add_argument("--quiet", action="store_true", help="no progress bar and no summary table")
    p.add_argument("--no-progress", action="store_true",
                   help="no progress bar on stderr (--quiet implies it); the output is otherwise the same")
    p.add_argument("--extend", action="store_true",
                   help="write into a store made by an earlier version of this config that had a subset of "
                        "its runs (same post-processing): only the new runs are computed")
    p.add_argument("--dry-run", action="store_true",
                   help="validate the config and list its runs without running anything")
    return p


def summary_table(store_path, limit: int = 40) -> str:
    """One line per (run, post-processing) in config order: images, clean accuracy, success rate
    (over the correctly classified images) and median d (paper 000 Eq. 31) of the successes.

    Only the parameters that vary between the runs of an attack entry are shown.
    """
    from ..experiments.store import open_store

    with open_store(store_path) as store:
        runs = store.runs()
        try:
            pp_order = json.loads(store.meta().get("postprocess", "[]"))
        except ValueError:
            pp_order = []
        groups: dict[tuple[str, str], list[dict]] = {}
        for row in store.results():
            groups.setdefault((row["run_id"], row["postprocess"]), []).append(row)
    params = {r["run_id"]: json.loads(r["params"]) for r in runs}
    swept: dict[str, set[str]] = {}
    for r in runs:
        same = [params[x["run_id"]] for x in runs
                if x["attack"] == r["attack"] and x["model"] == r["model"]]
        swept[r["run_id"]] = {k for k in params[r["run_id"]]
                              if len({json.dumps(p.get(k)) for p in same}) > 1}
    out = []
    for r in runs:
        shown = ", ".join(f"{k}={v}" for k, v in params[r["run_id"]].items()
                          if k in swept[r["run_id"]])
        for pp in [*pp_order, *sorted({p for (rid, p) in groups if rid == r["run_id"]} -
                                      set(pp_order))]:
            rows = groups.get((r["run_id"], pp))
            if not rows:
                continue
            correct = [x for x in rows if x["clean_pred"] == x["label"]]
            ok = [x["d"] for x in correct if x["success"]]
            rate = len(ok) / len(correct) if correct else math.nan
            median = statistics.median(ok) if ok else math.nan
            out.append([r["model"], f"{r['attack']} ({shown})" if shown else r["attack"], pp,
                        str(len(rows)), f"{len(correct) / len(rows):.3f}", f"{rate:.3f}", f"{median:.3f}"])
    extra = ""
    if len(out) > limit:
        extra = f"\n... {len(out) - limit} more lines; see the report"
        out = out[:limit]
    header = ["model", "attack", "postprocess", "images", "clean acc", "success", "median d"]
    return format_table(out, header) + extra


def effect_lines(store_path) -> list[str]:
    """Paper 000's headline, measured on this store: what rounding and Lagrangian quantization keep.

    One line per attack (its runs pooled) that has the unquantized output (``none``) and
    ``round_nearest``: of the ``Y`` successes of the float output on correctly classified
    images, how many the rounded image keeps (``X``), and how many the ``lagrangian``
    (Q-lambda*) image keeps (``W``) when that post-processing was run.
    """
    from ..experiments.store import open_store

    with open_store(store_path) as store:
        runs = store.runs()
        outcome: dict[tuple[str, str, int], bool] = {}
        correct: dict[tuple[str, int], bool] = {}
        for row in store.results():
            outcome[(row["run_id"], row["postprocess"], row["idx"])] = bool(row["success"])
            correct[(row["run_id"], row["idx"])] = row["clean_pred"] == row["label"]
    lines = []
    attacks: dict[tuple[str, str], list[str]] = {}
    for r in runs:
        attacks.setdefault((r["model"], r["attack"]), []).append(r["run_id"])
    for (model, attack), run_ids in attacks.items():
        floats = [(rid, idx) for (rid, pp, idx), ok in outcome.items()
                  if pp == "none" and ok and rid in run_ids and correct[(rid, idx)]]
        if not floats or not any((rid, "round_nearest", idx) in outcome for rid, idx in floats):
            continue
        total = len(floats)
        rounded = sum(outcome.get((rid, "round_nearest", idx), False) for rid, idx in floats)
        line = (f"{model} {attack}{f' ({len(run_ids)} runs)' if len(run_ids) > 1 else ''}: rounding to 8 bits kept "
                f"{rounded} of {total} successes ({rounded / total:.1%})")
        if any((rid, "lagrangian", idx) in outcome for rid, idx in floats):
            kept = sum(outcome.get((rid, "lagrangian", idx), False) for rid, idx in floats)
            line += f"; Lagrangian quantization (Q-lambda*) kept {kept} of {total} ({kept / total:.1%})"
        lines.append(line)
    return lines


def run(args: argparse.Namespace) -> int:
    from ..experiments import load_config, run_experiment

    cfg = load_config(args.config)
    if args.store:
        cfg = cfg.with_store(args.store)
    if args.dry_run:
        print(f"experiment {cfg.experiment} (hash {cfg.experiment_hash}): {len(cfg.runs)} runs x "
              f"{len(cfg.postprocess)} post-processing -> {cfg.store}")
        for r in cfg.runs:
            print(f"  {r.run_id}  {r.description}")
        return 0
    summary = run_experiment(cfg, device=args.device, quiet=args.quiet or args.no_progress, extend=args.extend)
    if summary.rank != 0:
        return 0
    if not args.quiet:
        print(summary_table(cfg.store))
        print("success: over the correctly classified images; d: paper 000 Eq. 31 (pixel units)")
        for line in effect_lines(cfg.store):
            print(line)
    rate = summary.images_per_second
    print(f"{summary.rows_written} outcomes written, {summary.rows_skipped} already stored "
          f"({summary.images_attacked} images attacked"
          f"{f', {rate:.1f} img/s' if summary.images_attacked else ''}; "
          f"{summary.world_size} process{'es' if summary.world_size > 1 else ''})")
    print(f"store: {cfg.store}")
    print(f"log:   {cfg.log_path}")
    print(f"next:  quantadv report {cfg.store} --out report/{cfg.experiment}")
    return 0
