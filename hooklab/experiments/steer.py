"""The ``steer`` experiment: free generation steered along the IT−PT direction, scored for
behaviour, against α (library: :mod:`hooklab.steering`, :mod:`hooklab.generation`,
:mod:`hooklab.behaviour`).

Once per shard run, :meth:`SteerExperiment.prepare` computes the directions from calibration
histories (IT's greedy answers to the first ``calibration`` prompts of
``calibration_prompts``, both models read on the same tokens): the mean IT−PT direction of
every source activation at the steered layers, and the projection-matched random control of
the ``hook`` direction. A saved direction file (``directions``) replaces the ``hook``
direction. Every part then generates each prompt under every arm at every α and scores the
generations with every behaviour scorer (:data:`hooklab.behaviour.SCORERS`); with
``lens_metrics`` it also reads ``late_kl_to_final`` on the shared history under the same hooks.

Arms (:func:`parse_steer_arm`), all at the layers of ``layers``:

* ``it``: IT with its chat template, projection steering ``h ← h + (α − 1)(d·h)d`` on
  ``hook`` (α = 1 unsteered, 0 removes the IT−PT component, 2 doubles it);
* ``it-notmpl``: the same, the raw prompt without the chat template;
* ``pt-inject``: PT (chat template) with additive injection ``h ← h + β·s·d``, ``s`` IT's mean
  projection on ``d``, at ``β = α − 1``: α = 1 is PT unsteered, α = 2 adds ``s·d`` once;
* ``it-random``: IT with the projection-matched random direction (its gain ``g`` makes the
  edit's mean norm equal the true edit's at every α, so α = 0 *reverses* ``g − 1`` of the
  random component instead of removing it; compare slopes, not α = 0 levels);
* ``it@SOURCE``: IT, projection steering along the direction of another activation
  (``attn_out``, ``resid_post``), one arm per extra entry of ``sources``.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, ClassVar, Literal

import pandas as pd
import torch

from hooklab.atomic import atomic_write_csv, atomic_write_text
from hooklab.behaviour import SCORERS, Generation, load_behaviour_prompts, score_generation
from hooklab.config import Config, split_list
from hooklab.errors import HooklabError
from hooklab.experiment import Experiment, PartInput, PlanEstimate, register_experiment
from hooklab.experiments._html import csv_table, heading
from hooklab.generation import generate
from hooklab.graft.histories import check_histories, load_histories, make_histories, save_histories
from hooklab.graft.windows import parse_windows
from hooklab.prompts import chat_prompt_ids, load_prompts, raw_prompt_ids, stop_token_ids
from hooklab.steering import (
    Directions,
    bootstrap_stability,
    collect_paired,
    cosine_table,
    load_directions,
    mean_direction,
    random_control,
    save_directions,
    split_cosines,
    steering_hooks,
)
from hooklab.steering.dose import (
    dose_response,
    measure_scores,
    prompt_slopes,
    slope_table,
    specificity,
)
from hooklab.steering.figures import direction_tokens

__all__ = ["SteerConfig", "SteerArm", "SteerExperiment", "parse_steer_arm", "behaviour_file"]

Source = Literal["mlp_out", "attn_out", "resid_post"]
SOURCES = ("mlp_out", "attn_out", "resid_post")
BASE_ARMS = ("it", "it-notmpl", "pt-inject", "it-random")
LENS_MEASURE = "late_kl_to_final"
DIRECTIONS_DIR = "directions"


def behaviour_file(name: str) -> Path:
    """The JSONL file of a built-in behaviour prompt set (``"tiny"`` or ``"builtin"``), to pass
    as a run's prompts (``--prompts PATH``) so that the run answers that set."""
    files = {"tiny": "tiny.jsonl", "builtin": "all.jsonl"}
    if name not in files:
        raise HooklabError(f"name={name!r}: expected 'tiny' or 'builtin'.")
    return Path(str(resources.files("hooklab.data").joinpath("behaviour", files[name])))


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
    if not values or len(set(values)) != len(values):
        raise HooklabError(
            f"steer.alphas={text!r}: expected distinct comma-separated numbers, e.g. "
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


# -- prepare: directions, control, stability ---------------------------------------------------


def _pad_id(tokenizer: Any) -> int:
    pad = tokenizer.pad_token_id
    return int(pad) if pad is not None else int(stop_token_ids(tokenizer)[0])


def _window(config: SteerConfig, n_layers: int) -> tuple[int, ...]:
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
    layers = _window(config, pair.n_layers)
    arms = [parse_steer_arm(a, config.hook) for a in config.all_arms()]
    needed = sorted({a.source for a in arms} | {config.hook}, key=SOURCES.index)
    prompts = load_prompts(config.calibration_prompts)[: config.calibration]
    histories = make_histories(pair, prompts, max_new_tokens=config.history_tokens, progress=False)
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
        pad_id=_pad_id(pair.tokenizer),
        batch_size=config.batch_size,
    )
    tables["source_cosines"] = cosine_table({s: sets[s] for s in needed})
    tables["direction_tokens"] = direction_tokens(pair.it, sets[config.hook], pair.tokenizer, k=8)
    return {"sets": sets, "tables": tables, "layers": layers, "digest": _digest(sets)}


