"""The results store: one SQLite file per experiment (stdlib ``sqlite3``, WAL journal).

Tables
------
``meta``
    key/value pairs: ``schema_version``, ``experiment``, ``experiment_hash`` (see
    :attr:`~quantadv.experiments.config.ExperimentConfig.experiment_hash`), ``config_yaml``
    (the config text), ``postprocess`` (JSON list of labels), ``created``, and after
    ``quantadv run --extend`` ``previous_hashes`` (JSON list of the hashes it had before).
``runs``
    one row per attack run: ``run_id`` (hash of the resolved run config), ``model``,
    ``attack`` (the config entry's label), ``attack_name``, ``params`` (JSON), ``config`` (the
    resolved run config as JSON), ``code_version``, ``created``.
``results``
    one row per (``run_id``, ``postprocess``, ``idx``) with ``idx`` the dataset index of the
    image: ``label``, ``target`` (NULL when untargeted), ``clean_pred``, ``adv_pred``,
    ``success``, ``d`` (paper 000 Eq. 31, pixel units), ``l2`` and ``linf`` ([0, 1] units),
    ``calls`` (network forward passes, a gradient counting as one) and ``grads`` (gradient
    computations) spent on the image by the attack and the post-processing, ``seconds`` (the
    image's share of its batch's wall time), ``seed`` (the seed of the batch's generator) and
    ``info`` (NULL, or JSON of the per-image numbers the attack and the post-processing
    reported beyond success and counts, e.g. ``{"postprocess": {"lambda_star": ..., "j_size":
    ..., "both_pixels": ..., "lambda_pixels": ...}}`` for Q-lambda*; non-finite values are
    ``null``). Added in schema version 2; a version-1 store opened for writing gains the
    column (its old rows keep ``info`` NULL).
``originals`` / ``adversarials``
    a few images for the report's image grids (``save_images`` per run and post-processing):
    originals as uint8 bytes, adversarials as float32 bytes, with their shape.
``sessions``
    one row per process that wrote to the store: start/end time, rank, world size, machine
    and code version.

Every batch is written in one transaction, so a run killed at any moment leaves whole
batches only, and the next run with the same config continues where it stopped. A new store
is created under a temporary name and renamed into place once its schema is committed; an
existing store is never deleted or rewritten, only appended to after its identity checks.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import sqlite3
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import DataError

SCHEMA_VERSION = 2
#: Schema versions this code reads; older ones are upgraded in place when opened for writing.
READABLE_VERSIONS = ("1", "2")

#: Columns of the ``results`` table, in order.
RESULT_COLUMNS = (
    "run_id",
    "postprocess",
    "idx",
    "label",
    "target",
    "clean_pred",
    "adv_pred",
    "success",
    "d",
    "l2",
    "linf",
    "calls",
    "grads",
    "seconds",
    "seed",
    "info",
)
#: Columns of the ``runs`` table, in order.
RUN_COLUMNS = ("run_id", "model", "attack", "attack_name", "params", "config", "code_version",
               "created")

_SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE runs (
    run_id TEXT PRIMARY KEY,
    model TEXT NOT NULL,
    attack TEXT NOT NULL,
    attack_name TEXT NOT NULL,
    params TEXT NOT NULL,
    config TEXT NOT NULL,
    code_version TEXT NOT NULL,
    created TEXT NOT NULL
);
CREATE TABLE results (
    run_id TEXT NOT NULL REFERENCES runs(run_id),
    postprocess TEXT NOT NULL,
    idx INTEGER NOT NULL,
    label INTEGER NOT NULL,
    target INTEGER,
    clean_pred INTEGER NOT NULL,
    adv_pred INTEGER NOT NULL,
    success INTEGER NOT NULL,
    d REAL NOT NULL,
    l2 REAL NOT NULL,
    linf REAL NOT NULL,
    calls INTEGER,
    grads INTEGER,
    seconds REAL NOT NULL,
    seed INTEGER NOT NULL,
    info TEXT,
    PRIMARY KEY (run_id, postprocess, idx)
) WITHOUT ROWID;
CREATE TABLE originals (idx INTEGER PRIMARY KEY, shape TEXT NOT NULL, data BLOB NOT NULL);
CREATE TABLE adversarials (
    run_id TEXT NOT NULL,
    postprocess TEXT NOT NULL,
    idx INTEGER NOT NULL,
    shape TEXT NOT NULL,
    data BLOB NOT NULL,
    PRIMARY KEY (run_id, postprocess, idx)
) WITHOUT ROWID;
CREATE TABLE sessions (
    session_id TEXT PRIMARY KEY,
    started TEXT NOT NULL,
    finished TEXT,
    rank INTEGER NOT NULL,
    world_size INTEGER NOT NULL,
    machine TEXT NOT NULL,
    code_version TEXT NOT NULL
);
"""
_TABLES = ("meta", "runs", "results", "originals", "adversarials", "sessions")


