"""Experiment configs: a YAML file that declares models, data, attacks, grids and post-processing.

A config is validated completely before anything runs; every mistake raises
:class:`~quantadv.errors.ConfigError` with the path of the offending key (``attacks[1].grid.eps``)
and, where there is a closed set, the allowed values. A valid config expands to a list of
:class:`RunSpec` s: one per (model, attack entry, point of the attack's parameter grid). Each run
has a stable id, the first 16 hex digits of the SHA-256 of its resolved configuration (model
identity, data identity, attack, parameters, seed, batch size, targeting), so the same run in a
later session, on another rank, or in another config file gets the same id. Post-processing
(quantizers) is not part of the run id: one attack run yields one stored outcome per
``postprocess`` entry, in the ``postprocess`` column of the results store.

Example::

    experiment: fmnist-demo          # store: results/fmnist-demo.db
    seed: 0
    batch_size: 100
    models: [fmnist-cnn]
    data: {name: fashion-mnist, split: test, subset: {first: 1000}}
    attacks:
      - name: pgd
        params: {norm: l2, step: 0.05, steps: 20}
        grid: {eps: [0.5, 1.0, 2.0]}  # three runs; per-image best effort over eps in reports
      - name: pgd
        label: pgd-l2-scaled         # a grid may also list its points explicitly:
        params: {norm: l2, steps: 10}
        grid: [{eps: 0.5, step: 0.125}, {eps: 1.0, step: 0.25}]
      - name: ddn
        params: {steps: 100}
      - name: ddn
        label: ddn-qdelta
        params: {steps: 100, quantize: lagrangian}
        postprocess: [none]          # already digital: only some of the list below
    postprocess: [none, round_nearest, lagrangian]

Relative paths of *inputs* (weight files, ``.py`` entry points, image folders) are resolved
against the directory of the config file; the store path is relative to the working directory.
"""

from __future__ import annotations

import difflib
import hashlib
import inspect
import itertools
import json
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..errors import ConfigError
from .schema import TARGET_MODES as SCHEMA_TARGET_MODES
from .schema import AttackEntry, Config, check_structure

#: Keys accepted at the top level of a config and in an ``attacks:`` entry (from schema.py).
TOP_LEVEL_KEYS = tuple(Config.model_fields)
ATTACK_KEYS = tuple(AttackEntry.model_fields)
#: Targeting modes: untargeted, a uniformly random class other than the label, label + 1 mod K.
TARGET_MODES = SCHEMA_TARGET_MODES
#: How an attack sees a defended model (:func:`quantadv.defenses.adaptive`): as is; with the
#: preprocessing replaced by the identity in the backward pass (BPDA); BPDA plus EOT.
ADAPTIVE_MODES = ("none", "bpda", "bpda+eot")
#: Keyword arguments the runner sets itself; a config may not set them.
RESERVED_PARAMS = frozenset(
    {"model", "images", "labels", "x", "y", "targets", "generator", "seed", "return_info",
     "x_orig", "x_adv"}
)
#: Post-processing steps by config name -> function name in :mod:`quantadv.quantize`.
POSTPROCESS_FUNCTIONS = {
    "round_nearest": "round_nearest",
    "toward_original": "toward_original",
    "gradient_sign": "gradient_sign",
    "lagrangian": "lagrangian",
    # issue 12: the output is the decoded JPEG file (params: quality); docs/jpeg.md
    "lagrangian_jpeg": "lagrangian_jpeg",
    "round_jpeg": "round_jpeg",
    "reencode_jpeg": "reencode_jpeg",
}
#: Upper bound on the number of runs one config may expand to (guards against typos in grids).
MAX_RUNS = 100_000
#: Upper bound on list lengths inside parameters and grids.
MAX_LIST = 10_000

_LABEL_RE = re.compile(r"^[^\x00-\x1f]{1,80}$")


# ---------------------------------------------------------------------------------------------
# YAML reading


class _StrictLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that rejects duplicate and unhashable mapping keys."""


def _construct_mapping(loader: _StrictLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    loader.flatten_mapping(node)
    mapping: dict = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        try:
            hash(key)
        except TypeError:
            raise ConfigError(
                f"line {key_node.start_mark.line + 1}: a mapping key must be a plain value, "
                f"got a {type(key).__name__}"
            ) from None
        if key in mapping:
            raise ConfigError(
                f"line {key_node.start_mark.line + 1}: duplicate key {key!r}; each key may "
                "appear once per mapping"
            )
        mapping[key] = loader.construct_object(value_node, deep=True)
    return mapping


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def _read_yaml(text: str, source: str) -> Any:
    try:
        return yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source} is not valid YAML: {exc}") from None
    except RecursionError:
        raise ConfigError(f"{source}: the YAML is nested too deeply") from None


# ---------------------------------------------------------------------------------------------
# Small validation helpers


def _type_name(value: object) -> str:
    if value is None:
        return "null"
    return {dict: "mapping", list: "list", str: "string", bool: "boolean"}.get(
        type(value), type(value).__name__
    )


def _suggest(value: object, allowed: typing.Iterable[str]) -> str:
    if not isinstance(value, str):
        return ""
    close = difflib.get_close_matches(value, list(allowed), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _allowed(allowed: typing.Iterable[str]) -> str:
    items = list(allowed)
    return ", ".join(items) if items else "(none)"


def _mapping(value: object, where: str) -> dict:
    if not isinstance(value, dict):
        raise ConfigError(f"{where} must be a mapping (key: value), got {_type_name(value)}")
    for k in value:
        if not isinstance(k, str):
            raise ConfigError(f"{where}: keys must be strings, got {k!r} ({_type_name(k)})")
    return value


def _int(value: object, where: str, minimum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{where} must be an integer, got {value!r} ({_type_name(value)})")
    if minimum is not None and value < minimum:
        raise ConfigError(f"{where} must be an integer >= {minimum}, got {value}")
    return value


def _str(value: object, where: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{where} must be a non-empty string, got {value!r} ({_type_name(value)})")
    return value


def _label(value: object, where: str) -> str:
    value = _str(value, where)
    if not _LABEL_RE.match(value):
        raise ConfigError(f"{where} must be 1-80 printable characters, got {value!r}")
    return value


def _scalar(value: object, where: str) -> object:
    """A JSON-able scalar: None, bool, int, finite float or string."""
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ConfigError(f"{where} must be a finite number, got {value!r}")
        return value
    raise ConfigError(
        f"{where} must be a number, string, boolean or null, got {_type_name(value)}"
    )


def _value(value: object, where: str) -> object:
    """A parameter value: a scalar or a flat list of scalars."""
    if isinstance(value, list):
        if len(value) > MAX_LIST:
            raise ConfigError(f"{where} has {len(value)} entries; at most {MAX_LIST} are allowed")
        return [_scalar(v, f"{where}[{i}]") for i, v in enumerate(value)]
    return _scalar(value, where)


def canonical_json(obj: object) -> str:
    """Deterministic JSON (sorted keys, no spaces) used for hashing and storing configs."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _input_path(value: object, where: str, base_dir: Path, suffixes: tuple[str, ...] = ()) -> Path:
    text = _str(value, where)
    path = Path(text).expanduser()
    if not path.is_absolute():
        path = base_dir / path
    if not path.is_file():
        raise ConfigError(f"{where}: file {text!r} not found (looked at {path})")
    if suffixes and path.suffix not in suffixes:
        raise ConfigError(f"{where}: {text!r} must be a {' or '.join(suffixes)} file")
    return path.resolve()


