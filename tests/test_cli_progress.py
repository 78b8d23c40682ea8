"""Long commands show progress on stderr, off with --no-progress / --quiet; the demo's headline line (issue 19)."""

from __future__ import annotations

import argparse

import pytest
import torch

from quantadv.cli import main
from quantadv.cli._common import network_progress, show_progress, write_line
from quantadv.cli.run import effect_lines
from quantadv.experiments import load_config, load_results
from test_experiments import BASE_CONFIG, write_setup


def test_network_progress_counts_images_and_removes_its_hooks(capsys) -> None:  # type: ignore[no-untyped-def]
    model = torch.nn.Linear(4, 2)
    with network_progress([model, None], desc="work", enabled=True, total=15) as bar:
        for _ in range(3):
            model(torch.zeros(5, 4))
        write_line(bar, "a line")
        assert bar.n == 15
    captured = capsys.readouterr()
    assert "a line" in captured.out and "work" in captured.err and "15.0/15.0" in captured.err
    assert not model._forward_hooks
    with network_progress([model], desc="work", enabled=False) as bar:
        model(torch.zeros(5, 4))
        write_line(bar, "plain")
    captured = capsys.readouterr()
    assert captured.out == "plain\n" and captured.err == ""
    assert show_progress(argparse.Namespace(quiet=False, no_progress=False))
    assert not show_progress(argparse.Namespace(quiet=True))
    assert not show_progress(argparse.Namespace(no_progress=True))


def test_run_prints_the_effect_line_computed_from_the_store(tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    config = {**BASE_CONFIG, "experiment": "tiny-effect", "save_images": 0,
              "attacks": [{"name": "pgd", "params": {"norm": "l2", "step": 0.1, "steps": 3},
                           "grid": {"eps": [0.2, 0.6]}}],
              "postprocess": ["none", "round_nearest", "lagrangian"]}
    path = write_setup(tmp_path, config)
    assert main(["run", str(path), "--no-progress"]) == 0
    captured = capsys.readouterr()
    assert "it/s" not in captured.err and "img/s" not in captured.err  # no bar
    rows = load_results(load_config(path).store, as_frame=False)
    ok = {(r["run_id"], r["postprocess"], r["idx"]): bool(r["success"]) for r in rows}
    floats = [(r["run_id"], r["idx"]) for r in rows
              if r["postprocess"] == "none" and r["success"] and r["clean_pred"] == r["label"]]
    rounded = sum(ok[(rid, "round_nearest", i)] for rid, i in floats)
    kept = sum(ok[(rid, "lagrangian", i)] for rid, i in floats)
    assert len(floats) > 0
    expected = (f"lin pgd (2 runs): rounding to 8 bits kept {rounded} of {len(floats)} successes "
                f"({rounded / len(floats):.1%}); Lagrangian quantization (Q-lambda*) kept {kept} of {len(floats)} "
                f"({kept / len(floats):.1%})")
    assert effect_lines(load_config(path).store) == [expected]
    table, _, rest = captured.out.partition("success: over the correctly classified images")
    assert "median d" in table and expected in rest
    # without --no-progress the runner's bar goes to stderr
    assert main(["run", str(path), "--store", str(tmp_path / "again.db")]) == 0
    assert "img/s" in capsys.readouterr().err


@pytest.mark.slow
def test_diagnose_and_verify_show_progress_unless_asked_not_to(tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    argv = ["diagnose", "--model", "fmnist-cnn", "--images", "8", "--steps", "2", "--threads", "1"]
    assert main(argv) in (0, 1)
    captured = capsys.readouterr()
    assert "diagnose: masking checks" in captured.err and "img" in captured.err
    assert "PGD eps=0.1 steps=2: accuracy" in captured.out and "checks flagged" in captured.out
    assert main([*argv, "--quiet"]) in (0, 1)
    captured = capsys.readouterr()
    assert captured.err == "" and "PGD eps" not in captured.out and "checks flagged" in captured.out

    from quantadv import data, io

    images, labels = data.load("fashion-mnist", "test")
    io.save_png(images[:10], tmp_path / "png", labels=labels[:10])
    main(["verify", str(tmp_path / "png"), "--model", "fmnist-cnn"])
    assert "verify" in capsys.readouterr().err
    main(["verify", str(tmp_path / "png"), "--model", "fmnist-cnn", "--no-progress"])
    assert capsys.readouterr().err == ""