def now() -> str:
    """The current UTC time as ISO 8601 text."""
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


@dataclass(frozen=True)
class StoreIdentity:
    """What a store is for: checked before anything is appended to an existing store."""

    experiment: str
    experiment_hash: str
    config_yaml: str
    postprocess: tuple[str, ...]


def _connect(path: Path, readonly: bool) -> sqlite3.Connection:
    uri = f"{path.resolve().as_uri()}?mode={'ro' if readonly else 'rw'}"
    conn = sqlite3.connect(uri, uri=True, timeout=60)
    conn.row_factory = sqlite3.Row
    return conn


def _db_error(path: Path, exc: Exception) -> DataError:
    return DataError(
        f"cannot read results store {str(path)!r}: {exc}. It is corrupt or not a quantadv "
        "store; it was left untouched (move it away or pick another --store)"
    )


class _Lock:
    """An exclusive advisory ``flock`` on the store file, held while a process writes it.

    ``flock`` locks are separate from the POSIX record locks SQLite uses, and the kernel drops
    them when the process dies (even by ``kill -9``), so a crashed run never blocks the next.
    The descriptor is closed only after SQLite's connection is closed.
    """

    def __init__(self, path: Path):
        self.path = path
        self._fd: int | None = None

    def acquire(self) -> None:
        try:
            import fcntl
        except ImportError:  # pragma: no cover - Windows: SQLite's own locking still applies
            return
        fd = os.open(self.path, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise DataError(
                f"results store {str(self.path)!r} is being written by another quantadv "
                "process; wait for it to finish (or stop it) and run again"
            ) from None
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


class ResultsStore:
    """A results store opened for reading or for appending.

    Use :meth:`create_or_open` to write (it creates the file when missing and checks the
    identity of an existing one) and :meth:`open` to read.
    """

    def __init__(self, path: Path, conn: sqlite3.Connection, readonly: bool, lock: _Lock | None):
        self.path = path
        self.conn = conn
        self.readonly = readonly
        self._lock = lock

    # -- opening ----------------------------------------------------------------------------

    @classmethod
    def open(cls, path: str | os.PathLike, *, readonly: bool = True) -> ResultsStore:
        """Open an existing store; raises :class:`DataError` when it is missing or unreadable."""
        p = Path(path)
        if not p.exists():
            raise DataError(f"results store {str(p)!r} does not exist")
        if p.is_dir():
            raise DataError(f"results store {str(p)!r} is a directory, not a .db file")
        lock = None
        if not readonly:
            lock = _Lock(p)
            lock.acquire()
        try:
            conn = _connect(p, readonly)
            store = cls(p, conn, readonly, lock)
            store._validate(full_check=not readonly)
            if not readonly:
                store._configure_writer()
                store._upgrade()
        except sqlite3.DatabaseError as exc:
            if lock:
                lock.release()
            raise _db_error(p, exc) from None
        except BaseException:
            if lock:
                lock.release()
            raise
        return store

    @classmethod
    def create_or_open(cls, path: str | os.PathLike, identity: StoreIdentity) -> ResultsStore:
        """Open ``path`` for appending, creating it (atomically) if it does not exist.

        An existing store must have been written by a config with the same
        ``experiment_hash``; otherwise :class:`DataError` explains and nothing is touched.
        """
        p = Path(path)
        if not p.exists():
            cls._create(p, identity)
        store = cls.open(p, readonly=False)
        try:
            store.check_identity(identity)
            store._keep_config_text(identity)
        except BaseException:
            store.close()
            raise
        return store

    @staticmethod
    def _create(path: Path, identity: StoreIdentity) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        tmp_path = Path(tmp)
        try:
            conn = sqlite3.connect(tmp)
            try:
                with conn:
                    conn.executescript("BEGIN;" + _SCHEMA + "COMMIT;")
                with conn:
                    conn.executemany(
                        "INSERT INTO meta (key, value) VALUES (?, ?)",
                        [
                            ("schema_version", str(SCHEMA_VERSION)),
                            ("experiment", identity.experiment),
                            ("experiment_hash", identity.experiment_hash),
                            ("config_yaml", identity.config_yaml),
                            ("postprocess", json.dumps(list(identity.postprocess))),
                            ("created", now()),
                        ],
                    )
            finally:
                conn.close()
            # os.link fails if the target exists: a store created meanwhile is never replaced.
            try:
                os.link(tmp, path)
            except FileExistsError:
                pass
            except OSError:  # file systems without hard links
                if not path.exists():
                    os.replace(tmp, path)
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp_path.unlink()

    def _configure_writer(self) -> None:
        mode = self.conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if str(mode).lower() != "wal":  # pragma: no cover - e.g. a network file system
            self.conn.execute("PRAGMA journal_mode=DELETE")
        self.conn.execute("PRAGMA synchronous=NORMAL")

    def _validate(self, full_check: bool) -> None:
        tables = {r[0] for r in self.conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        missing = [t for t in _TABLES if t not in tables]
        if missing:
            raise DataError(
                f"{str(self.path)!r} is an SQLite file but not a quantadv results store (missing "
                f"tables: {', '.join(missing)}); it was left untouched"
            )
        meta = self.meta()
        version = meta.get("schema_version")
        if version not in READABLE_VERSIONS:
            raise DataError(
                f"results store {str(self.path)!r} has schema version {version!r}; this quantadv "
                f"reads versions {', '.join(READABLE_VERSIONS)}. Use the quantadv version that wrote it"
            )
        if full_check:
            status = self.conn.execute("PRAGMA quick_check").fetchone()[0]
            if status != "ok":
                raise DataError(
                    f"results store {str(self.path)!r} failed SQLite's integrity check ({status}); "
                    "it was left untouched"
                )

    def _upgrade(self) -> None:
        """Bring an older store to :data:`SCHEMA_VERSION` (one transaction; rows untouched)."""
        if self.meta().get("schema_version") == str(SCHEMA_VERSION):
            return
        with self.conn:  # version 1 -> 2: the results.info column
            if "info" not in self._columns("results"):
                self.conn.execute("ALTER TABLE results ADD COLUMN info TEXT")
            self.conn.execute(
                "UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(SCHEMA_VERSION),)
            )

    def _columns(self, table: str, schema: str = "main") -> list[str]:
        return [r[1] for r in self.conn.execute(f"PRAGMA {schema}.table_info({table})")]

    def check_identity(self, identity: StoreIdentity) -> None:
        meta = self.meta()
        if meta.get("experiment_hash") != identity.experiment_hash:
            raise DataError(
                f"results store {str(self.path)!r} holds experiment {meta.get('experiment')!r} "
                f"written by a different config (experiment hash {meta.get('experiment_hash')} "
                f"!= {identity.experiment_hash}: models, data, attacks, grids, seed, batch size, "
                "targets, postprocess or save_images changed). The store was not modified. Give "
                "the new config another experiment name, pass --store, or move the old store away"
            )

    def _keep_config_text(self, identity: StoreIdentity) -> None:
        """Store the text of the config now writing: with the same experiment hash only what no
        run id depends on can differ (comments, the description, the report's ``summary:``
        options), and the report reads the latest of those."""
        if identity.config_yaml and self.meta().get("config_yaml") != identity.config_yaml:
            with self.conn:
                self.conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('config_yaml', ?)",
                                  (identity.config_yaml,))

    def extend_to(self, identity: StoreIdentity, run_ids: Iterable[str]) -> bool:
        """Let a config that *extends* this store's config write into it (``quantadv run --extend``).

        Allowed when every run already registered here is among ``run_ids`` (the new config's
        runs; ids depend on model, data, attack, parameters, seed, batch size and targets, so
        stored outcomes stay valid) and the post-processing list is the same. Then the store
        takes the new identity in one transaction and remembers the old hash in the meta key
        ``previous_hashes``. Returns False when the identity already matches; raises
        :class:`DataError` (store untouched) when the new config is not an extension.
        """
        self._writable()
        meta = self.meta()
        if meta.get("experiment_hash") == identity.experiment_hash:
            return False
        stored = {r["run_id"] for r in self.runs()}
        new = set(run_ids)
        dropped = sorted(stored - new)
        if dropped:
            raise DataError(
                f"--extend: the config drops {len(dropped)} run(s) that {str(self.path)!r} holds "
                f"(e.g. {dropped[0]}); an extension may only add runs. The store was not modified"
            )
        old_pp = json.loads(meta.get("postprocess", "[]"))
        if old_pp != list(identity.postprocess):
            raise DataError(
                f"--extend: the post-processing list changed ({old_pp} -> {list(identity.postprocess)}); "
                "an extension keeps it. The store was not modified"
            )
        history = json.loads(meta.get("previous_hashes", "[]")) + [meta.get("experiment_hash")]
        with self.conn:
            self.conn.executemany(
                "INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)",
                [("experiment", identity.experiment), ("experiment_hash", identity.experiment_hash),
                 ("config_yaml", identity.config_yaml), ("previous_hashes", json.dumps(history))],
            )
        return True

    # -- reading ----------------------------------------------------------------------------

    def meta(self) -> dict[str, str]:
        return {r["key"]: r["value"] for r in self.conn.execute("SELECT key, value FROM meta")}

    def runs(self) -> list[dict[str, Any]]:
        return [dict(r) for r in self.conn.execute("SELECT * FROM runs ORDER BY rowid")]

    def sessions(self) -> list[dict[str, Any]]:
        return [dict(r) for r in self.conn.execute("SELECT * FROM sessions ORDER BY started")]

    def done_keys(self, run_id: str) -> set[tuple[str, int]]:
        """The (postprocess, idx) pairs already stored for a run."""
        cur = self.conn.execute("SELECT postprocess, idx FROM results WHERE run_id = ?", (run_id,))
        return {(r[0], r[1]) for r in cur}

    def count(self) -> int:
        return int(self.conn.execute("SELECT COUNT(*) FROM results").fetchone()[0])

    def results(self, run_id: str | None = None) -> list[dict[str, Any]]:
        """Result rows (joined with their run's model and attack), ordered by key."""
        sql = (
            "SELECT r.*, u.model, u.attack, u.attack_name, u.params FROM results r "
            "JOIN runs u USING (run_id)"
        )
        args: tuple = ()
        if run_id is not None:
            sql += " WHERE r.run_id = ?"
            args = (run_id,)
        sql += " ORDER BY u.model, u.attack, r.run_id, r.postprocess, r.idx"
        rows = []
        for r in self.conn.execute(sql, args):
            row = dict(r)
            row["success"] = bool(row["success"])
            row.setdefault("info", None)  # a version-1 store read as it is
            rows.append(row)
        return rows

    def originals(self) -> dict[int, tuple[tuple[int, ...], bytes]]:
        return {
            r["idx"]: (tuple(json.loads(r["shape"])), r["data"])
            for r in self.conn.execute("SELECT * FROM originals")
        }

    def adversarials(self) -> list[dict[str, Any]]:
        out = []
        for r in self.conn.execute("SELECT * FROM adversarials ORDER BY run_id, postprocess, idx"):
            row = dict(r)
            row["shape"] = tuple(json.loads(row["shape"]))
            out.append(row)
        return out

    # -- writing ----------------------------------------------------------------------------

    def _writable(self) -> None:
        if self.readonly:
            raise RuntimeError("this ResultsStore was opened read-only")

    def register_runs(self, runs: Iterable[dict[str, Any]]) -> None:
        """Insert run rows that are not there yet (one transaction)."""
        self._writable()
        with self.conn:
            self.conn.executemany(
                f"INSERT OR IGNORE INTO runs ({', '.join(RUN_COLUMNS)}) "
                f"VALUES ({', '.join('?' * len(RUN_COLUMNS))})",
                [tuple(r[c] for c in RUN_COLUMNS) for r in runs],
            )

    def write_batch(
        self,
        rows: Sequence[dict[str, Any]],
        originals: Sequence[tuple[int, tuple[int, ...], bytes]] = (),
        adversarials: Sequence[tuple[str, str, int, tuple[int, ...], bytes]] = (),
    ) -> None:
        """Write the rows of one batch, and its saved images, in a single transaction."""
        self._writable()
        with self.conn:
            self.conn.executemany(
                f"INSERT INTO results ({', '.join(RESULT_COLUMNS)}) "
                f"VALUES ({', '.join('?' * len(RESULT_COLUMNS))})",
                [tuple(r[c] for c in RESULT_COLUMNS) for r in rows],
            )
            self.conn.executemany(
                "INSERT OR IGNORE INTO originals (idx, shape, data) VALUES (?, ?, ?)",
                [(i, json.dumps(list(s)), b) for i, s, b in originals],
            )
            self.conn.executemany(
                "INSERT INTO adversarials (run_id, postprocess, idx, shape, data) "
                "VALUES (?, ?, ?, ?, ?)",
                [(r, p, i, json.dumps(list(s)), b) for r, p, i, s, b in adversarials],
            )

    def start_session(self, session_id: str, rank: int, world_size: int, machine: dict,
                      code_version: str) -> None:
        self._writable()
        with self.conn:
            self.conn.execute(
                "INSERT OR REPLACE INTO sessions (session_id, started, finished, rank, world_size, "
                "machine, code_version) VALUES (?, ?, NULL, ?, ?, ?, ?)",
                (session_id, now(), rank, world_size, json.dumps(machine, sort_keys=True),
                 code_version),
            )

    def finish_session(self, session_id: str) -> None:
        self._writable()
        with self.conn:
            self.conn.execute(
                "UPDATE sessions SET finished = ? WHERE session_id = ?", (now(), session_id)
            )

    def merge_from(self, other: Path) -> dict[str, int]:
        """Append every row of another store (a rank's shard) in one transaction.

        Rows already present are kept (a finished (run, postprocess, image) is never
        rewritten). Returns the number of rows added per table.
        """
        self._writable()
        added = {}
        self.conn.execute("ATTACH DATABASE ? AS shard", (f"{other.resolve().as_uri()}?mode=ro",))
        try:
            with self.conn:
                for table in ("runs", "results", "originals", "adversarials", "sessions"):
                    theirs = set(self._columns(table, "shard"))
                    cols = ", ".join(c for c in self._columns(table) if c in theirs)
                    before = self.conn.total_changes
                    self.conn.execute(
                        f"INSERT OR IGNORE INTO main.{table} ({cols}) SELECT {cols} FROM shard.{table}"
                    )
                    added[table] = self.conn.total_changes - before
        finally:
            self.conn.execute("DETACH DATABASE shard")
        return added

    def close(self) -> None:
        if self.conn is not None:
            with contextlib.suppress(sqlite3.Error):
                if not self.readonly:
                    self.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            self.conn.close()
            self.conn = None  # type: ignore[assignment]
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def __enter__(self) -> ResultsStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@contextlib.contextmanager
def open_store(path: str | os.PathLike) -> Iterator[ResultsStore]:
    """Open a store read-only in a ``with`` block."""
    store = ResultsStore.open(path, readonly=True)
    try:
        yield store
    finally:
        store.close()


def load_results(path: str | os.PathLike, *, as_frame: bool | None = None) -> Any:
    """All result rows of a store, joined with their run's model, attack and params.

    Returns a ``pandas.DataFrame`` when pandas is installed (or ``as_frame=True``), else a list
    of dicts with the columns of :data:`RESULT_COLUMNS` plus ``model``, ``attack``,
    ``attack_name`` and ``params`` (JSON text).
    """
    with open_store(path) as store:
        try:
            rows = store.results()
        except sqlite3.DatabaseError as exc:
            raise _db_error(Path(path), exc) from None
    if as_frame is False:
        return rows
    try:
        import pandas as pd
    except ImportError:
        if as_frame:
            raise DataError(
                "load_results(as_frame=True) needs pandas; install it (pip install pandas) or "
                "pass as_frame=False"
            ) from None
        return rows
    columns = [*RESULT_COLUMNS, "model", "attack", "attack_name", "params"]
    return pd.DataFrame(rows, columns=columns)
