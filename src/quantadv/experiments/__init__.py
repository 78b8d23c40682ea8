"""Declarative experiments: a YAML config, a resumable SQLite results store, HTML reports.

``quantadv run exp.yaml`` validates the config (:mod:`.config`), expands its grids into runs
with stable ids, and stores every (run, post-processing, image) outcome in
``results/<experiment>.db`` (:mod:`.store`), batch by batch, so a killed run resumes where it
stopped. Under ``torchrun`` the batches are sharded across processes (:mod:`.distributed`).
``quantadv report`` turns a store into a static HTML page with plots and tables
(:mod:`.report`). See docs/experiments.md.
"""

from .config import (
    AttackSpec,
    DataSpec,
    ExperimentConfig,
    ModelSpec,
    PostprocessSpec,
    RunSpec,
    load_config,
    parse_config,
)
from .distributed import find_shards, merge_shards, shard_path
from .report import write_report
from .runner import RunSummary, run_experiment
from .store import RESULT_COLUMNS, ResultsStore, load_results, open_store

__all__ = [
    "RESULT_COLUMNS",
    "AttackSpec",
    "DataSpec",
    "ExperimentConfig",
    "ModelSpec",
    "PostprocessSpec",
    "ResultsStore",
    "RunSpec",
    "RunSummary",
    "find_shards",
    "load_config",
    "load_results",
    "merge_shards",
    "open_store",
    "parse_config",
    "run_experiment",
    "shard_path",
    "write_report",
]
