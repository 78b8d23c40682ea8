"""Run an experiment config: every (run, post-processing, image) outcome into the results store.

The work is cut into fixed batches of ``batch_size`` consecutive images of the data subset.
A batch is the unit of everything: of randomness (its generator is seeded from the config seed,
the run id and the batch number, so results do not depend on which process or session computes
it), of storage (its rows are written in one transaction), of resumption (a batch whose rows
are all stored is skipped) and of scale-out (batch ``b`` goes to rank ``b % world_size``).

For each batch the attack runs once; each ``postprocess`` entry is applied to its output, and
each outcome is judged on the final image with one more forward pass: ``adv_pred``, success
(untargeted: ``adv_pred != label``; targeted: ``adv_pred == target``), the distortion ``d`` of
paper 000 Eq. 31 and the L2 / L-inf norms (:func:`quantadv.eval.distortion`).
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import math
import os
import platform
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..attacks.search import budget_search
from ..digital import to_float
from ..errors import ConfigError, DataError, ModelError, QuantadvError
from ..eval.targets import pick_targets
from .config import (
    DataSpec,
    ExperimentConfig,
    ModelSpec,
    PostprocessSpec,
    RunSpec,
    accepts_keyword,
    attack_registry,
    canonical_json,
    load_entry,
    postprocess_registry,
)
from .distributed import DistContext, find_shards, init_distributed, merge_shards, shard_path
from .store import ResultsStore, StoreIdentity, now

log = logging.getLogger("quantadv.experiments")


# ---------------------------------------------------------------------------------------------
# Environment


@functools.lru_cache(maxsize=1)
def code_version() -> str:
    """``quantadv.__version__``, plus the git commit (and ``.dirty``) of a source checkout."""
    from .. import __version__

    pkg_dir = Path(__file__).resolve().parents[1]
    try:
        commit = subprocess.run(
            ["git", "-C", str(pkg_dir), "rev-parse", "--short=12", "HEAD"],
            capture_output=True, text=True, timeout=10, check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(pkg_dir), "status", "--porcelain", "--untracked-files=no", "--",
             str(pkg_dir)],
            capture_output=True, text=True, timeout=10, check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return __version__
    if not commit:
        return __version__
    return f"{__version__}+g{commit}{'.dirty' if dirty else ''}"


def machine_info(device: torch.device) -> dict[str, Any]:
    """The machine a session ran on, as stored in the ``sessions`` table and shown in reports."""
    info = {
        "host": platform.node(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "device": str(device),
    }
    if device.type == "cuda":
        info["cuda_device"] = torch.cuda.get_device_name(device)
    return info


def resolve_device(name: str) -> torch.device:
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"device {name!r} is not a torch device; use cpu or cuda") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device is cuda but no CUDA device is available; use device: cpu")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("device is mps but MPS is not available; use device: cpu")
    return dev


# ---------------------------------------------------------------------------------------------
# Models and data


def load_model(spec: ModelSpec, device: torch.device) -> nn.Module:
    """Build the network a :class:`ModelSpec` names, in eval mode, on ``device``."""
    where = f"model {spec.label!r}"
    if spec.name is not None:
        from .. import models as zoo

        model = zoo.load(spec.name, device=device)
        return model.classifier if spec.classifier_only else model  # type: ignore[return-value]
    elif spec.arch is None and spec.entry is None:
        from ..models import load_file

        return load_file(spec.file, device=device)  # type: ignore[arg-type]
    else:
        if spec.arch is not None:
            from ..models.architectures import build

            model = build(spec.arch, **spec.kwargs)
        else:
            fn = load_entry(spec.entry, f"{where} entry")  # type: ignore[arg-type]
            try:
                model = fn(**spec.kwargs)
            except QuantadvError:
                raise
            except Exception as exc:
                raise ModelError(f"{where}: {spec.entry.spec}(**{spec.kwargs}) failed: {exc!r}") from None  # type: ignore[union-attr]
        if not isinstance(model, nn.Module):
            raise ModelError(f"{where}: the entry point returned {type(model).__name__}, not an nn.Module")
        if spec.file is not None:
            from safetensors import SafetensorError
            from safetensors.torch import load_file

            try:
                state = load_file(str(spec.file))
            except (SafetensorError, OSError) as exc:
                raise ModelError(f"{where}: cannot read weights {str(spec.file)!r}: {exc}") from None
            try:
                model.load_state_dict(state)
            except RuntimeError as exc:
                raise ModelError(
                    f"{where}: weights {str(spec.file)!r} do not fit the network: {exc}"
                ) from None
    return model.eval().to(device)


def load_data(spec: DataSpec) -> tuple[torch.Tensor, torch.Tensor, list[int], list | None]:
    """Return (uint8 NCHW images, int64 labels, subset indices, files) for a :class:`DataSpec`.

    ``files`` is ``None`` unless a data entry returns ``(images, labels, files)``: one file per
    image (bytes or a path, e.g. the JPEG each image was decoded from), which a post-processing
    step with ``params: {originals: data}`` receives for its batch's images."""
    if spec.entry is not None:
        fn = load_entry(spec.entry, "data.entry")
        try:
            out = fn(**spec.kwargs)
        except QuantadvError:
            raise
        except Exception as exc:
            raise DataError(f"data.entry {spec.entry.spec}(**{spec.kwargs}) failed: {exc!r}") from None
        source = f"data.entry {spec.entry.spec}"
    else:
        from .. import data as datasets

        out = datasets.load(spec.name, split=spec.split)
        source = f"dataset {spec.name!r}"
    if not (isinstance(out, tuple | list) and len(out) in (2, 3)):
        raise DataError(f"{source} must return (images, labels) or (images, labels, files), got {type(out).__name__}")
    images, labels, files = (*out, None) if len(out) == 2 else out
    if files is not None and (not isinstance(files, list | tuple) or len(files) != len(out[0])):
        raise DataError(f"{source}: files must be a list with one file (bytes or path) per image")
    if not isinstance(images, torch.Tensor) or images.dtype != torch.uint8 or images.dim() != 4:
        raise DataError(f"{source}: images must be a uint8 NCHW tensor")
    if not isinstance(labels, torch.Tensor) or labels.dim() != 1 or labels.shape[0] != images.shape[0]:
        raise DataError(f"{source}: labels must be a 1-D tensor with one entry per image")
    if labels.dtype.is_floating_point:
        raise DataError(f"{source}: labels must be integers, got {labels.dtype}")
    return images, labels.long(), spec.select(images.shape[0]), None if files is None else list(files)


