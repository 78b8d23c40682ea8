"""The shape of an experiment config, written once: pydantic models -> JSON schema + first checks.

:class:`Config` describes every key of a config file (types, ranges, allowed words, which keys
a mapping may have). It is used twice:

- ``quantadv schema`` prints :func:`json_schema`, the JSON schema of a config file, for editors
  (``# yaml-language-server: $schema=...``, docs/experiments.md) and for other tools;
- :func:`check_structure` validates a parsed YAML document against it before
  :mod:`quantadv.experiments.config` looks at what the values mean (does the attack exist, do
  its parameters fit its signature, does the weight file exist...). A failure is one
  :class:`~quantadv.errors.ConfigError` line naming the key (``attacks[0].repeat``), what it must
  be (the field's description) and what it got; an unknown key gets the allowed keys and the
  closest one.

What the schema cannot know (attack names and their parameters, zoo models, defense specs,
files) stays in ``config.py``; everything structural lives here only.
"""

from __future__ import annotations

import difflib
import json
import typing
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..errors import ConfigError

Scalar = Annotated[None | bool | int | float | str, Field(description="a number, string, boolean or null")]
Value = Annotated[Scalar | list[Scalar], Field(description="a number, string, boolean, null or a list of them")]
Params = Annotated[dict[str, Value], Field(description="a mapping of parameter names to values")]
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
TARGET_MODES = ("none", "random", "next", "least-likely")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class ModelEntry(_Strict):
    """A model: a zoo name, a .safetensors file with its manifest, arch + file, or an entry point."""

    name: str | None = Field(None, description="a shipped model name (quantadv zoo)")
    arch: str | None = Field(None, description="an architecture name (with file)")
    entry: str | None = Field(None, description="'package.module:function' or 'file.py:function' building the network")
    file: str | None = Field(None, description="a .safetensors weight file")
    kwargs: Params | None = Field(None, description="keyword arguments of arch or entry")
    label: str | None = Field(None, description="the name of the model in the store and report")
    defense: str | None = Field(None, description="a defense spec such as 'softq:levels=1,alpha=1000', or none "
                                                  "(a defended zoo model's classifier alone)")
    adaptive: Annotated[str | list[str], Field(
        description="a list of modes: none, bpda, bpda+eot, or bpda:SPEC / bpda+eot:SPEC (a defense spec as "
                    "the backward pass)")] | None = None
    eot: Annotated[int, Field(ge=1, description="an integer >= 1 (draws per gradient in bpda+eot)")] = 10


class ClassifierSource(_Strict):
    """The target's own classifier, without its defense or behind another one."""

    classifier: Literal[True] = Field(description="true: the classifier of the defended target")
    defense: str | None = Field(None, description="a defense spec put in front of the classifier instead")


class Subset(_Strict):
    first: Annotated[int, Field(ge=1, description="an integer >= 1")] | None = None
    range: Annotated[list[Annotated[int, Field(ge=0)]], Field(
        min_length=2, max_length=2, description="[start, stop], two integers >= 0")] | None = None
    indices: Annotated[list[Annotated[int, Field(ge=0)]], Field(
        min_length=1, description="a non-empty list of image indices >= 0")] | None = None


class DataEntry(_Strict):
    name: str | None = Field(None, description="fashion-mnist, mnist, mnist-5k, cifar10 or folder:<path>")
    entry: str | None = Field(None, description="'module:function' returning uint8 images and labels")
    kwargs: Params | None = None
    split: Literal["train", "test"] = Field("test", description="one of 'train', 'test'")
    subset: Annotated[Literal["all"] | Annotated[int, Field(ge=1)] | Subset, Field(
        description="all, N (the first N images), or one of {first: N}, {range: [start, stop]}, "
                    "{indices: [i, ...]}")] | None = None