# ---------------------------------------------------------------------------------------------
# Entry points ("package.module:function" or "path/to/file.py:function")


@dataclass(frozen=True)
class EntryPoint:
    """A user callable named in a config: ``package.module:function`` or ``file.py:function``."""

    module: str
    function: str
    file: Path | None = None
    sha256: str | None = None

    @property
    def spec(self) -> str:
        return f"{self.file if self.file else self.module}:{self.function}"

    def identity(self) -> dict:
        if self.file is not None:
            return {"file": self.file.name, "sha256": self.sha256, "function": self.function}
        return {"module": self.module, "function": self.function}


_ENTRY_FN_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")


def parse_entry(value: object, where: str, base_dir: Path) -> EntryPoint:
    text = _str(value, where)
    module, sep, function = text.rpartition(":")
    if not sep or not module or not _ENTRY_FN_RE.match(function):
        raise ConfigError(
            f"{where} must look like 'package.module:function' or 'path/to/file.py:function', "
            f"got {text!r}"
        )
    if module.endswith(".py"):
        path = _input_path(module, where, base_dir, (".py",))
        return EntryPoint(module=path.stem, function=function, file=path, sha256=sha256_file(path))
    if not _ENTRY_FN_RE.match(module):
        raise ConfigError(f"{where}: {module!r} is not a Python module name or a .py file")
    return EntryPoint(module=module, function=function)


# ---------------------------------------------------------------------------------------------
# Parameter checking against a function's signature


def _annotation_check(value: object, annotation: object) -> tuple[bool, object]:
    """Return (ok, converted value) for ``value`` against a resolved type annotation.

    Handles ``int``, ``float``, ``bool``, ``str``, ``None``, unions and ``Literal``; other
    annotations accept anything. A YAML string like ``1e-3`` (PyYAML reads exponents without a
    dot as strings) is accepted for a ``float`` and converted.
    """
    if annotation is inspect.Parameter.empty or annotation is typing.Any:
        return True, value
    origin = typing.get_origin(annotation)
    if origin is typing.Union or (isinstance(annotation, types.UnionType)):
        members = typing.get_args(annotation)
        for m in members:  # exact matches first, then conversions
            if m is float and isinstance(value, str):
                continue
            ok, conv = _annotation_check(value, m)
            if ok:
                return True, conv
        if float in members and isinstance(value, str):
            return _annotation_check(value, float)
        return False, value
    if origin is typing.Literal:
        return (value in typing.get_args(annotation)), value
    if annotation is type(None):
        return value is None, value
    if annotation is bool:
        return isinstance(value, bool), value
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool), value
    if annotation is float:
        if isinstance(value, bool):
            return False, value
        if isinstance(value, int | float):
            return True, float(value)
        if isinstance(value, str):
            try:
                f = float(value)
            except ValueError:
                return False, value
            return math.isfinite(f), f
        return False, value
    if annotation is str:
        return isinstance(value, str), value
    if origin in (list, tuple, typing.Sequence) or annotation in (list, tuple):
        return isinstance(value, list), value
    if isinstance(annotation, type):
        # A class we cannot build from YAML (a tensor, a module...): only None passes.
        return value is None, value
    return True, value


def _describe_annotation(annotation: object) -> str:
    if annotation is inspect.Parameter.empty:
        return "any value"
    text = getattr(annotation, "__name__", None) or str(annotation)
    return text.replace("typing.", "").replace("NoneType", "None")


def configurable_params(fn: Any) -> dict[str, inspect.Parameter]:
    """Keyword parameters of ``fn`` a config may set (everything but the runner's own)."""
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return {}
    return {
        name: p
        for name, p in sig.parameters.items()
        if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)
        and name not in RESERVED_PARAMS
        and not (p.kind == p.POSITIONAL_OR_KEYWORD and p.default is p.empty)
    }


def check_params(fn: Any, params: dict, where: str, what: str) -> dict:
    """Check a dict of keyword arguments against ``fn``'s signature; return converted values.

    Unknown names raise with the list of accepted ones; values are checked against the type
    annotations (when they can be resolved); required keyword-only parameters must be present.
    """
    accepted = configurable_params(fn)
    try:
        sig_params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        sig_params = {}
    has_var_kw = any(p.kind == p.VAR_KEYWORD for p in sig_params.values())
    try:
        hints = typing.get_type_hints(fn)
    except Exception:  # unresolvable annotations: skip type checks, keep name checks
        hints = {}
    out = {}
    for name, value in params.items():
        if name in RESERVED_PARAMS:
            raise ConfigError(
                f"{where}.{name} is set by the runner and cannot be given in a config "
                f"(reserved: {', '.join(sorted(RESERVED_PARAMS))})"
            )
        if name not in accepted and not has_var_kw:
            raise ConfigError(
                f"unknown parameter {where}.{name}{_suggest(name, accepted)} for {what}; "
                f"allowed: {_allowed(sorted(accepted))}"
            )
        annotation = hints.get(name, inspect.Parameter.empty)
        ok, converted = _annotation_check(value, annotation)
        if not ok:
            raise ConfigError(
                f"{where}.{name} must be {_describe_annotation(annotation)}, got {value!r} "
                f"({_type_name(value)})"
            )
        out[name] = converted
    missing = [
        n for n, p in accepted.items()
        if p.kind == p.KEYWORD_ONLY and p.default is p.empty and n not in out
    ]
    if missing:
        raise ConfigError(
            f"{where}: {what} needs {', '.join(missing)}; set "
            f"{' and '.join(missing)} under params or grid"
        )
    return out


# ---------------------------------------------------------------------------------------------
# Specs


