"""Matched-prefix MLP grafts and swaps between PT and IT, with norm-matched random controls."""

from hooklab.graft.engine import DIRECTIONS, MODES, graft_hooks
from hooklab.graft.windows import Window, parse_windows

__all__ = ["DIRECTIONS", "MODES", "Window", "graft_hooks", "parse_windows"]
