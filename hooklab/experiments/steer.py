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

import json
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from hooklab.atomic import atomic_write_csv, atomic_write_text
from hooklab.behaviour import SCORERS, Generation, load_behaviour_prompts, score_generation
from hooklab.errors import HooklabError
from hooklab.experiment import Experiment, PartInput, PlanEstimate, register_experiment
from hooklab.experiments._html import csv_table, heading
from hooklab.generation import generate
from hooklab.graft.histories import check_histories, load_histories, make_histories, save_histories
from hooklab.prompts import chat_prompt_ids, ends_turn, raw_prompt_ids, stop_token_ids
from hooklab.steering import steering_hooks
from hooklab.steering.dose import (
    dose_response,
    measure_scores,
    prompt_slopes,
    slope_table,
    specificity,
)
from hooklab.steering.io import load_directions
from hooklab.steering.sweep import (
    DIRECTIONS_DIR,
    SteerArm,
    SteerConfig,
    behaviour_file,
    pad_id,
    parse_steer_arm,
    prepare_directions,
    window_layers,
    write_direction_set,
)

__all__ = ["SteerConfig", "SteerExperiment", "behaviour_file", "parse_steer_arm"]

LENS_MEASURE = "late_kl_to_final"


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
    stops, pad = stop_token_ids(pair.tokenizer), pad_id(pair.tokenizer)
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


#: the two layer sets of a steering run, recorded in its table and every summary
REGION_COLUMNS = ("late_layers", "steered_layers")


def _regions(n_layers: int, steered: Sequence[int]) -> dict[str, str]:
    """``late_layers``: the read-out region of ``late_kl_to_final``
    (:func:`hooklab.metrics.late_layers`, final layer excluded); ``steered_layers``: the
    intervention window the direction is applied at (``steer.layers``, a graft window)."""
    from hooklab.metrics import late_layers, layers_label

    return {
        "late_layers": layers_label(late_layers(n_layers)),
        "steered_layers": layers_label(list(steered)),
    }


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
            tokens, mask, read, _ = pad_batch(batch, pad_id(pair.tokenizer))
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
                ended_with_eot=ends_turn(output.token_ids, pair.tokenizer),  # not any stop token
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
            window_layers(config, n_layers)
        except HooklabError as error:
            raise HooklabError(f"steer.layers: {error}") from None
        if config.directions is not None:  # a damaged file is refused before models load
            load_directions(config.directions)

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
        write_direction_set(part.context, part.out, part.part_name)
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
        frame = frame[["prompt_id", "category", "arm", "alpha", "scorer", "group", "value"]]
        return frame.assign(**_regions(part.pair.n_layers, part.context["layers"]))

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
        # both regions in every summary: the read-out region of late_kl_to_final, and the
        # intervention window the direction is applied at
        regions = {c: str(frame[c].iloc[0]) for c in REGION_COLUMNS if c in frame and len(frame)}
        written += [
            atomic_write_csv(out / name, table.assign(**regions)) for name, table in tables.items()
        ]
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