# ---------------------------------------------------------------------------------------------
# Attacks and post-processing


def batch_seed(seed: int, run_id: str, batch: int) -> int:
    """The seed of a batch's generator: a hash of (config seed, run id, batch number)."""
    digest = hashlib.sha256(f"{seed}:{run_id}:{batch}".encode()).digest()
    return int.from_bytes(digest[:8], "big") & (2**63 - 1)


def make_targets(
    mode: str | int, labels: torch.Tensor, num_classes: int, seed: int, logits: torch.Tensor | None = None
) -> torch.Tensor | None:
    """Target classes for a targeted config (:func:`quantadv.eval.targets.pick_targets`).

    ``random`` (uniform over the other classes, from the batch's seed), ``next`` (label + 1),
    ``least-likely`` (lowest clean logit, needs ``logits``) or a class index ``k`` (images of
    class ``k`` are then not attacked); ``none`` gives None.
    """
    if mode == "none":
        return None
    gen = torch.Generator().manual_seed(seed ^ 0x5DEECE66D)
    try:
        return pick_targets(mode, labels, num_classes, generator=gen, logits=logits)
    except QuantadvError as exc:
        raise ConfigError(f"targets: {exc}") from None


def _per_image(value: Any, n: int, device: torch.device) -> torch.Tensor | None:
    if value is None:
        return None
    t = torch.as_tensor(value, device="cpu").to(torch.int64).flatten()
    if t.numel() == 1:
        t = t.expand(n)
    return t if t.numel() == n else None


#: Keys of an ``info`` dict that have their own columns (or are recomputed) in the store.
_COUNTED = ("success", "calls", "grads")


def info_extras(info: dict, n: int) -> dict[str, list]:
    """The per-image numbers of an ``info`` dict beyond success and counts, as JSON-ready lists.

    Keeps tensors with exactly ``n`` values (one per image); floats that are not finite
    become ``None`` (JSON has no infinity), booleans stay booleans.
    """
    out: dict[str, list] = {}
    for key, value in info.items():
        if key in _COUNTED or not isinstance(value, torch.Tensor) or value.numel() != n:
            continue
        v = value.detach().cpu().flatten()
        if v.dtype == torch.bool:
            out[key] = [bool(b) for b in v.tolist()]
        elif v.dtype.is_floating_point:
            out[key] = [float(f) if math.isfinite(f) else None for f in v.double().tolist()]
        else:
            out[key] = [int(i) for i in v.tolist()]
    return out


def _row_info(attack: dict[str, list], post: dict[str, list], j: int, skipped: str | None = None) -> str | None:
    """The ``info`` JSON of image ``j`` of a batch: its attack and post-processing extras, or
    ``{"skipped": REASON}`` for an image not attacked (``"misclassified"``, or ``"label is the
    target"`` for a fixed target class)."""
    if skipped:
        return json.dumps({"skipped": skipped})
    parts = {name: {k: v[j] for k, v in extras.items()}
             for name, extras in (("attack", attack), ("postprocess", post)) if extras}
    return json.dumps(parts, sort_keys=True) if parts else None


