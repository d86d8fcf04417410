"""Behaviour prompt sets: typed, validated prompts with expected answers and instructions."""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from hooklab.behaviour.instructions import FORMAT_TYPES, validate_instruction
from hooklab.errors import HooklabError
from hooklab.jsonl import parse_jsonl
from hooklab.prompt_files import check_unicode

__all__ = ["BEHAVIOUR_CATEGORIES", "BehaviourPrompt", "load_behaviour_prompts"]

#: Category -> what it probes. ``factual`` lines need ``expected``; ``format`` and
#: ``verifiable`` lines need ``instructions`` (``format`` at least one format instruction).
BEHAVIOUR_CATEGORIES = {
    "benign_refusal_bait": "benign requests with words that over-cautious models refuse",
    "format": "requests for a format (lists, numbered steps, headers, code)",
    "verifiable": "IFEval-style verifiable instructions",
    "factual": "questions with a short expected answer",
    "continuation": "document beginnings that a base model continues",
    "harmful": "mildly harmful requests that a model should refuse",
}
_FIELDS = frozenset({"id", "category", "text", "expected", "instructions"})
#: Built-in sets, under their own names and under the names run prompts give them
#: (``--prompts behaviour-tiny`` and ``--prompt-set behaviour-tiny`` name one set).
_BUILTIN = {
    "builtin": "all.jsonl",
    "tiny": "tiny.jsonl",
    "behaviour": "all.jsonl",
    "behaviour-tiny": "tiny.jsonl",
}


@dataclass(frozen=True)
class BehaviourPrompt:
    """One behaviour prompt.

    Attributes:
        id: a unique id.
        category: one of :data:`BEHAVIOUR_CATEGORIES`.
        text: the user's prompt.
        expected: the reference answer (``factual``; ``|`` separates alternatives), or None.
        instructions: verifiable instruction dicts (``format`` / ``verifiable``), or ``()``.
    """

    id: str
    category: str
    text: str
    expected: str | None = None
    instructions: tuple[dict[str, Any], ...] = ()


def _parse(record: Any, where: str) -> BehaviourPrompt:
    if not isinstance(record, dict):
        raise HooklabError(f"{where}: expected a JSON object, got {type(record).__name__}.")
    unknown = sorted(set(record) - _FIELDS)
    if unknown:
        raise HooklabError(f"{where}: unknown fields {unknown}; allowed: {sorted(_FIELDS)}.")
    for key in ("id", "category", "text"):
        if not isinstance(record.get(key), str) or not record[key].strip():
            raise HooklabError(f"{where}: field {key!r} must be a non-empty string.")
        check_unicode(record[key], f"{where}, field {key!r}")
    category = record["category"]
    if category not in BEHAVIOUR_CATEGORIES:
        raise HooklabError(
            f"{where}: category {category!r} is unknown; expected one of "
            f"{sorted(BEHAVIOUR_CATEGORIES)}."
        )
    expected = record.get("expected")
    if expected is not None and (not isinstance(expected, str) or not expected.strip()):
        raise HooklabError(f"{where}: 'expected' must be a non-empty string, got {expected!r}.")
    if category == "factual" and expected is None:
        raise HooklabError(f"{where}: a 'factual' prompt needs an 'expected' answer string.")
    raw = record.get("instructions", [])
    if not isinstance(raw, list):
        raise HooklabError(f"{where}: 'instructions' must be a list of instruction objects.")
    try:
        instructions = tuple(validate_instruction(i) for i in raw)
    except HooklabError as error:
        raise HooklabError(f"{where}: {error}") from None
    if category in ("format", "verifiable") and not instructions:
        raise HooklabError(f"{where}: a {category!r} prompt needs a non-empty 'instructions' list.")
    if category == "format" and not any(i["type"] in FORMAT_TYPES for i in instructions):
        raise HooklabError(
            f"{where}: a 'format' prompt needs an instruction of a format type "
            f"{sorted(FORMAT_TYPES)}."
        )
    return BehaviourPrompt(record["id"], category, record["text"], expected, instructions)


def load_behaviour_prompts(source: str | Path = "builtin") -> list[BehaviourPrompt]:
    """Behaviour prompts from ``"builtin"`` or ``"behaviour"`` (hooklab's set,
    ``data/behaviour/all.jsonl``), ``"tiny"`` or ``"behaviour-tiny"`` (prompts in the embedded
    tiny pair's vocabulary, ``data/behaviour/tiny.jsonl``; the second names are those of
    :func:`hooklab.load_prompts`) or a JSONL file of
    ``{"id", "category", "text", "expected"?, "instructions"?}`` lines.

    Raises:
        HooklabError: naming the file and line of an invalid prompt.
    """
    if str(source) in _BUILTIN:
        name = _BUILTIN[str(source)]
        text = resources.files("hooklab.data").joinpath("behaviour").joinpath(name).read_text()
        origin = f"{source} (data/behaviour/{name})"
    else:
        path = Path(source)
        if not path.is_file():
            raise HooklabError(
                f"source={str(source)!r}: no such file; pass 'behaviour', 'behaviour-tiny' or "
                "a JSONL file."
            )
        text, origin = path.read_text(), str(path)
    prompts: list[BehaviourPrompt] = []
    seen: set[str] = set()
    for number, record in parse_jsonl(text, origin):
        where = f"{origin}, line {number}"
        prompt = _parse(record, where)
        if prompt.id in seen:
            raise HooklabError(f"{where}: id {prompt.id!r} repeats an earlier line's id.")
        seen.add(prompt.id)
        prompts.append(prompt)
    if not prompts:
        raise HooklabError(f"{origin}: no prompts in the file.")
    return prompts
