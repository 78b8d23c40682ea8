"""Markdown tables of a store (quantadv.experiments.tables, ``quantadv report --markdown``)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from quantadv.cli import main
from quantadv.experiments import load_config, load_results, run_experiment
from quantadv.experiments.summary import robust_summary
from quantadv.experiments.tables import best_effort_rows, markdown, p_suc_key, robust_grid
from test_experiments import write_setup


def _rows(grid: dict[str, list[tuple[int, bool, float]]], pp: str = "none", misclassified=()) -> list[dict]:
    """Store-like rows: per run id, (idx, success, d) per image; ``misclassified`` images have a wrong
    clean prediction."""
    return [{"model": "m", "attack": "a", "postprocess": pp, "run_id": run, "idx": i, "success": ok, "d": d,
             "l2": d / 28, "linf": d / 255, "label": 1, "clean_pred": 0 if i in misclassified else 1}
            for run, images in grid.items() for i, ok, d in images]


def test_best_effort_is_the_cheapest_success_over_the_grid_and_eq32_is_strict():
    rows = _rows({"eps1": [(0, True, 3.0), (1, False, 1.0), (2, False, 0.5)],
                  "eps2": [(0, True, 2.0), (1, True, 5.0), (2, False, 0.1)]})
    (row,) = best_effort_rows(rows, at=[2.0, 2.5, 10.0])
    assert row["idx"].tolist() == [0, 1, 2] and row["grid_points"] == 2
    assert row["d_min"].tolist() == [2.0, 5.0, math.inf]  # failures never count, whatever their d
    assert row["successes"] == 2 and row["success_rate"] == pytest.approx(2 / 3)
    assert row["median_d"] == pytest.approx(3.5) and row["mean_d"] == pytest.approx(3.5)
    # Eq. 32: strict inequality, failures count against the attack (M = 3)
    assert [row[p_suc_key(t)] for t in (2.0, 2.5, 10.0)] == pytest.approx([0, 1 / 3, 2 / 3])
    (inclusive,) = best_effort_rows(rows, at=[2.0], inclusive=True)
    assert inclusive[p_suc_key(2.0)] == pytest.approx(1 / 3)


def test_misclassified_images_are_left_out_and_the_curve_never_exceeds_the_success_rate():
    rng = np.random.default_rng(0)
    images = [(i, bool(rng.random() < 0.7), float(rng.uniform(0, 10))) for i in range(40)]
    rows = _rows({"r": images}, misclassified={3, 7})
    (row,) = best_effort_rows(rows, at=list(np.linspace(0, 12, 25)))
    assert row["images"] == 38 and 3 not in row["idx"].tolist() and row["clean_accuracy"] == pytest.approx(38 / 40)
    expected = [ok for i, ok, _ in images if i not in (3, 7)]
    assert row["success_rate"] == pytest.approx(sum(expected) / 38)
    curve = [row[p_suc_key(t)] for t in np.linspace(0, 12, 25)]
    assert curve == sorted(curve) and curve[0] == 0 and curve[-1] == pytest.approx(row["success_rate"])


def test_cost_per_image_is_the_whole_grid_over_the_attacked_images():
    rows = _rows({"eps1": [(0, True, 3.0), (1, False, 1.0), (2, False, 0.5)],
                  "eps2": [(0, True, 2.0), (1, True, 5.0), (2, False, 0.1)]}, misclassified={2})
    for r in rows:  # image i costs 10 * (i + 1) calls and i + 1 gradients at each grid point
        r["calls"], r["grads"] = 10 * (r["idx"] + 1), r["idx"] + 1
    (row,) = best_effort_rows(rows)
    # attacked images 0 and 1, two grid points each: calls (20 + 40) / 2, grads (2 + 4) / 2
    assert row["calls_per_image"] == pytest.approx(30.0) and row["grads_per_image"] == pytest.approx(3.0)
    rows[0]["grads"] = None  # a row without the count: no figure rather than a wrong one
    (row,) = best_effort_rows(rows)
    assert row["grads_per_image"] is None and row["calls_per_image"] == pytest.approx(30.0)


def test_markdown_formats_and_aligns_columns():
    text = markdown([{"a": "x", "b": 0.12345, "n": 3}, {"a": "y", "b": None, "n": 4}],
                    [("a", "name", ""), ("b", "rate", ".1%"), (lambda r: 2 * r["n"], "twice", "d")])
    assert text.splitlines() == ["| name | rate | twice |", "| --- | ---: | ---: |",
                                 "| x | 12.3% | 6 |", "| y | - | 8 |"]
    assert markdown([], [("a", "a", "")], align=False).splitlines()[1] == "| --- |"


def test_report_markdown_prints_the_store_tables(tmp_path, capsys):
    attacks = [{"name": "pgd", "repeat": 2, "grid": {"eps": [0.2, 0.6]},
                "params": {"norm": "l2", "step": 0.1, "steps": 3, "random_start": True}}]
    cfg = load_config(write_setup(tmp_path, {"experiment": "md", "seed": 1, "batch_size": 10,
                                             "models": [{"entry": "tiny.py:build", "label": "lin"}],
                                             "data": {"entry": "tiny.py:data", "subset": {"first": 20}},
                                             "attacks": attacks, "postprocess": ["none", "round_nearest"]}))
    run_experiment(cfg, quiet=True)
    assert main(["report", str(cfg.store), "--markdown", "--at", "1", "100"]) == 0
    out = capsys.readouterr().out
    rows = best_effort_rows(load_results(cfg.store, as_frame=False), at=[1.0, 100.0])
    assert len(rows) == 2 and {r["grid_points"] for r in rows} == {4}  # 2 eps x 2 repeats per entry
    for r in rows:
        line = next(x for x in out.splitlines() if x.startswith(f"| lin | pgd | {r['postprocess']} |"))
        assert f"| {r['successes']} | {r['success_rate']:.1%} |" in line
        assert line.endswith(f"| {r[p_suc_key(1.0)]:.1%} | {r[p_suc_key(100.0)]:.1%} |")
    cells = robust_summary(cfg.store)
    assert all(c["lowest"] == min(c["accuracies"]) and c["worst"] <= c["lowest"] <= c["mean"] for c in cells)
    assert "lowest run" in out and "Robust accuracy (%) by eps" in out
    assert out.count("| lin | pgd |") == 2 + len(cells) + 2  # best effort, robust table, grid (per pp)
    assert not (tmp_path / "report").exists()  # --markdown alone writes no files


def test_robust_grid_puts_modes_and_the_headline_per_eps():
    def cell(model, eps, by_mode, worst, images=50):
        return {"model": model, "attack": "pgd", "postprocess": "none", "params": json.dumps({"eps": eps}),
                "by_mode": by_mode, "worst": worst, "images": images}

    cells = [cell("nat", 0.1, {"none": 0.5}, 0.5), cell("nat", 0.2, {"none": 0.125}, 0.125),
             cell("swrd", 0.1, {"none": 0.9, "bpda": 0.7, "bpda+eot": 0.66, "bpda:softq": 0.8}, 0.6, 40),
             {**cell("nat", 0.0, {"none": 1.0}, 1.0), "params": json.dumps({"steps": 3})}]  # no eps: left out
    rows = [{"model": m, "label": 1, "clean_pred": int(i < k)} for m, k in (("nat", 3), ("swrd", 1)) for i in range(4)]
    lines = robust_grid(cells, rows).splitlines()
    assert lines[0] == "| model | attack | postprocess | clean | eps 0.1 | eps 0.2 |"
    assert lines[2] == "| nat | pgd | none | 75 | 50 [50] | 12 [50] |"
    # modes in a fixed order (others after), the per-image headline in bold, a missing eps said so
    assert lines[3] == "| swrd | pgd | none | 25 | 90 / 70 / 66 / 80 / **60** [40] | not run |"
    assert robust_grid(cells[-1:], rows) is None


def test_accuracy_columns_is_a_model_by_entry_table_of_the_summary_means():
    from quantadv.errors import InputError
    from quantadv.experiments.tables import accuracy_columns

    def cell(model, attack, params, mean, pp="none", images=50):
        return {"model": model, "attack": attack, "params": json.dumps(params), "postprocess": pp,
                "mean": mean, "images": images}

    cells = [cell("b", "pgd", {"eps": 0.1}, 0.25), cell("b", "pgd", {"eps": 0.05}, 0.5),
             cell("a", "pgd", {"eps": 0.1}, 0.125), cell("a", "fgsm", {"eps": 0.1}, 0.75, images=20),
             cell("a", "fgsm", {"eps": 0.1}, 0.0, pp="round_nearest")]  # post-processed cells are left out
    lines = accuracy_columns(cells, ["pgd:eps=0.1", "pgd:eps=0.05", "fgsm", "pgd"], models=["b"]).splitlines()
    assert lines[0] == "| model | pgd:eps=0.1 | pgd:eps=0.05 | fgsm | pgd |"
    assert lines[2] == "| b | 25.0 [50] | 50.0 [50] | - | ? |"  # config order first; ambiguous selector: ?
    assert lines[3] == "| a | 12.5 [50] | - | 75.0 [20] | 12.5 [50] |"
    with pytest.raises(InputError, match="'apgd' matches no attack entry.*fgsm, pgd"):
        accuracy_columns(cells, ["apgd"])


def test_report_columns_needs_markdown_and_prints_the_table_first(tmp_path, capsys):
    attacks = [{"name": "pgd", "params": {"norm": "l2", "eps": 0.5, "step": 0.1, "steps": 3}}]
    cfg = load_config(write_setup(tmp_path, {"experiment": "cols", "seed": 1, "batch_size": 10,
                                             "models": [{"entry": "tiny.py:build", "label": "lin"}],
                                             "data": {"entry": "tiny.py:data", "subset": {"first": 10}},
                                             "attacks": attacks}))
    run_experiment(cfg, quiet=True)
    assert main(["report", str(cfg.store), "--columns", "pgd"]) == 2
    assert "add --markdown" in capsys.readouterr().err
    assert main(["report", str(cfg.store), "--markdown", "--columns", "pgd"]) == 0
    out = capsys.readouterr().out
    (cell,) = robust_summary(cfg.store)
    assert out.startswith("## Robust accuracy (%) per model and attack entry")
    assert f"| lin | {100 * cell['mean']:.1f} [10] |" in out
