"""Run specs: a run is a TOML file naming the pair, prompts, experiment settings and execution.

Every key is validated before anything is written or any model loads: an unknown key, a value
of the wrong type, an unknown pair, dtype or device, a pair whose two sides cannot be compared,
a bad condition, lens or window, an empty ``out`` are refused with the key and the accepted
values. Relative paths in a spec file (``out``, ``histories``, ``prompts.source``, ``pair.pt`` /
``pair.it`` folders, ``tuned:DIR`` lenses) are read relative to the spec file's folder.

Example::

    experiment = "graft"            # or "readout"
    out = "runs/gemma3-graft"
    seed = 0

    [pair]
    name = "gemma3-4b"              # or pt = "...", it = "..." (hub ids or folders)
    dtype = "bfloat16"
    device = "cuda"

    [prompts]
    source = "builtin"              # or a JSONL file
    limit = 40

    [graft]                         # the experiment's section: its config's fields
    directions = ["it-to-pt", "pt-to-it"]
    windows = "late,mid,early"
    modes = ["module", "random"]

    [execution]
    part_size = 8                   # prompts per stored part
    executor = "local"              # or "ray"
    shards = 1
    num_gpus = 1
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, ClassVar, Literal

from hooklab.config import Config
from hooklab.errors import HooklabError
from hooklab.experiment import Experiment, experiment_for_config, get_experiment
from hooklab.prompt_files import PromptColumns

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

__all__ = ["PairSpec", "PromptSpec", "ExecutionSpec", "RunSpec", "PairShape", "load_spec"]


@dataclass(frozen=True)
class PairShape:
    """What validation knows of a pair without its weights."""

    n_layers: int
    d_vocab: int | None


@dataclass(frozen=True)
class PairSpec(Config):
    """``[pair]``: a paper pair name or pt / it ids, revisions, dtype, device, offload."""

    section: ClassVar[str] = "pair"

    name: str | None = None
    """Paper pair short name (e.g. gemma3-4b), or 'tiny' for the embedded pair."""
    pt: str | None = None
    """PT hub id or folder."""
    it: str | None = None
    """IT hub id or folder."""
    pt_revision: str | None = None
    """PT revision (branch, tag, commit)."""
    it_revision: str | None = None
    """IT revision (branch, tag, commit)."""
    dtype: str = "float32"
    """Model dtype: float32, bfloat16 or float16."""
    device: str | None = None
    """cpu, cuda, cuda:1 (default: cuda if any)."""
    offload: Literal["pt", "it"] | None = None
    """Keep this side in CPU memory (pt or it)."""
    trust_remote_code: bool = False
    """Run modelling code shipped with a checkpoint."""

    def _kwargs(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def shape(self) -> PairShape:
        """Every check made before weights load; the layer count and vocabulary size.

        A paper pair by name is checked against the catalog (no hub access); a folder or hub
        pair is checked as :func:`~hooklab.pair.load_pair` does before it loads weights.
        """
        from hooklab.catalog import paper_pair
        from hooklab.loading import parse_dtype, resolve_device
        from hooklab.pair import TINY_PAIR, check_pair

        parse_dtype(self.dtype)
        resolve_device(self.device)
        if self.name is not None and self.name.strip().lower() != TINY_PAIR:
            if self.pt is not None or self.it is not None:
                raise HooklabError("[pair] takes name = '...' or pt / it, not both.")
            entry = paper_pair(self.name)
            return PairShape(int(entry.shape["num_hidden_layers"]), entry.shape.get("vocab_size"))
        if self.name is None and (self.pt is None or self.it is None):
            raise HooklabError("[pair] needs name = '...' or both pt = '...' and it = '...'.")
        checked = check_pair(**self._kwargs(), argument_prefix="pair.")
        return PairShape(checked.n_layers, checked.d_vocab)

    def n_layers(self) -> int:
        """The layer count, read from the catalog or the checkpoint's config (no weights)."""
        return self.shape().n_layers

    def load(self) -> Any:
        from hooklab.pair import load_pair

        return load_pair(**self._kwargs())


