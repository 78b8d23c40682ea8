"""Runner axes of issue 18: transfer sources, BPDA backward specs, per-iterate tracking, carried
breaks and paired statistics."""

from __future__ import annotations

import json
import math

import pytest
import torch

from quantadv.attacks import pgd
from quantadv.defenses import Defended, SoftQuantization, adaptive, parse_adaptive
from quantadv.errors import ConfigError, InputError
from quantadv.experiments import load_config, load_results, run_experiment
from quantadv.experiments.summary import bootstrap_diff, compare, mcnemar_exact, paired, robust_summary
from test_experiments import BASE_CONFIG, write_setup

OTHER = '''
import torch
from torch import nn


class Scaled(nn.Module):
    def __init__(self, side, classes):
        super().__init__()
        torch.manual_seed(5)
        self.fc = nn.Linear(side * side, classes)

    def forward(self, x):
        return self.fc(x.flatten(1))


def build(side=6, classes=3):
    return Scaled(side, classes)
'''


def _config(**changes) -> dict:
    cfg = json.loads(json.dumps(BASE_CONFIG))
    cfg.update(changes)
    return cfg


def _setup(tmp_path, **changes):
    (tmp_path / "other.py").write_text(OTHER)
    return load_config(write_setup(tmp_path, _config(**changes), f"{changes.get('experiment', 'x')}.yaml"))


def test_a_transfer_attack_differentiates_the_source_and_is_judged_on_the_target(tmp_path):
    attacks = [{"name": "pgd", "label": "transfer", "source": {"entry": "other.py:build", "label": "src"},
                "params": {"norm": "linf", "eps": 0.3, "step": 0.05, "steps": 10}},
               {"name": "pgd", "label": "direct", "params": {"norm": "linf", "eps": 0.3, "step": 0.05, "steps": 10}}]
    cfg = _setup(tmp_path, experiment="tr", attacks=attacks, postprocess=["none"])
    transfer = cfg.runs[0]
    assert "from src" in transfer.description and transfer.resolved["attack"]["source"]["model"]
    run_experiment(cfg, quiet=True)
    rows = [r for r in load_results(cfg.store, as_frame=False) if r["attack"] == "transfer"]
    # redo by hand: PGD on the source, the images judged by the target
    import importlib.util

    def module(name):
        spec = importlib.util.spec_from_file_location(name, tmp_path / f"{name}.py")
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        return mod

    tiny, other = module("tiny"), module("other")
    target, source = tiny.build().eval(), other.build().eval()
    x, y = tiny.data()
    x = x[:20].float() / 255
    y = y[:20]
    ok = target(x).argmax(1) == y
    by_idx = {r["idx"]: r for r in rows}
    first_ok = int(ok.nonzero()[0])  # the source's iterates are not the target's: no first_adv stored
    assert by_idx[first_ok]["info"] is None or "first_adv" not in by_idx[first_ok]["info"]
    for b0 in range(0, 20, cfg.batch_size):
        idx = [i for i in range(b0, min(b0 + cfg.batch_size, 20)) if ok[i]]
        seed = by_idx[idx[0]]["seed"]
        x_adv = pgd(source, x[idx], y[idx], eps=0.3, step=0.05, steps=10, norm="linf",
                    generator=torch.Generator().manual_seed(seed))
        pred = target(x_adv).argmax(1)
        for j, i in enumerate(idx):
            assert by_idx[i]["adv_pred"] == int(pred[j])
            assert by_idx[i]["success"] == int(pred[j] != y[i])


def test_transfer_sources_must_fit_the_target_before_any_work(tmp_path):
    base = {"name": "fgsm", "params": {"eps": 0.1}}
    cfg = _setup(tmp_path, experiment="cls", attacks=[{**base, "source": {"entry": "other.py:build",
                                                                           "kwargs": {"classes": 4}}}])
    with pytest.raises(ConfigError, match=r"attacks\[0\]\.source .*4,\) logits.*3 classes") as info:
        run_experiment(cfg, quiet=True)
    assert "\n" not in str(info.value)
    assert not cfg.store.exists()  # nothing was started
    cfg = _setup(tmp_path, experiment="shape", attacks=[{**base, "source": {"entry": "other.py:build",
                                                                             "kwargs": {"side": 7}}}])
    with pytest.raises(ConfigError, match="cannot take the data's images of shape .1, 6, 6.") as info:
        run_experiment(cfg, quiet=True)
    assert "\n" not in str(info.value) and not cfg.store.exists()
    with pytest.raises(ConfigError, match="'classifier' is the undefended classifier"):
        _setup(tmp_path, experiment="cl", attacks=[{**base, "source": "classifier"}])


