"""Per-head attention views that are right under multi-head latent attention (MLA).

TransformerBridge's ``attn.hook_z`` on DeepSeek-V2 is the flat [batch, pos, n_heads *
v_head_dim] input of the output projection, and reshaping it with ``d_model / n_heads`` (the
usual head size) splits the heads wrongly. hooklab reshapes with the adapter's
:func:`~hooklab.architectures.attention_layout`, so ``z`` is [batch, pos, n_heads, v_head_dim]
for every family.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Float, Int

from hooklab import hooks
from hooklab.architectures import attention_layout
from hooklab.types import Bridge

__all__ = ["AttentionHeads", "attention_heads", "attention_entropy", "pattern_entropy"]


@dataclass(frozen=True)
class AttentionHeads:
    """Per-head views of one layer's attention.

    Attributes:
        z: [batch, pos, n_heads, v_head_dim] each head's output before the output projection.
        pattern: [batch, n_heads, query_pos, key_pos] attention weights.
        w_out: [n_heads, v_head_dim, d_model] the output projection, split by head.
        b_out: [d_model] its bias (zeros when it has none).
    """

    z: Float[torch.Tensor, "batch pos head v_head_dim"]
    pattern: Float[torch.Tensor, "batch head query key"]
    w_out: Float[torch.Tensor, "head v_head_dim d_model"]
    b_out: Float[torch.Tensor, " d_model"]

    def head_outputs(self) -> Float[torch.Tensor, "batch pos head d_model"]:
        """Each head's contribution to the attention output (they sum to it, plus the bias)."""
        return torch.einsum("bphv,hvd->bphd", self.z, self.w_out)


def attention_heads(
    model: Bridge,
    tokens: Int[torch.Tensor, "batch pos"],
    layer: int,
    *,
    attention_mask: Int[torch.Tensor, "batch pos"] | None = None,
) -> AttentionHeads:
    """Per-head ``z``, attention pattern and output projection of block ``layer``."""
    layout = attention_layout(model)
    captured: dict[str, torch.Tensor] = {}

    def keep(name: str):
        def hook(activation: torch.Tensor, hook: Any) -> None:  # noqa: ARG001
            captured[name] = activation.detach()

        return hook

    names = {"z": hooks.attn_z(layer), "pattern": hooks.attn_pattern(layer)}
    with torch.no_grad(), model.hooks(fwd_hooks=[(n, keep(k)) for k, n in names.items()]):
        model(tokens, attention_mask=attention_mask, return_type=None, use_cache=False)
    z = captured["z"]
    z = z.reshape(*z.shape[:2], layout.n_heads, layout.v_head_dim)
    o_proj = model.blocks[layer].attn.o.original_component
    weight = o_proj.weight.detach()  # [d_model, n_heads * v_head_dim]
    w_out = weight.T.reshape(layout.n_heads, layout.v_head_dim, weight.shape[0])
    bias = o_proj.bias.detach() if o_proj.bias is not None else torch.zeros(weight.shape[0])
    return AttentionHeads(z=z, pattern=captured["pattern"], w_out=w_out, b_out=bias)


def pattern_entropy(
    pattern: Float[torch.Tensor, "batch head query key"],
) -> Float[torch.Tensor, "batch head query"]:
    """Entropy (nats, float64) of each query's attention distribution; masked keys add 0."""
    pattern = pattern.double()
    return -(pattern * pattern.clamp_min(1e-30).log()).sum(-1)


def attention_entropy(
    heads: AttentionHeads, attention_mask: torch.Tensor | None = None
) -> Float[torch.Tensor, " head"]:
    """Mean entropy (nats) of each head's attention distribution over the real query tokens."""
    entropy = pattern_entropy(heads.pattern)  # [batch, head, query]
    if attention_mask is None:
        return entropy.mean(dim=(0, 2))
    mask = attention_mask.bool().unsqueeze(1).expand_as(entropy)
    return (entropy * mask).sum(dim=(0, 2)) / mask.sum(dim=(0, 2))
