"""Names for what things are: the bridge type, sides, graft directions, modes, MoE parts.

``Literal`` aliases let the type checker and :func:`hooklab.config.coerce` refuse a misspelt
value; the tuples beside them are the same values at run time.
"""

from __future__ import annotations

from typing import Literal, TypeAlias, get_args

from transformer_lens.model_bridge import TransformerBridge

__all__ = [
    "Bridge",
    "Side",
    "SIDES",
    "Direction",
    "Mode",
    "MoEPart",
    "Router",
    "Condition",
]

#: A TransformerLens 4 model (hooklab loads every model as one).
Bridge: TypeAlias = TransformerBridge

#: The two models of a pair: pretrained and instruction-tuned.
Side = Literal["pt", "it"]
SIDES: tuple[Side, ...] = get_args(Side)

#: Graft directions (host <- donor); ``both`` = ``it-to-pt`` and ``pt-to-it``.
Direction = Literal["it-to-pt", "pt-to-it", "self-pt", "self-it", "both"]

#: Graft modes.
Mode = Literal["module", "splice", "random"]

#: What an MoE graft takes from the donor.
MoEPart = Literal["mlp", "moe", "shared", "routed"]

#: Whose router picks the experts of a routed-expert graft.
Router = Literal["host", "donor"]

#: Readout conditions.
Condition = Literal["native", "same_history", "template_replay"]