def test_a_classifier_source_skips_the_defense_and_adaptive_modes(tmp_path):
    models = [{"entry": "tiny.py:build", "label": "sq", "defense": "softq:levels=1,alpha=1000"}]
    attacks = [{"name": "fgsm", "label": "oblivious", "params": {"eps": 0.2}, "source": "classifier"},
               {"name": "fgsm", "label": "surrogate", "params": {"eps": 0.2},
                "source": {"classifier": True, "defense": "softq:levels=1,alpha=20"}},
               {"name": "fgsm", "params": {"eps": 0.2}}]
    cfg = _setup(tmp_path, experiment="obl", models=models, attacks=attacks, postprocess=["none"])
    assert [r.attack.label for r in cfg.runs] == ["oblivious", "surrogate", "fgsm", "fgsm", "fgsm"]
    run_experiment(cfg, quiet=True)
    rows = load_results(cfg.store, as_frame=False)
    import importlib.util

    spec = importlib.util.spec_from_file_location("tiny_cl", tmp_path / "tiny.py")
    tiny = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tiny)
    clf = tiny.build().eval()
    defended = Defended(SoftQuantization(1, 1000.0), clf).eval()
    x, y = tiny.data()
    x, y = x[:20].float() / 255, y[:20]
    from quantadv.attacks import fgsm

    ok = defended(x).argmax(1) == y
    x_adv = fgsm(clf, x[ok], y[ok], eps=0.2)
    expect = dict(zip(ok.nonzero().flatten().tolist(), (defended(x_adv).argmax(1) != y[ok]).tolist(), strict=True))
    got = {r["idx"]: bool(r["success"]) for r in rows if r["attack"] == "oblivious" and r["idx"] in expect}
    assert got == expect


def test_bpda_with_a_named_backward_uses_its_vector_jacobian_product():
    assert parse_adaptive("bpda") == ("bpda", None)
    assert parse_adaptive("bpda+eot:SoftQ: levels=1, alpha=20") == ("bpda+eot", "softq:levels=1,alpha=20")
    for bad, match in (("bpda:nosuch:k=1", "unknown defense"), ("bpdaa", "unknown adaptive mode"),
                       ("none:softq:levels=1,alpha=2", "takes no backward")):
        with pytest.raises(InputError, match=match):
            parse_adaptive(bad)
    torch.manual_seed(0)
    clf = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3))
    model = Defended(SoftQuantization(1, 1000.0), clf)
    x = torch.rand(5, 1, 4, 4)
    attacked, eot = adaptive(model, "bpda:softq:levels=1,alpha=20")
    assert eot == 1
    xg = x.clone().requires_grad_(True)
    out = attacked(xg)
    assert torch.equal(out, model(x))  # the forward pass is the real defense
    (g,) = torch.autograd.grad(out.sum(), xg)
    # backward = VJP of the smooth layer at x, then through the classifier at the *real* output
    xs = x.clone().requires_grad_(True)
    soft = SoftQuantization(1, 20.0)(xs)
    pre = model.preprocess(x).requires_grad_(True)
    (upstream,) = torch.autograd.grad(clf(pre).sum(), pre)
    (expect,) = torch.autograd.grad(soft, xs, upstream)
    assert torch.allclose(g, expect, atol=1e-6)


