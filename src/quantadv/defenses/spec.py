"""Defense spec strings: ``NAME:key=value,...`` -> an ``nn.Module``.

One syntax for ``quantadv train --defense``, the ``defense:`` key of experiment configs and the
``defense`` field of zoo manifests::

    softq:levels=1,alpha=1000        SoftQuantization(levels=1, alpha=1000)   (paper 002, Eq. 3)
    hardq:levels=1                   HardQuantization(levels=1)
    randdisc:k=2,sigma=4/255,tau=4/255                                         (paper 003)
    prd:s=2,k=2,sigma=4/255,tau=4/255
    swrd:s=2,k=2,sigma=4/255,tau=4/255,beta=1

Numbers may be written as products or quotients (``alpha=100*255``, ``sigma=4/255``). The
paper-003 names come from :data:`quantadv.defenses.vector_quantization.SPECS`, whose module
parses its own parameters.
"""

from __future__ import annotations

from torch import nn

from ..errors import InputError
from .soft_quantization import HardQuantization, SoftQuantization

__all__ = ["SPEC_NAMES", "format_spec", "parse_defense", "parse_spec"]

# name -> (class, {parameter: type}, required parameters)
_OWN: dict[str, tuple[type[nn.Module], dict[str, type], tuple[str, ...]]] = {
    "softq": (SoftQuantization, {"levels": int, "alpha": float}, ("levels", "alpha")),
    "hardq": (HardQuantization, {"levels": int}, ("levels",)),
}
_EXAMPLES = {"softq": "softq:levels=1,alpha=1000", "hardq": "hardq:levels=1"}


def _vq_specs() -> dict[str, type[nn.Module]]:
    try:
        from . import vector_quantization
    except ImportError:  # pragma: no cover - only while paper 003's module is absent
        return {}
    return dict(getattr(vector_quantization, "SPECS", {}))


def spec_names() -> tuple[str, ...]:
    """Every defense name :func:`parse_defense` knows."""
    return tuple(_OWN) + tuple(n for n in _vq_specs() if n not in _OWN)


SPEC_NAMES = spec_names()


def parse_spec(text: object) -> tuple[str, dict[str, str]]:
    """Split ``"name:k1=v1,k2=v2"`` into ``("name", {"k1": "v1", "k2": "v2"})`` (name lower-cased).

    Raises :class:`~quantadv.errors.InputError` on an empty spec, an entry without ``=``, an
    empty key or value, or a repeated key.
    """
    if not isinstance(text, str) or not text.strip():
        raise InputError(
            f"a defense spec must be a string like 'softq:levels=1,alpha=1000', got {text!r}"
        )
    name, _, rest = text.strip().partition(":")
    name = name.strip().lower()
    if not name:
        raise InputError(f"defense spec {text!r} has no name before ':' (e.g. softq:levels=1,alpha=1000)")
    params: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in rest.split(","))):
        key, eq, value = item.partition("=")
        key, value = key.strip().lower(), value.strip()
        if not eq or not key or not value:
            raise InputError(f"defense spec {text!r}: {item!r} is not key=value (e.g. levels=1)")
        if key in params:
            raise InputError(f"defense spec {text!r}: parameter {key!r} given twice")
        params[key] = value
    return name, params


def _number(name: str, key: str, value: str, kind: type) -> int | float:
    try:
        if kind is int:
            return int(value)
        for op in ("*", "/"):
            if op in value:
                a, b = value.split(op, 1)
                return float(a) * float(b) if op == "*" else float(a) / float(b)
        return float(value)
    except (ValueError, ZeroDivisionError):
        hint = "an integer" if kind is int else "a number (products and quotients like 100*255 or 4/255 work)"
        raise InputError(f"{name}: {key}={value!r} is not {hint}") from None


def parse_defense(spec: object) -> nn.Module:
    """Build the defense module a spec string names (see the module docstring).

    >>> parse_defense("softq:levels=1,alpha=1000")
    SoftQuantization(levels=1, alpha=1000)

    Raises :class:`~quantadv.errors.InputError` naming the known defenses for an unknown
    name, and the allowed parameters for an unknown or missing one.
    """
    name, params = parse_spec(spec)
    if name in _OWN:
        cls, types, required = _OWN[name]
        unknown = sorted(set(params) - set(types))
        if unknown:
            raise InputError(
                f"{name}: unknown parameter(s) {', '.join(unknown)}; allowed: {', '.join(types)} "
                f"(e.g. {_EXAMPLES[name]})"
            )
        missing = [k for k in required if k not in params]
        if missing:
            raise InputError(f"{name}: missing parameter(s) {', '.join(missing)} (e.g. {_EXAMPLES[name]})")
        return cls(**{k: _number(name, k, v, types[k]) for k, v in params.items()})
    vq = _vq_specs()
    if name in vq:
        from .vector_quantization import from_spec

        return from_spec(name, params)
    raise InputError(
        f"unknown defense {name!r} in spec {spec!r}; known defenses: {', '.join(spec_names())} "
        "(e.g. softq:levels=1,alpha=1000)"
    )


def format_spec(spec: object) -> str:
    """The canonical form of a spec string (name and keys lower-cased, no spaces), checked.

    ``format_spec("SoftQ: levels=1, alpha=1000")`` is ``"softq:levels=1,alpha=1000"``; the
    spec is parsed (:func:`parse_defense`) first, so an invalid one raises.
    """
    parse_defense(spec)
    name, params = parse_spec(spec)
    return name + (":" + ",".join(f"{k}={v}" for k, v in params.items()) if params else "")