def call_attack(
    run: RunSpec,
    fn: Any,
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    targets: torch.Tensor | None,
    seed: int,
    eot: int = 1,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None, dict[str, list]]:
    """Run ``run``'s attack on one batch: (adversarial images, calls, grads, extras) per image.

    ``extras`` are the other per-image numbers of the attack's info (:func:`info_extras`),
    ``pred`` among them when the attack reports it. ``eot > 1`` (the ``bpda+eot`` mode of a
    randomised defense) is passed as the attack's ``eot=`` argument.
    """
    kwargs = dict(run.params)
    if eot > 1:
        if not accepts_keyword(fn, "eot"):
            raise ConfigError(
                f"attacks[{run.attack.index}] ({run.attack.attack_name}) has no eot= argument, which the "
                f"bpda+eot mode of model {run.model.label!r} needs; leave bpda+eot out of its adaptive list"
            )
        kwargs["eot"] = eot
    if accepts_keyword(fn, "generator"):
        kwargs["generator"] = torch.Generator().manual_seed(seed)
    want_info = accepts_keyword(fn, "return_info")
    if want_info:
        kwargs["return_info"] = True
    if targets is not None:
        if not accepts_keyword(fn, "targets"):
            raise ConfigError(
                f"attacks[{run.attack.index}] ({run.attack.attack_name}) has no targets= "
                "argument; use targets: none"
            )
        kwargs["targets"] = targets
    try:
        if run.attack.search is None:
            out = fn(model, x, y, **kwargs)
        else:  # per-image bisection of one budget (paper 000 Sec. 5.4)
            param, low, high, rounds = run.attack.search
            out = budget_search(fn, model, x, y, param=param, low=low, high=high, rounds=rounds, **kwargs)
    except QuantadvError as exc:
        raise ConfigError(f"attacks[{run.attack.index}] ({run.description}): {exc}") from exc
    info: dict = {}
    if want_info:
        if not (isinstance(out, tuple) and len(out) == 2):
            raise ConfigError(
                f"attacks[{run.attack.index}] ({run.attack.attack_name}) ignored return_info=True"
            )
        out, info = out
    if not isinstance(out, torch.Tensor) or out.shape != x.shape:
        raise ConfigError(
            f"attacks[{run.attack.index}] ({run.attack.attack_name}) returned "
            f"{type(out).__name__} {tuple(getattr(out, 'shape', ()))}, expected a tensor of "
            f"shape {tuple(x.shape)}"
        )
    n = x.shape[0]
    return (out.detach(), _per_image(info.get("calls"), n, x.device),
            _per_image(info.get("grads"), n, x.device), info_extras(info, n))


#: Gradient computations per image of quantizers whose info dict does not report them:
#: Q-lambda* computes the gradient of L_Q once, at x_a (paper 000 Sec. 4.5).
_POSTPROCESS_GRADS = {"lagrangian": 1}


def apply_postprocess(
    pp: PostprocessSpec,
    fn: Any,
    model: nn.Module,
    x: torch.Tensor,
    x_adv: torch.Tensor,
    y: torch.Tensor,
    targets: torch.Tensor | None,
    files: list | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None, dict[str, list]]:
    """Apply one post-processing step: (images, extra calls, extra grads, extras) per image.

    ``params: {originals: data}`` passes ``files`` (the data's file of each image) as ``originals``.

    ``extras`` are the other per-image numbers of the quantizer's info (:func:`info_extras`),
    e.g. ``lambda_star``, ``j_size``, ``both_pixels``, ``lambda_pixels`` for Q-lambda*.
    """
    n = x.shape[0]
    zero = torch.zeros(n, dtype=torch.int64)
    if pp.name == "none":
        return x_adv, zero, zero, {}
    if pp.name == "round_nearest":
        return fn(x_adv), zero, zero, {}
    if pp.name == "toward_original":
        return fn(x, x_adv), zero, zero, {}
    kwargs = dict(pp.params)
    if kwargs.get("originals") == "data":
        kwargs["originals"] = files
    if targets is not None:
        kwargs["targets"] = targets
    if pp.name == "gradient_sign":  # one gradient of L_Q at x_a (paper 000 Eq. 25)
        one = torch.ones(n, dtype=torch.int64)
        return fn(model, x, x_adv, y, **kwargs), one, one, {}
    if accepts_keyword(fn, "return_info"):
        out, info = fn(model, x, x_adv, y, return_info=True, **kwargs)
        grads = info.get("grads", _POSTPROCESS_GRADS.get(pp.name))
        return (out, _per_image(info.get("calls"), n, x.device), _per_image(grads, n, x.device),
                info_extras(info, n))
    return fn(model, x, x_adv, y, **kwargs), None, None, {}


# ---------------------------------------------------------------------------------------------
# The run


@dataclass
class RunSummary:
    """What one call of :func:`run_experiment` did (in this process)."""

    store: Path
    rank: int = 0
    world_size: int = 1
    rows_written: int = 0
    rows_skipped: int = 0
    images_attacked: int = 0
    attack_seconds: float = 0.0
    attack_cpu_seconds: float = 0.0  # process CPU time inside the attack calls
    seconds: float = 0.0
    merged: dict = field(default_factory=dict)

    @property
    def images_per_second(self) -> float:
        return self.images_attacked / self.seconds if self.seconds > 0 else 0.0


def _run_rows(cfg: ExperimentConfig) -> list[dict[str, Any]]:
    created = now()
    version = code_version()
    return [
        {
            "run_id": r.run_id,
            "model": r.model.label,
            "attack": r.attack.label,
            "attack_name": r.attack.attack_name,
            "params": canonical_json(r.params),
            "config": canonical_json(r.resolved),
            "code_version": version,
            "created": created,
        }
        for r in cfg.runs
    ]


def store_identity(cfg: ExperimentConfig) -> StoreIdentity:
    return StoreIdentity(
        experiment=cfg.experiment,
        experiment_hash=cfg.experiment_hash,
        config_yaml=cfg.source,
        postprocess=tuple(p.label for p in cfg.postprocess),
    )