def _write_direction_set(context: dict[str, Any], out: Path, part_name: str) -> None:
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
    try:
        os.rename(scratch, target)
    except OSError:  # another part got there first, with the same content
        shutil.rmtree(scratch, ignore_errors=True)


# -- run_part: generation, scoring, lens ---------------------------------------------------------


def _hooks(context: dict[str, Any], arm: SteerArm, value: float | torch.Tensor, n: int) -> list:
    directions = context["sets"]["random" if arm.control else arm.source]
    if arm.mode == "inject":
        value = value - 1.0  # β = α − 1
    return steering_hooks(directions, value, n_layers=n, layers=context["layers"], mode=arm.mode)


def _generate_arm(part: PartInput[SteerConfig], arm: SteerArm) -> dict[tuple[str, float], Any]:
    """Each (prompt id, α)'s generation under ``arm``."""
    pair, config, context = part.pair, part.config, part.context
    model = pair.it if arm.model == "it" else pair.pt
    encode = raw_prompt_ids if arm.prompting == "raw" else chat_prompt_ids
    ids = {p.id: encode(pair.tokenizer, p.text) for p in part.prompts}
    alphas = config.alpha_grid
    stops, pad = stop_token_ids(pair.tokenizer), _pad_id(pair.tokenizer)
    out: dict[tuple[str, float], Any] = {}
    if config.batched_alphas and config.batch_size >= len(alphas):
        per_pass = config.batch_size // len(alphas)
        for start in range(0, len(part.prompts), per_pass):
            prompts = part.prompts[start : start + per_pass]
            rows = [(p.id, a) for p in prompts for a in alphas]
            grid = torch.tensor([a for _, a in rows], dtype=torch.float32)
            outputs = generate(
                model,
                [ids[p] for p, _ in rows],
                hooks=_hooks(context, arm, grid, pair.n_layers),
                max_new_tokens=config.max_new_tokens,
                stop_ids=stops,
                pad_id=pad,
                batch_size=len(rows),
                keys=[f"{p}@{a}" for p, a in rows],
            )
            out.update(zip(rows, outputs, strict=True))
        return out
    for alpha in alphas:
        outputs = generate(
            model,
            [ids[p.id] for p in part.prompts],
            hooks=_hooks(context, arm, alpha, pair.n_layers),
            max_new_tokens=config.max_new_tokens,
            stop_ids=stops,
            pad_id=pad,
            batch_size=config.batch_size,
            keys=[p.id for p in part.prompts],
        )
        out.update({(p.id, alpha): o for p, o in zip(part.prompts, outputs, strict=True)})
    return out


def _part_histories(part: PartInput[SteerConfig]) -> list:
    ids = [p.id for p in part.prompts]
    if part.histories is not None:
        by_id = check_histories(load_histories(part.histories), ids, vocab_size=part.pair.d_vocab)
        return [by_id[i] for i in ids]
    histories = make_histories(
        part.pair, part.prompts, max_new_tokens=part.config.history_tokens, progress=False
    )
    save_histories(histories, part.out / "histories", f"{part.part_name}.jsonl")
    return histories