def test_unknown_backward_specs_are_config_errors(tmp_path):
    models = [{"entry": "tiny.py:build", "defense": "softq:levels=1,alpha=1000",
               "adaptive": ["none", "bpda:softq:levels=1,alfa=20"]}]
    with pytest.raises(ConfigError, match=r"models\[0\]\.adaptive: .*alfa") as info:
        _setup(tmp_path, experiment="bad", models=models)
    assert "\n" not in str(info.value)
    models[0]["adaptive"] = ["none", "bpda", "bpda:softq:levels=1,alpha=20"]
    cfg = _setup(tmp_path, experiment="good", models=models,
                 attacks=[{"name": "fgsm", "params": {"eps": 0.1}}])
    assert [r.adaptive for r in cfg.runs] == ["none", "bpda", "bpda:softq:levels=1,alpha=20"]
    assert len({r.run_id for r in cfg.runs}) == 3


def test_first_adversarial_iterate_gives_every_early_stopping_attack_length():
    """first_adv <= k exactly when the k-step early-stopping attack with the same seed succeeds."""
    torch.manual_seed(1)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 4)).eval()
    x = torch.rand(30, 1, 4, 4)
    y = model(x).argmax(1)
    kw = dict(eps=0.15, step=0.02, norm="linf", random_start=True, early_stop=True, return_info=True)
    _, info = pgd(model, x, y, steps=12, seed=4, **kw)
    first = info["first_adv"]
    assert ((first >= -1) & (first <= 12)).all() and (first > 0).any() and (first < 0).any()
    for k in (1, 3, 7, 12):
        _, short = pgd(model, x, y, steps=k, seed=4, **kw)
        assert torch.equal(short["success"], (first >= 0) & (first <= k)), k


def test_steps_any_and_carry_criteria_in_the_summary(tmp_path):
    attacks = [{"name": "pgd", "label": "pgd", "repeat": 2, "grid": {"eps": [0.02, 0.1]},
                "params": {"norm": "linf", "step": 0.01, "steps": 8, "random_start": True}}]
    cfg = _setup(tmp_path, experiment="crv", attacks=attacks, postprocess=["none"],
                 summary={"carry": "eps", "steps": [2, 8], "any": True})
    assert cfg.summary == {"carry": "eps", "steps": [2, 8], "any": True}
    run_experiment(cfg, quiet=True)
    rows = load_results(cfg.store, as_frame=False)
    final = robust_summary(cfg.store)
    at8 = robust_summary(cfg.store, criterion=8)
    at2 = robust_summary(cfg.store, criterion=2)
    anyc = robust_summary(cfg.store, criterion="any")
    for f, a8, a2, an in zip(final, at8, at2, anyc, strict=True):
        assert a2["mean"] >= a8["mean"] >= an["mean"]  # more iterates can only break more
        assert an["mean"] <= f["mean"]
    # by hand, criterion 2 for one run
    run = cfg.runs[0]
    mine = [r for r in rows if r["run_id"] == run.run_id]
    robust = []
    for r in mine:
        info = json.loads(r["info"])
        first = info.get("attack", {}).get("first_adv", -1)
        robust.append(r["clean_pred"] == r["label"] and not (0 <= first <= 2))
    cell = next(c for c in at2 if json.loads(c["params"])["eps"] == 0.02)
    assert sum(robust) / len(robust) in [pytest.approx(a) for a in cell["accuracies"]]
    carried = robust_summary(cfg.store, carry="eps")
    by_eps = sorted(carried, key=lambda c: json.loads(c["params"])["eps"])
    for lo, hi in zip(by_eps, by_eps[1:], strict=False):
        for run_lo, run_hi in zip(lo["robust"], hi["robust"], strict=True):
            assert all(h <= low for low, h in zip(run_lo, run_hi, strict=True))  # broken stays broken
    plain = {c["params"]: c for c in final}
    for c in carried:
        assert c["mean"] <= plain[c["params"]]["mean"] + 1e-12
    # the report's table takes its criteria from the config's summary: key
    from quantadv.experiments.report import summary_tables

    robust_rows, pairs = summary_tables(cfg.store, cfg.summary)
    assert {r["criterion"] for r in robust_rows} == {
        "output, carried over eps", "any iterate, carried over eps", "iterate <= 2, carried over eps",
        "iterate <= 8, carried over eps"}
    assert len(robust_rows) == 4 * 2 and pairs == []


