"""The one place hook names are spelled.

TransformerBridge keeps TransformerLens's hook names; analysis code asks these functions
instead of formatting strings itself, so a rename upstream is a one-line change here.
"""

from __future__ import annotations

__all__ = [
    "resid_pre",
    "resid_mid",
    "resid_post",
    "mlp_out",
    "attn_out",
    "attn_z",
    "attn_pattern",
    "embed",
    "layer_of",
]

embed = "hook_embed"


def resid_pre(layer: int) -> str:
    """Residual stream entering block ``layer``: [batch, pos, d_model]."""
    return f"blocks.{layer}.hook_resid_pre"


def resid_mid(layer: int) -> str:
    """Residual stream after attention, before the MLP of block ``layer``: [batch, pos, d_model]."""
    return f"blocks.{layer}.hook_resid_mid"


def resid_post(layer: int) -> str:
    """Residual stream leaving block ``layer``: [batch, pos, d_model]."""
    return f"blocks.{layer}.hook_resid_post"


def mlp_out(layer: int) -> str:
    """What the MLP path of block ``layer`` adds to the residual (after any post-norm)."""
    return f"blocks.{layer}.hook_mlp_out"


def attn_out(layer: int) -> str:
    """What the attention path of block ``layer`` adds to the residual."""
    return f"blocks.{layer}.hook_attn_out"


def attn_z(layer: int) -> str:
    """Input of block ``layer``'s attention output projection: flat [batch, pos, heads * d_v]."""
    return f"blocks.{layer}.attn.o.hook_in"


def attn_pattern(layer: int) -> str:
    """Attention weights of block ``layer``: [batch, head, query_pos, key_pos]."""
    return f"blocks.{layer}.attn.hook_pattern"


def layer_of(hook_name: str) -> int:
    """The block index in a ``blocks.{l}.…`` hook name.

    >>> layer_of("blocks.12.hook_resid_post")
    12
    """
    parts = hook_name.split(".")
    if len(parts) < 3 or parts[0] != "blocks" or not parts[1].isdigit():
        raise ValueError(f"hook_name {hook_name!r} is not a per-block hook 'blocks.{{l}}.…'")
    return int(parts[1])