def _lens_rows(part: PartInput[SteerConfig], arm: SteerArm, histories: Sequence[Any]) -> list:
    """Per prompt and α, kl_to_final averaged over the read positions and the late layers."""
    from hooklab.conditions import pad_batch
    from hooklab.metrics import late_layers
    from hooklab.stream import read_lens

    pair, config = part.pair, part.config
    model = pair.it if arm.model == "it" else pair.pt
    late = late_layers(pair.n_layers)
    rows = []
    for alpha in config.alpha_grid:
        hooks = _hooks(part.context, arm, alpha, pair.n_layers)
        for start in range(0, len(histories), config.batch_size):
            batch = histories[start : start + config.batch_size]
            tokens, mask, read, _ = pad_batch(batch, _pad_id(pair.tokenizer))
            kl = read_lens(
                model, tokens, attention_mask=mask, read_mask=read, fwd_hooks=hooks
            ).metrics["kl_to_final"][:, :, late]  # [batch, pos, late]
            values = torch.nanmean(kl.float().flatten(1), dim=1)
            for history, value in zip(batch, values.tolist(), strict=True):
                rows.append((history.prompt_id, alpha, LENS_MEASURE, "lens", value))
    return rows


def _score_rows(part: PartInput[SteerConfig], arm: SteerArm, outputs: dict) -> tuple[list, list]:
    pair, behaviour = part.pair, part.context["behaviour"]
    stops = set(stop_token_ids(pair.tokenizer))
    rows, records = [], []
    for prompt in part.prompts:
        known = behaviour.get(prompt.id)
        for alpha in part.config.alpha_grid:
            output = outputs[(prompt.id, alpha)]
            body = [t for t in output.token_ids if t not in stops]
            text = pair.tokenizer.decode(body, skip_special_tokens=True)
            generation = Generation(
                prompt_id=prompt.id,
                category=known.category if known else prompt.category,
                prompt_text=prompt.text,
                text=text,
                ended_with_eot=output.stop_reason == "eot",
                n_tokens=output.n_tokens,
                token_ids=output.token_ids,
                expected=known.expected if known else None,
                instructions=tuple(known.instructions) if known else (),
                arm=arm.name,
            )
            for name, value in score_generation(generation).items():
                value = float("nan") if value is None else float(value)
                rows.append((prompt.id, alpha, name, SCORERS[name].group, value))
            records.append(
                {
                    "prompt_id": prompt.id,
                    "arm": arm.name,
                    "alpha": alpha,
                    "token_ids": list(output.token_ids),
                    "stop_reason": output.stop_reason,
                    "text": text,
                }
            )
    return rows, records


# -- summaries ---------------------------------------------------------------------------------


def _promote_directions(out: Path) -> list[Path]:
    """Copy the run's one direction set to ``OUT/directions/`` (refusing parts that disagree)."""
    root = out / DIRECTIONS_DIR
    sets = sorted(p for p in (root / ".sets").glob("*") if p.is_dir() and p.name[0] != ".")
    if len(sets) > 1:
        raise HooklabError(
            f"{root / '.sets'} holds {len(sets)} different direction sets: the parts of this run "
            "computed different directions (changed calibration?); rerun into a new folder."
        )
    if not sets:
        return []
    written = []
    for path in sorted(sets[0].iterdir()):
        written.append(Path(shutil.copyfile(path, root / path.name)))
    return written


