"""Content scorers: degeneration (repetition, distinct-2) and answer accuracy."""

from __future__ import annotations

import re

from hooklab.behaviour.scorers import Generation, Scorer, register_scorer

__all__ = ["distinct_n", "normalise_answer", "repeated_ngram_rate", "words"]

_TOKEN = re.compile(r"\w+|[^\w\s]")


def words(text: str) -> list[str]:
    """Lowercase word and punctuation tokens (``\\w+`` runs and single other characters)."""
    return _TOKEN.findall(text.lower())


def _ngrams(tokens: list[str], n: int) -> list[tuple[str, ...]]:
    return [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]


def repeated_ngram_rate(text: str, n: int = 3) -> float | None:
    """``1 - distinct n-grams / n-grams`` of :func:`words`; ``None`` without an n-gram."""
    grams = _ngrams(words(text), n)
    return 1.0 - len(set(grams)) / len(grams) if grams else None


def distinct_n(text: str, n: int = 2) -> float | None:
    """``distinct n-grams / n-grams`` of :func:`words`; ``None`` without an n-gram."""
    grams = _ngrams(words(text), n)
    return len(set(grams)) / len(grams) if grams else None


class Repetition(Scorer):
    """Fraction of repeated word 3-grams; ``None`` for fewer than three tokens.

    Rule: tokens are the lowercased text's ``\\w+`` runs and single punctuation characters;
    score ``1 - (distinct 3-grams) / (3-grams)``: 0 without a repeat, near 1 for a loop.
    """

    name, group = "repetition", "content"

    def score(self, generation: Generation) -> float | None:
        return repeated_ngram_rate(generation.text, 3)


class Distinct2(Scorer):
    """Distinct-2: distinct word bigrams over bigrams; ``None`` for fewer than two tokens.

    Rule: tokens as in ``repetition``; score ``(distinct 2-grams) / (2-grams)``: 1 without a
    repeated bigram, low for a loop.
    """

    name, group = "distinct_2", "content"

    def score(self, generation: Generation) -> float | None:
        return distinct_n(generation.text, 2)


_UNITS = (
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen "
    "fifteen sixteen seventeen eighteen nineteen"
).split()
_TENS = "twenty thirty forty fifty sixty seventy eighty ninety".split()
NUMBER_WORDS = {w: i for i, w in enumerate(_UNITS)} | {w: 20 + 10 * i for i, w in enumerate(_TENS)}
NUMBER_WORDS["hundred"] = 100
ARTICLES = frozenset({"a", "an", "the"})


def normalise_answer(text: str) -> str:
    """Lowercase, punctuation dropped (a decimal point kept), articles dropped, number words
    up to ninety-nine as digits, whitespace collapsed."""
    text = text.lower().replace("\u2019", "'")
    text = re.sub(r"(?<=\d),(?=\d{3}\b)", "", text)  # 1,000 -> 1000
    text = re.sub(r"(?<!\d)\.|\.(?!\d)", " ", text)  # keep 3.5, drop sentence points
    text = re.sub(r"[^\w\s.]|_", " ", text)
    tokens = [t for t in text.split() if t not in ARTICLES]
    out: list[str] = []
    previous_tens = False  # the last token was a spelled-out "twenty" .. "ninety"
    for token in tokens:
        parts = token.split("-")
        spelled = len(parts) <= 2 and all(p in NUMBER_WORDS for p in parts)
        if spelled:
            value = sum(NUMBER_WORDS[p] for p in parts)
            if previous_tens and len(parts) == 1 and 0 < value < 10:  # "twenty one" -> 21
                out[-1] = str(int(out[-1]) + value)
                previous_tens = False
                continue
            token = str(value)
        previous_tens = spelled and len(parts) == 1 and parts[0] in _TENS
        out.append(token)
    return " ".join(out)


def _contains_span(haystack: str, needle: str) -> bool:
    return bool(needle) and f" {needle} " in f" {haystack} "


class ContentAccuracy(Scorer):
    """1 if the answer contains the expected answer, else 0; ``None`` without ``expected``.

    Rule: answer and expected are normalised (lowercase; punctuation dropped but a decimal
    point between digits kept and thousands commas removed; articles a/an/the dropped; number
    words up to ninety-nine written as digits; whitespace collapsed). The score is 1 when the
    normalised expected answer equals the normalised answer or occurs in it as a whole-word
    span. ``expected`` may list alternatives separated by ``|`` (any one counts). An answer
    that lists many candidates is not penalised: pair this with ``repetition``/length.
    """

    name, group = "content_accuracy", "content"

    def score(self, generation: Generation) -> float | None:
        if generation.expected is None:
            return None
        answer = normalise_answer(generation.text)
        options = [normalise_answer(o) for o in generation.expected.split("|")]
        return float(any(_contains_span(answer, o) for o in options if o))


for _scorer in (Repetition(), Distinct2(), ContentAccuracy()):
    register_scorer(_scorer)
