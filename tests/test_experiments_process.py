"""Experiments across processes: kill -9 mid-run then resume; torchrun with 2 CPU ranks."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from quantadv.experiments import find_shards, load_config, run_experiment
from test_experiments import BASE_CONFIG, comparable, write_setup


def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(extra)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _stored_rows(store: Path) -> int:
    if not store.exists():
        return 0
    try:
        con = sqlite3.connect(f"{store.resolve().as_uri()}?mode=ro", uri=True, timeout=5)
        try:
            return int(con.execute("SELECT COUNT(*) FROM results").fetchone()[0])
        finally:
            con.close()
    except sqlite3.Error:
        return 0


def _config(tmp_path: Path, n: int) -> dict:
    config = json.loads(json.dumps(BASE_CONFIG))
    config["data"]["subset"] = {"first": n}
    config["batch_size"] = 4
    return config


def test_kill_9_mid_run_then_rerun_loses_and_duplicates_nothing(tmp_path, monkeypatch):
    path = write_setup(tmp_path, _config(tmp_path, 24))
    cfg = load_config(path)
    total = len(cfg.runs) * len(cfg.postprocess) * 24
    # Every forward pass of the subprocess's model sleeps, so the run takes several seconds.
    proc = subprocess.Popen(
        [sys.executable, "-m", "quantadv", "run", str(path), "--quiet"],
        cwd=tmp_path, env=_env(QUANTADV_TEST_SLOW="0.02"),
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 120
        while _stored_rows(cfg.store) < 8 and proc.poll() is None:
            if time.monotonic() > deadline:
                pytest.fail("the run wrote nothing within 120 s")
            time.sleep(0.05)
        assert proc.poll() is None, f"the run ended before it could be killed: {proc.stderr.read()}"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    killed_at = _stored_rows(cfg.store)
    assert 0 < killed_at < total

    monkeypatch.delenv("QUANTADV_TEST_SLOW", raising=False)
    resumed = run_experiment(cfg, quiet=True)  # the same config, the same store
    assert resumed.rows_skipped == killed_at
    assert resumed.rows_written == total - killed_at
    run_experiment(cfg, store=tmp_path / "uninterrupted.db", quiet=True)
    got = comparable(cfg.store)
    assert len(got) == total == len(set(got))
    assert got == comparable(tmp_path / "uninterrupted.db")


def _torchrun() -> list[str]:
    try:
        import torch.distributed as dist
    except ImportError:  # pragma: no cover
        pytest.skip("torch.distributed is not available")
    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("torch.distributed with gloo is not available in this torch build")
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]


def test_torchrun_two_cpu_ranks_merge_to_the_single_process_store(tmp_path):
    launcher = _torchrun()
    path = write_setup(tmp_path, _config(tmp_path, 20))
    cfg = load_config(path)
    proc = subprocess.run(
        [*launcher, "-m", "quantadv", "run", str(path), "--quiet"],
        cwd=tmp_path, env=_env(OMP_NUM_THREADS="1"), capture_output=True, text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "2 processes" in proc.stdout
    assert find_shards(cfg.store) == []  # merged and removed
    assert (tmp_path / "results" / "tiny.rank1.log").exists()

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the ranks ran with OMP_NUM_THREADS=1
    try:
        run_experiment(cfg, store=tmp_path / "single.db", quiet=True)
    finally:
        torch.set_num_threads(threads)
    merged = comparable(cfg.store)
    assert len(merged) == len(cfg.runs) * len(cfg.postprocess) * 20
    assert merged == comparable(tmp_path / "single.db")

    from quantadv.experiments import ResultsStore

    with ResultsStore.open(cfg.store) as store:
        ranks = sorted((s["rank"], s["world_size"]) for s in store.sessions())
        assert ranks == [(0, 2), (1, 2)]
        assert len(store.originals()) == 3
