"""Scale-out over processes with ``torch.distributed`` (launched by ``torchrun``).

``torchrun --nproc_per_node N -m quantadv run exp.yaml`` starts N copies of the same command.
Each copy (rank) finds ``RANK`` / ``WORLD_SIZE`` in its environment, joins a process group
(``gloo`` on CPU, ``nccl`` on CUDA, one GPU per local rank) and processes the batches whose
number ``b`` satisfies ``b % N == rank``. Because batch boundaries and per-batch seeds do not
depend on N, the union of all ranks' rows equals what one process computes.

Each rank writes its own shard file next to the store (``results/x.shard-00-of-02.db``, a
complete store of its own); at the end rank 0 merges the shards into ``results/x.db`` and
deletes them. Shards left behind by a killed run are merged at the start of the next run
(whatever its number of processes), or by ``quantadv merge results/x.db``.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

from ..errors import DataError, InputError
from .store import ResultsStore, StoreIdentity

log = logging.getLogger("quantadv.experiments")

_SHARD_RE = re.compile(r"\.shard-(\d+)-of-(\d+)\.db$")


@dataclass
class DistContext:
    """This process's place in a (possibly trivial) process group."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    initialized_here: bool = False

    @property
    def active(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.active:
            import torch.distributed as dist

            dist.barrier()

    def close(self) -> None:
        if self.initialized_here:
            import torch.distributed as dist

            with contextlib.suppress(Exception):
                dist.destroy_process_group()
            self.initialized_here = False


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None:
        return default
    try:
        return int(value)
    except ValueError:
        raise InputError(f"environment variable {name}={value!r} is not an integer") from None


def init_distributed(device_type: str = "cpu", timeout_minutes: float = 60.0) -> DistContext:
    """Join the process group described by torchrun's environment, if there is one.

    Without ``WORLD_SIZE`` (or with ``WORLD_SIZE=1``) this is a no-op and returns a
    single-process context. The backend is ``nccl`` for CUDA devices and ``gloo`` otherwise.
    """
    world = _env_int("WORLD_SIZE", 1)
    if world <= 1:
        return DistContext()
    rank = _env_int("RANK", 0)
    local_rank = _env_int("LOCAL_RANK", rank)
    if not 0 <= rank < world:
        raise InputError(f"RANK={rank} is outside 0..{world - 1} (WORLD_SIZE={world})")
    import torch.distributed as dist

    if not dist.is_available():
        raise InputError("this torch build has no torch.distributed; run without torchrun")
    here = False
    if not dist.is_initialized():
        backend = "nccl" if device_type == "cuda" else "gloo"
        dist.init_process_group(
            backend=backend, timeout=_dt.timedelta(minutes=timeout_minutes)
        )
        here = True
    return DistContext(rank=dist.get_rank(), world_size=dist.get_world_size(),
                       local_rank=local_rank, initialized_here=here)


def shard_path(store: Path, rank: int, world_size: int) -> Path:
    """The shard file of ``rank`` out of ``world_size`` for the store ``store``."""
    width = max(2, len(str(world_size - 1)))
    return store.with_name(f"{store.stem}.shard-{rank:0{width}d}-of-{world_size:0{width}d}.db")


def find_shards(store: Path) -> list[Path]:
    """Shard files that belong to ``store`` (any number of processes), sorted by name."""
    store = Path(store)
    if not store.parent.is_dir():
        return []
    prefix = f"{store.stem}.shard-"
    return sorted(
        p for p in store.parent.iterdir()
        if p.name.startswith(prefix) and _SHARD_RE.search(p.name) and p.is_file()
    )


def _remove_db(path: Path) -> None:
    for suffix in ("", "-wal", "-shm"):
        with contextlib.suppress(FileNotFoundError):
            Path(str(path) + suffix).unlink()


def merge_shards(
    store: str | os.PathLike, shards: list[Path] | None = None, *, remove: bool = True
) -> dict[str, int]:
    """Merge shard files into ``store`` (created from the first shard if missing).

    Every shard must come from the same experiment (same ``experiment_hash``) as the store;
    otherwise :class:`DataError` is raised before anything is written. Each shard is merged
    in one transaction and deleted only after that transaction committed, so an interrupted
    merge is simply repeated (rows already present are kept). Returns the rows added per table.
    """
    store = Path(store)
    shards = find_shards(store) if shards is None else [Path(s) for s in shards]
    totals = {"shards": 0, "runs": 0, "results": 0, "originals": 0, "adversarials": 0,
              "sessions": 0}
    if not shards:
        return totals
    opened: list[ResultsStore] = []
    try:
        for s in shards:
            if s.resolve() == store.resolve():
                raise InputError(f"{str(s)!r} is the store itself, not a shard of it")
            opened.append(ResultsStore.open(s, readonly=False))  # the lock: its writer is done
        identities = []
        for sh in opened:
            meta = sh.meta()
            identities.append(
                StoreIdentity(
                    experiment=meta.get("experiment", ""),
                    experiment_hash=meta.get("experiment_hash", ""),
                    config_yaml=meta.get("config_yaml", ""),
                    postprocess=tuple(json.loads(meta.get("postprocess", "[]"))),
                )
            )
        first = identities[0]
        for sh, ident in zip(opened, identities, strict=True):
            if ident.experiment_hash != first.experiment_hash:
                raise DataError(
                    f"shard {str(sh.path)!r} belongs to another experiment (hash "
                    f"{ident.experiment_hash} != {first.experiment_hash}); nothing was merged"
                )
        target = ResultsStore.create_or_open(store, first)
        try:
            for sh in opened:
                added = target.merge_from(sh.path)
                for k, v in added.items():
                    totals[k] += v
                totals["shards"] += 1
                log.info("merged shard %s into %s: %s", sh.path, store, added)
        finally:
            target.close()
    finally:
        for sh in opened:
            sh.close()
    if remove:
        for s in shards:
            _remove_db(s)
    return totals