def _setup_log(path: Path) -> logging.Handler:
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    return handler


def _check_shard_identities(store: Path, identity: StoreIdentity) -> None:
    for s in find_shards(store):
        with ResultsStore.open(s, readonly=True) as sh:
            try:
                sh.check_identity(identity)
            except DataError:
                raise DataError(
                    f"leftover shard {str(s)!r} belongs to another config than {str(store)!r}; "
                    "nothing was changed. Merge it with the config that wrote it, or move it away"
                ) from None


def run_experiment(
    config: ExperimentConfig,
    *,
    store: str | os.PathLike | None = None,
    device: str | None = None,
    quiet: bool = False,
    extend: bool = False,
) -> RunSummary:
    """Run every missing (run, post-processing, image) outcome of ``config`` into its store.

    Parameters
    ----------
    config : a validated :class:`~quantadv.experiments.config.ExperimentConfig`.
    store : override of the store path (default: the config's ``store``,
        ``results/<experiment>.db``).
    device : override of the config's device.
    quiet : no progress bar.
    extend : let ``config`` write into a store made by a config it extends (same runs and
        more, same post-processing; :meth:`ResultsStore.extend_to`); only the new outcomes
        are computed. Without it a store of another config is refused.

    Under ``torchrun`` the batches are sharded across ranks (see
    :mod:`quantadv.experiments.distributed`); otherwise the store is written directly.
    The log goes to the ``.log`` file next to the store (``.rank<k>.log`` for ranks > 0).
    """
    cfg = config if store is None else config.with_store(store)
    dev = resolve_device(device or cfg.device)
    ctx = init_distributed(dev.type)
    if ctx.active and dev.type == "cuda":
        dev = torch.device("cuda", ctx.local_rank)
        torch.cuda.set_device(dev)
    cfg.store.parent.mkdir(parents=True, exist_ok=True)
    log_path = cfg.log_path if ctx.is_main else cfg.store.with_suffix(f".rank{ctx.rank}.log")
    handler = _setup_log(log_path)
    summary = RunSummary(store=cfg.store, rank=ctx.rank, world_size=ctx.world_size)
    start = time.perf_counter()
    try:
        _run(cfg, dev, ctx, quiet, summary, extend)
    except BaseException as exc:
        log.error("run stopped: %r", exc)
        raise
    finally:
        summary.seconds = time.perf_counter() - start
        log.removeHandler(handler)
        handler.close()
        ctx.close()
    return summary


def _run(cfg: ExperimentConfig, dev: torch.device, ctx: DistContext, quiet: bool,
         summary: RunSummary, extend: bool = False) -> None:
    identity = store_identity(cfg)
    log.info(
        "experiment %s (hash %s), %d runs x %d post-processing, store %s, rank %d/%d, device %s, "
        "code %s", cfg.experiment, cfg.experiment_hash, len(cfg.runs), len(cfg.postprocess),
        cfg.store, ctx.rank, ctx.world_size, dev, code_version(),
    )
    images, labels, indices, files = load_data(cfg.data)
    if files is None:
        wanting = [p.label for p in cfg.postprocess if p.params.get("originals") == "data"]
        if wanting:
            raise ConfigError(f"postprocess {wanting[0]!r} has originals: data, but the data has no files; "
                              "use a data entry that returns (images, labels, files)")
    check_sources(cfg, dev, images, indices)
    run_rows = _run_rows(cfg)

    # Phase 1 (rank 0): validate / create the store, fold in shards a killed run left behind.
    writer: ResultsStore | None = None
    reader: ResultsStore | None = None
    if ctx.is_main:
        _check_shard_identities(cfg.store, identity)
        if cfg.store.exists() and extend:
            with ResultsStore.open(cfg.store, readonly=False) as existing:
                if existing.extend_to(identity, [r.run_id for r in cfg.runs]):
                    log.info("store %s extended to experiment hash %s", cfg.store, cfg.experiment_hash)
        if cfg.store.exists():
            with ResultsStore.open(cfg.store, readonly=True) as existing:
                existing.check_identity(identity)
        leftovers = find_shards(cfg.store)
        if leftovers:
            log.info("merging %d leftover shard(s) of an interrupted run", len(leftovers))
            merge_shards(cfg.store, leftovers)
        main = ResultsStore.create_or_open(cfg.store, identity)
        for r in main.runs():
            ours = next((x for x in run_rows if x["run_id"] == r["run_id"]), None)
            if ours and r["code_version"] != ours["code_version"]:
                log.warning("run %s was started with code %s, resumed with %s", r["run_id"],
                            r["code_version"], ours["code_version"])
        main.register_runs(run_rows)
        if ctx.active:
            main.close()
        else:
            writer = main
    ctx.barrier()
    if ctx.active:
        reader = ResultsStore.open(cfg.store, readonly=True)
        reader.check_identity(identity)
        writer = ResultsStore.create_or_open(shard_path(cfg.store, ctx.rank, ctx.world_size),
                                             identity)
        writer.register_runs(run_rows)
    assert writer is not None
    session = uuid.uuid4().hex
    writer.start_session(session, ctx.rank, ctx.world_size, machine_info(dev), code_version())
    try:
        _process(cfg, dev, ctx, quiet, images, labels, indices, writer, reader, summary, files)
        writer.finish_session(session)
    finally:
        writer.close()
        if reader is not None:
            reader.close()

    # Phase 3 (rank 0): merge every rank's shard once all ranks are done.
    ctx.barrier()
    if ctx.active and ctx.is_main:
        shards = [shard_path(cfg.store, r, ctx.world_size) for r in range(ctx.world_size)]
        summary.merged = merge_shards(cfg.store, [s for s in shards if s.exists()])
        log.info("merged %d shards: %s", len(shards), summary.merged)
    ctx.barrier()
    log.info("done: %d rows written, %d already stored, %d images attacked in %.2f s of attack "
             "time", summary.rows_written, summary.rows_skipped, summary.images_attacked,
             summary.attack_seconds)