@dataclass(frozen=True)
class ModelSpec:
    """One model of the config: a zoo name, an architecture + weights, or an entry point."""

    label: str
    name: str | None = None
    arch: str | None = None
    entry: EntryPoint | None = None
    file: Path | None = None
    file_sha256: str | None = None
    kwargs: dict = field(default_factory=dict)
    #: a defense spec put in front of the network (``quantadv.defenses.parse_defense``)
    defense: str | None = None
    #: how attacks see the defended model: one run per mode (() for an undefended model)
    adaptive: tuple[str, ...] = ()
    #: draws per gradient in the ``bpda+eot`` mode
    eot: int = 10
    #: ``defense: none`` on a defended zoo model: its classifier alone, without the shipped defense
    classifier_only: bool = False

    def identity(self) -> dict:
        ident: dict[str, Any] = {}
        if self.defense is not None:  # only then, so undefended models keep their run ids
            ident["defense"] = self.defense
        if self.classifier_only:
            ident["defense"] = "none"
        if self.name is not None:
            ident["zoo"] = self.name
        if self.arch is not None:
            ident["arch"] = self.arch
        if self.entry is not None:
            ident["entry"] = self.entry.identity()
        if self.file_sha256 is not None:
            ident["weights_sha256"] = self.file_sha256
        if self.kwargs:
            ident["kwargs"] = self.kwargs
        return ident


@dataclass(frozen=True)
class DataSpec:
    """The image set: a dataset name (``quantadv.data.load``) or an entry point, and a subset."""

    name: str | None
    split: str
    subset: tuple  # ("all",) | ("first", n) | ("range", start, stop) | ("indices", (i, ...))
    entry: EntryPoint | None = None
    kwargs: dict = field(default_factory=dict)

    def identity(self) -> dict:
        ident: dict[str, Any] = {"split": self.split, "subset": list(self.subset)}
        if self.entry is not None:
            ident["entry"] = self.entry.identity()
            ident["kwargs"] = self.kwargs
        else:
            ident["name"] = self.name
        if self.subset[0] == "indices":
            digest = hashlib.sha256(canonical_json(list(self.subset[1])).encode()).hexdigest()
            ident["subset"] = ["indices", len(self.subset[1]), digest[:16]]
        return ident

    def select(self, n_total: int) -> list[int]:
        """The dataset indices of the subset, in order; raises when they exceed the dataset."""
        kind = self.subset[0]
        if kind == "all":
            return list(range(n_total))
        if kind == "first":
            n = self.subset[1]
            if n > n_total:
                raise ConfigError(
                    f"data.subset.first is {n} but the dataset has only {n_total} images; "
                    f"use at most {n_total}"
                )
            return list(range(n))
        if kind == "range":
            start, stop = self.subset[1], self.subset[2]
            if stop > n_total:
                raise ConfigError(
                    f"data.subset.range ends at {stop} but the dataset has only {n_total} "
                    f"images (valid indices 0..{n_total - 1})"
                )
            return list(range(start, stop))
        indices = list(self.subset[1])
        bad = [i for i in indices if i >= n_total]
        if bad:
            raise ConfigError(
                f"data.subset.indices contains {bad[0]} but the dataset has only {n_total} "
                f"images (valid indices 0..{n_total - 1})"
            )
        return indices


@dataclass(frozen=True)
class AttackSpec:
    """One entry of ``attacks:``: an attack, its fixed parameters and its parameter grid."""

    index: int
    label: str
    name: str | None
    entry: EntryPoint | None
    params: dict
    grid: tuple  # the grid points: dicts of the swept parameters, in config order
    grid_keys: tuple[str, ...] = ()
    postprocess: tuple[str, ...] | None = None  # labels of the top-level list; None: all
    search: tuple | None = None  # (param, low, high, rounds): per-image bisection of a budget
    repeat: int = 1  # independent runs (other seeds) of every grid point
    source: SourceSpec | None = None  # transfer attack: the model the attack differentiates
    models: tuple[str, ...] | None = None  # labels of the models it attacks; None: all

    @property
    def attack_name(self) -> str:
        return self.name if self.name is not None else self.entry.spec  # type: ignore[union-attr]

    def identity(self) -> dict:
        ident: dict = {"name": self.name} if self.name is not None else {"entry": self.entry.identity()}  # type: ignore[union-attr]
        if self.search is not None:  # only then, so that other runs keep their ids
            param, low, high, rounds = self.search
            ident["search"] = {"param": param, "low": low, "high": high, "rounds": rounds}
        if self.source is not None:  # likewise
            ident["source"] = self.source.identity()
        return ident

    def points(self) -> list[dict]:
        """The resolved parameters of every grid point (fixed params + the point's values)."""
        if not self.grid:
            return [dict(self.params)]
        return [{**self.params, **point} for point in self.grid]


@dataclass(frozen=True)
class SourceSpec:
    """The model a transfer attack differentiates; success is judged on the run's model.

    Either a model of its own (``model``), or the target's classifier without its defense
    (``classifier``), optionally behind another defense (``defense``, e.g. a smooth surrogate).
    """

    model: ModelSpec | None = None
    classifier: bool = False
    defense: str | None = None

    def identity(self) -> dict:
        if self.model is not None:
            return {"model": self.model.identity()}
        return {"classifier": True, **({"defense": self.defense} if self.defense else {})}

    @property
    def text(self) -> str:
        if self.model is not None:
            return self.model.label
        return "classifier" + (f" behind {self.defense}" if self.defense else "")


@dataclass(frozen=True)
class PostprocessSpec:
    """One entry of ``postprocess:``: ``none`` or a quantizer of :mod:`quantadv.quantize`."""

    label: str
    name: str  # "none" or a key of POSTPROCESS_FUNCTIONS
    params: dict = field(default_factory=dict)


@dataclass(frozen=True)
class RunSpec:
    """One attack run: a model, an attack with fully resolved parameters, on the data subset."""

    run_id: str
    model: ModelSpec
    attack: AttackSpec
    params: dict
    resolved: dict  # everything hashed into run_id
    adaptive: str = "none"  # how the attack sees a defended model (ADAPTIVE_MODES)
    repeat: int = 0  # which of the attack entry's independent repeats

    @property
    def description(self) -> str:
        parts = [", ".join(f"{k}={self.params[k]}" for k in self.attack.grid_keys)] if self.attack.grid else []
        if self.search_text:
            parts.append(self.search_text)
        if self.attack.source is not None:
            parts.append(f"from {self.attack.source.text}")
        elif self.model.adaptive:
            parts.append(f"adaptive={self.adaptive}")
        if self.attack.repeat > 1:
            parts.append(f"repeat {self.repeat + 1}/{self.attack.repeat}")
        detail = f" ({'; '.join(parts)})" if parts else ""
        return f"{self.model.label} / {self.attack.label}{detail}"

    @property
    def search_text(self) -> str:
        """``"eps searched in [0, 0.06], 5 rounds"`` or ``""``."""
        if self.attack.search is None:
            return ""
        param, low, high, rounds = self.attack.search
        return f"{param} searched in [{low}, {high}], {rounds} rounds"


