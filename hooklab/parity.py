"""Parity of a bridge with Hugging Face and the identities hooklab relies on.

For one model and a batch of tokens this measures, as max absolute differences:

* ``hf_logits``: bridge logits vs the Hugging Face model's eager-attention logits;
* ``resid_identity``: ``hook_resid_post - (hook_resid_mid + hook_mlp_out)`` over all layers;
* ``readout``: :func:`~hooklab.architectures.read_logits` of the last ``hook_resid_post`` vs
  the model's logits (soft-cap included);
* ``mlp_path``: :func:`~hooklab.architectures.mlp_output` on ``hook_resid_mid`` vs
  ``hook_mlp_out`` over all layers.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
import transformers
from jaxtyping import Int

from hooklab import hooks
from hooklab.architectures import mlp_output, output_softcap, read_logits, spec_for_model
from hooklab.compatibility import PROBE_TEXTS
from hooklab.types import Bridge

__all__ = ["TOLERANCE", "ParityReport", "check_parity", "probe_tokens"]

#: Max absolute difference accepted per dtype (float32 measured: <= 2.4e-6 on every family).
TOLERANCE = {"float32": 1e-4, "bfloat16": 5e-2, "float16": 5e-2}


@dataclass(frozen=True)
class ParityReport:
    """Max absolute differences for one model (``None`` where not measured)."""

    family: str
    dtype: str
    n_tokens: int
    softcap: float | None
    hf_logits: float | None
    resid_identity: float
    readout: float
    mlp_path: float

    def passed(self, tolerance: float | None = None) -> bool:
        """Whether every measured difference is within ``tolerance`` (default: by dtype)."""
        if tolerance is None:
            tolerance = TOLERANCE[self.dtype]
        values = [self.resid_identity, self.readout, self.mlp_path]
        values += [self.hf_logits] if self.hf_logits is not None else []
        return all(v <= tolerance for v in values)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def probe_tokens(
    tokenizer: Any, device: str | torch.device = "cpu"
) -> Int[torch.Tensor, "batch pos"]:
    """The compatibility probe texts as one right-truncated batch (BOS first, no padding)."""
    rows = [tokenizer(text)["input_ids"] for text in PROBE_TEXTS]
    length = min(len(r) for r in rows)
    return torch.tensor([r[:length] for r in rows], device=device)


def _hf_reference_logits(model: Bridge, source: str, tokens: torch.Tensor) -> torch.Tensor:
    config: Any = model.original_model.config
    hf_class = getattr(transformers, config.architectures[0])
    reference = (
        hf_class.from_pretrained(source, dtype=model.cfg.dtype, attn_implementation="eager")
        .to(tokens.device)
        .eval()
    )
    with torch.no_grad():
        return reference(input_ids=tokens).logits


def check_parity(
    model: Bridge, tokens: Int[torch.Tensor, "batch pos"], *, hf_source: str | None = None
) -> ParityReport:
    """Measure the parity figures of ``model`` on ``tokens``.

    Args:
        model: a TransformerBridge in raw mode.
        tokens: [batch, pos] token ids.
        hf_source: checkpoint folder or hub id to load the Hugging Face reference from; the
            ``hf_logits`` figure is skipped when ``None`` (it loads a second copy of the model).
    """
    n_layers = int(model.cfg.n_layers)
    names = {hooks.resid_post(layer) for layer in range(n_layers)}
    names |= {hooks.resid_mid(layer) for layer in range(n_layers)} | {
        hooks.mlp_out(layer) for layer in range(n_layers)
    }
    with torch.no_grad():
        logits, cache = model.run_with_cache(tokens, names_filter=lambda n: n in names)
        resid_gap = max(
            float(
                (
                    cache[hooks.resid_post(layer)]
                    - cache[hooks.resid_mid(layer)]
                    - cache[hooks.mlp_out(layer)]
                )
                .abs()
                .max()
            )
            for layer in range(n_layers)
        )
        readout_gap = float(
            (read_logits(model, cache[hooks.resid_post(n_layers - 1)]) - logits).abs().max()
        )
        mlp_gap = max(
            float(
                (
                    mlp_output(model, layer, cache[hooks.resid_mid(layer)])
                    - cache[hooks.mlp_out(layer)]
                )
                .abs()
                .max()
            )
            for layer in range(n_layers)
        )
    hf_gap = None
    if hf_source is not None:
        hf_gap = float((logits - _hf_reference_logits(model, hf_source, tokens)).abs().max())
    return ParityReport(
        family=spec_for_model(model).family,
        dtype=str(model.cfg.dtype).removeprefix("torch."),
        n_tokens=int(tokens.numel()),
        softcap=output_softcap(model),
        hf_logits=hf_gap,
        resid_identity=resid_gap,
        readout=readout_gap,
        mlp_path=mlp_gap,
    )
