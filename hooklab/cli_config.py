"""Command-line options generated from config dataclasses: one declaration per option.

Each field of a :class:`~hooklab.config.Config` becomes ``--field-name`` with the field's
default and docstring; a tuple field takes one comma-separated value and also answers to its
singular name (``--directions`` / ``--direction``); a ``Literal`` field offers its values; a
``bool`` field is a ``--x / --no-x`` flag. Values are read back through
:meth:`Config.from_dict`, so the CLI, a TOML spec and Python accept and refuse the same things.

``experiment_command(experiment)`` is the whole ``hooklab NAME`` command of an experiment: its
config's options plus the pair, prompts (for experiments that read prompts) and execution
options (also generated from their specs) and ``--out``, ``--seed``, ``--shard``,
``--dry-run``, ``--write-spec``.
"""

from __future__ import annotations

import dataclasses
import inspect
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal, get_args, get_origin

import typer

from hooklab.config import Config, field_docs

__all__ = ["config_parameters", "options_to_dict", "experiment_command", "RENAMED"]

#: Option names that differ from their field names (spec section, field) -> option.
RENAMED = {("pair", "name"): "pair", ("prompts", "source"): "prompts"}


def _option_type(tp: Any) -> Any:
    """The Python type typer parses an option of field type ``tp`` as."""
    origin = get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        inner = _option_type(args[0]) if len(args) == 1 else str
        return inner | None
    if origin in (Literal, tuple):
        return str  # Literal: checked (with the accepted values) by Config.from_dict
    return tp if tp in (bool, int, float, str) else str


def _help(cls: type[Config], name: str, tp: Any) -> str:
    text = field_docs(cls).get(name, "")  # type: ignore[arg-type]  # classes are hashable
    values = get_args(tp) if get_origin(tp) is Literal else ()
    if get_origin(tp) is tuple and get_origin(get_args(tp)[0]) is Literal:
        values = get_args(get_args(tp)[0])
    if values and not all(str(v) in text for v in values):
        text += f" One of: {', '.join(map(str, values))}."
    return text


def _prefix(cls: type[Config]) -> str:
    """Prefix of ``cls``'s parameter names: ``SECTION__`` (a dash in a section such as
    ``attention-entropy`` becomes ``_``: parameter names are Python identifiers)."""
    return f"{cls.section.replace('-', '_')}__"


def config_parameters(
    cls: type[Config], *, exclude: tuple[str, ...] = ()
) -> list[inspect.Parameter]:
    """One typer option per field of ``cls`` (help = the field's docstring), as parameters
    named ``SECTION__FIELD`` (see :func:`_prefix`)."""
    types_ = cls.field_types()
    parameters = []
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        if f.name in exclude:
            continue
        tp = types_[f.name]
        option = RENAMED.get((cls.section, f.name), f.name).replace("_", "-")
        names = [f"--{option}"]
        if get_origin(tp) is tuple and option.endswith("s"):
            names.append(f"--{option[:-1]}")
        default: Any = f.default
        if default is dataclasses.MISSING:
            default = f.default_factory()  # type: ignore[misc,operator]
        if isinstance(default, tuple):
            default = ",".join(map(str, default))
        if tp is bool:
            names = [f"--{option}/--no-{option}"]
        option_type = _option_type(tp)
        annotation = Annotated[option_type, typer.Option(*names, help=_help(cls, f.name, tp))]  # type: ignore[valid-type]
        parameters.append(
            inspect.Parameter(
                f"{_prefix(cls)}{f.name}",
                inspect.Parameter.KEYWORD_ONLY,
                default=default,
                annotation=annotation,
            )
        )
    return parameters


def options_to_dict(cls: type[Config], kwargs: dict[str, Any]) -> dict[str, Any]:
    """The CLI values of ``cls``'s options as a raw dict for :meth:`Config.from_dict`."""
    prefix = _prefix(cls)
    return {k[len(prefix) :]: v for k, v in kwargs.items() if k.startswith(prefix)}


def _parameter(name: str, tp: Any, default: Any, help: str) -> inspect.Parameter:
    return inspect.Parameter(
        name,
        inspect.Parameter.KEYWORD_ONLY,
        default=default,
        annotation=Annotated[tp, typer.Option(f"--{name.replace('_', '-')}", help=help)],
    )


def experiment_command(
    experiment: Any, run: Callable[[Any, dict[str, Any]], None]
) -> Callable[..., None]:
    """The function behind ``hooklab NAME``: it builds the experiment's
    :class:`~hooklab.runs.RunSpec` from the options and hands it to ``run(spec, options)``.
    Register it with ``app.command(NAME)``."""
    from hooklab.runs.spec import ExecutionSpec, PairSpec, PromptSpec, RunSpec

    parameters = [
        _parameter(
            "out",
            Path,
            ...,
            f"Output folder ({experiment.table}.parquet, manifest, summaries, parts/).",
        ),
        _parameter("seed", int, 0, "Seed of every random draw and of the bootstrap summaries."),
    ]
    if experiment.uses_histories:
        parameters.append(
            _parameter(
                "histories",
                Path | None,
                None,
                "Reuse the histories of an earlier graft or readout run (its folder).",
            )
        )
    parameters += config_parameters(experiment.config_type, exclude=("seed",))
    spec_types = [PairSpec, PromptSpec, ExecutionSpec]
    if not experiment.uses_prompts:
        spec_types.remove(PromptSpec)
    for spec_type in spec_types:
        parameters += config_parameters(spec_type)
    parameters += [
        _parameter("shard", str | None, None, "Run only shard i/n of the parts (e.g. 0/4)."),
        _parameter("dry_run", bool, False, "Print the plan (prompts, passes, size) and stop."),
        _parameter(
            "write_spec", Path | None, None, "Write the run spec (TOML) this would run, and stop."
        ),
    ]

    def command(**kwargs: Any) -> None:
        spec = RunSpec(
            experiment=experiment.name,
            out=str(kwargs["out"]),
            seed=kwargs["seed"],
            pair=PairSpec.from_dict(options_to_dict(PairSpec, kwargs)),
            # a run without prompts is one part: the first prompt stands for the run
            prompts=PromptSpec.from_dict(options_to_dict(PromptSpec, kwargs))
            if experiment.uses_prompts
            else PromptSpec(limit=1),
            execution=ExecutionSpec.from_dict(options_to_dict(ExecutionSpec, kwargs)),
            config=experiment.config_type.from_dict(
                options_to_dict(experiment.config_type, kwargs), section=experiment.name
            ),
            histories=None if kwargs.get("histories") is None else str(kwargs["histories"]),
        )
        run(spec, kwargs)

    command.__signature__ = inspect.Signature(parameters)  # type: ignore[attr-defined]
    command.__doc__ = experiment.summary or experiment.__doc__
    command.__name__ = experiment.name
    return command
