"""Study specs: several experiments on several PT/IT pairs, as one TOML file.

A study is the paper as one job: every (pair, experiment) is an ordinary run (a
:class:`~hooklab.runs.RunSpec`) in ``OUT/<pair label>/<experiment>/``, so resume, shards,
manifests and reports work as for a single run. Example::

    [study]
    name = "convergence-gap"
    out = "runs/study"              # relative paths are the study file's
    seed = 0
    response_tokens = 128           # cap on every generated response (optional)

    [[study.pairs]]
    name = "gemma3-4b"              # a paper pair, "tiny", or pt = "...", it = "..."
    dtype = "bfloat16"
    device = "cuda"
    label = "gemma3"                # folder name (default: name)
    [study.pairs.overrides.graft]   # this pair's graft config keys over the shared ones
    batch_size = 2

    [[study.pairs]]
    pt = "Qwen/Qwen3-4B-Base"
    it = "Qwen/Qwen3-4B"
    label = "qwen3"

    [study.experiments.readout]     # each experiment's config keys (its [NAME] run section)
    conditions = ["native", "same_history"]
    [study.experiments.graft]
    windows = "late,mid,early"

    [study.prompts]                 # shared by every run
    source = "data/lmsys-sample.parquet"   # or "builtin-large"; JSONL, CSV, Parquet, Arrow
    text_column = "prompt"          # column mapping (id_column, category_column too)
    shuffle_seed = 0                # a seeded random sample of `limit` rows
    limit = 500
    [study.execution]               # shared; executor = "ray" runs one pair per Ray task
    part_size = 8
    [study.cost]                    # assumptions of `hooklab study plan` (hooklab.study.plan)
    peak_tflops = 989.0

Everything is validated before anything runs: experiment names against the registry, each
config (shared, then merged with each pair's overrides) by its ``config_type.from_dict`` and
``validate`` with the pair's layer count, each pair by :meth:`PairSpec.shape`.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from hooklab.config import Config
from hooklab.errors import HooklabError
from hooklab.experiment import get_experiment
from hooklab.runs.spec import ExecutionSpec, PairSpec, PromptSpec, RunSpec, check_lens

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

__all__ = ["StudyPair", "StudySpec", "load_study", "READOUT", "HISTORY_CONDITIONS"]

#: The experiment run first on each pair; its IT responses are the others' histories.
READOUT = "readout"
#: Readout conditions whose saved sequences hold IT's greedy response (usable as histories).
HISTORY_CONDITIONS = ("native", "same_history")

_LABEL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_STUDY_KEYS = (
    "name",
    "out",
    "seed",
    "response_tokens",
    "pairs",
    "experiments",
    "prompts",
    "execution",
    "cost",
)
#: Config fields that cap a generated response; ``[study] response_tokens`` sets them all.
RESPONSE_FIELDS = ("max_new_tokens", "history_tokens")
_PAIR_EXTRA = ("label", "overrides")


@dataclass(frozen=True)
class StudyPair:
    """One pair of a study: how to load it, its folder label and its config overrides."""

    pair: PairSpec
    label: str
    overrides: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Per experiment: config keys that replace the shared ones for this pair."""


