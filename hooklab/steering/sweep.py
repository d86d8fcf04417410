"""The ``steer`` sweep's config, its arms, and the context computed once per run.

:class:`SteerConfig` is the ``[steer]`` section (see :mod:`hooklab.experiments.steer` for what
each arm does). :func:`prepare_directions` computes, from calibration histories, the mean
IT−PT direction of every source activation at the steered layers and the projection-matched
random control of the ``hook`` direction (or takes the ``hook`` direction from a saved file),
with the stability tables and the direction's promoted / suppressed tokens;
:func:`write_direction_set` writes that set once into a run folder.
"""

from __future__ import annotations

import hashlib
import math
import os
import shutil
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, ClassVar, Literal

import pandas as pd
import torch

from hooklab.atomic import atomic_write_csv
from hooklab.config import Config, split_list
from hooklab.errors import HooklabError
from hooklab.graft.histories import History, load_histories, make_histories, save_histories
from hooklab.graft.windows import parse_windows
from hooklab.prompts import load_prompts, stop_token_ids
from hooklab.steering.collect import collect_paired
from hooklab.steering.directions import (
    Directions,
    bootstrap_stability,
    cosine_table,
    mean_direction,
    split_cosines,
)
from hooklab.steering.figures import direction_tokens
from hooklab.steering.hooks import random_control
from hooklab.steering.io import load_directions, save_directions

__all__ = [
    "BASE_ARMS",
    "DIRECTIONS_DIR",
    "SOURCES",
    "SteerArm",
    "SteerConfig",
    "behaviour_file",
    "pad_id",
    "parse_steer_arm",
    "prepare_directions",
    "window_layers",
    "write_direction_set",
]

Source = Literal["mlp_out", "attn_out", "resid_post"]
SOURCES = ("mlp_out", "attn_out", "resid_post")
BASE_ARMS = ("it", "it-notmpl", "pt-inject", "it-random")
DIRECTIONS_DIR = "directions"


def behaviour_file(name: str) -> Path:
    """The JSONL file of a built-in behaviour prompt set (``"tiny"`` or ``"builtin"``), to pass
    as a run's prompts (``--prompts PATH``) so that the run answers that set."""
    files = {"tiny": "tiny.jsonl", "builtin": "all.jsonl"}
    if name not in files:
        raise HooklabError(f"name={name!r}: expected 'tiny' or 'builtin'.")
    return Path(str(resources.files("hooklab.data") / "behaviour" / files[name]))


@dataclass(frozen=True)
class SteerConfig(Config):
    """What a steer run does (the ``[steer]`` TOML section too)."""

    section: ClassVar[str] = "steer"

    hook: Source = "mlp_out"
    """Activation the main direction lives on and is steered at."""
    layers: str = "late"
    """One window of steered layers: late, mid, early, last25, all or a:b."""
    alphas: str = "0,0.5,1,1.5,2"
    """Comma-separated α grid (α = 1 is unsteered; pt-inject uses β = α − 1)."""
    arms: tuple[str, ...] = BASE_ARMS
    """Arms: it, it-notmpl, pt-inject, it-random, it@SOURCE."""
    sources: tuple[Source, ...] = ("mlp_out",)
    """Activations giving a direction each; every one other than hook adds arm it@SOURCE."""
    calibration: int = 16
    """Prompts whose shared histories the directions are computed from."""
    calibration_prompts: str = "builtin"
    """Prompt set of the calibration: 'builtin' or a JSONL file (its first N prompts)."""
    calibration_histories: str | None = None
    """Saved calibration histories (OUT/directions/calibration_histories.jsonl of a run, or a
    folder holding histories.jsonl) to rebuild the directions from instead of generating them;
    their prompts replace calibration / calibration_prompts."""
    directions: str | None = None
    """A saved direction file (save_directions) to use as the hook direction."""
    behaviour: str = "builtin"
    """Behaviour set giving expected answers / instructions to prompts of the same id."""
    max_new_tokens: int = 32
    """Most tokens generated per prompt, arm and α."""
    history_tokens: int = 16
    """Response tokens of the calibration histories (and of the lens histories made here)."""
    lens_metrics: bool = True
    """Also read late-region kl_to_final on the shared history under each arm and α."""
    batched_alphas: bool = True
    """Generate the α grid of a prompt in one batch (per-row α); false: one α at a time."""
    batch_size: int = 16
    """Sequences per forward pass."""
    seed: int = 0
    """Seed of the random control and the bootstraps."""

    def __post_init__(self) -> None:
        _parse_alphas(self.alphas)
        for name in ("calibration", "max_new_tokens", "history_tokens", "batch_size"):
            if getattr(self, name) < 1:
                raise HooklabError(f"steer.{name}={getattr(self, name)} must be at least 1.")
        if not self.arms:
            raise HooklabError("steer.arms is empty: name at least one arm, e.g. it,it-random.")
        for arm in self.arms:
            parse_steer_arm(arm, self.hook)

    @property
    def alpha_grid(self) -> tuple[float, ...]:
        return _parse_alphas(self.alphas)

    def all_arms(self) -> tuple[str, ...]:
        """``arms`` plus ``it@SOURCE`` for every source other than ``hook``."""
        extra = tuple(f"it@{s}" for s in self.sources if s != self.hook)
        return self.arms + tuple(a for a in extra if a not in self.arms)