class AttackEntry(_Strict):
    """An attack: a registry name or an entry point, parameters, a grid, and evaluation axes."""

    name: str | None = Field(None, description=(
        "an attack of quantadv.attacks (quantadv attack --help), or evaluate (the ensemble of quantadv evaluate)"))
    entry: str | None = Field(None, description="'module:function' or 'file.py:function' of your own attack")
    label: str | None = Field(None, description="the name of the entry in the store and report")
    params: Params | None = None
    grid: Annotated[dict[str, list[Value]] | list[dict[str, Value]], Field(
        description="a mapping of value lists (every combination) or a list of mappings (grid points)")] | None = None
    postprocess: Annotated[str | list[str], Field(
        description="labels of the top-level postprocess list")] | None = None
    search: Annotated[dict[str, Annotated[int, Field(ge=1)] | list[int | float]], Field(
        description="{PARAM: [low, high], rounds: N}: a per-image bisection of one budget")] | None = None
    repeat: Annotated[int, Field(ge=1, description="an integer >= 1 (independent runs with other seeds)")] = 1
    models: Annotated[list[str], Field(
        min_length=1, description="labels of the models this entry attacks (default: every model)")] | None = None
    source: Annotated[Literal["classifier"] | str | ClassifierSource | ModelEntry, Field(
        description="the model the attack differentiates (transfer attack; success is judged on the target): "
                    "a zoo name, a model entry, 'classifier' or {classifier: true, defense: SPEC}")] | None = None


class PostprocessEntry(_Strict):
    name: str = Field(description="none or a quantizer: round_nearest, toward_original, gradient_sign, lagrangian, ...")
    label: str | None = None
    params: Params | None = None


class SummaryOptions(_Strict):
    """Options of the robust-accuracy tables of ``quantadv report`` (not part of any run id)."""

    carry: str | None = Field(None, description="a numeric grid parameter (eps) along which breaks carry upward")
    steps: Annotated[list[Annotated[int, Field(ge=0)]], Field(
        min_length=1, description="a non-empty list of iteration counts >= 0")] | None = None
    any: bool | None = Field(None, description="true or false: also judge by 'any iterate was adversarial'")
    compare: Annotated[list[Annotated[list[str], Field(min_length=2, max_length=2)]], Field(
        min_length=1, description="a list of [a, b] pairs of attack labels (label or label:key=value,...)",
    )] | None = None
    headline: Annotated[list[str], Field(
        min_length=2, description="attack labels whose per-image minimum is the headline row, e.g. [pgd40, oblivious]",
    )] | None = None
    headline_by: str | None = Field(None, description="the grid parameter the headline rows are matched on "
                                                      "(default: carry, else eps)")


class Config(_Strict):
    """A quantadv experiment config (``quantadv run CONFIG.yaml``; docs/experiments.md)."""

    experiment: str = Field(pattern=NAME_PATTERN, description=(
        "1-64 letters, digits, '-', '_' or '.' (starting with a letter or digit); it names the store "
        "results/<experiment>.db"))
    description: str | None = Field(None, description="a string")
    seed: Annotated[int, Field(ge=0, description="an integer >= 0")] = 0
    device: str = Field("cpu", pattern=r"^(cpu|cuda(:\d+)?|mps)$", description="one of 'cpu', 'cuda', 'cuda:N', 'mps'")
    batch_size: Annotated[int, Field(ge=1, description="an integer >= 1")] = 100
    store: str | None = Field(None, pattern=r"\.db$", description="a path ending in .db")
    save_images: Annotated[int, Field(ge=0, description="an integer >= 0")] = 8
    save_preprocessed: bool = Field(False, description=(
        "true or false: for a defended model, also store what its classifier sees (the defense's output) "
        "for every saved image, as post-processing '<label>@preprocess'"))
    targets: Annotated[Literal["none", "random", "next", "least-likely"] | Annotated[int, Field(ge=0)] | None, Field(
        description="one of none, random, next, least-likely, or a class index >= 0")] = "none"
    models: Annotated[str | ModelEntry | list[str | ModelEntry], Field(
        description="a non-empty list of zoo names or model mappings, e.g. models: [fmnist-cnn]")]
    data: Annotated[str | DataEntry, Field(
        description="the images, e.g. data: {name: fashion-mnist, subset: {first: 1000}}")]
    attacks: Annotated[str | AttackEntry | list[str | AttackEntry], Field(
        description="a non-empty list of attacks, e.g. attacks: [{name: fgsm, params: {eps: 0.1}}]")]
    postprocess: Annotated[str | PostprocessEntry | list[str | PostprocessEntry], Field(
        description="a non-empty list of post-processing steps (none, round_nearest, lagrangian, ...)")] | None = None
    defense: str | None = Field(None, description="a defense spec string such as 'softq:levels=1,alpha=1000'")
    attack_misclassified: bool = Field(False, description="true or false")
    summary: SummaryOptions | None = None