@dataclass(frozen=True)
class ExperimentConfig:
    """A validated experiment config (see the module docstring for the YAML form)."""

    experiment: str
    description: str
    seed: int
    device: str
    batch_size: int
    store: Path
    save_images: int
    targets: str | int  # a mode of TARGET_MODES or a class index (images of that class are not attacked)
    models: tuple[ModelSpec, ...]
    data: DataSpec
    attacks: tuple[AttackSpec, ...]
    postprocess: tuple[PostprocessSpec, ...]
    attack_misclassified: bool = False
    #: for defended models, also store the defense's output of every saved image ('<label>@preprocess')
    save_preprocessed: bool = False
    #: options of the robust-accuracy tables of the report (:mod:`quantadv.experiments.summary`):
    #: ``carry`` (a grid parameter), ``steps`` (iteration counts), ``any`` (bool), ``compare``
    #: (pairs of attack selectors); not part of any run id
    summary: dict = field(default_factory=dict)
    source: str = ""
    base_dir: Path = Path(".")
    runs: tuple[RunSpec, ...] = ()

    @property
    def log_path(self) -> Path:
        """The log file next to the store (``results/<experiment>.log``)."""
        return self.store.with_suffix(".log")

    @property
    def experiment_hash(self) -> str:
        """Hash of what the results depend on: every run id and the post-processing list.

        A store remembers it; running a config with another hash into the same store is
        refused, so two different experiments never mix under one name.
        """
        payload = {
            "runs": sorted(r.run_id for r in self.runs),
            "postprocess": [[p.label, p.name, p.params] for p in self.postprocess],
            "save_images": self.save_images,
        }
        if self.save_preprocessed:  # only then, so that other configs keep their hash
            payload["save_preprocessed"] = True
        chosen = {a.label: list(a.postprocess) for a in self.attacks if a.postprocess is not None}
        if chosen:  # only then, so that configs without per-entry lists keep their hash
            payload["postprocess_per_attack"] = chosen
        return hashlib.sha256(canonical_json(payload).encode()).hexdigest()[:16]

    def postprocess_for(self, attack: AttackSpec) -> tuple[PostprocessSpec, ...]:
        """The post-processing steps applied to the runs of one attack entry."""
        if attack.postprocess is None:
            return self.postprocess
        return tuple(p for p in self.postprocess if p.label in attack.postprocess)

    def with_store(self, store: str | Path) -> ExperimentConfig:
        import dataclasses

        return dataclasses.replace(self, store=Path(store))


# ---------------------------------------------------------------------------------------------
# Section parsers


def _parse_models(value: object, base_dir: Path, default_defense: str | None = None, where: str | None = None,
                  defended_adaptive: bool = True) -> tuple[ModelSpec, ...]:
    if value is None:
        raise ConfigError(
            "missing key 'models': list the models to attack, e.g. models: [fmnist-cnn]"
        )
    if isinstance(value, str | dict):
        value = [value]
    if not isinstance(value, list) or not value:
        raise ConfigError(
            f"models must be a non-empty list of zoo names or mappings, got {value!r}"
        )
    specs = []
    source_where = where
    for i, item in enumerate(value):
        where = source_where or f"models[{i}]"
        if isinstance(item, str):
            item = {"name": item}
        item = _mapping(item, where)
        sources = [k for k in ("name", "arch", "entry") if k in item]
        if len(sources) > 1 or (not sources and "file" not in item):
            raise ConfigError(
                f"{where} must have exactly one of 'name' (a zoo model), 'file' (a .safetensors "
                "file with its .json manifest), 'arch' + 'file' (an architecture and its "
                "weights) or 'entry' ('module:function' building the network); got "
                f"{', '.join(sources) or 'none of them'}"
            )
        if not sources and "kwargs" in item:
            raise ConfigError(
                f"{where}.kwargs needs 'arch' or 'entry'; a weight file with a manifest takes "
                "its architecture from the manifest"
            )
        kwargs = _mapping(item.get("kwargs", {}) or {}, f"{where}.kwargs")
        kwargs = {k: _value(v, f"{where}.kwargs.{k}") for k, v in kwargs.items()}
        name = arch = entry = file = sha = None
        if "name" in item:
            name = _str(item["name"], f"{where}.name")
            _check_zoo_name(name, f"{where}.name")
            sha = _zoo_sha256(name)
            for k in ("file", "kwargs"):
                if k in item:
                    raise ConfigError(
                        f"{where}.{k} cannot be combined with 'name' (a zoo model has its own "
                        "weights); use 'arch' + 'file' for your own weights"
                    )
        if "arch" in item:
            arch = _str(item["arch"], f"{where}.arch")
            _check_arch(arch, f"{where}.arch")
            if "file" not in item:
                raise ConfigError(
                    f"{where}: 'arch' needs 'file', the .safetensors weights of the network"
                )
        if "entry" in item:
            entry = parse_entry(item["entry"], f"{where}.entry", base_dir)
        if "file" in item:
            file = _input_path(item["file"], f"{where}.file", base_dir, (".safetensors",))
            sha = sha256_file(file)
            if not sources:
                manifest = file.with_suffix(".json")
                if not manifest.is_file():
                    raise ConfigError(
                        f"{where}.file: {file.name} has no manifest {manifest.name} beside it; "
                        "add 'arch' (one of the architectures) or 'entry' to say how to build "
                        "the network"
                    )
                sha = hashlib.sha256((sha + sha256_file(manifest)).encode()).hexdigest()
        default_label = name or (file.stem if file else None) or (entry.function if entry else "")
        label = _label(item.get("label", default_label), f"{where}.label")
        defense = _parse_defense(item["defense"], f"{where}.defense") if "defense" in item else default_defense
        # defense: none on a defended zoo model strips its shipped defense (the classifier alone)
        classifier_only = item.get("defense") == "none" and name is not None and _zoo_defended(name)
        defended = not classifier_only and (defense is not None or (name is not None and _zoo_defended(name)))
        if "adaptive" in item:
            adaptive = tuple(_adaptive_mode(m, f"{where}.adaptive")
                             for m in _str_list(item["adaptive"], f"{where}.adaptive"))
            if len(set(adaptive)) != len(adaptive) or not adaptive:
                raise ConfigError(f"{where}.adaptive must list each mode once, e.g. [none, bpda, bpda+eot]")
            if not defended:
                raise ConfigError(f"{where}.adaptive needs a defended model: add {where}.defense "
                                  "(e.g. defense: 'softq:levels=1,alpha=1000') or use a defended zoo model")
        else:
            adaptive = ADAPTIVE_MODES if defended and defended_adaptive else ()
        eot = item.get("eot", 10)
        specs.append(ModelSpec(label, name, arch, entry, file, sha, kwargs, defense, tuple(adaptive), eot,
                               classifier_only))
    labels = [s.label for s in specs]
    dup = sorted({x for x in labels if labels.count(x) > 1})
    if dup:
        raise ConfigError(
            f"models: label {dup[0]!r} is used twice; give each model a distinct 'label'"
        )
    return tuple(specs)


