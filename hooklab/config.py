"""Typed configs that are also the CLI and the TOML spec: one declaration per option.

A config is a frozen dataclass deriving from :class:`Config`. Each field's type, default and
docstring (the string literal under the field) are the option's type, default and help text,
whether it is set from Python, from a ``[section]`` of a TOML run spec
(:meth:`Config.from_dict`) or from the command line (``hooklab.cli`` generates the options).

Example::

    @dataclass(frozen=True)
    class MyConfig(Config):
        windows: str = "late"
        '''Window spec: late, mid, early, a:b.'''
        modes: tuple[Mode, ...] = ("module",)
        '''Graft modes.'''

Values read from TOML or the command line are checked against the field types (an ``int``
field refuses ``"2"``; a ``tuple[str, ...]`` field takes a list, or one comma-separated
string, never a string split into characters), and a ``Literal`` refuses values outside it.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import textwrap
import types
import typing
from functools import cache
from typing import Any, ClassVar, Literal, TypeVar, get_args, get_origin

from hooklab.errors import HooklabError

__all__ = ["Config", "field_docs", "coerce", "split_list"]

C = TypeVar("C", bound="Config")


def split_list(text: str) -> tuple[str, ...]:
    """``"a, b,c"`` -> ``("a", "b", "c")``."""
    return tuple(x.strip() for x in text.split(",") if x.strip())


@cache
def field_docs(cls: type) -> dict[str, str]:
    """The docstring under each field of a dataclass (from its source), by field name."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if klass is object or not dataclasses.is_dataclass(klass):
            continue
        try:
            source = textwrap.dedent(inspect.getsource(klass))
        except (OSError, TypeError):  # pragma: no cover - classes built at run time
            continue
        body = ast.parse(source).body[0]
        assert isinstance(body, ast.ClassDef)
        statements = body.body
        for node, after in zip(statements, statements[1:], strict=False):
            if (
                isinstance(node, ast.AnnAssign)
                and isinstance(node.target, ast.Name)
                and isinstance(after, ast.Expr)
                and isinstance(after.value, ast.Constant)
                and isinstance(after.value.value, str)
            ):
                docs[node.target.id] = " ".join(after.value.value.split())
    return docs


def _type_name(tp: Any) -> str:
    origin = get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in get_args(tp))
    if origin is tuple:
        return f"a list of {_type_name(get_args(tp)[0])}"
    return getattr(tp, "__name__", str(tp))


def _coerce_union(value: Any, tp: Any, name: str) -> Any:
    args = get_args(tp)
    if value is None and type(None) in args:
        return None
    for arg in args:
        if arg is type(None):
            continue
        try:
            return coerce(value, arg, name)
        except HooklabError:
            continue
    raise HooklabError(f"{name}={value!r}: expected {_type_name(tp)}.")


def _coerce_tuple(value: Any, tp: Any, name: str) -> tuple:
    (item,) = get_args(tp)[:1]
    if isinstance(value, str):
        value = split_list(value)
    if not isinstance(value, list | tuple):
        raise HooklabError(f"{name}={value!r}: expected {_type_name(tp)}.")
    return tuple(coerce(v, item, name) for v in value)


#: scalar type -> (what it accepts, what the error says is expected)
_SCALARS: dict[type, tuple[Any, str]] = {
    bool: (lambda v: isinstance(v, bool), "true or false"),
    int: (lambda v: isinstance(v, int) and not isinstance(v, bool), "an integer (no quotes)"),
    float: (
        lambda v: isinstance(v, int | float) and not isinstance(v, bool),
        "a number (no quotes)",
    ),
    str: (lambda v: isinstance(v, str), "a string (in quotes)"),
}


def coerce(value: Any, tp: Any, name: str) -> Any:
    """``value`` checked against (and, for lists and comma strings, converted to) type ``tp``.

    Raises:
        HooklabError: naming ``name``, the value, and the expected type.
    """
    origin = get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return _coerce_union(value, tp, name)
    if origin is Literal:
        allowed = get_args(tp)
        if value not in allowed:
            raise HooklabError(
                f"{name}={value!r}: accepted values are {', '.join(map(str, allowed))}."
            )
        return value
    if origin is tuple:
        return _coerce_tuple(value, tp, name)
    if tp in _SCALARS:
        accepts, expected = _SCALARS[tp]
        if not accepts(value):
            raise HooklabError(f"{name}={value!r}: expected {expected}.")
        return float(value) if tp is float else value
    return value


class Config:
    """Base of hooklab's config dataclasses (subclasses are frozen dataclasses)."""

    #: the TOML section and CLI name of this config (e.g. ``"graft"``)
    section: ClassVar[str] = "config"

    @classmethod
    def field_types(cls) -> dict[str, Any]:
        hints = typing.get_type_hints(cls, include_extras=False)
        return {f.name: hints[f.name] for f in dataclasses.fields(cls)}  # type: ignore[arg-type]

    @classmethod
    def from_dict(cls: type[C], raw: Any, *, section: str | None = None) -> C:
        """A validated config from a TOML table or JSON object (unknown keys are refused)."""
        section = section or cls.section
        if not isinstance(raw, dict):
            raise HooklabError(f"[{section}] must be a table of keys, got {raw!r}.")
        types_ = cls.field_types()
        unknown = sorted(set(raw) - set(types_))
        if unknown:
            raise HooklabError(
                f"unknown key(s) {', '.join(f'{section}.{k}' for k in unknown)}; "
                f"[{section}] accepts: {', '.join(sorted(types_))}."
            )
        values = {k: coerce(v, types_[k], f"{section}.{k}") for k, v in raw.items()}
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        """Plain values (tuples as lists), as written to TOML and manifests."""
        out = {}
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            out[f.name] = list(value) if isinstance(value, tuple) else value
        return out
