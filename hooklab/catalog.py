"""The six PT/IT pairs of the paper, by short name (data in ``paper_pairs.json``)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

from hooklab.errors import HooklabError

__all__ = ["PaperPair", "paper_pairs", "paper_pair"]


@dataclass(frozen=True)
class PaperPair:
    """One released PT/IT pair.

    Attributes:
        name: hooklab's short name (``"gemma3-4b"``).
        family: the adapter family (see :mod:`hooklab.architectures`).
        pt: hub id of the pretrained checkpoint.
        it: hub id of the instruction-tuned checkpoint.
        gated: whether the hub asks for an accepted licence and a token.
        n_params_language_model: published parameter count of the language model.
        shape: Hugging Face config fields of the language model's real shape.
    """

    name: str
    family: str
    pt: str
    it: str
    gated: bool
    n_params_language_model: int
    shape: dict[str, Any]


@cache
def paper_pairs() -> dict[str, PaperPair]:
    """All paper pairs by short name, in the paper's order."""
    raw = json.loads(resources.files("hooklab").joinpath("paper_pairs.json").read_text())
    return {
        name: PaperPair(name=name, **entry)
        for name, entry in raw.items()
        if not name.startswith("_")
    }


def paper_pair(name: str) -> PaperPair:
    """The paper pair called ``name`` (case-insensitive)."""
    pairs = paper_pairs()
    key = name.strip().lower()
    if key not in pairs:
        raise HooklabError(
            f"pair={name!r} is not a known pair name. Known names: {', '.join(pairs)}. "
            "For other checkpoints pass pt=... and it=... (hub ids or local folders)."
        )
    return pairs[key]