@dataclass(frozen=True)
class StudySpec:
    """A whole study: pairs x experiments over one prompt set.

    ``experiments`` maps each experiment name to its shared config keys (as in the TOML),
    readout first when present; :meth:`config` merges a pair's overrides and validates.
    """

    name: str
    out: str
    pairs: tuple[StudyPair, ...]
    experiments: dict[str, dict[str, Any]]
    prompts: PromptSpec = field(default_factory=PromptSpec)
    execution: ExecutionSpec = field(default_factory=ExecutionSpec)
    seed: int = 0
    response_tokens: int | None = None
    """Cap on every generated response (IT's histories, behaviour and steering generations):
    the ``max_new_tokens`` / ``history_tokens`` of every experiment whose own table does not
    set them."""
    cost: dict[str, Any] = field(default_factory=dict)
    """``[study.cost]`` keys of :class:`hooklab.study.plan.CostModel`."""
    base: str = "."
    """Folder relative paths are read from (the study file's)."""

    def __post_init__(self) -> None:
        if not self.pairs:
            raise HooklabError("[[study.pairs]]: a study needs at least one pair.")
        if not self.experiments:
            raise HooklabError(
                "[study.experiments.NAME]: a study needs at least one experiment table, "
                "e.g. [study.experiments.readout]."
            )
        for name in self.experiments:
            get_experiment(name)  # unknown names are refused, listing the known ones
        ordered = sorted(self.experiments, key=lambda n: n != READOUT)  # stable: readout first
        object.__setattr__(self, "experiments", {n: self.experiments[n] for n in ordered})
        labels = [p.label for p in self.pairs]
        for label in labels:
            if not _LABEL.match(label):
                raise HooklabError(
                    f"study.pairs.label={label!r}: use letters, digits, '.', '_' or '-' "
                    "(it names the pair's folder)."
                )
        duplicated = sorted({x for x in labels if labels.count(x) > 1})
        if duplicated:
            raise HooklabError(
                f"study.pairs.label: {', '.join(duplicated)} used twice; give each pair its "
                "own label = '...'."
            )
        for pair in self.pairs:
            unknown = sorted(set(pair.overrides) - set(self.experiments))
            if unknown:
                raise HooklabError(
                    f"study.pairs ({pair.label}).overrides.{unknown[0]}: the study runs no "
                    f"{unknown[0]!r} experiment; overrides apply to {', '.join(self.experiments)}."
                )
        if not str(self.out).strip():
            raise HooklabError("study.out is empty: name the study's folder.")
        if self.response_tokens is not None and (
            not isinstance(self.response_tokens, int)
            or isinstance(self.response_tokens, bool)
            or self.response_tokens < 1
        ):
            raise HooklabError(
                f"study.response_tokens={self.response_tokens!r}: expected a number of tokens "
                ">= 1 (no quotes), or leave it out for each experiment's own default."
            )

    # -- derived -------------------------------------------------------------------------------
    @property
    def out_dir(self) -> Path:
        return (Path(self.base) / Path(self.out).expanduser()).resolve()

    def pair(self, label: str) -> StudyPair:
        for pair in self.pairs:
            if pair.label == label:
                return pair
        raise HooklabError(f"pair={label!r}: the study's pairs are {self.labels()}.")

    def labels(self) -> list[str]:
        return [p.label for p in self.pairs]

    def config(self, pair: StudyPair, experiment: str) -> Config:
        """The experiment's config for ``pair``: shared keys, then the pair's overrides."""
        kind = get_experiment(experiment)
        raw = {**self.experiments[experiment], **pair.overrides.get(experiment, {})}
        if self.response_tokens is not None:
            for name in RESPONSE_FIELDS:
                if name in kind.config_type.field_types():
                    raw.setdefault(name, self.response_tokens)
        if "seed" in raw:
            raise HooklabError(
                f"study.experiments.{experiment}.seed: set seed = N in [study] instead."
            )
        return kind.config_type.from_dict(raw, section=f"study.experiments.{experiment}")

    def run_dir(self, pair: StudyPair | str, experiment: str) -> Path:
        label = pair if isinstance(pair, str) else pair.label
        return self.out_dir / label / experiment

    def history_source(self, pair: StudyPair, experiment: str) -> Path | None:
        """The readout folder whose IT responses ``experiment`` reuses on ``pair``, if any."""
        if experiment == READOUT or READOUT not in self.experiments:
            return None
        if not get_experiment(experiment).uses_histories:
            return None
        conditions = getattr(self.config(pair, READOUT), "conditions", ())
        if not set(conditions) & set(HISTORY_CONDITIONS):
            return None  # a template-replay-only readout holds no IT response
        return self.run_dir(pair, READOUT)

    def run_spec(self, pair: StudyPair, experiment: str, *, histories: bool = True) -> RunSpec:
        """The run of ``experiment`` on ``pair`` (paths absolute; histories when asked)."""
        source = self.history_source(pair, experiment) if histories else None
        execution = self.execution
        if execution.executor == "ray":  # the study gives each pair one Ray task
            execution = replace(execution, executor="local")
        spec = RunSpec(
            experiment=experiment,
            out=str(self.run_dir(pair, experiment)),
            pair=pair.pair,
            config=self.config(pair, experiment),
            prompts=self.prompts,
            execution=execution,
            seed=self.seed,
            histories=None if source is None else str(source),
        )
        return spec.absolute(Path(self.base))

    def validate(self, *, check_devices: bool = True) -> dict[str, int]:
        """Every check possible without weights; returns each pair's layer count by label.

        ``check_devices=False`` (plans) leaves out the check that each pair's device is here.
        """
        layers = {}
        self.prompts.load()
        for pair in self.pairs:
            checked = pair.pair if check_devices else replace(pair.pair, device=None)
            try:
                n_layers = checked.shape().n_layers
            except HooklabError as error:
                raise HooklabError(f"study pair {pair.label!r}: {error}") from None
            for experiment in self.experiments:
                spec = self.run_spec(pair, experiment, histories=False)
                try:
                    spec.kind.validate(spec.experiment_config(), n_layers)
                    check_lens(getattr(spec.experiment_config(), "lens", None))
                except HooklabError as error:
                    raise HooklabError(f"study pair {pair.label!r}: {error}") from None
            layers[pair.label] = n_layers
        from hooklab.study.plan import CostModel

        CostModel.from_dict(self.cost, section="study.cost")
        return layers