@dataclass(frozen=True)
class PromptSpec(Config):
    """``[prompts]``: a built-in set or a local file / folder (JSONL, CSV, Parquet, Arrow)
    with a column mapping, optionally a seeded random sample, optionally the first ``limit``."""

    section: ClassVar[str] = "prompts"

    source: str = "builtin"
    """A prompt file or folder (.jsonl, .csv, .parquet, .arrow; a saved Hugging Face dataset
    works), or a built-in set: builtin (40), builtin-large (240), behaviour, behaviour-tiny."""
    format: Literal["auto", "jsonl", "csv", "parquet", "arrow"] = "auto"
    """File format; auto = from the file suffix."""
    text_column: str = "text"
    """Column holding the prompt text (a string, or a chat whose first user message is used)."""
    id_column: str = "id"
    """Column holding a unique prompt id (row numbers when the file has no such column)."""
    category_column: str = "category"
    """Column holding the prompt's category (empty when the file has no such column)."""
    shuffle_seed: int | None = None
    """Shuffle the prompts with this seed before taking `limit` (a random sample of a large
    dataset); file order otherwise."""
    limit: int | None = None
    """Use only the first N prompts (N >= 1)."""

    def __post_init__(self) -> None:
        if self.limit is not None and self.limit < 1:
            raise HooklabError(
                f"prompts.limit={self.limit}: use a number of prompts >= 1, or leave it out "
                "for all of them."
            )

    def resolved(self, base: Path) -> str:
        """The source with a relative file path made absolute against ``base`` (built-in
        set names are kept as they are)."""
        from hooklab.prompts import NAMED_PROMPT_SETS

        if self.source in NAMED_PROMPT_SETS:
            return self.source
        candidate = base / Path(self.source).expanduser()
        return str(candidate.resolve()) if candidate.exists() else self.source

    @property
    def columns(self) -> PromptColumns:
        return PromptColumns(self.text_column, self.id_column, self.category_column)

    def load(self) -> list:
        import random

        from hooklab.prompts import load_prompts

        prompts = load_prompts(self.source, columns=self.columns, format=self.format)
        if self.shuffle_seed is not None:
            random.Random(self.shuffle_seed).shuffle(prompts)
        return prompts[: self.limit] if self.limit is not None else prompts

    def provenance(self) -> dict[str, Any]:
        """What the manifest records of the source: its resolved path and files' SHA-256."""
        from hooklab.prompts import prompt_source_path, prompt_source_sha256

        return {
            "path": str(prompt_source_path(self.source)),
            "sha256": prompt_source_sha256(self.source, self.format),
        }


@dataclass(frozen=True)
class ExecutionSpec(Config):
    """``[execution]``: prompts per stored part, executor, shards, GPUs per shard."""

    section: ClassVar[str] = "execution"

    part_size: int = 8
    """Prompts per stored part (the unit of resume)."""
    executor: Literal["local", "ray"] = "local"
    """Where shards run: local, or ray (one task per shard)."""
    shards: int = 1
    """Number of shards the parts are dealt into."""
    num_gpus: float = 0
    """GPUs per Ray task."""
    ray_address: str | None = None
    """Ray cluster to join (default: a local one)."""

    def __post_init__(self) -> None:
        if self.executor not in ("local", "ray"):
            raise HooklabError(f"execution.executor={self.executor!r}: use 'local' or 'ray'.")
        if self.part_size < 1 or self.shards < 1:
            raise HooklabError("execution.part_size and execution.shards must be at least 1.")
        if self.num_gpus < 0:
            raise HooklabError(f"execution.num_gpus={self.num_gpus} must be >= 0.")


#: Seeds are below this (numpy's and torch's generators both take them).
MAX_SEED = 2**63


@dataclass(frozen=True)
class RunSpec:
    """A whole run: one experiment (its typed ``config``) on one pair over a prompt set.

    ``config`` defaults to the experiment's default config; ``seed`` (top level) is the
    config's seed.
    """

    experiment: str
    out: str
    pair: PairSpec
    config: Config | None = None
    prompts: PromptSpec = field(default_factory=PromptSpec)
    execution: ExecutionSpec = field(default_factory=ExecutionSpec)
    seed: int = 0
    histories: str | None = None

    def __post_init__(self) -> None:
        kind = get_experiment(self.experiment)
        if (
            isinstance(self.seed, bool)
            or not isinstance(self.seed, int)
            or not 0 <= self.seed < MAX_SEED
        ):
            raise HooklabError(
                f"seed={self.seed!r}: expected an integer from 0 to 2**63 - 1 (what every "
                "random generator hooklab seeds accepts); pass e.g. seed = 0."
            )
        config = self.config if self.config is not None else kind.config_type()
        if experiment_for_config(config) is not kind:
            raise HooklabError(
                f"experiment={self.experiment!r} was given a {type(config).__name__}; use "
                f"{kind.config_type.__name__}."
            )
        if any(f.name == "seed" for f in fields(config)):  # type: ignore[arg-type]
            config = replace(config, seed=self.seed)  # type: ignore[type-var]
        object.__setattr__(self, "config", config)
        if not str(self.out).strip():
            raise HooklabError(
                "out is empty: name the run's own folder (e.g. out = 'runs/gemma3-graft')."
            )
        if self.histories is not None and not kind.uses_histories:
            raise HooklabError(
                f"histories = ... applies to {', '.join(_history_users())} runs only."
            )

    @property
    def kind(self) -> Experiment:
        """The experiment object (from the registry)."""
        return get_experiment(self.experiment)

    def experiment_config(self) -> Config:
        """The experiment's config, validated."""
        assert self.config is not None
        return self.config

    def validate(self) -> int:
        """Check everything that can be checked without weights; returns the layer count."""
        shape = self.pair.shape()
        self.kind.validate(self.experiment_config(), shape.n_layers)
        check_lens(getattr(self.config, "lens", None))
        prompts = self.prompts.load()
        if self.histories is not None:
            from hooklab.graft.histories import (
                check_histories,
                check_history_prompts,
                load_histories,
            )

            check_histories(
                load_histories(self.histories), [p.id for p in prompts], vocab_size=shape.d_vocab
            )
            check_history_prompts(self.histories, prompts)
        return shape.n_layers

    def to_dict(self) -> dict[str, Any]:
        return {
            "experiment": self.experiment,
            "out": self.out,
            "seed": self.seed,
            "histories": self.histories,
            "pair": self.pair.to_dict(),
            "prompts": self.prompts.to_dict(),
            "execution": self.execution.to_dict(),
            self.experiment: self.experiment_config().to_dict(),
        }

    def absolute(self, base: Path | None = None) -> RunSpec:
        """The same spec with its local paths made absolute (relative to ``base``, default the
        working directory), for workers in other folders."""
        base = Path.cwd() if base is None else base

        def absolute(path: str | None) -> str | None:
            if not path:
                return path
            candidate = base / Path(path).expanduser()
            return str(candidate.resolve()) if candidate.exists() else path

        config = self.experiment_config()
        lens = getattr(config, "lens", "")
        if isinstance(lens, str) and lens.startswith("tuned:"):
            config = replace(config, lens="tuned:" + (absolute(lens[6:]) or ""))  # type: ignore[type-var]
        return replace(
            self,
            out=str((base / Path(self.out).expanduser()).resolve()),
            pair=replace(self.pair, pt=absolute(self.pair.pt), it=absolute(self.pair.it)),
            prompts=replace(self.prompts, source=self.prompts.resolved(base)),
            histories=absolute(self.histories),
            config=config,
        )

    def to_toml(self) -> str:
        """The spec as TOML (what ``--write-spec`` writes)."""
        lines = [
            f"experiment = {json.dumps(self.experiment)}",
            f"out = {json.dumps(self.out)}",
            f"seed = {self.seed}",
        ]
        if self.histories is not None:
            lines.append(f"histories = {json.dumps(self.histories)}")
        section = {k: v for k, v in self.experiment_config().to_dict().items() if k != "seed"}
        sections = {
            "pair": self.pair.to_dict(),
            "prompts": self.prompts.to_dict(),
            self.experiment: section,
            "execution": self.execution.to_dict(),
        }
        for name, values in sections.items():
            lines.append(f"\n[{name}]")
            for key, value in values.items():
                if value is not None:
                    lines.append(f"{key} = {json.dumps(value)}")
        return "\n".join(lines) + "\n"