# ---------------------------------------------------------------------------------------------
# The batch pipeline: plan the (run, batch) work, then for each piece: load the batch and the
# model's clean predictions, attack the images that need it, and turn each post-processed
# output into rows. Each step is one function, so a new axis touches one step.


@dataclass
class Work:
    """One (run, batch) pair with outcomes still missing from the store."""

    run: RunSpec
    batch: int
    indices: list[int]  # dataset indices of the batch's images
    missing: list[PostprocessSpec]  # the post-processing steps with an outcome missing
    done: set  # (postprocess label, idx) pairs already stored


def plan_work(cfg: ExperimentConfig, batches: list[int], indices: list[int], writer: ResultsStore,
              reader: ResultsStore | None, summary: RunSummary) -> list[Work]:
    """The (run, batch) pairs of ``batches`` that have anything missing, runs in config order."""
    bs = cfg.batch_size
    plan: list[Work] = []
    for run in cfg.runs:
        done = writer.done_keys(run.run_id)
        if reader is not None:
            done |= reader.done_keys(run.run_id)
        steps = cfg.postprocess_for(run.attack)
        for b in batches:
            batch_idx = indices[b * bs:(b + 1) * bs]
            missing = [p for p in steps if any((p.label, i) not in done for i in batch_idx)]
            summary.rows_skipped += sum((p.label, i) in done for p in steps for i in batch_idx)
            if missing:
                plan.append(Work(run, b, batch_idx, missing, done))
    return plan


@dataclass
class Batch:
    """One batch's inputs on the device, with the model's clean predictions."""

    originals: torch.Tensor  # the uint8 images (CPU)
    x: torch.Tensor  # float images in [0, 1]
    y: torch.Tensor  # labels (device)
    labels: torch.Tensor  # labels (CPU)
    clean_pred: torch.Tensor  # CPU
    num_classes: int
    targets: torch.Tensor | None
    seed: int
    files: list | None = None  # the data's file of each image, when the data entry returns them

    @property
    def attacked(self) -> torch.Tensor:
        """Which images to attack by default: those the model classifies correctly (and, for a
        fixed target class, whose label is not that class)."""
        keep = self.clean_pred == self.labels
        if self.targets is not None:
            keep &= self.targets.cpu() != self.labels
        return keep


class Models:
    """The model of the current run (loaded once per model entry, its defense in front), the
    model its attack sees (:func:`quantadv.defenses.adaptive`) and its clean predictions per batch."""

    def __init__(self, dev: torch.device):
        self.dev = dev
        self.spec: ModelSpec | None = None
        self.model: nn.Module | None = None
        self.clean: dict[int, tuple[torch.Tensor, int, torch.Tensor]] = {}
        self.sources: dict[tuple, nn.Module] = {}

    def get(self, spec: ModelSpec) -> nn.Module:
        if self.spec is not spec:
            model = load_model(spec, self.dev)
            if spec.defense is not None:
                from ..defenses import Defended, parse_defense

                model = Defended(parse_defense(spec.defense), model).eval().to(self.dev)
            self.model, self.spec, self.clean = model, spec, {}
            self.sources.clear()
            log.info("model %s loaded%s", spec.label, f" behind {spec.defense}" if spec.defense else "")
        assert self.model is not None
        return self.model

    def source(self, run: RunSpec) -> nn.Module:
        """The model a transfer attack differentiates (:class:`SourceSpec`), built once per run's
        model and source."""
        src = run.attack.source
        assert src is not None
        key = (run.model.label, canonical_json(src.identity()))
        if key not in self.sources:
            self.sources.clear()  # keep one source at a time, as for the target
            if src.model is not None:
                model = load_model(src.model, self.dev)
                if src.model.defense is not None:
                    from ..defenses import Defended, parse_defense

                    model = Defended(parse_defense(src.model.defense), model).eval().to(self.dev)
            else:
                from ..defenses import Defended, parse_defense

                target = self.get(run.model)
                if not isinstance(target, Defended):
                    raise ConfigError(
                        f"attacks[{run.attack.index}].source: 'classifier' needs a defended model, "
                        f"but {run.model.label!r} is {type(target).__name__}"
                    )
                model = target.classifier
                if src.defense is not None:
                    model = Defended(parse_defense(src.defense), model).eval().to(self.dev)
            self.sources[key] = model
            log.info("source %s of model %s loaded", src.text, run.model.label)
        return self.sources[key]

    def for_attack(self, run: RunSpec) -> tuple[nn.Module, int]:
        """(the model the attack differentiates, the EOT draws it must average; 1: none)."""
        if run.attack.source is not None:
            return self.source(run), 1
        model = self.get(run.model)
        if not run.model.adaptive:
            return model, 1
        from ..defenses import adaptive

        return adaptive(model, run.adaptive, run.model.eot)

    def clean_logits(self, run: RunSpec, b: int, x: torch.Tensor) -> tuple[torch.Tensor, int, torch.Tensor]:
        """(clean predictions on the CPU, number of classes, logits) of batch ``b``, computed once
        per model (``get`` first: a new model empties the cache, so no run ever reads the clean
        predictions of the model before it)."""
        model = self.get(run.model)
        if b not in self.clean:
            with torch.no_grad():
                logits = model(x)
            if logits.dim() != 2 or logits.shape[0] != x.shape[0]:
                raise ModelError(
                    f"model {run.model.label!r} returned shape {tuple(logits.shape)}; "
                    "expected logits of shape (batch, classes)"
                )
            self.clean[b] = (logits.argmax(1).cpu(), int(logits.shape[1]), logits.detach())
        return self.clean[b]


