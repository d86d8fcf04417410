"""Matched-prefix MLP grafts and swaps between PT and IT, with norm-matched random controls.

The public API: a sweep (:class:`GraftConfig`, :func:`run_graft`), its shared histories
(:func:`make_histories`, :func:`save_histories`, :func:`load_histories`), windows
(:func:`parse_windows`) and effect summaries (:func:`graft_effects`). Hooks for a single
graft live in :mod:`hooklab.graft.engine`.
"""

from hooklab.graft.effects import graft_effects, layer_effects, write_graft_summaries
from hooklab.graft.histories import History, load_histories, make_histories, save_histories
from hooklab.graft.sweep import GraftConfig, run_graft
from hooklab.graft.windows import WINDOW_HELP, Window, parse_windows

__all__ = [
    "GraftConfig",
    "run_graft",
    "History",
    "make_histories",
    "save_histories",
    "load_histories",
    "Window",
    "parse_windows",
    "WINDOW_HELP",
    "graft_effects",
    "layer_effects",
    "write_graft_summaries",
]