def _parse_alphas(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(x) for x in split_list(text))
    except ValueError:
        values = ()
    if not values or len(set(values)) != len(values) or not all(map(math.isfinite, values)):
        raise HooklabError(
            f"steer.alphas={text!r}: expected distinct, finite comma-separated numbers, e.g. "
            "'0,0.5,1,1.5,2'."
        )
    return values


@dataclass(frozen=True)
class SteerArm:
    """One arm: which model generates, prompted how, steered along which direction, how."""

    name: str
    model: Literal["pt", "it"]
    source: str
    control: bool = False
    mode: Literal["project", "inject"] = "project"
    prompting: Literal["template", "raw"] = "template"


def parse_steer_arm(text: str, hook: str) -> SteerArm:
    """The :class:`SteerArm` written ``text`` (see the module docstring)."""
    if text == "it":
        return SteerArm(text, "it", hook)
    if text == "it-notmpl":
        return SteerArm(text, "it", hook, prompting="raw")
    if text == "pt-inject":
        return SteerArm(text, "pt", hook, mode="inject")
    if text == "it-random":
        return SteerArm(text, "it", hook, control=True)
    if text.startswith("it@") and text[3:] in SOURCES:
        return SteerArm(text, "it", text[3:])
    raise HooklabError(
        f"steer.arms contains {text!r}: use {', '.join(BASE_ARMS)} or it@SOURCE with SOURCE "
        f"one of {', '.join(SOURCES)}."
    )


def pad_id(tokenizer: Any) -> int:
    pad = tokenizer.pad_token_id
    return int(pad) if pad is not None else int(stop_token_ids(tokenizer)[0])


def window_layers(config: SteerConfig, n_layers: int) -> tuple[int, ...]:
    windows = parse_windows(config.layers, n_layers)
    if len(windows) != 1:
        raise HooklabError(f"steer.layers={config.layers!r}: give one window (e.g. late, 3:6).")
    return windows[0].layers


def _digest(sets: dict[str, Directions]) -> str:
    sha = hashlib.sha256()
    for name in sorted(sets):
        d = sets[name]
        sha.update(name.encode())
        for tensor in (d.vectors, d.gain, d.mean_projection):
            if tensor is not None:
                sha.update(tensor.detach().to(torch.float32).contiguous().numpy().tobytes())
    return sha.hexdigest()[:16]