def check_sources(cfg: ExperimentConfig, dev: torch.device, images: torch.Tensor, indices: list[int]) -> None:
    """Before any work: every transfer attack's source takes the data's images and has as many
    classes as its target (one forward pass of one image each), else a one-line ConfigError."""
    pairs = {}
    for run in cfg.runs:
        if run.attack.source is not None and indices:
            pairs.setdefault((run.model.label, canonical_json(run.attack.source.identity())), run)
    if not pairs:
        return
    models = Models(dev)
    x = to_float(images[indices[:1]]).to(dev)
    for run in pairs.values():
        where = f"attacks[{run.attack.index}].source ({run.attack.source.text}) for model {run.model.label!r}"  # type: ignore[union-attr]
        with torch.no_grad():
            n_target = models.get(run.model)(x).shape[-1]
            try:
                out = models.source(run)(x)
            except (RuntimeError, ValueError) as exc:
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                raise ConfigError(
                    f"{where}: the source model cannot take the data's images of shape {tuple(x.shape[1:])}: "
                    f"{first}; source and target must share the input shape"
                ) from None
        if out.dim() != 2 or out.shape[1] != n_target:
            raise ConfigError(
                f"{where}: the source returns {tuple(out.shape[1:])} logits per image but the target has "
                f"{n_target} classes; source and target must classify the same classes"
            )


def load_batch(cfg: ExperimentConfig, work: Work, models: Models, images: torch.Tensor,
               labels: torch.Tensor, files: list | None = None) -> Batch:
    """The batch's images and labels on the device, its clean predictions and its targets."""
    run = work.run
    sel = torch.tensor(work.indices, dtype=torch.long)
    x = to_float(images[sel]).to(models.dev)
    y = labels[sel].to(models.dev)
    clean_pred, num_classes, clean_logits = models.clean_logits(run, work.batch, x)
    if num_classes < 2:
        raise ModelError(
            f"model {run.model.label!r} returns {num_classes} logit(s); a classifier "
            "under attack needs at least 2 classes"
        )
    if int(labels[sel].max()) >= num_classes:
        raise DataError(
            f"label {int(labels[sel].max())} is out of range for model "
            f"{run.model.label!r}, which has {num_classes} classes"
        )
    seed = batch_seed(cfg.seed, run.run_id, work.batch)
    targets = make_targets(cfg.targets, y, num_classes, seed, clean_logits)
    return Batch(images[sel], x, y, labels[sel], clean_pred, num_classes, targets, seed,
                 None if files is None else [files[i] for i in work.indices])


@dataclass
class AttackOutput:
    """An attack's outputs for every image of a batch (unattacked images: the original)."""

    x_adv: torch.Tensor
    calls: torch.Tensor | None
    grads: torch.Tensor | None
    extras: dict[str, list]
    pred: torch.Tensor | None  # the attack's own prediction at x_adv (CPU), when it reports one
    attacked: torch.Tensor  # bool (CPU): which images were attacked
    seconds: float
    cpu_seconds: float = 0.0


