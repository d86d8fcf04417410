"""IFEval-style verifiable instructions: checks written here, and their scorers.

Library choice: the maintained verifier on PyPI, ``if-verifiable`` (0.1.2, IFEval and IFBench
checks), requires ``datasets``, ``nltk``, ``langdetect``, ``emoji`` and ``syllapy``, and its
sentence checks load nltk's ``punkt`` data, which nltk downloads over the network at run time;
``lm-eval``'s ifeval task has the same nltk/langdetect needs on top of a large harness. Both
are far heavier than the dozen string checks hooklab needs, so the checks below are written
here, each a few lines with its rule in its docstring, and known-answer tested.

An instruction is a dict ``{"type": TYPE, **parameters}``; :data:`INSTRUCTION_TYPES` maps each
type to its required and optional parameters.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from hooklab.behaviour.scorers import Generation, Scorer, register_scorer
from hooklab.errors import HooklabError

__all__ = [
    "FORMAT_TYPES",
    "INSTRUCTION_TYPES",
    "check_instruction",
    "count_bullets",
    "count_headers",
    "count_numbered",
    "paragraphs",
    "validate_instruction",
]

_WORD = re.compile(r"\b\w+(?:'\w+)?\b")
_BULLET = re.compile(r"^\s*[-*\u2022]\s+\S", re.MULTILINE)
_NUMBERED = re.compile(r"^\s*\d+[.)]\s+\S", re.MULTILINE)
_HEADER = re.compile(r"^\s{0,3}#{1,6}\s+\S", re.MULTILINE)
_FENCE = re.compile(r"```[^\n]*\n.*?```", re.DOTALL)


def count_bullets(text: str) -> int:
    """Lines starting with ``-``, ``*`` or ``•`` and a space (markdown bullets)."""
    return len(_BULLET.findall(text))


def count_numbered(text: str) -> int:
    """Lines starting with a number, ``.`` or ``)`` and a space (``1. `` / ``2) ``)."""
    return len(_NUMBERED.findall(text))


def count_headers(text: str) -> int:
    """Markdown header lines (one to six ``#`` then a space)."""
    return len(_HEADER.findall(text))


def paragraphs(text: str) -> list[str]:
    """Non-empty blocks of the text separated by blank lines."""
    return [p for p in re.split(r"\n\s*\n", text.strip()) if p.strip()]


def _words(text: str) -> list[str]:
    return _WORD.findall(text)


def _has_word(text: str, keyword: str) -> bool:
    return re.search(rf"(?<!\w){re.escape(keyword)}(?!\w)", text, re.IGNORECASE) is not None


def _json_body(text: str) -> str:
    body = text.strip()
    fenced = re.fullmatch(r"```(?:json)?\s*\n?(.*?)\n?```", body, re.DOTALL | re.IGNORECASE)
    return fenced.group(1).strip() if fenced else body


def _is_json(text: str) -> bool:
    try:
        json.loads(_json_body(text))
    except ValueError:
        return False
    return True


def _count_ok(count: int, params: Mapping[str, Any], default_min: int) -> bool:
    if "n" in params:
        return count == params["n"]
    return count >= default_min


_Check = Callable[[str, Mapping[str, Any]], bool]

#: type -> (required parameters, optional parameters, check, rule).
_TYPES: dict[str, tuple[tuple[str, ...], tuple[str, ...], _Check, str]] = {
    "max_words": (("n",), (), lambda t, p: len(_words(t)) <= p["n"], "at most n words"),
    "min_words": (("n",), (), lambda t, p: len(_words(t)) >= p["n"], "at least n words"),
    "include_keywords": (
        ("keywords",),
        (),
        lambda t, p: all(_has_word(t, k) for k in p["keywords"]),
        "every keyword appears as a whole word, case-insensitive",
    ),
    "exclude_keywords": (
        ("keywords",),
        (),
        lambda t, p: not any(_has_word(t, k) for k in p["keywords"]),
        "no keyword appears as a whole word, case-insensitive",
    ),
    "lowercase": (
        (),
        (),
        lambda t, p: t == t.lower() and any(c.isalpha() for c in t),  # noqa: ARG005
        "has letters, none uppercase",
    ),
    "uppercase": (
        (),
        (),
        lambda t, p: t == t.upper() and any(c.isalpha() for c in t),  # noqa: ARG005
        "has letters, none lowercase",
    ),
    "no_commas": ((), (), lambda t, p: "," not in t, "no ',' character"),  # noqa: ARG005
    "ends_with": (
        ("phrase",),
        (),
        lambda t, p: t.strip().lower().endswith(p["phrase"].strip().lower()),
        "the stripped answer ends with the phrase, case-insensitive",
    ),
    "starts_with": (
        ("phrase",),
        (),
        lambda t, p: t.strip().lower().startswith(p["phrase"].strip().lower()),
        "the stripped answer starts with the phrase, case-insensitive",
    ),
    "json_format": (
        (),
        (),
        lambda t, p: _is_json(t),  # noqa: ARG005
        "the answer (optionally in one ```json fence) parses as JSON",
    ),
    "bullet_list": (
        (),
        ("n",),
        lambda t, p: _count_ok(count_bullets(t), p, 2),
        "exactly n bullet lines (- * •), or at least 2 without n",
    ),
    "numbered_list": (
        (),
        ("n",),
        lambda t, p: _count_ok(count_numbered(t), p, 2),
        "exactly n numbered lines (1. / 1)), or at least 2 without n",
    ),
    "headers": (
        (),
        ("n",),
        lambda t, p: _count_ok(count_headers(t), p, 1),
        "exactly n markdown headers, or at least 1 without n",
    ),
    "code_block": ((), (), lambda t, p: bool(_FENCE.search(t)), "a closed ``` fenced block"),  # noqa: ARG005
    "paragraphs": (
        ("n",),
        (),
        lambda t, p: len(paragraphs(t)) == p["n"],
        "exactly n blank-line-separated paragraphs",
    ),
}

#: Instruction type -> ``(required parameters, optional parameters)``.
INSTRUCTION_TYPES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    name: (required, optional) for name, (required, optional, _, _) in _TYPES.items()
}
#: The instruction types that ask for a format (scored by ``structure``).
FORMAT_TYPES = frozenset({"bullet_list", "numbered_list", "headers", "code_block", "paragraphs"})