def _adaptive_mode(mode: str, where: str) -> str:
    """A mode of the ``adaptive:`` axis, canonical: ``none``, ``bpda``, ``bpda+eot`` or ``bpda:SPEC``."""
    from ..defenses import parse_adaptive
    from ..errors import InputError

    try:
        base, backward = parse_adaptive(mode)
    except InputError as exc:
        hint = _suggest(mode.partition(":")[0], ADAPTIVE_MODES)
        raise ConfigError(f"{where}: {exc}{hint}") from None
    return base if backward is None else f"{base}:{backward}"


def _parse_source(value: object, where: str, base_dir: Path) -> SourceSpec:
    """``source:`` of an attack entry: the model the attack differentiates (transfer attack).

    ``classifier`` (or ``{classifier: true, defense: SPEC}``): the target's own classifier
    without its defense (or behind another one, e.g. a smooth surrogate of a soft quantizer);
    otherwise a model entry as under ``models:`` (a zoo name, ``file``, ``arch`` + ``file``,
    ``entry``, with an optional ``defense``).
    """
    if value == "classifier":
        return SourceSpec(classifier=True)
    if isinstance(value, dict) and "classifier" in value:
        return SourceSpec(classifier=True, defense=_parse_defense(value.get("defense"), f"{where}.defense"))
    if isinstance(value, dict) and "adaptive" in value:
        raise ConfigError(f"{where}.adaptive: a source model is attacked as is; put adaptive modes on models")
    (model,) = _parse_models([value], base_dir, None, where=where, defended_adaptive=False)
    return SourceSpec(model=model)


def _check_zoo_name(name: str, where: str) -> None:
    try:
        from .. import models as zoo

        names = list(zoo.list())
    except (ImportError, AttributeError):
        return  # the zoo is not available in this installation; loading will report it
    names = [n if isinstance(n, str) else getattr(n, "name", str(n)) for n in names]
    if name not in names:
        raise ConfigError(
            f"{where}: unknown model {name!r}{_suggest(name, names)}; shipped models: "
            f"{_allowed(names)} (or use 'file', 'arch' + 'file', or 'entry' for your own model)"
        )


def _zoo_sha256(name: str) -> str | None:
    """The weights' sha256 from a shipped model's manifest (ties run ids to exact weights)."""
    try:
        from .. import models as zoo

        value = zoo.manifest(name).get("sha256")
    except Exception:  # no zoo in this installation: the name alone identifies the model
        return None
    return value if isinstance(value, str) else None


def _zoo_defended(name: str) -> bool:
    """Whether a shipped model is a defended one (its manifest names a defense)."""
    try:
        from .. import models as zoo

        return bool(zoo.manifest(name).get("defense"))
    except Exception:  # noqa: BLE001 - an unreadable manifest is reported when the model loads
        return False


def _check_arch(arch: str, where: str) -> None:
    try:
        from ..models.architectures import ARCHITECTURES
    except ImportError:
        return
    if arch not in ARCHITECTURES:
        raise ConfigError(
            f"{where}: unknown architecture {arch!r}{_suggest(arch, ARCHITECTURES)}; allowed: "
            f"{_allowed(ARCHITECTURES)}"
        )


DATASET_NAMES = ("fashion-mnist", "mnist", "mnist-5k", "cifar10", "folder:<path>")


def _parse_data(value: object, base_dir: Path) -> DataSpec:
    if value is None:
        raise ConfigError(
            "missing key 'data': name the images, e.g. data: {name: fashion-mnist, "
            "subset: {first: 1000}}"
        )
    if isinstance(value, str):
        value = {"name": value}
    d = _mapping(value, "data")
    if ("name" in d) == ("entry" in d):
        raise ConfigError(
            "data must have exactly one of 'name' (one of "
            f"{', '.join(DATASET_NAMES)}) or 'entry' ('module:function' returning uint8 images "
            "and labels)"
        )
    split = d.get("split", "test")
    name = entry = None
    kwargs: dict = {}
    if "name" in d:
        name = _str(d["name"], "data.name")
        if name.startswith("folder:"):
            folder = Path(name[len("folder:"):]).expanduser()
            if not folder.is_absolute():
                folder = (base_dir / folder).resolve()
            name = f"folder:{folder}"
        elif name not in DATASET_NAMES:
            raise ConfigError(
                f"data.name: unknown dataset {name!r}{_suggest(name, DATASET_NAMES)}; allowed: "
                f"{', '.join(DATASET_NAMES)}"
            )
        if "kwargs" in d:
            raise ConfigError("data.kwargs is only allowed with data.entry")
    else:
        entry = parse_entry(d["entry"], "data.entry", base_dir)
        kw = _mapping(d.get("kwargs", {}) or {}, "data.kwargs")
        kwargs = {k: _value(v, f"data.kwargs.{k}") for k, v in kw.items()}
    return DataSpec(name, split, _parse_subset(d.get("subset")), entry, kwargs)


def _parse_subset(value: object) -> tuple:
    """The subset (its types were checked by the schema): all, first N, a range or indices."""
    if value is None or value == "all":
        return ("all",)
    if isinstance(value, int):
        return ("first", value)
    s = {k: v for k, v in value.items() if v is not None}  # type: ignore[union-attr]
    if len(s) != 1:
        raise ConfigError(
            "data.subset must have exactly one of 'first' (N), 'range' ([start, stop]) or "
            f"'indices' ([i, j, ...]), got {', '.join(s) or 'an empty mapping'}"
        )
    (kind, arg), = s.items()
    if kind == "first":
        return ("first", arg)
    if kind == "range":
        start, stop = arg
        if stop <= start:
            raise ConfigError(f"data.subset.range: stop ({stop}) must be > start ({start})")
        return ("range", start, stop)
    if len(arg) > 10_000_000:
        raise ConfigError("data.subset.indices is too long (at most 10,000,000 entries)")
    if len(set(arg)) != len(arg):
        raise ConfigError("data.subset.indices contains duplicates; list each image once")
    return ("indices", tuple(arg))


