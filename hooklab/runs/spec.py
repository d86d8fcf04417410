"""Run specs: a run is a TOML file naming the pair, prompts, experiment settings and execution.

Every key is validated before any model loads; an unknown key, an unknown pair, a bad
condition or a window outside the model is refused with the key and the accepted values.

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

    [graft]
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
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from hooklab.errors import HooklabError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

__all__ = ["PairSpec", "PromptSpec", "ExecutionSpec", "RunSpec", "load_spec"]

EXPERIMENTS = ("readout", "graft")


def _build(cls: type, raw: Any, section: str) -> Any:
    if not isinstance(raw, dict):
        raise HooklabError(f"[{section}] must be a table of keys, got {raw!r}.")
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise HooklabError(
            f"unknown key(s) {', '.join(f'{section}.{k}' for k in unknown)} in the run spec; "
            f"[{section}] accepts: {', '.join(sorted(known))}."
        )
    values = {}
    for f in fields(cls):
        if f.name in raw:
            value = raw[f.name]
            if isinstance(value, list):
                value = tuple(value)
            values[f.name] = value
    return cls(**values)


@dataclass(frozen=True)
class PairSpec:
    """``[pair]``: a paper pair name or pt / it ids, revisions, dtype, device, offload."""

    name: str | None = None
    pt: str | None = None
    it: str | None = None
    pt_revision: str | None = None
    it_revision: str | None = None
    dtype: str = "float32"
    device: str | None = None
    offload: str | None = None
    trust_remote_code: bool = False

    def n_layers(self) -> int:
        """The layer count, read from the catalog or the checkpoint's config (no weights)."""
        from hooklab.architectures import hf_text_config
        from hooklab.catalog import paper_pair
        from hooklab.loading import load_config, resolve_source

        if self.name is not None and self.name.strip().lower() == "tiny":
            from hooklab.pair import embedded_pair_folder

            config = json.loads((embedded_pair_folder() / "pt" / "config.json").read_text())
            return int(config["num_hidden_layers"])
        if self.name is not None:
            return int(paper_pair(self.name).shape["num_hidden_layers"])
        if self.pt is None or self.it is None:
            raise HooklabError("[pair] needs name = '...' or both pt = '...' and it = '...'.")
        source = resolve_source(self.pt, self.pt_revision, argument="pair.pt")
        config = load_config(source, trust_remote_code=self.trust_remote_code, argument="pair.pt")
        return int(hf_text_config(config).num_hidden_layers)

    def load(self) -> Any:
        from hooklab.pair import load_pair

        return load_pair(
            self.name,
            pt=self.pt,
            it=self.it,
            pt_revision=self.pt_revision,
            it_revision=self.it_revision,
            dtype=self.dtype,
            device=self.device,
            trust_remote_code=self.trust_remote_code,
            offload=self.offload,
        )


@dataclass(frozen=True)
class PromptSpec:
    """``[prompts]``: a JSONL file or ``builtin``, optionally the first ``limit`` prompts."""

    source: str = "builtin"
    limit: int | None = None

    def load(self) -> list:
        from hooklab.prompts import load_prompts

        prompts = load_prompts(self.source)
        return prompts[: self.limit] if self.limit is not None else prompts


@dataclass(frozen=True)
class ExecutionSpec:
    """``[execution]``: prompts per stored part, executor, shards, GPUs per shard."""

    part_size: int = 8
    executor: str = "local"
    shards: int = 1
    num_gpus: float = 0
    ray_address: str | None = None

    def __post_init__(self) -> None:
        if self.executor not in ("local", "ray"):
            raise HooklabError(f"execution.executor={self.executor!r}: use 'local' or 'ray'.")
        if self.part_size < 1 or self.shards < 1:
            raise HooklabError("execution.part_size and execution.shards must be at least 1.")