def validate_instruction(instruction: Any) -> dict[str, Any]:
    """``instruction`` as a checked dict; raises :class:`HooklabError` naming the problem."""
    if not isinstance(instruction, Mapping) or instruction.get("type") not in _TYPES:
        got = instruction.get("type") if isinstance(instruction, Mapping) else instruction
        raise HooklabError(
            f"instruction type {got!r} is unknown; expected a dict with 'type' one of "
            f"{sorted(_TYPES)}."
        )
    required, optional, _, _ = _TYPES[instruction["type"]]
    params = {k: v for k, v in instruction.items() if k != "type"}
    missing = [k for k in required if k not in params]
    extra = [k for k in params if k not in required + optional]
    if missing or extra:
        raise HooklabError(
            f"instruction {dict(instruction)!r}: type {instruction['type']!r} takes "
            f"parameters {list(required)} (required) and {list(optional)} (optional); "
            f"missing {missing}, unknown {extra}."
        )
    for key, value in params.items():
        ok = (
            isinstance(value, int) and value >= 0
            if key == "n"
            else isinstance(value, str) and bool(value)
            if key == "phrase"
            else isinstance(value, list) and all(isinstance(k, str) and k for k in value)
        )
        if not ok or (key == "keywords" and not value):
            raise HooklabError(
                f"instruction {dict(instruction)!r}: parameter {key!r} must be a "
                + ("non-negative int" if key == "n" else "non-empty string")
                + ("s list" if key == "keywords" else "")
                + f", got {value!r}."
            )
    return dict(instruction)


def check_instruction(text: str, instruction: Mapping[str, Any]) -> bool:
    """Whether ``text`` satisfies the verifiable ``instruction``."""
    checked = validate_instruction(instruction)
    return bool(_TYPES[checked["type"]][2](text, checked))


def _fraction(text: str, instructions: Sequence[Mapping[str, Any]]) -> float | None:
    if not instructions:
        return None
    return sum(check_instruction(text, i) for i in instructions) / len(instructions)


_RULES = "\n    ".join(f"- ``{name}``: {rule}." for name, (*_, rule) in _TYPES.items())


class InstructionFollowing(Scorer):
    """Fraction of the prompt's verifiable instructions the answer satisfies (IFEval's
    instruction-level strict accuracy); ``None`` without instructions.

    Rule: each instruction of ``generation.instructions`` is checked on the decoded text:
    {rules}
    """

    name, group = "instruction_following", "content"

    def score(self, generation: Generation) -> float | None:
        return _fraction(generation.text, generation.instructions)


class InstructionFollowingAll(Scorer):
    """1 if the answer satisfies every verifiable instruction of its prompt, else 0 (IFEval's
    prompt-level strict accuracy); ``None`` without instructions.

    Rule: ``instruction_following`` equals 1.
    """

    name, group = "instruction_following_all", "content"

    def score(self, generation: Generation) -> float | None:
        fraction = _fraction(generation.text, generation.instructions)
        return None if fraction is None else float(fraction == 1.0)


class Structure(Scorer):
    """Fraction of the prompt's format instructions the answer follows (1 when it has the
    asked-for format); ``None`` when the prompt asks for no format.

    Rule: the instructions of ``generation.instructions`` whose type is in ``FORMAT_TYPES``
    (``bullet_list``, ``numbered_list``, ``headers``, ``code_block``, ``paragraphs``), checked
    as in ``instruction_following``.
    """

    name, group = "structure", "content"

    def score(self, generation: Generation) -> float | None:
        wanted = [i for i in generation.instructions if i.get("type") in FORMAT_TYPES]
        return _fraction(generation.text, wanted)


class HasStructure(Scorer):
    """1 if the answer has any visible structure, else 0.

    Rule: at least two bullet lines, or at least two numbered lines, or a markdown header, or
    a closed ``` fenced block, or at least two blank-line-separated paragraphs.
    """

    name, group = "has_structure", "content"

    def score(self, generation: Generation) -> float | None:
        text = generation.text
        return float(
            count_bullets(text) >= 2
            or count_numbered(text) >= 2
            or count_headers(text) >= 1
            or bool(_FENCE.search(text))
            or len(paragraphs(text)) >= 2
        )


InstructionFollowing.__doc__ = (InstructionFollowing.__doc__ or "").replace("{rules}", _RULES)
for _scorer in (InstructionFollowing(), InstructionFollowingAll(), Structure(), HasStructure()):
    register_scorer(_scorer)
