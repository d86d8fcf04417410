"""The experiment interface and its registry.

An experiment kind (readout, graft, ...) is one :class:`Experiment` object registered under its
name. It owns everything the run machinery, the CLI and the report need to know about it:

* its config dataclass (:attr:`Experiment.config_type`, a :class:`~hooklab.config.Config`: the
  TOML ``[name]`` section and the ``hooklab NAME`` options are generated from it);
* :meth:`~Experiment.validate` (checks that need the layer count but no weights) and
  :meth:`~Experiment.plan` (forward passes, rows, memory for ``--dry-run``);
* :meth:`~Experiment.prepare` (what every part needs once the pair is loaded: lenses, ...) and
  :meth:`~Experiment.run_part` (the rows of one part of prompts);
* :meth:`~Experiment.summarise` (summary files of the merged table),
  :meth:`~Experiment.figures`, :meth:`~Experiment.report_section` and
  :meth:`~Experiment.headline` (the lines echoed after a run).

The run machinery (parts, shards, resume, Ray, out-of-memory halving, manifests) calls these and
never branches on an experiment's name. Experiments shipped with hooklab live in
``hooklab/experiments/``, one module each, and register themselves when imported; every module
there is imported the first time the registry is read. See ``docs/experiments.md``.
"""

from __future__ import annotations

import dataclasses
import importlib
import pkgutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Generic, TypeVar

import pandas as pd

from hooklab.config import Config
from hooklab.errors import HooklabError

__all__ = [
    "Experiment",
    "PartInput",
    "PlanEstimate",
    "register_experiment",
    "get_experiment",
    "experiment_for_config",
    "registered_experiments",
]

C = TypeVar("C", bound=Config)


@dataclass(frozen=True)
class PlanEstimate:
    """What an experiment will compute, before any model loads."""

    forward_passes: int
    """Sequences x passes through one model."""
    rows: int
    """Rows of the merged table."""
    bytes_per_row: int = 60
    """Parquet bytes per row (measured on tiny runs)."""

    @property
    def megabytes(self) -> float:
        return self.rows * self.bytes_per_row / 2**20


@dataclass(frozen=True)
class PartInput(Generic[C]):
    """Everything one part of a run is computed from."""

    pair: Any
    """The loaded :class:`~hooklab.pair.ModelPair`."""
    config: C
    """The experiment's config (its ``batch_size`` may have been halved after out-of-memory)."""
    prompts: list
    """The part's prompts (:class:`~hooklab.prompts.Prompt`)."""
    context: Any
    """What :meth:`Experiment.prepare` returned."""
    out: Path
    """The run folder."""
    part_name: str
    """e.g. ``part-00003``: files an experiment keeps beside the table are named with it."""
    histories: Path | None = None
    """Saved shared histories to reuse (the spec's ``histories``), for experiments that use them."""


class Experiment(Generic[C]):
    """Base class of experiment kinds. Subclasses set the class attributes and methods."""

    name: ClassVar[str]
    """Registry key, TOML section, CLI command and ``experiment = ...`` value."""
    config_type: ClassVar[type[Config]]
    """The config dataclass."""
    table: ClassVar[str]
    """Stem of the merged table (``NAME.parquet``)."""
    summary: ClassVar[str] = ""
    """One line for ``hooklab --help``."""
    uses_histories: ClassVar[bool] = False
    """Whether a spec's ``histories = DIR`` (saved shared histories) applies."""
    uses_prompts: ClassVar[bool] = True
    """Whether the run reads prompts (its command offers ``--prompts``, ``--limit``...)."""

    # -- before any model loads ------------------------------------------------------------
    def validate(self, config: C, n_layers: int) -> None:  # noqa: B027 - optional hook
        """Checks that need the layer count but no weights (raise :class:`HooklabError`)."""

    def plan(self, config: C, n_prompts: int, n_layers: int) -> PlanEstimate:
        raise NotImplementedError

    # -- running ---------------------------------------------------------------------------
    def prepare(self, pair: Any, config: C) -> Any:  # noqa: ARG002
        """What every part needs once the pair is loaded (e.g. lenses). Default: nothing."""
        return None

    def describe_context(self, context: Any) -> dict[str, Any]:  # noqa: ARG002
        """Provenance of :meth:`prepare`'s result for the manifest (e.g. lens hashes)."""
        return {}

    def run_part(self, part: PartInput[C]) -> pd.DataFrame:
        raise NotImplementedError

    def with_batch_size(self, config: C, batch_size: int) -> C:
        """``config`` with another batch size (out-of-memory halving); unchanged if it has none."""
        if any(f.name == "batch_size" for f in dataclasses.fields(config)):  # type: ignore[arg-type]
            return dataclasses.replace(config, batch_size=batch_size)  # type: ignore[type-var]
        return config

    # -- after the merge ---------------------------------------------------------------------
    def summarise(self, frame: pd.DataFrame, out: Path, config: C) -> list[Path]:  # noqa: ARG002
        """Write the summary files of the merged table; returns their paths."""
        return []

    def figures(self, run_dir: Path, figures_dir: Path) -> list[Path]:  # noqa: ARG002
        """Write the run's figures as offline HTML; returns their paths."""
        return []

    def report_section(self, run_dir: Path) -> str:  # noqa: ARG002
        """HTML for ``hooklab report`` (tables; the figures are added by the report)."""
        return ""

    def headline(self, run_dir: Path) -> list[str]:
        """The lines printed after a run finishes (its headline numbers)."""
        return [f"wrote {run_dir / (self.table + '.parquet')}"]


_REGISTRY: dict[str, Experiment] = {}
_DISCOVERED = False


def register_experiment(experiment: Experiment) -> Experiment:
    """Add ``experiment`` to the registry (its ``name`` must be new)."""
    name = experiment.name
    if name in _REGISTRY and type(_REGISTRY[name]) is not type(experiment):
        raise HooklabError(f"an experiment named {name!r} is registered already.")
    if not issubclass(experiment.config_type, Config):
        raise HooklabError(f"experiment {name!r}: config_type must derive from hooklab Config.")
    _REGISTRY[name] = experiment
    return experiment


def _discover() -> None:
    global _DISCOVERED
    if _DISCOVERED:
        return
    _DISCOVERED = True
    package = importlib.import_module("hooklab.experiments")
    for module in pkgutil.iter_modules(package.__path__):
        importlib.import_module(f"{package.__name__}.{module.name}")


def registered_experiments() -> dict[str, Experiment]:
    """Every registered experiment, by name."""
    _discover()
    return dict(sorted(_REGISTRY.items()))


def get_experiment(name: str) -> Experiment:
    """The experiment registered as ``name``."""
    known = registered_experiments()
    if name not in known:
        raise HooklabError(f"experiment={name!r}: use one of {', '.join(known)}.")
    return known[name]


def experiment_for_config(config: Config) -> Experiment:
    """The experiment whose config type ``config`` is."""
    for experiment in registered_experiments().values():
        if type(config) is experiment.config_type:
            return experiment
    raise HooklabError(f"{type(config).__name__} is the config of no registered experiment.")