@dataclass(frozen=True)
class RunSpec:
    """A whole run. ``readout`` / ``graft`` hold the experiment's settings (see
    :class:`~hooklab.readout.ReadoutConfig` and :class:`~hooklab.graft.sweep.GraftConfig`)."""

    experiment: str
    out: str
    pair: PairSpec
    prompts: PromptSpec = field(default_factory=PromptSpec)
    execution: ExecutionSpec = field(default_factory=ExecutionSpec)
    readout: dict[str, Any] = field(default_factory=dict)
    graft: dict[str, Any] = field(default_factory=dict)
    seed: int = 0
    histories: str | None = None

    def experiment_config(self) -> Any:
        """The experiment's config object, validated."""
        if self.experiment == "readout":
            from hooklab.readout import ReadoutConfig

            return _build(ReadoutConfig, {**self.readout, "seed": self.seed}, "readout")
        if self.readout:
            raise HooklabError("[readout] settings given for a graft run; use [graft].")
        from hooklab.graft.sweep import GraftConfig

        return _build(GraftConfig, {**self.graft, "seed": self.seed}, "graft")

    def validate(self) -> int:
        """Check everything that can be checked without weights; returns the layer count."""
        if self.histories is not None and self.experiment != "graft":
            raise HooklabError("histories = ... applies to graft runs only.")
        if self.experiment not in EXPERIMENTS:
            raise HooklabError(f"experiment={self.experiment!r}: use one of {EXPERIMENTS}.")
        config = self.experiment_config()
        n_layers = self.pair.n_layers()
        if self.experiment == "graft":
            from hooklab.graft.windows import parse_windows

            try:
                parse_windows(config.windows, n_layers)
            except HooklabError as error:
                raise HooklabError(f"graft.windows: {error}") from None
        self.prompts.load()
        return n_layers

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def absolute(self) -> RunSpec:
        """The same spec with its local paths made absolute (for workers in other folders)."""
        from dataclasses import replace

        def absolute(path: str | None) -> str | None:
            return str(Path(path).resolve()) if path and Path(path).exists() else path

        return replace(
            self,
            out=str(Path(self.out).resolve()),
            pair=replace(self.pair, pt=absolute(self.pair.pt), it=absolute(self.pair.it)),
            prompts=replace(self.prompts, source=absolute(self.prompts.source) or "builtin"),
            histories=absolute(self.histories),
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
        sections = {
            "pair": asdict(self.pair),
            "prompts": asdict(self.prompts),
            self.experiment: getattr(self, self.experiment),
            "execution": asdict(self.execution),
        }
        for name, values in sections.items():
            lines.append(f"\n[{name}]")
            for key, value in values.items():
                if value is None:
                    continue
                if isinstance(value, tuple):
                    value = list(value)
                lines.append(f"{key} = {json.dumps(value)}")
        return "\n".join(lines) + "\n"


def load_spec(path: str | Path, *, out: str | None = None) -> RunSpec:
    """Read and validate the shape of a TOML run spec (models are not loaded)."""
    path = Path(path)
    if not path.is_file():
        raise HooklabError(f"spec={str(path)!r}: no such file.")
    try:
        raw = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as error:
        raise HooklabError(f"{path}: not valid TOML ({error}).") from None
    known = {f.name for f in fields(RunSpec)}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise HooklabError(
            f"unknown key(s) {', '.join(unknown)} in {path}; top-level keys: "
            f"{', '.join(sorted(known))}."
        )
    for required in ("experiment", "out", "pair"):
        if required not in raw and not (required == "out" and out):
            raise HooklabError(f"{path}: the run spec needs {required!r}.")
    if raw["experiment"] not in EXPERIMENTS:
        raise HooklabError(
            f"experiment={raw['experiment']!r}: use one of {', '.join(EXPERIMENTS)}."
        )
    return RunSpec(
        experiment=raw["experiment"],
        out=out or raw["out"],
        pair=_build(PairSpec, raw["pair"], "pair"),
        prompts=_build(PromptSpec, raw.get("prompts", {}), "prompts"),
        execution=_build(ExecutionSpec, raw.get("execution", {}), "execution"),
        readout=dict(raw.get("readout", {})),
        graft=dict(raw.get("graft", {})),
        seed=int(raw.get("seed", 0)),
        histories=raw.get("histories"),
    )