def _history_users() -> list[str]:
    from hooklab.experiment import registered_experiments

    return [name for name, e in registered_experiments().items() if e.uses_histories]


def check_lens(lens: Any) -> None:
    """A ``tuned:DIR`` lens must have DIR/pt and DIR/it (their contents are checked at load)."""
    if not isinstance(lens, str) or not lens.startswith("tuned:"):
        return
    folder = Path(lens[6:])
    missing = [side for side in ("pt", "it") if not (folder / side / "config.json").is_file()]
    if missing:
        raise HooklabError(
            f"lens={lens!r}: no tuned lens in {', '.join(str(folder / m) for m in missing)}; "
            "train them with `hooklab train-lens --out DIR`."
        )


_TOP_LEVEL = ("experiment", "out", "seed", "histories", "pair", "prompts", "execution")


def load_spec(path: str | Path, *, out: str | None = None) -> RunSpec:
    """Read and validate the shape of a TOML run spec (models are not loaded).

    Relative paths in the file are resolved against the file's folder.
    """
    path = Path(path)
    if not path.is_file():
        raise HooklabError(f"spec={str(path)!r}: no such file.")
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
        raise HooklabError(f"{path}: not valid TOML ({error}).") from None
    name = raw.get("experiment")
    if not isinstance(name, str):
        raise HooklabError(f"{path}: the run spec needs experiment = '...' (a string).")
    kind = get_experiment(name)
    known = set(_TOP_LEVEL) | {kind.name}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise HooklabError(
            f"unknown key(s) {', '.join(unknown)} in {path}; top-level keys: "
            f"{', '.join(sorted(known))}."
        )
    for required in ("out", "pair"):
        if required not in raw and not (required == "out" and out):
            raise HooklabError(f"{path}: the run spec needs {required!r}.")
    section = dict(raw.get(kind.name, {}))
    if "seed" in section:
        raise HooklabError(f"{path}: {kind.name}.seed: set seed = N at the top level instead.")
    seed = raw.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise HooklabError(f"{path}: seed={seed!r}: expected an integer.")
    for key in ("out", "histories"):
        if key in raw and not isinstance(raw[key], str):
            raise HooklabError(f"{path}: {key}={raw[key]!r}: expected a string (a folder).")
    spec = RunSpec(
        experiment=name,
        out=out if out is not None else raw["out"],
        pair=PairSpec.from_dict(raw["pair"]),
        prompts=PromptSpec.from_dict(raw.get("prompts", {})),
        execution=ExecutionSpec.from_dict(raw.get("execution", {})),
        config=kind.config_type.from_dict(section, section=kind.name),
        seed=seed,
        histories=raw.get("histories"),
    )
    # relative paths in the file are the file's; an --out override is the caller's
    resolved = spec.absolute(path.resolve().parent)
    return replace(resolved, out=str(Path(out).resolve())) if out is not None else resolved
