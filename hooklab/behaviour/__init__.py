"""Behaviour scoring of free-running generations: rule-based scorers, judges, prompt sets.

Everything here is a pure function of decoded text (plus a :class:`Generation`'s metadata),
so an experiment runner can score the generations of any arm (PT, IT, PT with IT's MLPs).
"""

from hooklab.behaviour.content import distinct_n, normalise_answer, repeated_ngram_rate
from hooklab.behaviour.instructions import (
    FORMAT_TYPES,
    INSTRUCTION_TYPES,
    check_instruction,
    validate_instruction,
)
from hooklab.behaviour.judge import (
    HTTPJudge,
    Judge,
    JudgeCache,
    LocalHFJudge,
    Rubric,
    cache_key,
)
from hooklab.behaviour.prompts import (
    BEHAVIOUR_CATEGORIES,
    BehaviourPrompt,
    load_behaviour_prompts,
)
from hooklab.behaviour.scorers import (
    BENIGN_CATEGORIES,
    HARMFUL_CATEGORIES,
    SCORERS,
    Generation,
    Scorer,
    get_scorer,
    is_echo,
    is_raw_continuation,
    is_refusal,
    register_scorer,
    score_generation,
)

__all__ = [
    "BEHAVIOUR_CATEGORIES",
    "BENIGN_CATEGORIES",
    "FORMAT_TYPES",
    "HARMFUL_CATEGORIES",
    "INSTRUCTION_TYPES",
    "SCORERS",
    "BehaviourPrompt",
    "Generation",
    "HTTPJudge",
    "Judge",
    "JudgeCache",
    "LocalHFJudge",
    "Rubric",
    "Scorer",
    "cache_key",
    "check_instruction",
    "distinct_n",
    "get_scorer",
    "is_echo",
    "is_raw_continuation",
    "is_refusal",
    "load_behaviour_prompts",
    "normalise_answer",
    "register_scorer",
    "repeated_ngram_rate",
    "score_generation",
    "validate_instruction",
]