def _pair(raw: Any, index: int, base: Path) -> StudyPair:
    where = f"study.pairs[{index}]"
    if not isinstance(raw, dict):
        raise HooklabError(f"{where} must be a table ([[study.pairs]]).")
    overrides = raw.get("overrides", {})
    if not isinstance(overrides, dict) or not all(isinstance(v, dict) for v in overrides.values()):
        raise HooklabError(
            f"{where}.overrides: write it as [study.pairs.overrides.EXPERIMENT] tables of "
            "config keys."
        )
    spec = PairSpec.from_dict({k: v for k, v in raw.items() if k not in _PAIR_EXTRA}, section=where)
    label = raw.get("label", spec.name)
    if not isinstance(label, str) or not label:
        raise HooklabError(
            f"{where}: a pair given by pt / it folders or ids needs label = '...' (its folder)."
        )

    # folders relative to the study file, as in run specs
    def local(value: str | None) -> str | None:
        return str((base / value).resolve()) if value and (base / value).exists() else value

    spec = replace(spec, pt=local(spec.pt), it=local(spec.it))
    return StudyPair(pair=spec, label=label, overrides=dict(overrides))


def load_study(path: str | Path, *, out: str | None = None) -> StudySpec:
    """Read a study TOML and check its shape (pairs and configs are checked by
    :meth:`StudySpec.validate`). ``out`` overrides ``[study] out`` (relative to the cwd)."""
    path = Path(path)
    if not path.is_file():
        raise HooklabError(f"study={str(path)!r}: no such file.")
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
        raise HooklabError(f"{path}: not valid TOML ({error}).") from None
    extra = sorted(set(raw) - {"study"})
    if extra or not isinstance(raw.get("study"), dict):
        raise HooklabError(
            f"{path}: a study file holds one [study] table (with [[study.pairs]], "
            f"[study.experiments.NAME], ...); found {', '.join(extra) or 'no [study]'}."
        )
    study = raw["study"]
    unknown = sorted(set(study) - set(_STUDY_KEYS))
    if unknown:
        raise HooklabError(
            f"unknown key(s) {', '.join('study.' + k for k in unknown)} in {path}; [study] "
            f"accepts: {', '.join(_STUDY_KEYS)}."
        )
    for key in ("name", "out"):
        if not isinstance(study.get(key), str) and not (key == "out" and out):
            raise HooklabError(f"{path}: study.{key} = '...' (a string) is required.")
    seed = study.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise HooklabError(f"{path}: study.seed={seed!r}: expected an integer.")
    experiments = study.get("experiments", {})
    if not isinstance(experiments, dict) or not all(
        isinstance(v, dict) for v in experiments.values()
    ):
        raise HooklabError(f"{path}: write experiments as [study.experiments.NAME] tables.")
    base = path.resolve().parent
    pairs = study.get("pairs", [])
    if not isinstance(pairs, list):
        raise HooklabError(f"{path}: write pairs as [[study.pairs]] entries.")
    prompts = PromptSpec.from_dict(study.get("prompts", {}), section="study.prompts")
    prompts = replace(prompts, source=prompts.resolved(base))
    spec = StudySpec(
        name=study["name"],
        out=str(Path(out).resolve()) if out is not None else study["out"],
        pairs=tuple(_pair(p, i, base) for i, p in enumerate(pairs)),
        experiments={k: dict(v) for k, v in experiments.items()},
        prompts=prompts,
        execution=ExecutionSpec.from_dict(study.get("execution", {}), section="study.execution"),
        seed=seed,
        response_tokens=study.get("response_tokens"),
        cost=dict(study.get("cost", {})),
        base=str(base),
    )
    for pair in spec.pairs:  # every config, shared and overridden, before anything runs
        for experiment in spec.experiments:
            spec.config(pair, experiment)
    return spec