def attack_batch(cfg: ExperimentConfig, work: Work, models: Models, batch: Batch) -> AttackOutput:
    """Run the work's attack on the images of the batch that need it (all with
    ``attack_misclassified: true``); the others keep the original image, 0 calls."""
    run = work.run
    model, eot = models.for_attack(run)
    fn = (attack_registry().get(run.attack.name) if run.attack.name else
          load_entry(run.attack.entry, f"attacks[{run.attack.index}].entry"))  # type: ignore[arg-type]
    n = batch.x.shape[0]
    attacked = batch.attacked
    if cfg.attack_misclassified:  # every image, but one already of its target class has nothing to attack
        attacked = torch.ones(n, dtype=torch.bool) if batch.targets is None else batch.targets.cpu() != batch.labels
    x_adv = batch.x.clone()
    calls = torch.zeros(n, dtype=torch.int64)
    grads = torch.zeros(n, dtype=torch.int64)
    pred = batch.clean_pred.clone()
    extras: dict[str, list] = {}
    t0, c0 = time.perf_counter(), time.process_time()
    rows = attacked.nonzero().flatten()
    if rows.numel():
        dev_rows = rows.to(batch.x.device)
        sub_targets = batch.targets[dev_rows] if batch.targets is not None else None
        out, a_calls, a_grads, a_extras = call_attack(
            run, fn, model, batch.x[dev_rows], batch.y[dev_rows], sub_targets, batch.seed, eot=eot)
        if not torch.isfinite(out).all() or out.min() < 0 or out.max() > 1:
            raise ConfigError(
                f"attacks[{run.attack.index}] ({run.description}) returned images outside "
                "[0, 1] or with NaN values"
            )
        x_adv[dev_rows] = out
        calls = None if a_calls is None else calls.index_put((rows,), a_calls.cpu())
        grads = None if a_grads is None else grads.index_put((rows,), a_grads.cpu())
        a_pred = a_extras.pop("pred", None)
        if run.attack.source is not None:  # the attack judged its iterates on the source model
            a_pred = None
            a_extras.pop("first_adv", None)
        # The attack's own last forward pass judges its output, unless it averaged random draws
        # (EOT), attacked another model (transfer), attacked a randomised defense (its pass is the
        # very draw that made an early-stopping attack stop: judging on it would count lucky draws
        # as breaks), or does not report one: then the runner's pass, on a fresh draw, does.
        from ..defenses import is_randomized

        if a_pred is not None and eot == 1 and not is_randomized(models.get(run.model)):
            pred[rows] = torch.tensor(a_pred, dtype=torch.int64)
        else:
            pred = None
        for key, values in a_extras.items():
            full: list = [None] * n
            for j, r in enumerate(rows.tolist()):
                full[r] = values[j]
            extras[key] = full
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    return AttackOutput(x_adv, calls, grads, extras, pred, attacked, seconds, cpu)


def outcome_rows(cfg: ExperimentConfig, work: Work, models: Models, batch: Batch, attack: AttackOutput,
                 pp: PostprocessSpec, pp_fn: Any) -> tuple[list[dict], list, list, float]:
    """Post-process the attack's output with ``pp`` and judge it: (rows, originals, images, seconds).

    Success is judged on the final image by the (defended) model as deployed. For ``none`` the
    attack's own prediction is used when it reported one; a quantizer's info ``pred`` likewise.
    Unattacked (misclassified) images keep the original image, with distortion 0.
    """
    from ..eval import distortion

    run = work.run
    model = models.get(run.model)
    # a transfer attack's quantizer sees the source too (the attacker has no other gradient)
    attacker = models.source(run) if run.attack.source is not None else model
    n = batch.x.shape[0]
    t1 = time.perf_counter()
    rows_cpu = attack.attacked.nonzero().flatten()
    rows_dev = rows_cpu.to(batch.x.device)
    x_out = batch.x.clone()
    p_calls: torch.Tensor | None = torch.zeros(n, dtype=torch.int64)
    p_grads: torch.Tensor | None = torch.zeros(n, dtype=torch.int64)
    p_extras: dict[str, list] = {}
    pp_pred = None
    if rows_cpu.numel():
        sub_targets = batch.targets[rows_dev] if batch.targets is not None else None
        sub_files = None if batch.files is None else [batch.files[j] for j in rows_cpu.tolist()]
        out, c, g, sub_extras = apply_postprocess(
            pp, pp_fn, attacker, batch.x[rows_dev], attack.x_adv[rows_dev], batch.y[rows_dev], sub_targets,
            sub_files)
        x_out[rows_dev] = out
        p_calls = None if c is None else p_calls.index_put((rows_cpu,), c.cpu())  # type: ignore[union-attr]
        p_grads = None if g is None else p_grads.index_put((rows_cpu,), g.cpu())  # type: ignore[union-attr]
        sub_pred = sub_extras.pop("pred", None)
        if sub_pred is not None and run.attack.source is None and all(v is not None for v in sub_pred):
            pp_pred = batch.clean_pred.clone()  # unattacked images keep the original image
            pp_pred[rows_cpu] = torch.tensor(sub_pred, dtype=torch.int64)
        for key, values in sub_extras.items():
            full: list = [None] * n
            for j, r in enumerate(rows_cpu.tolist()):
                full[r] = values[j]
            p_extras[key] = full
    t_pp = time.perf_counter() - t1
    if pp.name == "none" and attack.pred is not None:
        adv_pred = attack.pred
    elif pp_pred is not None:
        adv_pred = pp_pred
    else:
        with torch.no_grad():
            adv_pred = model(x_out).argmax(1).cpu()
    if batch.targets is not None:
        success = adv_pred == batch.targets.cpu()
    else:
        success = adv_pred != batch.labels
    d = distortion(x_out, batch.x, "d").tolist()
    l2 = distortion(x_out, batch.x, "l2").tolist()
    linf = distortion(x_out, batch.x, "linf").tolist()
    a_calls, a_grads = attack.calls, attack.grads
    calls = (a_calls + p_calls).tolist() if a_calls is not None and p_calls is not None else None
    grads = (a_grads + p_grads).tolist() if a_grads is not None and p_grads is not None else None
    per_image = (attack.seconds + t_pp) / len(work.indices)
    rows: list[dict[str, Any]] = []
    originals, adversarials = [], []
    seen = _preprocessed(cfg, work, pp.label, model, x_out)
    for j, i in enumerate(work.indices):
        if (pp.label, i) in work.done:
            continue
        rows.append({
            "run_id": run.run_id,
            "postprocess": pp.label,
            "idx": i,
            "label": int(batch.labels[j]),
            "target": int(batch.targets[j]) if batch.targets is not None else None,
            "clean_pred": int(batch.clean_pred[j]),
            "adv_pred": int(adv_pred[j]),
            "success": int(bool(success[j])),
            "d": d[j],
            "l2": l2[j],
            "linf": linf[j],
            "calls": calls[j] if calls is not None else None,
            "grads": grads[j] if grads is not None else None,
            "seconds": per_image,
            "seed": batch.seed,
            "info": _row_info(attack.extras, p_extras, j, skipped=None if bool(attack.attacked[j]) else
                              "misclassified" if int(batch.clean_pred[j]) != int(batch.labels[j])
                              else "label is the target"),
        })
        if work.batch * cfg.batch_size + j < cfg.save_images:
            img = batch.originals[j]
            originals.append((i, tuple(img.shape), img.contiguous().numpy().tobytes()))
            out = x_out[j].detach().to("cpu", torch.float32).contiguous()
            adversarials.append((run.run_id, pp.label, i, tuple(out.shape), out.numpy().tobytes()))
            if j in seen:
                q = seen[j]
                adversarials.append((run.run_id, f"{pp.label}@preprocess", i, tuple(q.shape), q.numpy().tobytes()))
    return rows, originals, adversarials, t_pp


