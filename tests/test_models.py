"""Tests of quantadv.models: architectures, training + checkpoint/resume, the zoo, the CLI."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from torch import nn

import quantadv.data
import quantadv.models as qm
from quantadv.cli import main
from quantadv.errors import DataError, InputError, ModelError

SHIPPED = ("fmnist-cnn", "fmnist-cnn-at-l2", "fmnist-cnn-at-linf", "mnist-cnn")


# --------------------------------------------------------------------------------------
# a tiny, learnable synthetic data set: class k lights up quadrant k of an 8x8 image


def synthetic(n: int = 192, size: int = 8, channels: int = 1, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 4
    x = torch.randint(0, 90, (n, channels, size, size), generator=g)
    h = size // 2
    for k in range(4):
        r, c = divmod(k, 2)
        x[labels == k, :, r * h : (r + 1) * h, c * h : (c + 1) * h] += 150
    return x.clamp(0, 255).to(torch.uint8), labels


def tiny_model(seed: int, channels: int = 1, size: int = 8) -> nn.Module:
    """Small model with a conv, batch norm (buffers must survive a resume) and a linear layer."""
    torch.manual_seed(seed)
    return nn.Sequential(
        qm.Normalize(0.4, 0.3),
        nn.Conv2d(channels, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(4 * size * size, 4),
    )


def same_weights(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


# --------------------------------------------------------------------------------------
# architectures


@pytest.mark.parametrize(
    ("arch", "kwargs", "shape"),
    [
        (qm.SmallCNN, {}, (1, 28, 28)),
        (qm.SmallCNN, {"in_channels": 3}, (3, 32, 32)),
        (qm.ResNet18, {}, (3, 32, 32)),
        (qm.ResNet18, {"in_channels": 1, "num_classes": 7}, (1, 28, 28)),
    ],
)
def test_output_shapes(arch, kwargs, shape):
    model = arch(**kwargs).eval()
    out = model(torch.rand(3, *shape))
    assert out.shape == (3, kwargs.get("num_classes", 10))
    assert torch.isfinite(out).all()


def test_small_cnn_is_the_madry_network():
    model = qm.SmallCNN()
    # 32*(25+1) + 64*(32*25+1) + 1024*(3136+1) + 10*(1024+1): Madry et al.'s MNIST model
    assert sum(p.numel() for p in model.parameters()) == 3_274_634
    assert isinstance(model.normalize, qm.Normalize)
    assert next(iter(model.children())) is model.normalize


def test_normalize_math_and_buffers():
    norm = qm.Normalize([0.5, 0.25, 0.1], [0.5, 2.0, 4.0])
    x = torch.rand(2, 3, 4, 4)
    expected = torch.stack([(x[:, 0] - 0.5) / 0.5, (x[:, 1] - 0.25) / 2.0, (x[:, 2] - 0.1) / 4.0], 1)
    assert torch.allclose(norm(x), expected)
    assert set(norm.state_dict()) == {"mean", "std"}
    assert norm.double().mean.dtype == torch.float64  # buffers follow .to()/.double()
    scalar = qm.Normalize(0.5, 0.25)
    assert torch.allclose(scalar(x), (x - 0.5) / 0.25)


def test_normalize_rejects_bad_arguments():
    with pytest.raises(InputError, match="std must be > 0"):
        qm.Normalize(0.0, [1.0, 0.0])
    with pytest.raises(InputError, match="one value per"):
        qm.Normalize([0.1, 0.2], [1.0, 1.0, 1.0])
    with pytest.raises(InputError, match="normalises 3 channels but the input has 1"):
        qm.Normalize([0.1, 0.2, 0.3], 1.0)(torch.rand(1, 1, 4, 4))
    with pytest.raises(InputError, match="num_classes"):
        qm.SmallCNN(num_classes=1)
    with pytest.raises(ModelError, match="valid architectures are small-cnn, resnet18"):
        qm.build("vgg")


# --------------------------------------------------------------------------------------
# training


def run_train(method="natural", eps=0.0, seed=0, epochs=3, model_seed=0, config_kw=None, **kw):
    x, y = synthetic()
    config = qm.TrainConfig(method=method, eps=eps, epochs=epochs, batch_size=32, lr=0.01, seed=seed,
                            **(config_kw or {}))
    return qm.train(tiny_model(model_seed), x, y, config, progress=False, log=lambda s: None, **kw)


def test_training_decreases_the_loss_and_learns():
    result = run_train(epochs=4)
    losses = [h.loss for h in result.history]
    assert losses[-1] < 0.5 * losses[0]
    x, y = synthetic(seed=1)
    assert qm.accuracy(result.model, x, y) > 0.9
    assert not result.model.training


def test_training_is_deterministic_given_the_seed():
    a = run_train("noisy", eps=0.1, seed=3).model
    b = run_train("noisy", eps=0.1, seed=3).model
    c = run_train("noisy", eps=0.1, seed=4).model
    assert same_weights(a, b)
    assert not same_weights(a, c)


class Killed(Exception):
    pass


def _kill_after(epoch: int):
    def hook(stats: qm.EpochStats) -> None:
        if stats.epoch == epoch:
            raise Killed

    return hook


@pytest.mark.parametrize(
    ("method", "eps", "config_kw"),
    [
        ("natural", 0.0, {}),
        ("noisy", 0.2, {}),
        ("pgd-linf", 0.1, {}),
        ("trades", 0.1, {"attack_steps": 2, "beta": 3.0}),
        ("fast-at", 0.1, {"val": 32, "eps_warmup": 2}),
    ],
)
def test_resume_after_a_kill_gives_the_uninterrupted_weights(tmp_path, method, eps, config_kw):
    full = run_train(method, eps, checkpoint_dir=tmp_path / "full", config_kw=config_kw)
    with pytest.raises(Killed):
        run_train(method, eps, checkpoint_dir=tmp_path / "ckpt", on_epoch_end=_kill_after(1),
                  config_kw=config_kw)
    state = json.loads((tmp_path / "ckpt" / "state.json").read_text())
    assert state["epoch"] == 1
    assert [p.name for p in (tmp_path / "ckpt").glob("*.safetensors")] == ["epoch-0001.safetensors"]
    # a fresh process would build the model from scratch: use a different initialisation
    resumed = run_train(method, eps, model_seed=99, checkpoint_dir=tmp_path / "ckpt", resume=True,
                        config_kw=config_kw)
    assert resumed.resumed_from_epoch == 1
    assert [h.epoch for h in resumed.history] == [1, 2, 3]
    assert resumed.best_epoch == full.best_epoch
    assert [h.val_robust for h in resumed.history] == [h.val_robust for h in full.history]
    assert same_weights(full.model, resumed.model)


_KILL9_CHILD = """
import os, sys, time, torch
sys.path.insert(0, {tests!r})
from test_models import run_train