def prepare_directions(pair: Any, config: SteerConfig) -> dict[str, Any]:
    """The directions, control, stability tables and direction tokens of a run."""
    layers = window_layers(config, pair.n_layers)
    arms = [parse_steer_arm(a, config.hook) for a in config.all_arms()]
    needed = sorted({a.source for a in arms} | {config.hook}, key=SOURCES.index)
    histories = calibration_histories(pair, config)
    sets: dict[str, Directions] = {}
    tables: dict[str, pd.DataFrame] = {}
    for source in needed:
        if source == config.hook and config.directions is not None:
            loaded = load_directions(config.directions, pair.it)
            if loaded.hook != config.hook or any(x not in loaded.layers for x in layers):
                raise HooklabError(
                    f"steer.directions={config.directions!r} holds {loaded.hook} at layers "
                    f"{list(loaded.layers)}; the run steers {config.hook} at {list(layers)}."
                )
            sets[source] = loaded
            continue
        sums = collect_paired(
            pair, histories, hook=source, layers=layers, batch_size=config.batch_size
        )
        sets[source] = mean_direction(sums)
        if source == config.hook:
            ns = sorted({n for n in (1, 2, 4, 8, 16, 32, 64) if n < sums.n_prompts})
            ns.append(sums.n_prompts)
            tables["stability"] = bootstrap_stability(sums, ns, n_resamples=200, seed=config.seed)
            if sums.n_prompts >= 2:
                tables["split_cosines"] = split_cosines(sums, 2, seed=config.seed)
    sets["random"] = random_control(
        sets[config.hook],
        pair.it,
        histories,
        seed=config.seed,
        pad_id=pad_id(pair.tokenizer),
        batch_size=config.batch_size,
    )
    tables["source_cosines"] = cosine_table({s: sets[s] for s in needed})
    tables["direction_tokens"] = direction_tokens(pair.it, sets[config.hook], pair.tokenizer, k=8)
    return {
        "sets": sets,
        "tables": tables,
        "layers": layers,
        "digest": _digest(sets),
        "calibration_histories": histories,
    }


#: the calibration histories' file in a run's ``directions/`` folder
CALIBRATION_HISTORIES = "calibration_histories.jsonl"


def calibration_histories(pair: Any, config: SteerConfig) -> list[History]:
    """The shared histories the directions are computed from: ``config.calibration_histories``
    when given (a saved file or folder, checked against the vocabulary), else IT's greedy
    histories of the first ``calibration`` prompts of ``calibration_prompts``."""
    if config.calibration_histories is None:
        prompts = load_prompts(config.calibration_prompts)[: config.calibration]
        return make_histories(pair, prompts, max_new_tokens=config.history_tokens, progress=False)
    path = Path(config.calibration_histories)
    histories = load_histories(path)
    if not histories:
        raise HooklabError(f"steer.calibration_histories={path}: no histories in it.")
    for history in histories:
        if max(history.tokens) >= pair.d_vocab:
            raise HooklabError(
                f"steer.calibration_histories={path}: prompt {history.prompt_id!r} has a token "
                f"id outside this pair's vocabulary ({pair.d_vocab}); another model's histories?"
            )
    return histories


def write_direction_set(context: dict[str, Any], out: Path, part_name: str) -> None:
    """Write the context's directions once under ``OUT/directions/.sets/DIGEST`` (a folder
    written beside and renamed into place, so parallel parts never see a half-written set)."""
    root = out / DIRECTIONS_DIR / ".sets"
    target = root / context["digest"]
    if target.exists():
        return
    scratch = root / f".{context['digest']}.{part_name}.{os.getpid()}"
    shutil.rmtree(scratch, ignore_errors=True)
    for name, directions in context["sets"].items():
        save_directions(directions, scratch / name)
    for name, table in context["tables"].items():
        atomic_write_csv(scratch / f"{name}.csv", table)
    if context.get("calibration_histories"):  # what rebuilds the directions from a run folder
        save_histories(context["calibration_histories"], scratch, CALIBRATION_HISTORIES)
    try:
        os.rename(scratch, target)
    except OSError:  # another part got there first, with the same content
        shutil.rmtree(scratch, ignore_errors=True)
