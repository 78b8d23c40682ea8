"""Runner axes: skipping misclassified images, independent repeats, defenses seen three ways."""

from __future__ import annotations

import csv
import json

import pytest

from quantadv.errors import ConfigError
from quantadv.experiments import load_config, load_results, run_experiment, write_report
from quantadv.experiments.summary import robust_summary
from test_experiments import BASE_CONFIG, write_setup


def _config(**changes) -> dict:
    cfg = json.loads(json.dumps(BASE_CONFIG))
    cfg.update(changes)
    return cfg


def _key(r: dict) -> tuple:
    return (r["attack"], r["params"], r["postprocess"], r["idx"])


def test_skipping_misclassified_keeps_the_rows_of_the_others(tmp_path):
    attacks = [{"name": "fgsm", "grid": {"eps": [0.05, 0.2]}},
               {"name": "pgd", "params": {"norm": "l2", "eps": 0.5, "step": 0.1, "steps": 3}}]
    skip = load_config(write_setup(tmp_path, _config(experiment="skip", attacks=attacks), "skip.yaml"))
    every = load_config(write_setup(tmp_path, _config(experiment="every", attacks=attacks,
                                                      attack_misclassified=True), "every.yaml"))
    assert {r.run_id for r in skip.runs}.isdisjoint(r.run_id for r in every.runs)
    s1 = run_experiment(skip, quiet=True)
    run_experiment(every, quiet=True)
    a = {_key(r): r for r in load_results(skip.store, as_frame=False)}
    b = {_key(r): r for r in load_results(every.store, as_frame=False)}
    assert a.keys() == b.keys()  # every image is present either way
    misclassified = 0
    for k, r in a.items():
        other = b[k]
        if r["clean_pred"] == r["label"]:
            for col in ("adv_pred", "success", "calls", "grads", "info", "clean_pred"):
                assert r[col] == other[col], (k, col)
            # distortions: batches of other compositions may change the last float32 bits of a conv
            for col in ("d", "l2", "linf"):
                assert r[col] == pytest.approx(other[col], rel=1e-5, abs=1e-6), (k, col)
        else:
            misclassified += 1
            assert json.loads(r["info"]) == {"skipped": "misclassified"}
            assert r["success"] and r["d"] == 0 and r["calls"] == 0 and r["adv_pred"] == r["clean_pred"]
    assert misclassified > 0
    assert s1.images_attacked == sum(r["clean_pred"] == r["label"] for k, r in a.items() if k[2] == "none")


def test_repeats_are_independent_runs_with_worst_and_average_accuracy(tmp_path):
    attacks = [{"name": "pgd", "repeat": 3, "grid": {"eps": [0.3]},
                "params": {"norm": "linf", "step": 0.05, "steps": 2, "random_start": True}}]
    cfg = load_config(write_setup(tmp_path, _config(experiment="rep", attacks=attacks,
                                                    postprocess=["none"])))
    assert len(cfg.runs) == 3 and len({r.run_id for r in cfg.runs}) == 3
    assert [r.repeat for r in cfg.runs] == [0, 1, 2]
    run_experiment(cfg, quiet=True)
    rows = load_results(cfg.store, as_frame=False)
    assert len({r["seed"] for r in rows}) > 3  # other seeds per run (and batch)
    (cell,) = robust_summary(cfg.store)
    assert cell["runs"] == 3 and cell["images"] == 20
    robust = {}
    for r in rows:
        robust.setdefault(r["run_id"], {})[r["idx"]] = (not r["success"]) and r["clean_pred"] == r["label"]
    accs = sorted(sum(v.values()) / 20 for v in robust.values())
    assert sorted(cell["accuracies"]) == pytest.approx(accs)
    assert cell["mean"] == pytest.approx(sum(accs) / 3)
    worst = sum(all(v[i] for v in robust.values()) for i in range(20)) / 20
    assert cell["worst"] == pytest.approx(worst) and cell["worst"] <= min(accs)
    write_report(cfg.store, tmp_path / "report")  # results.csv says which repeat each outcome is
    with open(tmp_path / "report" / "results.csv") as f:
        table = list(csv.DictReader(f))
    assert {(r["run_id"], r["repeat"]) for r in table} == {(r.run_id, str(r.repeat)) for r in cfg.runs}
    assert {r["adaptive"] for r in table} == {"none"}

    bad = _config(experiment="bad", attacks=[{"name": "fgsm", "repeat": 2, "params": {"eps": 0.1}}])
    with pytest.raises(ConfigError, match="repeat"):
        load_config(write_setup(tmp_path, bad, "bad.yaml"))