def hook(stats):
    if stats.epoch == 1 and {kill}:
        open({flag!r}, "w").close()
        time.sleep(60)  # the parent sends SIGKILL now, between epochs 1 and 2

result = run_train("trades", 0.1, checkpoint_dir={ckpt!r}, resume=True, on_epoch_end=hook,
                   config_kw={{"attack_steps": 2, "val": 32}})
torch.save({{k: v for k, v in result.model.state_dict().items()}}, {out!r})
"""


def test_kill_9_then_resume_gives_the_uninterrupted_weights(tmp_path):
    """A real SIGKILL of a training process, then a resume in a new process (issue 16)."""
    import os
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    tests = str(Path(__file__).parent)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    def child(kill: bool, ckpt: Path, out: Path) -> subprocess.Popen:
        code = _KILL9_CHILD.format(tests=tests, kill=kill, flag=str(tmp_path / "flag"), ckpt=str(ckpt),
                                   out=str(out))
        return subprocess.Popen([sys.executable, "-c", code], env=env)

    proc = child(True, tmp_path / "ckpt", tmp_path / "never.pt")
    deadline = time.monotonic() + 120
    while not (tmp_path / "flag").exists():
        assert proc.poll() is None and time.monotonic() < deadline, "the child did not reach epoch 1"
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL
    assert child(False, tmp_path / "ckpt", tmp_path / "resumed.pt").wait() == 0
    assert child(False, tmp_path / "full", tmp_path / "full.pt").wait() == 0
    resumed = torch.load(tmp_path / "resumed.pt", weights_only=True)
    full = torch.load(tmp_path / "full.pt", weights_only=True)
    assert resumed.keys() == full.keys() and all(torch.equal(resumed[k], full[k]) for k in full)


def test_trades_adversary_stays_in_the_ball_and_raises_the_kl():
    from quantadv.models.training import _trades_adversary

    model = tiny_model(0).eval()
    x = synthetic()[0][:16].float() / 255
    config = qm.TrainConfig(method="trades", eps=0.05, attack_steps=5)
    x_adv = _trades_adversary(model, x, 0.05, config, torch.Generator().manual_seed(0))
    assert (x_adv - x).abs().max() <= 0.05 + 1e-6 and x_adv.min() >= 0 and x_adv.max() <= 1
    with torch.no_grad():
        p = torch.softmax(model(x), 1)
        kl = torch.nn.functional.kl_div(torch.log_softmax(model(x_adv), 1), p, reduction="sum")
        noise = (x + 0.05 * (2 * torch.rand(x.shape, generator=torch.Generator().manual_seed(1)) - 1))
        kl_rand = torch.nn.functional.kl_div(torch.log_softmax(model(noise.clamp(0, 1)), 1), p,
                                             reduction="sum")
    assert kl > kl_rand > 0


def test_validation_keeps_the_best_robust_epoch():
    x, y = synthetic()
    config = qm.TrainConfig(method="fast-at", eps=0.1, epochs=4, batch_size=32, lr=0.05, val=48,
                            seed=1)
    result = qm.train(tiny_model(0), x, y, config, progress=False, log=lambda s: None)
    robust = [h.val_robust for h in result.history]
    assert all(r is not None and 0 <= r <= 1 for r in robust)
    best = max(robust)
    assert result.best_epoch == max(i + 1 for i, r in enumerate(robust) if r == best)
    # the returned weights are that epoch's: their clean accuracy on the held-out images matches
    from quantadv.models.training import _split_validation

    _, val_idx = _split_validation(x.shape[0], config)
    assert val_idx.numel() == 48
    chosen = result.history[result.best_epoch - 1]
    assert qm.accuracy(result.model, x[val_idx], y[val_idx]) == pytest.approx(chosen.val_clean)


def test_eps_warmup_ramps_the_radius():
    config = qm.TrainConfig(method="pgd-linf", eps=0.3, epochs=5, eps_warmup=3)
    assert [config.eps_at(e) for e in (0, 1.5, 3, 4.5)] == pytest.approx([0.0, 0.15, 0.3, 0.3])
    result = run_train("pgd-linf", 0.2, config_kw={"eps_warmup": 2})
    assert [h.eps for h in result.history] == pytest.approx([0.1, 0.2, 0.2])


def test_resume_refuses_a_checkpoint_of_another_run(tmp_path):
    with pytest.raises(Killed):
        run_train(checkpoint_dir=tmp_path, on_epoch_end=_kill_after(1))
    x, y = synthetic()
    other = qm.TrainConfig(epochs=3, batch_size=32, lr=0.02)
    with pytest.raises(InputError, match="lr: checkpoint 0.01 vs now 0.02"):
        qm.train(tiny_model(0), x, y, other, checkpoint_dir=tmp_path, resume=True, progress=False)
    # a corrupted checkpoint is detected, not loaded
    ckpt = tmp_path / "epoch-0001.safetensors"
    data = bytearray(ckpt.read_bytes())
    data[-1] ^= 0xFF
    ckpt.write_bytes(bytes(data))
    with pytest.raises(ModelError, match="corrupt"):
        run_train(checkpoint_dir=tmp_path, resume=True)


def test_train_config_checks_its_arguments():
    with pytest.raises(InputError, match="needs a radius"):
        qm.TrainConfig(method="pgd-l2")
    with pytest.raises(InputError, match="natural training uses no eps"):
        qm.TrainConfig(eps=0.1)
    with pytest.raises(InputError, match="method must be one of"):
        qm.TrainConfig(method="madry", eps=0.1)
    with pytest.raises(InputError, match="beta must be > 0"):
        qm.TrainConfig(method="trades", eps=0.1, beta=0.0)
    with pytest.raises(InputError, match="eps_warmup"):
        qm.TrainConfig(method="trades", eps=0.1, epochs=2, eps_warmup=3)
    with pytest.raises(InputError, match="holds out every training image"):
        run_train(config_kw={"val": 192})
    assert qm.TrainConfig(method="pgd-linf", eps=0.1, attack_steps=5).step_size == pytest.approx(0.05)
    assert qm.TrainConfig(method="fast-at", eps=0.1).step_size == pytest.approx(0.125)
    cosine = qm.TrainConfig(epochs=4, lr=0.1, schedule="cosine")
    assert cosine.lr_at(0) == pytest.approx(0.1) and cosine.lr_at(2) == pytest.approx(0.05)
    x, y = synthetic()
    with pytest.raises(InputError, match="uint8 NCHW"):
        qm.train(tiny_model(0), x.float() / 255, y, qm.TrainConfig(), progress=False)


def test_adversarial_training_leaves_the_model_in_a_defined_mode():
    result = run_train("pgd-l2", eps=0.5, epochs=1)
    assert not result.model.training
    assert all(p.requires_grad for p in result.model.parameters())


def test_channel_stats():
    x = torch.zeros(4, 2, 3, 3, dtype=torch.uint8)
    x[:, 1] = 255
    x[:2, 0] = 51  # channel 0: half the images 0.2, half 0 -> mean 0.1, std 0.1
    mean, std = qm.channel_stats(x)
    assert mean == [0.1, 1.0]
    assert std[0] == pytest.approx(0.1) and std[1] == pytest.approx(1e-4)


# --------------------------------------------------------------------------------------
# the command line: train -> weights + manifest -> load_file


@pytest.fixture
def fake_data(monkeypatch):
    """Replace quantadv.data.load with the synthetic set (28x28, so SmallCNN is exercised)."""

    def load(name, split="test"):
        if name != "synthetic":
            raise DataError(f"unknown data set {name}")
        return synthetic(n=64 if split == "train" else 48, size=28, seed=0 if split == "train" else 1)

    monkeypatch.setattr(quantadv.data, "load", load)


def test_cli_train_writes_a_verifiable_model(tmp_path, fake_data, capsys):
    argv = ["train", "--arch", "small-cnn", "--data", "synthetic", "--epochs", "1", "--batch-size",
            "32", "--out", "toy", "--out-dir", str(tmp_path), "--no-progress"]
    assert main(argv) == 0
    m = json.loads((tmp_path / "toy.json").read_text())
    assert m["arch"] == "small-cnn" and m["data"] == "synthetic" and m["method"] == "natural"
    assert m["arch_kwargs"]["in_channels"] == 1 and m["arch_kwargs"]["num_classes"] == 4
    assert m["command"].startswith("quantadv train --arch small-cnn --data synthetic")
    assert "--out toy" in m["command"] and "--out-dir" not in m["command"]
    for key in ("sha256", "torch_version", "train_seconds", "date", "clean_accuracy", "epochs"):
        assert key in m
    assert not (tmp_path / "toy.checkpoint").exists()  # removed once the model is written
    model = qm.load_file(tmp_path / "toy.safetensors")
    assert not model.training
    x, y = synthetic(n=48, size=28, seed=1)
    assert qm.accuracy(model, x, y) == pytest.approx(m["clean_accuracy"])

    # fine-tuning from that file on part of the data, with PGD-L2 adversarial training
    argv2 = ["train", "--arch", "small-cnn", "--data", "synthetic", "--method", "pgd-l2", "--eps",
             "0.5", "--attack-steps", "2", "--epochs", "1", "--train-size", "40", "--init",
             str(tmp_path / "toy.safetensors"), "--out", "toy-at", "--out-dir", str(tmp_path),
             "--no-progress"]
    assert main(argv2) == 0
    m2 = json.loads((tmp_path / "toy-at.json").read_text())
    assert m2["train_size"] == 40 and m2["init"]["sha256"] == m["sha256"]
    assert m2["arch_kwargs"] == m["arch_kwargs"] and m2["attack_step"] == pytest.approx(0.625)
    assert "--train-size 40 --init" in m2["command"] and "--eps 0.5" in m2["command"]

    # TRADES with a held-out validation set: the manifest records the recipe and the choice
    argv3 = ["train", "--arch", "small-cnn", "--data", "synthetic", "--method", "trades", "--eps",
             "0.1", "--beta", "3", "--attack-steps", "2", "--val", "16", "--val-steps", "2",
             "--epochs", "2", "--out", "toy-trades", "--out-dir", str(tmp_path), "--no-progress"]
    assert main(argv3) == 0
    m3 = json.loads((tmp_path / "toy-trades.json").read_text())
    assert "--beta 3.0" in m3["command"] and "--val 16 --val-steps 2" in m3["command"]
    assert m3["epochs_run"] == 2 and m3["chosen_epoch"] in (1, 2) and "16 held-out" in m3["selection"]
    assert all("val_robust" in h for h in m3["history"])
    lines = (tmp_path / "toy-trades.train.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2]
    assert main(["train", "--arch", "small-cnn", "--data", "synthetic", "--beta", "3", "--out", "x",
                 "--out-dir", str(tmp_path)]) == 2
    assert "--beta is TRADES' weight" in capsys.readouterr().err

    # flipping one byte of the weights is caught by the sha256 check
    data = bytearray((tmp_path / "toy.safetensors").read_bytes())
    data[len(data) // 2] ^= 0x01
    (tmp_path / "toy.safetensors").write_bytes(bytes(data))
    with pytest.raises(ModelError, match="does not match its manifest"):
        qm.load_file(tmp_path / "toy.safetensors")


def test_zoo_ship_stores_float16_only_when_every_prediction_is_kept(tmp_path, fake_data, capsys):
    from quantadv.models.ship import prediction_digest, predictions

    argv = ["train", "--arch", "small-cnn", "--data", "synthetic", "--epochs", "1", "--batch-size",
            "32", "--out", "toy", "--out-dir", str(tmp_path / "trained"), "--no-progress"]
    assert main(argv) == 0
    zoo = tmp_path / "zoo"
    assert main(["zoo", "ship", str(tmp_path / "trained" / "toy.safetensors"), "--zoo-dir", str(zoo)]) == 0
    meta = json.loads((zoo / "toy.json").read_text())
    shipped, original = qm.load_file(zoo / "toy.safetensors"), qm.load_file(tmp_path / "trained" / "toy.safetensors")
    x, _ = synthetic(n=48, size=28, seed=1)
    assert meta["weights_dtype"] in ("float16", "float32")
    if meta["weights_dtype"] == "float16":
        assert meta["size_bytes"] < 0.6 * meta["float16_check"]["float32_size_bytes"]
        assert torch.equal(predictions(shipped, x), predictions(original, x))
        assert prediction_digest(predictions(shipped, x)) == meta["float16_check"]["float32_predictions_sha256"]
        weights = shipped.state_dict()
        assert weights["normalize.mean"].dtype == torch.float32  # buffers were not rounded
    else:
        assert meta["float16_check"]["predictions_differing"] > 0
    assert (zoo / "toy.train.jsonl").is_file()


def test_cli_train_refuses_to_clobber_a_checkpoint_without_resume(tmp_path, fake_data, capsys):
    (tmp_path / "toy.checkpoint").mkdir()
    (tmp_path / "toy.checkpoint" / "state.json").write_text("{}")
    argv = ["train", "--arch", "small-cnn", "--data", "synthetic", "--out", "toy",
            "--out-dir", str(tmp_path)]
    assert main(argv) == 2
    assert "--resume" in capsys.readouterr().err
    assert main([*argv[:-4], "--out", "../bad", "--out-dir", str(tmp_path)]) == 2


# --------------------------------------------------------------------------------------
# the shipped zoo


def test_the_zoo_ships_the_promised_models():
    assert set(SHIPPED) <= set(qm.list())
    assert qm.verify() == {name: None for name in qm.list()}


def test_unknown_names_raise_model_error_listing_the_valid_ones():
    for bad in ("no-such-model", "../zoo/fmnist-cnn", ""):
        with pytest.raises(ModelError, match="shipped models are: .*fmnist-cnn"):
            qm.load(bad)
    with pytest.raises(ModelError, match="unknown model"):
        qm.manifest("no-such-model")
    with pytest.raises(ValueError):  # ModelError is a ValueError
        qm.load("no-such-model")


@pytest.mark.slow
@pytest.mark.parametrize("name", qm.list())
def test_shipped_model_matches_its_manifest(name):
    m = qm.manifest(name)
    model = qm.load(name)
    assert isinstance(model, nn.Module)
    assert not any(mod.training for mod in model.modules())
    try:
        x, y = quantadv.data.load(m["data"], "test")
    except DataError as exc:
        pytest.skip(f"{m['data']} not available: {exc}")
    acc = qm.accuracy(model, x[:500], y[:500])
    assert abs(acc - m["clean_accuracy"]) < 0.04, (acc, m["clean_accuracy"])


def test_corrupted_shipped_weights_are_detected(tmp_path):
    name = qm.list()[0]
    for suffix in (".safetensors", ".json"):
        shutil.copy(qm.ZOO_DIR / f"{name}{suffix}", tmp_path / f"{name}{suffix}")
    weights = tmp_path / f"{name}.safetensors"
    assert not qm.load_file(weights).training
    data = bytearray(weights.read_bytes())
    data[-7] ^= 0x10
    weights.write_bytes(bytes(data))
    with pytest.raises(ModelError, match="sha256"):
        qm.load_file(weights)
    (tmp_path / f"{name}.json").unlink()
    with pytest.raises(ModelError, match="no manifest"):
        qm.load_file(weights)


def test_zoo_cli(capsys):
    assert main(["zoo", "list"]) == 0
    out = capsys.readouterr().out
    assert "clean acc" in out and all(name in out for name in qm.list())
    assert main(["zoo", "show", qm.list()[0]]) == 0
    assert json.loads(capsys.readouterr().out)["name"] == qm.list()[0]
    assert main(["zoo", "verify"]) == 0
    assert capsys.readouterr().out.count("ok ") == len(qm.list())
    assert main(["zoo", "show", "nope"]) == 2
