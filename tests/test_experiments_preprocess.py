"""Runner pieces that let scripts/ only read stores (issue 18): what a defended model's classifier
sees (``save_preprocessed``), a defended zoo model's classifier alone (``defense: none``) and the
``clean`` entry (configs/entries/clean.py)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from quantadv.defenses import SoftQuantization
from quantadv.experiments import load_config, load_results, run_experiment
from quantadv.experiments.store import open_store
from test_experiments import BASE_CONFIG, write_setup

CLEAN = str(Path(__file__).resolve().parents[1] / "configs" / "entries" / "clean.py") + ":identity"


def _config(tmp_path, **changes):
    cfg = json.loads(json.dumps(BASE_CONFIG))
    cfg.update(changes)
    return load_config(write_setup(tmp_path, cfg, f"{cfg['experiment']}.yaml"))


def test_save_preprocessed_stores_what_the_classifier_sees(tmp_path):
    models = [{"entry": "tiny.py:build", "label": "sq", "defense": "softq:levels=1,alpha=1000", "adaptive": ["none"]},
              {"entry": "tiny.py:build", "label": "plain"}]
    attacks = [{"name": "fgsm", "params": {"eps": 0.1}}, {"entry": CLEAN, "label": "clean"}]
    cfg = _config(tmp_path, experiment="pre", models=models, attacks=attacks, save_images=5,
                  save_preprocessed=True, attack_misclassified=True)
    plain = _config(tmp_path, experiment="pre2", models=models, attacks=attacks, save_images=5)
    assert cfg.experiment_hash != plain.experiment_hash  # the option changes what the store holds
    run_experiment(cfg, quiet=True)
    rows = {(r["model"], r["attack"], r["postprocess"], r["idx"]): r for r in load_results(cfg.store, as_frame=False)}
    with open_store(cfg.store) as st:
        runs = {r["run_id"]: (r["model"], r["attack"]) for r in st.runs()}
        saved = {(*runs[a["run_id"]], a["postprocess"], a["idx"]):
                 torch.from_numpy(np.frombuffer(a["data"], np.float32).reshape(a["shape"]).copy())
                 for a in st.adversarials()}
    layer = SoftQuantization(1, 1000.0)
    for attack in ("fgsm", "clean"):
        for i in range(5):
            seen = saved[("sq", attack, "none@preprocess", i)]
            image = saved[("sq", attack, "none", i)]
            assert torch.allclose(seen, layer(image[None])[0], atol=1e-6)
            assert ("plain", attack, "none@preprocess", i) not in saved  # undefended: nothing to add
            assert ("sq", attack, "none", i) in rows and ("sq", attack, "none@preprocess", i) not in rows
    # the clean entry returns the images: distortion 0, success = misclassified
    for (_, attack, _, _), r in rows.items():
        if attack == "clean":
            assert r["d"] == 0 and r["success"] == (r["adv_pred"] != r["label"])
    assert {(m, a) for (m, a, _, _) in saved} == {(m, a) for m in ("sq", "plain") for a in ("fgsm", "clean")}


@pytest.mark.slow
def test_defense_none_gives_a_defended_zoo_models_classifier(tmp_path):
    from quantadv import models as zoo
    from quantadv.experiments.runner import load_model

    cfg = _config(tmp_path, experiment="strip", models=[
        {"name": "mnist-cnn-nsq", "label": "nsq"}, {"name": "mnist-cnn-nsq", "label": "clf", "defense": "none"}],
        data={"name": "mnist-5k", "subset": 4}, attacks=[{"entry": CLEAN, "label": "clean"}])
    nsq, clf = cfg.models
    assert nsq.adaptive and not clf.adaptive and clf.classifier_only and not nsq.classifier_only
    assert nsq.identity() != clf.identity()
    full = zoo.load("mnist-cnn-nsq")
    got = load_model(clf, torch.device("cpu"))
    x = torch.rand(3, 1, 28, 28)
    assert not hasattr(got, "preprocess") and torch.equal(got(x), full.classifier(x))
    assert torch.equal(load_model(nsq, torch.device("cpu"))(x), full(x))


FILES = '''
from quantadv.io import jpeg as jio
from tiny import data


def jpeg_data(n=40):
    x, y = data(n)
    files = jio.encode(x, 80)
    return jio.decode(files), y, files
'''


def test_originals_data_passes_the_data_files_to_the_quantizer(tmp_path):
    from quantadv.errors import ConfigError
    from quantadv.io import jpeg as jio
    from quantadv.quantize import lagrangian_jpeg

    pytest.importorskip("jpeglib")
    (tmp_path / "files.py").write_text(FILES)
    import sys

    sys.path.insert(0, str(tmp_path))
    try:
        pp = ["none", {"name": "lagrangian_jpeg", "label": "inplace", "params": {"originals": "data"}}]
        attacks = [{"name": "fgsm", "params": {"eps": 0.3}}]
        cfg = _config(tmp_path, experiment="files", data={"entry": "files.py:jpeg_data", "subset": {"first": 12}},
                      attacks=attacks, postprocess=pp, save_images=0)
        assert cfg.postprocess[1].params == {"originals": "data"}
        run_experiment(cfg, quiet=True)
        rows = [r for r in load_results(cfg.store, as_frame=False) if r["postprocess"] == "inplace"]
        import importlib

        tiny, mod = importlib.import_module("tiny"), importlib.import_module("files")
        model = tiny.build().eval()
        x, y, files = mod.jpeg_data()
        x = x[:12].float() / 255
        from quantadv.attacks import fgsm

        ok = (model(x).argmax(1) == y[:12]).nonzero().flatten().tolist()
        x_adv = fgsm(model, x[ok], y[ok], eps=0.3)
        out, info = lagrangian_jpeg(model, x[ok], x_adv, y[ok], originals=[files[i] for i in ok], return_info=True)
        got = {r["idx"]: r for r in rows}
        for j, i in enumerate(ok):
            assert got[i]["adv_pred"] == int(info["pred"][j])
            assert math.isclose(got[i]["d"], float(((out[j] - x[i]) * 255).pow(2).mean().sqrt()), rel_tol=1e-5)
        # the files' own tables were kept: the written bytes decode to the stored image
        assert torch.equal(jio.decode(info["jpeg"]).float() / 255, out)
        bad = _config(tmp_path, experiment="nofiles", attacks=attacks, postprocess=pp)
        with pytest.raises(ConfigError, match="originals: data, but the data has no files"):
            run_experiment(bad, quiet=True)
        with pytest.raises(ConfigError, match="takes no originals"):
            _config(tmp_path, experiment="badpp", attacks=attacks,
                    postprocess=[{"name": "lagrangian", "params": {"originals": "data"}}])
    finally:
        sys.path.remove(str(tmp_path))
        for name in ("tiny", "files"):
            sys.modules.pop(name, None)


def test_each_model_judges_its_own_first_batch(tmp_path):
    """Regression: the clean predictions of batch 0 were cached across a change of model, so the
    second model's first batch was attacked (or not) by the first model's predictions."""
    models = [{"entry": "tiny.py:build", "label": "a"}, {"entry": "tiny.py:build", "label": "b",
                                                         "kwargs": {"classes": 4}}]
    cfg = _config(tmp_path, experiment="two", models=models, attacks=[{"entry": CLEAN, "label": "clean"}],
                  save_images=0)
    run_experiment(cfg, quiet=True)
    import importlib.util

    spec = importlib.util.spec_from_file_location("tiny_two", tmp_path / "tiny.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    x, _ = mod.data()
    x = x[:20].float() / 255
    for label, classes in (("a", 3), ("b", 4)):
        with torch.no_grad():
            want = mod.build(classes)(x).argmax(1).tolist()
        rows = sorted((r for r in load_results(cfg.store, as_frame=False) if r["model"] == label
                       and r["postprocess"] == "none"), key=lambda r: r["idx"])
        assert [r["clean_pred"] for r in rows] == want, label