#: Where an editor finds the schema (docs/experiments.md).
SCHEMA_ID = "https://github.com/quantadv/quantadv/configs/schema.json"


def json_schema() -> dict[str, Any]:
    """The JSON schema (draft 2020-12) of a config file, generated from :class:`Config`."""
    schema = Config.model_json_schema()
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", "$id": SCHEMA_ID, **schema}


# ---------------------------------------------------------------------------------------------
# Errors: a pydantic ValidationError -> one ConfigError line


def _is_tag(item: object) -> bool:
    """Whether a pydantic location item names a union member rather than a key or index."""
    if not isinstance(item, str):
        return False
    return (item[:1].isupper() or "[" in item or item.startswith(("function-", "constrained-", "literal"))
            or item in ("str", "int", "float", "bool", "none", "list", "dict"))


def _path(loc: tuple) -> str:
    out = ""
    for item in loc:
        out += f"[{item}]" if isinstance(item, int) else (f".{item}" if out else str(item))
    return out


def _fields_at(loc: tuple) -> tuple[type[BaseModel] | None, Any]:
    """(the model class whose field is the last key of ``loc``, that field's FieldInfo)."""
    model: type[BaseModel] | None = Config
    info = None
    for item in loc:
        if model is None or isinstance(item, int):
            continue
        info = model.model_fields.get(item)
        if info is None:  # a free key (a parameter name)
            return model, None
        nested = _models_in(info.annotation)
        parent = model
        model = nested[0] if nested else None
        if item == loc[-1]:
            return parent, info
    return model, info


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for a in typing.get_args(annotation) for m in _models_in(a)]


def _type_name(value: object) -> str:
    if value is None:
        return "null"
    return {dict: "mapping", list: "list", str: "string", bool: "boolean"}.get(type(value), type(value).__name__)


def _value_at(data: Any, loc: tuple) -> Any:
    for item in loc:
        try:
            data = data[item]
        except (KeyError, IndexError, TypeError):
            return None
    return data


def _message(err: dict, data: Any) -> str:
    loc = tuple(x for x in err["loc"] if not _is_tag(x))
    where = _path(loc)
    kind = err["type"]
    if kind == "extra_forbidden":
        owner = _owner(loc[:-1])  # the model whose keys these are
        allowed = list(owner.model_fields)
        close = difflib.get_close_matches(str(loc[-1]), allowed, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        return f"unknown key {where}{hint}; allowed keys: {', '.join(allowed)}"
    _, info = _fields_at(loc)
    description = None
    if info is not None:
        description = info.description or next(
            (m.description for m in info.metadata if getattr(m, "description", None)), None)
    if kind == "missing":
        parent, _, key = where.rpartition(".")
        return (f"missing key {key!r}" + (f" in {parent}" if parent else "")
                + (f": {description}" if description else ""))
    value = _value_at(data, loc)
    if description:
        return f"{where} must be {description}, got {value!r} ({_type_name(value)})"
    return f"{where}: {err['msg'][0].lower()}{err['msg'][1:]}, got {value!r} ({_type_name(value)})"


def _owner(loc: tuple) -> type[BaseModel]:
    model: type[BaseModel] = Config
    for item in loc:
        if isinstance(item, int):
            continue
        info = model.model_fields.get(item)
        nested = _models_in(info.annotation) if info is not None else []
        if not nested:
            break
        model = nested[-1]  # source: ClassifierSource | ModelEntry -> the general model entry
    return model


def check_structure(data: Any) -> Config:
    """Validate a parsed config against :class:`Config`; a failure is one :class:`ConfigError` line.

    Among the errors of a failed union, the one deepest in the document is reported (a
    mistake inside ``models[0]`` rather than "models[0] is not a string").
    """
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        errors = exc.errors()
        best = max(errors, key=lambda e: (len([x for x in e["loc"] if not _is_tag(x)]),
                                          e["type"] not in ("string_type", "model_type", "dict_type", "list_type"),
                                          e["type"] != "missing"))
        raise ConfigError(_message(best, data)) from None


def schema_text() -> str:
    return json.dumps(json_schema(), indent=2, sort_keys=False)