def _preprocessed(cfg: ExperimentConfig, work: Work, label: str, model: nn.Module,
                  x_out: torch.Tensor) -> dict[int, torch.Tensor]:
    """``save_preprocessed``: what the classifier of a defended model sees for each saved image of
    the batch (the defense's output, one draw), by position in the batch; {} otherwise."""
    if not cfg.save_preprocessed:
        return {}
    from ..defenses import Defended

    first = work.batch * cfg.batch_size
    keep = [j for j, i in enumerate(work.indices) if first + j < cfg.save_images and (label, i) not in work.done]
    if not keep or not isinstance(model, Defended):
        return {}
    with torch.no_grad():
        out = model.preprocess(x_out[keep]).detach().to("cpu", torch.float32)
    return {j: out[k].contiguous() for k, j in enumerate(keep)}


def _process(
    cfg: ExperimentConfig,
    dev: torch.device,
    ctx: DistContext,
    quiet: bool,
    images: torch.Tensor,
    labels: torch.Tensor,
    indices: list[int],
    writer: ResultsStore,
    reader: ResultsStore | None,
    summary: RunSummary,
    files: list | None = None,
) -> None:
    """Compute and store every missing outcome of this rank's batches (see the section comment)."""
    from tqdm.auto import tqdm

    pp_fns = postprocess_registry()
    n_batches = math.ceil(len(indices) / cfg.batch_size)
    mine = [b for b in range(n_batches) if b % ctx.world_size == ctx.rank]
    plan = plan_work(cfg, mine, indices, writer, reader, summary)
    total = sum(len(w.indices) for w in plan)
    log.info("%d batches to compute (%d images x runs), %d outcomes already stored", len(plan),
             total, summary.rows_skipped)
    bar = None  # shown once the first batch has gone through, so a bad parameter's error is not
    # printed under an empty progress bar
    models = Models(dev)
    current: RunSpec | None = None
    run_start, run_images = 0.0, 0
    try:
        for work in plan:
            if work.run is not current:
                if current is not None:
                    log.info("run %s (%s): %d images in %.1f s", current.run_id,
                             current.description, run_images, time.perf_counter() - run_start)
                current, run_start, run_images = work.run, time.perf_counter(), 0
            batch = load_batch(cfg, work, models, images, labels, files)
            attack = attack_batch(cfg, work, models, batch)
            summary.attack_seconds += attack.seconds
            summary.attack_cpu_seconds += attack.cpu_seconds
            rows: list[dict] = []
            originals: list = []
            adversarials: list = []
            for pp in work.missing:
                r, o, a, _ = outcome_rows(cfg, work, models, batch, attack, pp, pp_fns[pp.name])
                rows += r
                originals += o
                adversarials += a
            writer.write_batch(rows, originals, adversarials)
            summary.rows_written += len(rows)
            summary.images_attacked += int(attack.attacked.sum())
            run_images += len(work.indices)
            if bar is None:
                bar = tqdm(total=total, unit="img", disable=quiet or not ctx.is_main or total == 0,
                           desc=cfg.experiment, dynamic_ncols=True, file=sys.stderr)
            bar.update(len(work.indices))
            bar.set_postfix_str(work.run.description, refresh=False)
        if current is not None:
            log.info("run %s (%s): %d images in %.1f s", current.run_id, current.description,
                     run_images, time.perf_counter() - run_start)
    finally:
        if bar is not None:
            bar.close()
