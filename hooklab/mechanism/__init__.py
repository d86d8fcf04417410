"""Mechanism diagnostics on shared histories: delta-cosine profiles (residual opposition),
weight-change localization, per-head attention entropy, token support under grafts and
component patching. Each returns tidy per-prompt rows for CIs over prompts
(:mod:`hooklab.stats`); figures live in :mod:`hooklab.mechanism.figures`."""

from hooklab.mechanism.attention_entropy import attention_entropies, entropy_difference
from hooklab.mechanism.batches import HistoryBatch, history_batch
from hooklab.mechanism.delta_cosine import (
    OppositionSummary,
    delta_cosines,
    opposition_summary,
)
from hooklab.mechanism.patching import (
    COMPONENTS,
    Setter,
    donor_cache,
    patch,
    patching_heatmap,
    patching_summary,
    run_patching,
    setters_for,
)
from hooklab.mechanism.token_classes import (
    CLASS_NAMES,
    DYNAMIC_CLASSES,
    FUNCTION_WORDS,
    TokenClass,
    classify_text,
    classify_vocabulary,
)
from hooklab.mechanism.token_support import (
    TokenSupport,
    class_log_mass,
    resolve_window,
    token_support,
)

# weight_change (the function) is not re-exported: it would shadow its own module here.
from hooklab.mechanism.weight_change import MODULE_RULES, classify_tensor, weight_change_pivot
from hooklab.metrics import late_layers  # the one late region (docs/definitions.md section 4)

__all__ = [
    "CLASS_NAMES",
    "COMPONENTS",
    "DYNAMIC_CLASSES",
    "FUNCTION_WORDS",
    "HistoryBatch",
    "MODULE_RULES",
    "OppositionSummary",
    "Setter",
    "TokenClass",
    "TokenSupport",
    "attention_entropies",
    "class_log_mass",
    "classify_tensor",
    "classify_text",
    "classify_vocabulary",
    "delta_cosines",
    "donor_cache",
    "entropy_difference",
    "history_batch",
    "late_layers",
    "opposition_summary",
    "patch",
    "patching_heatmap",
    "patching_summary",
    "resolve_window",
    "run_patching",
    "setters_for",
    "token_support",
    "weight_change_pivot",
]