class SteerExperiment(Experiment[SteerConfig]):
    name = "steer"
    config_type = SteerConfig
    table = "steer"
    summary = "Steer generation along the IT−PT direction over an α grid; behaviour dose-response."
    uses_histories = True

    def validate(self, config: SteerConfig, n_layers: int) -> None:
        try:
            _window(config, n_layers)
        except HooklabError as error:
            raise HooklabError(f"steer.layers: {error}") from None

    def plan(self, config: SteerConfig, n_prompts: int, n_layers: int) -> PlanEstimate:  # noqa: ARG002
        cells = n_prompts * len(config.all_arms()) * len(config.alpha_grid)
        lens = cells if config.lens_metrics else 0
        passes = cells * config.max_new_tokens + lens + 2 * config.calibration * 4
        return PlanEstimate(forward_passes=passes, rows=cells * (len(SCORERS) + 1))

    def prepare(self, pair: Any, config: SteerConfig) -> Any:
        context = prepare_directions(pair, config)
        behaviour = load_behaviour_prompts(config.behaviour)
        context["behaviour"] = {p.id: p for p in behaviour}
        return context

    def describe_context(self, context: Any) -> dict[str, Any]:
        sets = context["sets"]
        return {
            "directions_digest": context["digest"],
            "layers": list(context["layers"]),
            "directions": {
                name: {
                    "hook": d.hook,
                    "source": d.source,
                    "n_prompts": d.n_prompts,
                    "n_tokens": d.n_tokens,
                }
                for name, d in sets.items()
            },  # fmt: skip
            "random_gain": sets["random"].gains().tolist(),
        }

    def run_part(self, part: PartInput[SteerConfig]) -> pd.DataFrame:
        _write_direction_set(part.context, part.out, part.part_name)
        config = part.config
        histories = _part_histories(part) if config.lens_metrics else []
        rows, records = [], []
        for text in config.all_arms():
            arm = parse_steer_arm(text, config.hook)
            scored, kept = _score_rows(part, arm, _generate_arm(part, arm))
            if config.lens_metrics and arm.prompting == "template":
                scored += _lens_rows(part, arm, histories)
            rows += [(arm.name, *row) for row in scored]
            records += kept
        lines = [json.dumps(r, ensure_ascii=False) for r in records]
        atomic_write_text(
            part.out / "generations" / f"{part.part_name}.jsonl", "\n".join(lines) + "\n"
        )
        columns = ["arm", "prompt_id", "alpha", "scorer", "group", "value"]
        frame = pd.DataFrame(rows, columns=columns)
        category = {p.id: p.category for p in part.prompts}
        frame.insert(2, "category", frame["prompt_id"].map(category))
        return frame[["prompt_id", "category", "arm", "alpha", "scorer", "group", "value"]]

    def summarise(self, frame: pd.DataFrame, out: Path, config: SteerConfig) -> list[Path]:
        written = _promote_directions(out)
        scores = measure_scores(frame)
        slopes = prompt_slopes(scores)
        measures = ["governance", "content", LENS_MEASURE]
        ratio = specificity(slopes, "it", "it-random", measures, seed=config.seed)
        tables = {
            "dose_response.csv": dose_response(scores, seed=config.seed),
            "prompt_slopes.csv": slopes,
            "slopes.csv": slope_table(slopes, seed=config.seed),
            "specificity.csv": ratio,
        }
        written += [atomic_write_csv(out / name, table) for name, table in tables.items()]
        return written

    def figures(self, run_dir: Path, figures_dir: Path) -> list[Path]:
        from hooklab.steering.sweep_figures import steer_figures

        return steer_figures(run_dir, figures_dir)

    def report_section(self, run_dir: Path) -> str:
        slopes = csv_table(
            run_dir / "slopes.csv",
            ["arm", "measure", "slope", "ci_low", "ci_high", "n_prompts"],
            lambda f: f[f["measure"].isin(["governance", "content", LENS_MEASURE])],
        )
        dose = csv_table(
            run_dir / "dose_response.csv",
            ["arm", "measure", "alpha", "mean", "ci_low", "ci_high", "n_prompts"],
            lambda f: f[f["measure"].isin(["governance", "content"])],
        )
        ratio = csv_table(
            run_dir / "specificity.csv",
            ["measure", "true_arm", "control_arm", "ratio", "ci_low", "ci_high", "n_prompts"],
        )
        return (
            heading("Steering along the IT−PT direction: slopes of score on α (95% CI)")
            + slopes
            + heading("Direction specificity: true slope / random-control slope")
            + ratio
            + heading("Dose-response (governance and content, mean over prompts)")
            + dose
        )

    def headline(self, run_dir: Path) -> list[str]:
        slopes = pd.read_csv(run_dir / "slopes.csv")
        ratio = pd.read_csv(run_dir / "specificity.csv").set_index("measure")

        def slope(arm: str) -> str:
            row = slopes[(slopes["arm"] == arm) & (slopes["measure"] == "governance")]
            if row.empty:
                return "n/a"
            r = row.iloc[0]
            return f"{r['slope']:+.4f} [{r['ci_low']:+.4f}, {r['ci_high']:+.4f}]"

        line = f"governance slope it: {slope('it')}; random: {slope('it-random')}"
        if "governance" in ratio.index:
            r = ratio.loc["governance"]
            line += f"; specificity ratio {r['ratio']:.3g} [{r['ci_low']:.3g}, {r['ci_high']:.3g}]"
        return [
            f"wrote {run_dir / 'steer.parquet'}, generations, directions and slopes in {run_dir}",
            line,
        ]


register_experiment(SteerExperiment())