def test_mcnemar_and_bootstrap_closed_forms():
    a = [True] * 7 + [False] * 13
    b = [False] * 7 + [False] * 13
    n01, n10, p = mcnemar_exact(a, b)
    assert (n01, n10) == (7, 0) and p == pytest.approx(2 * 0.5 ** 7)
    assert mcnemar_exact(a, a)[2] == 1.0
    low, high = bootstrap_diff([1.0] * 10, [1.0] * 10)
    assert low == high == 0.0
    low, high = bootstrap_diff([1.0] * 50 + [0.0] * 50, [0.0] * 100, n=2000)
    # the mean of 100 Bernoulli(1/2) draws: 0.5 +- 1.96 * 0.05
    assert low == pytest.approx(0.5 - 1.96 * 0.05, abs=0.03) and high == pytest.approx(0.5 + 1.96 * 0.05, abs=0.03)


def test_paired_comparison_between_named_entries(tmp_path):
    attacks = [{"name": "fgsm", "label": "weak", "params": {"eps": 0.02}},
               {"name": "pgd", "label": "strong", "repeat": 2,
                "params": {"norm": "linf", "eps": 0.2, "step": 0.05, "steps": 6, "random_start": True}}]
    cfg = _setup(tmp_path, experiment="cmp", attacks=attacks, postprocess=["none"],
                 summary={"compare": [["strong", "weak"]]})
    run_experiment(cfg, quiet=True)
    cells = robust_summary(cfg.store)
    (row,) = compare(cells, "strong", "weak")
    strong = next(c for c in cells if c["attack"] == "strong")
    weak = next(c for c in cells if c["attack"] == "weak")
    assert row["diff"] == pytest.approx(strong["mean"] - weak["mean"])
    assert row["low"] <= row["diff"] <= row["high"]
    broken_s = [not all(col) for col in zip(*strong["robust"], strict=True)]
    broken_w = [not r for r in weak["robust"][0]]
    assert (row["a_only"], row["b_only"]) == mcnemar_exact(broken_s, broken_w)[:2]
    assert paired(weak, weak)["p"] == 1.0 and paired(weak, weak)["diff"] == 0
    assert math.isfinite(row["p"])
    with pytest.raises(ConfigError, match=r"summary.compare\[0\]: 'strongg' is not an attack label"):
        _setup(tmp_path, experiment="cmp2", attacks=attacks, summary={"compare": [["strongg", "weak"]]})


def test_entries_with_other_fixed_params_pair_by_their_shared_grid(tmp_path, caplog):
    # A transfer-style entry without early stop against PGD with it: their params never agree,
    # but both vary eps, so each eps cell of one pairs with the same eps cell of the other.
    grid = [{"eps": 0.05, "step": 0.01}, {"eps": 0.2, "step": 0.05}]
    attacks = [{"name": "pgd", "label": "late", "params": {"norm": "linf", "steps": 4}, "grid": grid},
               {"name": "pgd", "label": "early", "params": {"norm": "linf", "steps": 4, "early_stop": True},
                "grid": grid},
               {"name": "fgsm", "label": "one", "params": {"eps": 0.1}}]
    cfg = _setup(tmp_path, experiment="grid", attacks=attacks, postprocess=["none"],
                 summary={"compare": [["late", "early"], ["one", "late"]]})
    run_experiment(cfg, quiet=True)
    cells = robust_summary(cfg.store)
    rows = compare(cells, "late", "early")
    assert sorted(json.loads(r["a"].partition(" ")[2])["eps"] for r in rows) == [0.05, 0.2]
    for row in rows:
        a_eps = json.loads(row["a"].partition(" ")[2])["eps"]
        assert json.loads(row["b"].partition(" ")[2])["eps"] == a_eps
        late = next(c for c in cells if c["attack"] == "late" and json.loads(c["params"])["eps"] == a_eps)
        early = next(c for c in cells if c["attack"] == "early" and json.loads(c["params"])["eps"] == a_eps)
        assert row["diff"] == pytest.approx(late["mean"] - early["mean"])
    # One fgsm cell against two pgd cells shares no grid: nothing pairs, and the report says so.
    assert compare(cells, "one", "late") == []
    from quantadv.experiments.report import summary_tables

    with caplog.at_level("WARNING"):
        _, pairs = summary_tables(cfg.store, cfg.summary)
    assert len(pairs) == 2 and "summary.compare [one, late]: no cell" in caplog.text
