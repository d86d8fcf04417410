"""Mechanism diagnostics: token classes, token support under grafts, component patching."""

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

__all__ = [
    "CLASS_NAMES",
    "COMPONENTS",
    "DYNAMIC_CLASSES",
    "FUNCTION_WORDS",
    "Setter",
    "TokenClass",
    "TokenSupport",
    "class_log_mass",
    "classify_text",
    "classify_vocabulary",
    "donor_cache",
    "patch",
    "patching_heatmap",
    "patching_summary",
    "resolve_window",
    "run_patching",
    "setters_for",
    "token_support",
]
