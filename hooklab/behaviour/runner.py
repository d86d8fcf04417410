"""Generate every arm's response to every prompt, and score each response with every scorer.

A response is one *record* (a plain dict, one JSONL line of ``generations/PART.jsonl``): the
prompt's id and category, the arm (its text and :meth:`~hooklab.generation.Arm.to_dict`,
prompting included), the decoded text (special tokens removed, not stripped), the token ids,
the stop reason and the length. Scores are one row per (prompt, arm, scorer), ``NaN`` where the
scorer's rule does not apply.

Prompts come as :class:`~hooklab.prompts.Prompt` (id, text, category); what a scorer needs
beyond them (a factual prompt's ``expected`` answer, verifiable ``instructions``) comes from
``references``, behaviour prompts by id (:func:`~hooklab.behaviour.load_behaviour_prompts`). A
prompt without a reference is scored with none (its accuracy and instruction scores are
``NaN``); a reference whose text or category differs from the prompt's is refused.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd

from hooklab.behaviour.prompts import BehaviourPrompt
from hooklab.behaviour.scorers import SCORERS, Generation, get_scorer
from hooklab.errors import HooklabError
from hooklab.generation.arms import generate_arm, parse_arm
from hooklab.prompts import Prompt, ends_turn

__all__ = ["ARM_COLUMNS", "check_references", "arm_generations", "score_records"]

#: Columns of the scores table that describe the arm (from ``Arm.to_dict``).
ARM_COLUMNS = ("host", "intervention", "window", "donor", "prompting")


def check_references(prompts: Sequence[Prompt], references: Mapping[str, BehaviourPrompt]) -> None:
    """Refuse a reference whose text or category differs from the run's prompt of that id."""
    for prompt in prompts:
        ref = references.get(prompt.id)
        if ref is not None and (ref.text != prompt.text or ref.category != prompt.category):
            raise HooklabError(
                f"prompt {prompt.id!r}: its text or category differs from the prompt_set's "
                f"prompt of that id ({ref.text[:40]!r}, {ref.category!r}); use the same prompt "
                "file for [prompts] and behave.prompt_set."
            )


def arm_generations(
    pair: Any,
    arms: Sequence[str],
    prompts: Sequence[Prompt],
    *,
    max_new_tokens: int,
    seed: int = 0,
    **options: Any,
) -> list[dict[str, Any]]:
    """One record per (arm, prompt), arms in the order given, prompts in order.

    Every arm generates for every prompt with the same ``seed`` (the random control's and
    sampling's); ``options`` go to :func:`~hooklab.generation.generate_arm` (``greedy``,
    ``temperature``, ``top_p``, ``batch_size``).
    """
    records = []
    for text in arms:
        arm = parse_arm(text, pair.n_layers)
        outputs = generate_arm(
            pair, arm, list(prompts), max_new_tokens=max_new_tokens, seed=seed, **options
        )
        for prompt, output in zip(prompts, outputs, strict=True):
            records.append(
                {
                    "prompt_id": prompt.id,
                    "category": prompt.category,
                    "prompt_text": prompt.text,
                    "arm": arm.text,
                    "arm_spec": arm.to_dict(),
                    "text": pair.tokenizer.decode(list(output.token_ids), skip_special_tokens=True),
                    "token_ids": list(output.token_ids),
                    "stop_reason": output.stop_reason,
                    # the turn's own end marker, not a document's EOS (PT ends text with EOS)
                    "ended_with_eot": ends_turn(output.token_ids, pair.tokenizer),
                    "n_tokens": output.n_tokens,
                }
            )
    return records


def _generation(
    record: Mapping[str, Any], prompt: Prompt, reference: BehaviourPrompt | None
) -> Generation:
    return Generation(
        prompt_id=prompt.id,
        category=prompt.category,
        prompt_text=prompt.text,
        text=record["text"],
        ended_with_eot=bool(record.get("ended_with_eot", record["stop_reason"] == "eot")),
        n_tokens=int(record["n_tokens"]),
        token_ids=tuple(record["token_ids"]),
        expected=None if reference is None else reference.expected,
        instructions=() if reference is None else tuple(reference.instructions),
        arm=record["arm"],
    )


def score_records(
    records: Sequence[Mapping[str, Any]],
    prompts: Sequence[Prompt],
    references: Mapping[str, BehaviourPrompt],
    scorers: Sequence[str] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> pd.DataFrame:
    """The scores table: one row per (record, scorer), in record then scorer order.

    Columns: ``prompt_id``, ``category``, ``arm``, the :data:`ARM_COLUMNS`, ``layers`` (e.g.
    ``"4,5"``), ``scorer``, ``group``, ``value`` (``NaN`` where the rule does not apply),
    ``in_prompt_set`` (whether the prompt had a reference), ``n_tokens``, ``stop_reason``.

    Args:
        records: from :func:`arm_generations`.
        prompts: the prompts the records answer.
        references: behaviour prompts by id.
        scorers: registered scorer names (default: every registered one).
        extra: ``{name: fn(generation) -> float | None}`` scored after ``scorers`` (a judge),
            with group ``"judge"``.
    """
    by_id = {p.id: p for p in prompts}
    check_references(prompts, references)
    names = default_scorers() if scorers is None else scorers
    chosen = [(name, get_scorer(name).score, get_scorer(name).group) for name in names]
    chosen += [(name, fn, "judge") for name, fn in (extra or {}).items()]
    rows = []
    for record in records:
        prompt = by_id[record["prompt_id"]]
        reference = references.get(prompt.id)
        generation = _generation(record, prompt, reference)
        spec = record["arm_spec"]
        for name, score, group in chosen:
            value = score(generation)
            rows.append(
                {
                    "prompt_id": prompt.id,
                    "category": prompt.category,
                    "arm": record["arm"],
                    **{column: spec[column] or "" for column in ARM_COLUMNS},
                    "layers": ",".join(map(str, spec["layers"])),
                    "scorer": name,
                    "group": group,
                    "value": float("nan") if value is None else float(value),
                    "in_prompt_set": reference is not None,
                    "n_tokens": int(record["n_tokens"]),
                    "stop_reason": record["stop_reason"],
                }
            )
    return pd.DataFrame(rows)


def default_scorers() -> tuple[str, ...]:
    """Every registered rule scorer, by name."""
    return tuple(sorted(SCORERS))
