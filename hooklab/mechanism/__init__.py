"""Mechanism diagnostics on shared histories: delta-cosine profiles, weight-change
localization, per-head attention entropy. Each returns tidy per-prompt rows for CIs over
prompts with :mod:`hooklab.stats`; figures live in :mod:`hooklab.mechanism.figures`."""

from hooklab.mechanism.attention_entropy import attention_entropies, entropy_difference
from hooklab.mechanism.batches import HistoryBatch, history_batch
from hooklab.mechanism.delta_cosine import (
    OppositionSummary,
    delta_cosines,
    late_layers,
    opposition_summary,
)

# weight_change (the function) is not re-exported: it would shadow its own module here.
from hooklab.mechanism.weight_change import MODULE_RULES, classify_tensor, weight_change_pivot

__all__ = [
    "MODULE_RULES",
    "HistoryBatch",
    "OppositionSummary",
    "attention_entropies",
    "classify_tensor",
    "delta_cosines",
    "entropy_difference",
    "history_batch",
    "late_layers",
    "opposition_summary",
    "weight_change_pivot",
]
