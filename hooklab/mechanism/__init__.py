"""Mechanism diagnostics on shared histories: delta-cosine profiles, weight-change
localization, per-head attention entropy. Each returns tidy per-prompt rows for CIs over
prompts with :mod:`hooklab.stats`."""