def _parse_grid(value: object, params: dict, where: str) -> tuple[tuple[str, ...], list[dict]]:
    """A grid: a mapping of lists (Cartesian product) or a list of mappings (explicit points).

    Returns the swept keys and the grid points, in config order.
    """
    if value is None or value == {} or value == []:
        return (), []
    if isinstance(value, dict):
        grid = _mapping(value, where)
        lists = {}
        for k, v in grid.items():
            if k in params:
                raise ConfigError(f"{where}.{k} is also in params; keep it in one of them")
            if not isinstance(v, list) or not v:
                raise ConfigError(f"{where}.{k} must be a non-empty list of values, got {v!r}")
            lists[k] = _value(v, f"{where}.{k}")
        size = math.prod(len(v) for v in lists.values())
        if size > MAX_RUNS:
            raise ConfigError(
                f"{where} expands to {size} points; at most {MAX_RUNS} are allowed; shrink it"
            )
        keys = tuple(lists)
        points = [dict(zip(keys, combo, strict=True))
                  for combo in itertools.product(*(lists[k] for k in keys))]
        return keys, points
    if isinstance(value, list):
        if len(value) > MAX_LIST:
            raise ConfigError(f"{where} has {len(value)} points; at most {MAX_LIST} are allowed")
        points = []
        keys: tuple[str, ...] = ()
        for j, point in enumerate(value):
            point = _mapping(point, f"{where}[{j}]")
            if not point:
                raise ConfigError(f"{where}[{j}] is empty; a grid point sets at least one value")
            if j == 0:
                keys = tuple(point)
            elif set(point) != set(keys):
                raise ConfigError(
                    f"{where}[{j}] sets {', '.join(sorted(point))} but {where}[0] sets "
                    f"{', '.join(sorted(keys))}; every grid point must set the same parameters"
                )
            for k in point:
                if k in params:
                    raise ConfigError(f"{where}[{j}].{k} is also in params; keep it in one place")
            points.append({k: _value(point[k], f"{where}[{j}].{k}") for k in keys})
        return keys, points
    raise ConfigError(
        f"{where} must be a mapping of value lists (every combination is run) or a list of "
        f"mappings (each one grid point), got {_type_name(value)}"
    )


def attack_registry() -> dict[str, Any]:
    """The attacks a config can name: :data:`quantadv.attacks.REGISTRY`, plus ``evaluate`` (the
    ensemble of :func:`quantadv.evaluate` as one attack entry, :func:`quantadv.eval.evaluate_attack`)."""
    try:
        from ..attacks import REGISTRY
        from ..eval import evaluate_attack
    except ImportError:
        return {}
    return {**REGISTRY, "evaluate": evaluate_attack}


def _parse_attacks(value: object, base_dir: Path) -> tuple[AttackSpec, ...]:
    registry = attack_registry()
    if value is None:
        raise ConfigError(
            f"missing key 'attacks': list at least one attack (allowed: "
            f"{_allowed(sorted(registry))})"
        )
    if isinstance(value, dict):
        value = [value]
    if not isinstance(value, list) or not value:
        raise ConfigError(f"attacks must be a non-empty list of mappings, got {value!r}")
    specs = []
    for i, item in enumerate(value):
        where = f"attacks[{i}]"
        if isinstance(item, str):
            item = {"name": item}
        item = _mapping(item, where)
        if ("name" in item) == ("entry" in item):
            raise ConfigError(
                f"{where} must have exactly one of 'name' (one of {_allowed(sorted(registry))}) "
                "or 'entry' ('module:function' for your own attack)"
            )
        name = entry = None
        if "name" in item:
            name = _str(item["name"], f"{where}.name")
            if name not in registry:
                raise ConfigError(
                    f"{where}.name: unknown attack {name!r}{_suggest(name, registry)}; allowed: "
                    f"{_allowed(sorted(registry))} (or 'entry: module:function' for your own)"
                )
            fn = registry[name]
        else:
            entry = parse_entry(item["entry"], f"{where}.entry", base_dir)
            fn = load_entry(entry, f"{where}.entry")
        raw_params = _mapping(item.get("params", {}) or {}, f"{where}.params")
        params = {k: _value(v, f"{where}.params.{k}") for k, v in raw_params.items()}
        what = f"attack {name or entry.spec}"  # type: ignore[union-attr]
        grid_keys, points = _parse_grid(item.get("grid"), params, f"{where}.grid")
        search = None
        searched: dict = {}
        if "search" in item:
            search = _parse_search(item["search"], fn, params, grid_keys, f"{where}.search", what)
            searched = {search[0]: search[2]}  # check the searched parameter at its upper end
        # Check the fixed parameters with a representative grid point, then every grid point.
        probe = {**params, **(points[0] if points else {}), **searched}
        checked = check_params(fn, probe, f"{where}.params", what)
        params = {k: checked[k] for k in params}
        checked_points = []
        for j, point in enumerate(points):
            wh = f"{where}.grid" if isinstance(item.get("grid"), dict) else f"{where}.grid[{j}]"
            full = check_params(fn, {**params, **point, **searched}, wh, what)
            checked_points.append({k: full[k] for k in grid_keys})
        seen = [canonical_json(p) for p in checked_points]
        if len(set(seen)) != len(seen):
            dup = next(p for p in seen if seen.count(p) > 1)
            raise ConfigError(f"{where}.grid lists the point {dup} twice; list each once")
        label = _label(item.get("label", name or entry.function), f"{where}.label")  # type: ignore[union-attr]
        chosen = None
        if "postprocess" in item:
            chosen = _str_list(item["postprocess"], f"{where}.postprocess")
        repeat = item.get("repeat", 1)
        if repeat > 1 and not (accepts_keyword(fn, "generator") or accepts_keyword(fn, "seed")):
            raise ConfigError(f"{where}.repeat: {what} takes no seed or generator, so its repeats would be identical")
        source = _parse_source(item["source"], f"{where}.source", base_dir) if "source" in item else None
        specs.append(
            AttackSpec(i, label, name, entry, params, tuple(checked_points), grid_keys, chosen, search, repeat,
                       source, tuple(item["models"]) if item.get("models") else None)
        )
    labels = [s.label for s in specs]
    dup = sorted({x for x in labels if labels.count(x) > 1})
    if dup:
        raise ConfigError(
            f"attacks: label {dup[0]!r} is used by two entries; give each a distinct 'label' "
            "(e.g. label: pgd-l2)"
        )
    return tuple(specs)