def test_a_defended_model_is_attacked_three_ways_and_the_headline_is_the_per_image_minimum(tmp_path):
    models = [{"entry": "tiny.py:build", "label": "lin-rd", "defense": "randdisc:k=2,sigma=0.02,tau=0.02",
               "eot": 3}]
    attacks = [{"name": "pgd", "params": {"norm": "linf", "eps": 0.1, "step": 0.03, "steps": 3}}]
    cfg = load_config(write_setup(tmp_path, _config(experiment="def", models=models, attacks=attacks,
                                                    postprocess=["none"])))
    assert [r.adaptive for r in cfg.runs] == ["none", "bpda", "bpda+eot"]
    run_experiment(cfg, quiet=True)
    rows = load_results(cfg.store, as_frame=False)
    mode_of = {r.run_id: r.adaptive for r in cfg.runs}
    by_mode: dict[str, list] = {}
    for r in rows:
        by_mode.setdefault(mode_of[r["run_id"]], []).append(r)
    attacked = [r for r in by_mode["none"] if r["clean_pred"] == r["label"]]
    assert attacked
    calls = {m: sum(r["calls"] for r in rs) for m, rs in by_mode.items()}
    assert calls["bpda+eot"] >= 2 * calls["bpda"]  # 3 draws per gradient
    (cell,) = robust_summary(cfg.store)
    assert cell["modes"] == ["bpda", "bpda+eot", "none"] and cell["runs"] == 3
    assert cell["worst"] <= min(cell["by_mode"].values())
    write_report(cfg.store, tmp_path / "report")  # results.csv names each outcome's mode
    with open(tmp_path / "report" / "results.csv") as f:
        assert {(r["run_id"], r["adaptive"]) for r in csv.DictReader(f)} == set(mode_of.items())

    plain = _config(experiment="plain", models=[{"entry": "tiny.py:build", "adaptive": ["none"]}])
    with pytest.raises(ConfigError, match="defended model"):
        load_config(write_setup(tmp_path, plain, "plain.yaml"))
    bad = _config(experiment="bad", models=[{"entry": "tiny.py:build", "defense": "nosuch:k=1"}])
    with pytest.raises(ConfigError, match="models\\[0\\].defense"):
        load_config(write_setup(tmp_path, bad, "bad.yaml"))


def test_reports_name_classes_where_the_dataset_knows_them():
    from quantadv.experiments.report import _class_names, _class_text

    names = _class_names({"config": json.dumps({"data": {"name": "fashion-mnist"}})})
    assert _class_text(names, 9) == "Ankle boot" and _class_text(names, 7) == "Sneaker"
    assert _class_names({"config": json.dumps({"data": {"entry": {"spec": "x.py:f"}}})}) is None
    assert _class_text(None, 3) == "3"


