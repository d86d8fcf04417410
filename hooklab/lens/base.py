"""Lenses: decode a layer's residual stream into a next-token distribution.

A lens is a per-layer translation ``T_l`` of the residual followed by the model's own readout
``R`` (final norm, unembedding, soft-cap): ``p_l = softmax(R(T_l(h_l)))``. The last layer is
never translated, so under every lens ``p_{L-1}`` is the model's final distribution.
"""

from __future__ import annotations

import abc
from typing import Any

import torch
from jaxtyping import Float

from hooklab.architectures import read_logits
from hooklab.types import Bridge

__all__ = ["Lens", "LogitLens", "lens_logits"]


class Lens(abc.ABC, torch.nn.Module):
    """Base class: maps layer ``l``'s residual to what the readout should see."""

    #: Short name recorded in tables and manifests ("logit", "tuned").
    name: str = "lens"

    @abc.abstractmethod
    def translate(
        self, layer: int, resid: Float[torch.Tensor, "... d_model"]
    ) -> Float[torch.Tensor, "... d_model"]:
        """``T_layer(resid)``, in the residual's dtype."""

    def describe(self) -> dict[str, Any]:
        """What a manifest records about the lens."""
        return {"lens": self.name}


class LogitLens(Lens):
    """The raw logit lens: the identity translation."""

    name = "logit"

    def translate(self, layer: int, resid: torch.Tensor) -> torch.Tensor:  # noqa: ARG002
        return resid


def lens_logits(
    model: Bridge, lens: Lens, layer: int, resid: Float[torch.Tensor, "... d_model"]
) -> Float[torch.Tensor, "... d_vocab"]:
    """Logits of layer ``layer`` under ``lens``: ``R(T_layer(resid))`` (last layer untranslated)."""
    if layer != int(model.cfg.n_layers) - 1:
        resid = lens.translate(layer, resid)
    return read_logits(model, resid)