def _parse_search(value: object, fn: Any, fixed: dict, grid_keys: tuple, where: str, what: str) -> tuple:
    """``search: {eps: [low, high], rounds: 5}``: bisect one budget per image (paper 000 Sec. 5.4)."""
    d = _mapping(value, where)
    rounds = _int(d.get("rounds", 5), f"{where}.rounds", 1)
    names = [k for k in d if k != "rounds"]
    if len(names) != 1:
        raise ConfigError(
            f"{where} must name exactly one parameter with its interval, e.g. {{eps: [0.0, 0.06], rounds: 5}}; "
            f"got keys {sorted(d)}"
        )
    param = names[0]
    bounds = d[param]
    if (not isinstance(bounds, list) or len(bounds) != 2
            or not all(isinstance(b, (int, float)) and not isinstance(b, bool) for b in bounds)
            or not 0 <= bounds[0] < bounds[1] or not math.isfinite(bounds[1])):
        raise ConfigError(f"{where}.{param} must be [low, high] with 0 <= low < high, got {bounds!r}")
    if param in fixed or param in grid_keys:
        raise ConfigError(f"{where}: {param} is searched; remove it from params and grid")
    if param not in configurable_params(fn) and not accepts_keyword(fn, param):
        raise ConfigError(
            f"{where}: {what} has no parameter {param!r}{_suggest(param, configurable_params(fn))}; "
            f"allowed: {_allowed(sorted(configurable_params(fn)))}"
        )
    if not accepts_keyword(fn, "return_info"):
        raise ConfigError(f"{where}: {what} has no return_info= argument, which a search needs")
    return (param, float(bounds[0]), float(bounds[1]), rounds)


def accepts_keyword(fn: Any, name: str) -> bool:
    """Whether ``fn`` accepts the keyword ``name`` (by name or through ``**kwargs``)."""
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    return name in params or any(p.kind == p.VAR_KEYWORD for p in params.values())


def _str_list(value: object, where: str) -> tuple[str, ...]:
    """A non-empty list of distinct strings (a single string is a list of one)."""
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{where} must be a non-empty list of labels, got {value!r}")
    if len(set(value)) != len(value):
        raise ConfigError(f"{where} lists a label twice: {value!r}")
    return tuple(value)


def postprocess_registry() -> dict[str, Any]:
    """Post-processing steps available in this installation: ``none`` plus the quantizers."""
    out: dict[str, Any] = {"none": None}
    try:
        from .. import quantize
    except ImportError:
        return out
    for name, fn_name in POSTPROCESS_FUNCTIONS.items():
        fn = getattr(quantize, fn_name, None)
        if fn is not None:
            out[name] = fn
    return out


def _parse_postprocess(value: object) -> tuple[PostprocessSpec, ...]:
    registry = postprocess_registry()
    if value is None:
        return (PostprocessSpec("none", "none"),)
    if isinstance(value, str | dict):
        value = [value]
    if not isinstance(value, list) or not value:
        raise ConfigError(
            f"postprocess must be a non-empty list; allowed entries: {_allowed(registry)}"
        )
    specs = []
    for i, item in enumerate(value):
        where = f"postprocess[{i}]"
        if isinstance(item, str):
            item = {"name": item}
        item = _mapping(item, where)
        name = _str(item.get("name"), f"{where}.name")
        if name not in registry:
            known = ["none", *POSTPROCESS_FUNCTIONS]
            hint = (
                " (it is not available in this installation)" if name in POSTPROCESS_FUNCTIONS
                else _suggest(name, known)
            )
            raise ConfigError(
                f"{where}.name: unknown post-processing {name!r}{hint}; allowed: "
                f"{_allowed(registry)}"
            )
        raw = _mapping(item.get("params", {}) or {}, f"{where}.params")
        params = {k: _value(v, f"{where}.params.{k}") for k, v in raw.items()}
        if name == "none":
            if params:
                raise ConfigError(f"{where}.params: 'none' takes no parameters")
        else:
            # originals: data -> the data set's own files of the batch's images (a data entry that
            # returns (images, labels, files)), e.g. JPEG originals for lagrangian_jpeg
            from_data = params.get("originals") == "data"
            if from_data and "originals" not in configurable_params(registry[name]):
                raise ConfigError(f"{where}.params.originals: quantizer {name} takes no originals")
            rest = {k: v for k, v in params.items() if not (from_data and k == "originals")}
            params = check_params(registry[name], rest, f"{where}.params", f"quantizer {name}")
            if from_data:
                params["originals"] = "data"
        specs.append(PostprocessSpec(_label(item.get("label", name), f"{where}.label"), name, params))
    labels = [s.label for s in specs]
    dup = sorted({x for x in labels if labels.count(x) > 1})
    if dup:
        raise ConfigError(
            f"postprocess: label {dup[0]!r} appears twice; give each entry a distinct 'label'"
        )
    return tuple(specs)


def _parse_summary(value: object, attacks: tuple[AttackSpec, ...]) -> dict:
    """``summary: {carry: eps, steps: [10, 20], any: true, compare: [[pgd, "pqgd:b=200"]],
    headline: [pgd40, oblivious], headline_by: eps}``."""
    if value is None:
        return {}
    d = {k: v for k, v in _mapping(value, "summary").items() if v is not None}  # types: schema.py
    out: dict = {k: d[k] for k in ("carry", "steps", "any", "headline_by") if k in d}
    if "headline" in d:
        labels = [a.label for a in attacks]
        for label in d["headline"]:
            if label not in labels:
                raise ConfigError(f"summary.headline: {label!r} is not an attack label{_suggest(label, labels)}; "
                                  f"labels: {_allowed(labels)}")
        out["headline"] = list(d["headline"])
    elif "headline_by" in d:
        raise ConfigError("summary.headline_by needs summary.headline (the attack labels to take the minimum over)")
    if "compare" in d:
        pairs = d["compare"]
        labels = [a.label for a in attacks]
        out["compare"] = []
        for i, pair in enumerate(pairs):
            for x in pair:
                label = x.partition(":")[0]
                if label not in labels:
                    raise ConfigError(
                        f"summary.compare[{i}]: {label!r} is not an attack label{_suggest(label, labels)}; "
                        f"labels: {_allowed(labels)}"
                    )
            out["compare"].append(list(pair))
    return out


def _parse_defense(value: object, where: str = "defense") -> str | None:
    """A defense spec string (``"softq:levels=1,alpha=1000"``), checked by building it once."""
    if value is None or value == "none":
        return None
    if not isinstance(value, str):
        raise ConfigError(f"{where} must be a defense spec string such as 'softq:levels=1,alpha=1000', "
                          f"got {_type_name(value)}")
    try:
        from ..defenses import parse_defense
    except ImportError as exc:  # pragma: no cover - the package ships quantadv.defenses
        raise ConfigError(f"{where}: quantadv.defenses is not available: {exc}") from None
    try:
        parse_defense(value)
    except ValueError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    return value.strip()


# ---------------------------------------------------------------------------------------------
# Public entry points


