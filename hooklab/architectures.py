"""The architecture adapter: the one place that knows how each family is laid out.

For every supported family this module records, as data, the MLP path (the norms and the MLP
whose output is added to the residual stream), the readout (final norm, unembedding and any
output soft-cap), the mixture-of-experts layout and the attention kind. Analysis code asks
the functions below and never branches on the family itself.

MLP paths, measured on TransformerLens 4.3 bridges (``hook_mlp_out`` is what is added to the
residual, after any post-feedforward norm):

===========  =================================  ===========================================
family       MLP path (bridge component names)  notes
===========  =================================  ===========================================
llama        ln2 -> mlp
mistral      ln2 -> mlp
qwen3        ln2 -> mlp                          q/k norms inside attention
gemma3       ln2 -> mlp -> ln2_post              hybrid local/global attention, soft-cap
olmo2        mlp -> ln2_post                     post-norm only
deepseek_v2  ln2 -> mlp                          MoE (shared + routed experts), MLA attention
===========  =================================  ===========================================
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
from jaxtyping import Float

from hooklab.errors import UnsupportedArchitectureError
from hooklab.types import Bridge

__all__ = [
    "ArchitectureSpec",
    "MoELayout",
    "AttentionLayout",
    "SUPPORTED_FAMILIES",
    "spec_for_architecture",
    "spec_for_config",
    "spec_for_model",
    "hf_text_config",
    "mlp_output",
    "mlp_path_parameter_names",
    "model_device",
    "unembedding_weight",
    "hf_module",
    "read_logits",
    "output_softcap",
    "moe_layout",
    "attention_layout",
]


@dataclass(frozen=True)
class ArchitectureSpec:
    """What hooklab needs to know about one family.

    Attributes:
        family: hooklab's name for the family (``"gemma3"``).
        hf_architectures: Hugging Face ``architectures`` class names that belong to it.
        mlp_path: bridge components of a block applied in order to ``hook_resid_mid`` to give
            ``hook_mlp_out``.
        attention: ``"standard"`` (multi-head / grouped-query) or ``"mla"`` (multi-head latent).
        has_moe: whether some blocks are mixture-of-experts blocks.
    """

    family: str
    hf_architectures: tuple[str, ...]
    mlp_path: tuple[str, ...]
    attention: Literal["standard", "mla"] = "standard"
    has_moe: bool = False


_SPECS: tuple[ArchitectureSpec, ...] = (
    ArchitectureSpec("llama", ("LlamaForCausalLM",), ("ln2", "mlp")),
    ArchitectureSpec("mistral", ("MistralForCausalLM",), ("ln2", "mlp")),
    ArchitectureSpec("qwen3", ("Qwen3ForCausalLM",), ("ln2", "mlp")),
    ArchitectureSpec(
        "gemma3",
        ("Gemma3ForCausalLM", "Gemma3ForConditionalGeneration"),
        ("ln2", "mlp", "ln2_post"),
    ),
    ArchitectureSpec("olmo2", ("Olmo2ForCausalLM",), ("mlp", "ln2_post")),
    ArchitectureSpec(
        "deepseek_v2", ("DeepseekV2ForCausalLM",), ("ln2", "mlp"), attention="mla", has_moe=True
    ),
)

SUPPORTED_FAMILIES: tuple[str, ...] = tuple(spec.family for spec in _SPECS)
_BY_ARCHITECTURE = {arch: spec for spec in _SPECS for arch in spec.hf_architectures}


def _supported_list() -> str:
    return ", ".join(f"{s.family} ({'/'.join(s.hf_architectures)})" for s in _SPECS)


def spec_for_architecture(architecture: str) -> ArchitectureSpec:
    """The spec of a Hugging Face architecture class name (``"LlamaForCausalLM"``)."""
    spec = _BY_ARCHITECTURE.get(architecture)
    if spec is None:
        raise UnsupportedArchitectureError(
            f"architecture {architecture!r} is not supported by hooklab. Supported families: "
            f"{_supported_list()}. Load a checkpoint of one of these, or add a spec to "
            "hooklab/architectures.py."
        )
    return spec


def spec_for_config(config: Any) -> ArchitectureSpec:
    """The spec of a Hugging Face config (its first ``architectures`` entry)."""
    architectures = getattr(config, "architectures", None) or []
    if not architectures:
        raise UnsupportedArchitectureError(
            f"the config (model_type={getattr(config, 'model_type', None)!r}) names no "
            f"'architectures'; hooklab cannot tell its family. Supported: {_supported_list()}."
        )
    return spec_for_architecture(architectures[0])


def spec_for_model(model: Bridge) -> ArchitectureSpec:
    """The spec of a loaded TransformerBridge."""
    return spec_for_architecture(str(model.cfg.architecture))


def hf_text_config(config: Any) -> Any:
    """The language-model part of a Hugging Face config (Gemma 3's ``text_config`` if any)."""
    getter = getattr(config, "get_text_config", None)
    return getter() if callable(getter) else config


def _model_hf_config(model: Bridge) -> Any:
    return hf_text_config(model.original_model.config)


def _original(component: torch.nn.Module) -> Any:
    # The Hugging Face module under a bridge component: calling it runs the model's own
    # computation without firing the bridge's hooks (so it is safe inside a hook).
    return getattr(component, "original_component", component)


def mlp_output(
    model: Bridge, layer: int, resid_mid: Float[torch.Tensor, "batch pos d_model"]
) -> Float[torch.Tensor, "batch pos d_model"]:
    """Apply block ``layer``'s MLP path (pre-norm, MLP, post-norm as the family has) to a residual.

    On the model's own ``hook_resid_mid`` this reproduces ``hook_mlp_out`` exactly. Applied to
    another model's residual it is the ``module`` graft of docs/definitions.md. Runs the Hugging
    Face modules directly, so it fires no hooks and may be called from inside one.
    """
    spec = spec_for_model(model)
    block = model.blocks[layer]
    out = resid_mid.to(model_device(model))  # the donor may live on another device
    for name in spec.mlp_path:
        out = _original(getattr(block, name))(out)
        if isinstance(out, tuple):  # MoE blocks of some versions return (hidden, router_logits)
            out = out[0]
    return out.to(resid_mid.device)


def model_device(model: Bridge) -> torch.device:
    """The device of a model's unembedding (where its readout runs)."""
    return _original(model.unembed).weight.device


def unembedding_weight(model: Bridge) -> Float[torch.Tensor, "d_vocab d_model"]:
    """The unembedding matrix W_U as stored ([d_vocab, d_model], the model's dtype)."""
    return _original(model.unembed).weight


def hf_module(component: torch.nn.Module) -> Any:
    """The Hugging Face module under a bridge component (calling it fires no hooks)."""
    return _original(component)


def mlp_path_parameter_names(model: Bridge) -> list[str]:
    """Names, in the Hugging Face model's ``named_parameters()``, of every MLP-path weight.

    Norms included. (Checkpoint files may store some differently, e.g. DeepSeek-V2's experts
    one by one; load the Hugging Face model to use these names.)

    Found by module identity from the bridge's own components, so the names are right for each
    family's layout (e.g. Gemma 3's ``pre_feedforward_layernorm`` / ``post_feedforward_layernorm``,
    OLMo 2's post-norm only, DeepSeek-V2's router, shared and routed experts).
    """
    spec = spec_for_model(model)
    wanted = {
        id(_original(getattr(block, name))) for block in model.blocks for name in spec.mlp_path
    }
    names = []
    for module_name, module in model.original_model.named_modules():
        if id(module) in wanted:
            names += [f"{module_name}.{p}" for p, _ in module.named_parameters()]
    return sorted(set(_hf_state_name(name) for name in names))


def _hf_state_name(name: str) -> str:
    # Bridge wrappers nest the wrapped Linear as "_original_component"; the checkpoint does not.
    return name.replace("._original_component", "").replace("_original_component.", "")


def output_softcap(model: Bridge) -> float | None:
    """The final-logit soft-cap of a model, or ``None`` when it has none."""
    cap = getattr(model.cfg, "output_logits_soft_cap", None)
    return float(cap) if cap is not None and cap > 0 else None


def read_logits(
    model: Bridge,
    resid: Float[torch.Tensor, "... d_model"],
    *,
    out: Float[torch.Tensor, "n d_vocab"] | None = None,
) -> Float[torch.Tensor, "... d_vocab"]:
    """The model's own readout of a residual: final norm, unembedding, output transform.

    ``read_logits(model, resid_post[L-1])`` equals the model's logits, soft-cap included (a
    hand-made ``unembed(ln_final(x))`` silently misses Gemma's cap). Output in the model dtype,
    or written into ``out`` (a preallocated [n, d_vocab] buffer for [n, d_model] rows, any
    float dtype), which streaming readouts reuse to avoid a fresh allocation per layer.
    """
    device = model_device(model)
    if out is not None and out.device != device:  # a model on another device (offloaded)
        out.copy_(read_logits(model, resid))
        return out
    normed = _original(model.ln_final)(resid.to(device))
    unembed = _original(model.unembed)
    if out is None:
        return model.adapter.apply_output_logits_transform(unembed(normed))
    if normed.dtype == out.dtype == unembed.weight.dtype:
        torch.mm(normed, unembed.weight.t(), out=out)
        if unembed.bias is not None:
            out.add_(unembed.bias)
    else:
        out.copy_(unembed(normed))
    cap = output_softcap(model)
    if cap is not None:  # cap * tanh(x / cap), in place: the same operations as the model's
        out.div_(cap).tanh_().mul_(cap)
    else:
        transformed = model.adapter.apply_output_logits_transform(out)
        if transformed is not out:
            out.copy_(transformed)
    return out


@dataclass(frozen=True)
class MoELayout:
    """Mixture-of-experts layout of a model (DeepSeek-V2).

    Attributes:
        n_layers: blocks in the model.
        first_dense_layers: the first ``k`` blocks have an ordinary dense MLP.
        n_routed_experts: routed experts per MoE block.
        n_shared_experts: always-on shared experts per MoE block (fused into one MLP).
        experts_per_token: routed experts chosen per token (top-k).
        expert_d_mlp: hidden width of one expert.
    """

    n_layers: int
    first_dense_layers: int
    n_routed_experts: int
    n_shared_experts: int
    experts_per_token: int
    expert_d_mlp: int

    @property
    def moe_layers(self) -> tuple[int, ...]:
        return tuple(range(self.first_dense_layers, self.n_layers))

    def is_moe_layer(self, layer: int) -> bool:
        return self.first_dense_layers <= layer < self.n_layers


def moe_layout(model: Bridge) -> MoELayout | None:
    """The MoE layout of a model, or ``None`` for dense families."""
    if not spec_for_model(model).has_moe:
        return None
    cfg = _model_hf_config(model)
    return MoELayout(
        n_layers=int(cfg.num_hidden_layers),
        first_dense_layers=int(cfg.first_k_dense_replace),
        n_routed_experts=int(cfg.n_routed_experts),
        n_shared_experts=int(cfg.n_shared_experts or 0),
        experts_per_token=int(cfg.num_experts_per_tok),
        expert_d_mlp=int(cfg.moe_intermediate_size),
    )


@dataclass(frozen=True)
class AttentionLayout:
    """Per-head sizes of a model's attention.

    Attributes:
        kind: ``"standard"`` or ``"mla"``.
        n_heads: query heads.
        n_kv_heads: key/value heads (equal to ``n_heads`` under MLA, whose keys and values
            are expanded per head from a shared latent).
        qk_head_dim: width of one head's query and key.
        v_head_dim: width of one head's value, the per-head ``z`` the output projection reads.
        kv_lora_rank: MLA's key/value latent width (``None`` for standard attention).
        q_lora_rank: MLA's query latent width, ``None`` when queries are projected directly.
    """

    kind: Literal["standard", "mla"]
    n_heads: int
    n_kv_heads: int
    qk_head_dim: int
    v_head_dim: int
    kv_lora_rank: int | None = None
    q_lora_rank: int | None = None


def attention_layout(model: Bridge) -> AttentionLayout:
    """Per-head attention sizes of a model, correct under multi-head latent attention."""
    spec = spec_for_model(model)
    cfg = _model_hf_config(model)
    n_heads = int(cfg.num_attention_heads)
    if spec.attention == "mla":
        return AttentionLayout(
            kind="mla",
            n_heads=n_heads,
            n_kv_heads=n_heads,
            qk_head_dim=int(cfg.qk_nope_head_dim) + int(cfg.qk_rope_head_dim),
            v_head_dim=int(cfg.v_head_dim),
            kv_lora_rank=int(cfg.kv_lora_rank),
            q_lora_rank=None if cfg.q_lora_rank is None else int(cfg.q_lora_rank),
        )
    head_dim = getattr(cfg, "head_dim", None) or int(cfg.hidden_size) // n_heads
    return AttentionLayout(
        kind="standard",
        n_heads=n_heads,
        n_kv_heads=int(getattr(cfg, "num_key_value_heads", None) or n_heads),
        qk_head_dim=int(head_dim),
        v_head_dim=int(head_dim),
    )
