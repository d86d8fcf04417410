"""Windows of layers to graft: named thirds, the last 25%, explicit ranges, sliding windows."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from hooklab.errors import HooklabError

__all__ = ["Window", "parse_windows", "WINDOW_HELP"]

WINDOW_HELP = (
    "early, mid, late (thirds of the stack), last25 (last 25%), all, a:b (layers a..b-1), "
    "sliding:W or sliding:W:S (width W, stride S, default 1); comma-separated"
)


@dataclass(frozen=True)
class Window:
    """A contiguous run of layers: ``layers = (start, ..., end - 1)``."""

    name: str
    start: int
    end: int

    @property
    def layers(self) -> tuple[int, ...]:
        return tuple(range(self.start, self.end))

    def __contains__(self, layer: int) -> bool:
        return self.start <= layer < self.end


def _range_error(token: str, n_layers: int, detail: str) -> HooklabError:
    return HooklabError(
        f"window {token!r}: {detail}. This model has layers 0..{n_layers - 1} "
        f"(n_layers={n_layers}); a:b needs 0 <= a < b <= {n_layers}. Accepted: {WINDOW_HELP}."
    )


def _thirds(n_layers: int) -> dict[str, tuple[int, int]]:
    cut1, cut2 = round(n_layers / 3), round(2 * n_layers / 3)
    return {"early": (0, cut1), "mid": (cut1, cut2), "late": (cut2, n_layers)}


def _parse_one(token: str, n_layers: int) -> list[Window]:
    named = _thirds(n_layers) | {
        "last25": (n_layers - max(1, math.ceil(n_layers / 4)), n_layers),
        "all": (0, n_layers),
    }
    if token in named:
        start, end = named[token]
        if start >= end:
            raise _range_error(token, n_layers, "the model is too shallow for this window")
        return [Window(token, start, end)]
    if token.startswith("sliding:"):
        parts = token.split(":")[1:]
        try:
            width = int(parts[0])
            stride = int(parts[1]) if len(parts) > 1 else 1
        except (ValueError, IndexError):
            raise _range_error(token, n_layers, "width and stride must be integers") from None
        if len(parts) > 2 or width < 1 or stride < 1 or width > n_layers:
            raise _range_error(token, n_layers, f"need 1 <= W <= {n_layers} and S >= 1")
        return [
            Window(f"{s}:{s + width}", s, s + width) for s in range(0, n_layers - width + 1, stride)
        ]
    if ":" in token:
        a_text, _, b_text = token.partition(":")
        try:
            a, b = int(a_text), int(b_text)
        except ValueError:
            raise _range_error(token, n_layers, "a and b must be integers") from None
        if not 0 <= a < b <= n_layers:
            detail = "empty" if a >= b else "outside the model"
            raise _range_error(token, n_layers, detail)
        return [Window(token, a, b)]
    raise _range_error(token, n_layers, "not a window name")


def parse_windows(
    spec: str | Sequence[str], n_layers: int, *, allow_overlap: bool = True
) -> list[Window]:
    """Windows from a spec such as ``"late,mid,early"``, ``"0:8,8:16"`` or ``"sliding:4"``.

    Args:
        spec: comma-separated string or list of window tokens (see :data:`WINDOW_HELP`).
        n_layers: the model's layer count (windows are checked against it).
        allow_overlap: refuse overlapping windows when ``False`` (e.g. for a partition).

    >>> [w.layers for w in parse_windows("early,late", 6)]
    [(0, 1), (4, 5)]
    """
    tokens = [t.strip() for t in (spec.split(",") if isinstance(spec, str) else spec)]
    tokens = [t for t in tokens if t]
    if not tokens:
        raise HooklabError(f"windows: no window given. Accepted: {WINDOW_HELP}.")
    windows: list[Window] = []
    for token in tokens:
        windows.extend(_parse_one(token, n_layers))
    names = [w.name for w in windows]
    if len(set(names)) != len(names):
        raise HooklabError(
            f"windows: {sorted({n for n in names if names.count(n) > 1})} appear more than once."
        )
    if not allow_overlap:
        ordered = sorted(windows, key=lambda w: w.start)
        for left, right in zip(ordered, ordered[1:], strict=False):
            if right.start < left.end:
                raise HooklabError(
                    f"windows {left.name!r} (layers {left.start}..{left.end - 1}) and "
                    f"{right.name!r} (layers {right.start}..{right.end - 1}) overlap, which this "
                    "sweep does not allow."
                )
    return windows
