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

__all__ = [
    "TOLERANCE",
    "RELATIVE_TOLERANCE",
    "tolerance_for",
    "ParityReport",
    "check_parity",
    "probe_tokens",
]

#: Max absolute difference accepted per dtype on values of order one (float32 measured:
#: <= 2.4e-6 on every tiny family).
TOLERANCE = {"float32": 1e-4, "bfloat16": 5e-2, "float16": 5e-2}

#: Max difference accepted per dtype relative to the largest magnitude compared: a real
#: checkpoint's residual stream reaches 1e4-1e5 (SmolLM2-135M: 27,586), where float32 rounding
#: alone leaves gaps of ~1e-7 of the scale (measured 1.2e-7 at every layer of SmolLM2-135M).
RELATIVE_TOLERANCE = {"float32": 1e-5, "bfloat16": 2e-2, "float16": 5e-3}


def tolerance_for(dtype: str, scale: float) -> float:
    """The largest difference accepted between two ``dtype`` computations of values whose
    largest magnitude is ``scale``: ``TOLERANCE[dtype] + RELATIVE_TOLERANCE[dtype] * scale``."""
    key = dtype if dtype in TOLERANCE else "float32"
    return TOLERANCE[key] + RELATIVE_TOLERANCE[key] * float(scale)


@dataclass(frozen=True)
class ParityReport:
    """Max absolute differences for one model (``None`` where not measured), with the largest
    magnitude of what each one compares (its scale, for :func:`tolerance_for`)."""

    family: str
    dtype: str
    n_tokens: int
    softcap: float | None
    hf_logits: float | None
    resid_identity: float
    readout: float
    mlp_path: float
    logit_scale: float = 1.0
    resid_scale: float = 1.0
    mlp_scale: float = 1.0

    def limits(self) -> dict[str, float]:
        """The difference accepted for each figure: by dtype, relative to its scale."""
        return {
            "hf_logits": tolerance_for(self.dtype, self.logit_scale),
            "resid_identity": tolerance_for(self.dtype, self.resid_scale),
            "readout": tolerance_for(self.dtype, self.logit_scale),
            "mlp_path": tolerance_for(self.dtype, self.mlp_scale),
        }

    def failures(self, tolerance: float | None = None) -> list[str]:
        """The figures over their limit (``tolerance``: one absolute limit for all instead)."""
        limits = self.limits()
        failed = []
        for name, limit in limits.items():
            value = getattr(self, name)
            if value is not None and not value <= (limit if tolerance is None else tolerance):
                failed.append(name)
        return failed

    def passed(self, tolerance: float | None = None) -> bool:
        """Whether every measured difference is within its limit (default: :meth:`limits`)."""
        return not self.failures(tolerance)

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


def _gap(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).abs().max())


def _scale(tensors: list[torch.Tensor]) -> float:
    return max(float(t.float().abs().max()) for t in tensors)


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
        post = [cache[hooks.resid_post(layer)] for layer in range(n_layers)]
        mid = [cache[hooks.resid_mid(layer)] for layer in range(n_layers)]
        mlp = [cache[hooks.mlp_out(layer)] for layer in range(n_layers)]
        resid_gap = max(_gap(p, m + o) for p, m, o in zip(post, mid, mlp, strict=True))
        readout_gap = _gap(read_logits(model, post[-1]), logits)
        mlp_gap = max(
            _gap(mlp_output(model, i, m), o) for i, (m, o) in enumerate(zip(mid, mlp, strict=True))
        )
        scales = {
            "logit_scale": _scale([logits]),
            "resid_scale": _scale(post + mid),
            "mlp_scale": _scale(mlp),
        }
    hf_gap = None
    if hf_source is not None:
        hf_gap = _gap(logits, _hf_reference_logits(model, hf_source, tokens))
    return ParityReport(
        family=spec_for_model(model).family,
        dtype=str(model.cfg.dtype).removeprefix("torch."),
        n_tokens=int(tokens.numel()),
        softcap=output_softcap(model),
        hf_logits=hf_gap,
        resid_identity=resid_gap,
        readout=readout_gap,
        mlp_path=mlp_gap,
        **scales,
    )