def test_the_headline_is_the_per_image_minimum_over_attack_entries(tmp_path):
    from quantadv.experiments.report import summary_tables
    from quantadv.experiments.summary import headline

    attacks = [{"name": "fgsm", "grid": {"eps": [0.05, 0.2]}},
               {"name": "pgd", "params": {"norm": "linf", "step": 0.02, "steps": 3}, "grid": {"eps": [0.05, 0.2]}}]
    cfg = load_config(write_setup(tmp_path, _config(experiment="head", attacks=attacks, postprocess=["none"],
                                                    summary={"headline": ["fgsm", "pgd"]}), "head.yaml"))
    run_experiment(cfg, quiet=True)
    label_of = {r.run_id: r.attack.label for r in cfg.runs}
    eps_of = {r.run_id: r.params["eps"] for r in cfg.runs}
    robust: dict = {}
    for r in load_results(cfg.store, as_frame=False):
        ok = (not r["success"]) and r["clean_pred"] == r["label"]
        robust.setdefault(eps_of[r["run_id"]], {}).setdefault(r["idx"], []).append((label_of[r["run_id"]], ok))
    cells = robust_summary(cfg.store)
    rows = headline(cells, ["fgsm", "pgd"])
    assert sorted(json.loads(r["params"])["eps"] for r in rows) == [0.05, 0.2]
    for row in rows:
        per_image = robust[json.loads(row["params"])["eps"]]
        assert row["images"] == len(per_image) and row["runs"] == 2
        expected = sum(all(ok for _, ok in v) for v in per_image.values()) / len(per_image)
        assert row["worst"] == pytest.approx(expected)
        assert row["worst"] <= min(row["accuracies"])  # never above either entry alone
        assert row["attack"] == "min(fgsm, pgd)"
    table, _ = summary_tables(cfg.store, cfg.summary)
    assert sum(r["attack"] == "min(fgsm, pgd)" for r in table) == 2

    bad = _config(experiment="bad", attacks=attacks, summary={"headline": ["fgsm", "pgdd"]})
    with pytest.raises(ConfigError, match="summary.headline: 'pgdd' is not an attack label"):
        load_config(write_setup(tmp_path, bad, "bad.yaml"))


COIN_MODULE = '''
"""A randomised "defense" whose every forward pass is a fair coin: class 0 or class 1."""
import torch
from torch import nn


class Coin(nn.Module):
    randomized = True  # draws random numbers in forward (quantadv.defenses.is_randomized)

    def forward(self, x):
        n = x.shape[0]
        keep = x.flatten(1).sum(1) * 0.0  # differentiable in x, value 0
        heads = torch.rand(n, device=x.device) < 0.5
        logits = torch.zeros(n, 3, device=x.device) + keep[:, None]
        return logits + torch.where(heads, 1.0, -1.0)[:, None] * torch.tensor([1.0, -1.0, -5.0], device=x.device)


def build():
    return Coin()


def data(n=200):
    return torch.full((n, 1, 4, 4), 128, dtype=torch.uint8), torch.zeros(n, dtype=torch.int64)
'''


def test_a_randomised_model_is_judged_on_a_fresh_draw_not_on_the_draw_that_stopped_the_attack(tmp_path):
    # Every early-stopping attack on the coin stops at a draw that says "class 1"; judged on that
    # same draw every attacked image would count as broken. A fresh draw breaks about half.
    (tmp_path / "coin.py").write_text(COIN_MODULE)
    cfg = _config(experiment="coin", models=[{"entry": "coin.py:build", "label": "coin"}],
                  data={"entry": "coin.py:data"}, batch_size=100, postprocess=["none"],
                  attacks=[{"name": "pgd", "params": {"norm": "linf", "eps": 0.1, "step": 0.05, "steps": 20,
                                                      "early_stop": True}}])
    cfg = load_config(write_setup(tmp_path, cfg, "coin.yaml"))
    run_experiment(cfg, quiet=True)
    attacked = [r for r in load_results(cfg.store, as_frame=False) if r["clean_pred"] == r["label"]]
    assert len(attacked) >= 60
    rate = sum(bool(r["success"]) for r in attacked) / len(attacked)
    assert 0.25 < rate < 0.75, rate


def test_a_changed_summary_reaches_the_report_of_an_existing_store(tmp_path):
    # summary: is not part of any run id: running the edited config again computes nothing and
    # the report reads the new options.
    from quantadv.experiments.report import stored_summary_options

    attacks = [{"name": "fgsm", "grid": {"eps": [0.05, 0.2]}}]
    first = load_config(write_setup(tmp_path, _config(experiment="sum", attacks=attacks), "a.yaml"))
    run_experiment(first, quiet=True)
    assert stored_summary_options(first.store) == {}
    edited = load_config(write_setup(tmp_path, _config(experiment="sum", attacks=attacks,
                                                       summary={"carry": "eps"}), "b.yaml"))
    assert edited.experiment_hash == first.experiment_hash
    run_experiment(edited, quiet=True)
    assert stored_summary_options(first.store) == {"carry": "eps"}