def load_entry(entry: EntryPoint, where: str) -> Any:
    """Import and return the callable an :class:`EntryPoint` names."""
    import importlib
    import importlib.util
    import sys

    try:
        if entry.file is not None:
            mod_name = f"_quantadv_entry_{hashlib.sha256(str(entry.file).encode()).hexdigest()[:12]}"
            module = sys.modules.get(mod_name)
            if module is None:
                spec = importlib.util.spec_from_file_location(mod_name, entry.file)
                if spec is None or spec.loader is None:
                    raise ConfigError(f"{where}: cannot import {entry.file}")
                module = importlib.util.module_from_spec(spec)
                sys.modules[mod_name] = module
                try:
                    spec.loader.exec_module(module)
                except BaseException:
                    del sys.modules[mod_name]
                    raise
        else:
            module = importlib.import_module(entry.module)
    except ConfigError:
        raise
    except Exception as exc:
        raise ConfigError(f"{where}: importing {entry.spec!r} failed: {exc!r}") from None
    fn = getattr(module, entry.function, None)
    if fn is None or not callable(fn):
        raise ConfigError(f"{where}: {entry.spec!r} has no callable {entry.function!r}")
    return fn


def _resolve_runs(cfg: ExperimentConfig) -> tuple[RunSpec, ...]:
    total = sum(max(1, len(m.adaptive)) for m in cfg.models) * sum(max(1, len(a.grid)) * a.repeat for a in cfg.attacks)
    if total > MAX_RUNS:
        raise ConfigError(
            f"the config expands to {total} runs (models x grid points); at most {MAX_RUNS} are "
            "allowed; shrink the grids"
        )
    runs: list[RunSpec] = []
    seen: dict[str, str] = {}
    for model, attack, params, mode, rep_i in (
        (m, a, p, mode, r)
        for m in cfg.models for a in cfg.attacks for p in a.points()
        # a transfer attack sees its source, not the defended model: one run, no adaptive modes
        for mode in (m.adaptive if m.adaptive and a.source is None else ("none",)) for r in range(a.repeat)
        if a.models is None or m.label in a.models
    ):
        if attack.source is not None and attack.source.classifier and not model.defense and not (
                model.name and _zoo_defended(model.name)):
            raise ConfigError(
                f"attacks[{attack.index}].source: 'classifier' is the undefended classifier of a defended "
                f"model, but model {model.label!r} has no defense; name a source model instead"
            )
        resolved = {
            "model": model.identity(),
            "data": cfg.data.identity(),
            "attack": attack.identity(),
            "params": params,
            "seed": cfg.seed,
            "batch_size": cfg.batch_size,
            "targets": cfg.targets,
        }
        # Keys added only when used, so that runs without them keep their ids. Skipping the
        # misclassified images is the default: a store made by older code (which attacked
        # them) has other run ids and is refused, not silently mixed.
        if not cfg.attack_misclassified:
            resolved["skip_misclassified"] = True
        if model.adaptive and attack.source is None:
            resolved["adaptive"] = mode
            if mode.startswith("bpda+eot"):
                resolved["eot"] = model.eot
        if attack.repeat > 1:
            resolved["repeat"] = rep_i
        run_id = hashlib.sha256(canonical_json(resolved).encode()).hexdigest()[:16]
        run = RunSpec(run_id, model, attack, params, resolved, mode, rep_i)
        if run_id in seen:
            raise ConfigError(
                f"attacks[{attack.index}] repeats a run already listed ({seen[run_id]}); "
                "remove the duplicate entry or grid value"
            )
        seen[run_id] = run.description
        runs.append(run)
    return tuple(runs)


def parse_config(
    data: str | dict, *, base_dir: str | Path = ".", source: str = "config"
) -> ExperimentConfig:
    """Validate a config given as YAML text or an already-parsed mapping.

    Parameters
    ----------
    data : YAML text, or the mapping ``yaml.safe_load`` would return.
    base_dir : directory against which relative input paths are resolved.
    source : name used in error messages (the file name).

    Raises
    ------
    ConfigError
        For anything wrong, naming the offending key and the allowed values.
    """
    base = Path(base_dir)
    raw = _read_yaml(data, source) if isinstance(data, str) else data
    if isinstance(data, str):
        text = data
    else:
        try:  # keep a readable copy of a config given as a mapping, for the store and report
            text = yaml.safe_dump(data, sort_keys=False)
        except yaml.YAMLError:
            text = ""
    if raw is None:
        raise ConfigError(f"{source} is empty; a config needs experiment, models, data, attacks")
    top = _mapping(raw, "the config")
    shape = check_structure(top)  # types, ranges and keys, from the one description (schema.py)
    name = shape.experiment
    description = shape.description or ""
    seed, device, batch_size, save_images = shape.seed, shape.device, shape.batch_size, shape.save_images
    targets = "none" if shape.targets is None else shape.targets
    store = Path(shape.store or f"results/{name}.db").expanduser()
    default_defense = _parse_defense(top.get("defense"))
    attack_misclassified = shape.attack_misclassified
    models = _parse_models(top.get("models"), base, default_defense)
    data_spec = _parse_data(top.get("data"), base)
    attacks = _parse_attacks(top.get("attacks"), base)
    postprocess = _parse_postprocess(top.get("postprocess"))
    model_labels = [m.label for m in models]
    for a in attacks:
        for lab in a.models or ():
            if lab not in model_labels:
                raise ConfigError(f"attacks[{a.index}].models: {lab!r} is not a model label"
                                  f"{_suggest(lab, model_labels)}; labels: {_allowed(model_labels)}")
    known = [p.label for p in postprocess]
    for a in attacks:
        for lab in a.postprocess or ():
            if lab not in known:
                raise ConfigError(
                    f"attacks[{a.index}].postprocess: {lab!r} is not in the top-level postprocess "
                    f"list{_suggest(lab, known)}; allowed: {_allowed(known)}"
                )
    summary = _parse_summary(top.get("summary"), attacks)
    cfg = ExperimentConfig(
        experiment=name,
        summary=summary,
        description=description,
        seed=seed,
        device=device,
        batch_size=batch_size,
        store=store,
        save_images=save_images,
        targets=targets,
        models=models,
        data=data_spec,
        attacks=attacks,
        postprocess=postprocess,
        attack_misclassified=attack_misclassified,
        save_preprocessed=shape.save_preprocessed,
        source=text,
        base_dir=base,
    )
    import dataclasses

    return dataclasses.replace(cfg, runs=_resolve_runs(cfg))


def load_config(path: str | Path) -> ExperimentConfig:
    """Read and validate a YAML config file (relative inputs resolve against its directory)."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"config file {str(p)!r} not found") from None
    except IsADirectoryError:
        raise ConfigError(f"{str(p)!r} is a directory, not a config file") from None
    except UnicodeDecodeError:
        raise ConfigError(f"config file {str(p)!r} is not UTF-8 text") from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {str(p)!r}: {exc.strerror}") from None
    return parse_config(text, base_dir=p.resolve().parent, source=str(p))
