"""The adapter against the models themselves and Hugging Face, for every family and variant.

Tolerances (float32): bridge vs Hugging Face eager logits 1e-5 absolute (measured: 0 for the
dense families, ~2e-6 for DeepSeek-V2's MoE); identities 1e-5 relative to the tensors' scale.
"""

from __future__ import annotations

import pytest
import torch
import transformers

import hooklab
from hooklab import hooks
from hooklab.architectures import attention_layout, hf_module, mlp_output, moe_layout, read_logits
from hooklab.errors import UnsupportedArchitectureError
from hooklab.parity import probe_tokens
from hooklab.synthetic import TINY_SHAPES

HF_TOLERANCE = 1e-5


def _close(a: torch.Tensor, b: torch.Tensor, rtol: float = 1e-5) -> bool:
    scale = max(float(b.detach().abs().max()), 1.0)
    return float((a - b).detach().abs().max()) <= rtol * scale


@pytest.fixture(scope="module", params=TINY_SHAPES)
def loaded(request, tiny_pair):
    tiny = tiny_pair(request.param)
    pair = hooklab.load_pair(pt=tiny.pt, it=tiny.it, device="cpu")
    tokens = probe_tokens(pair.tokenizer)
    n_layers = pair.n_layers
    names = {hooks.resid_post(layer) for layer in range(n_layers)}
    names |= {hooks.resid_mid(layer) for layer in range(n_layers)} | {
        hooks.mlp_out(layer) for layer in range(n_layers)
    }
    runs = {}
    with torch.no_grad():
        for side, model in pair.models().items():
            runs[side] = model.run_with_cache(tokens, names_filter=lambda n: n in names)
    return request.param, tiny, pair, tokens, runs


def test_bridge_logits_equal_hugging_face_eager(loaded):
    shape, tiny, pair, tokens, runs = loaded
    for side, folder in (("pt", tiny.pt), ("it", tiny.it)):
        config = transformers.AutoConfig.from_pretrained(folder)
        hf_model = (
            getattr(transformers, config.architectures[0])
            .from_pretrained(folder, attn_implementation="eager")
            .eval()
        )
        with torch.no_grad():
            reference = hf_model(input_ids=tokens).logits
        logits, _ = runs[side]
        assert float((logits - reference).abs().max()) <= HF_TOLERANCE, (shape, side)


def test_resid_post_is_resid_mid_plus_mlp_out(loaded):
    _, _, pair, _, runs = loaded
    for _, cache in runs.values():
        for layer in range(pair.n_layers):
            summed = cache[hooks.resid_mid(layer)] + cache[hooks.mlp_out(layer)]
            assert _close(cache[hooks.resid_post(layer)], summed)


def test_readout_of_last_residual_is_the_models_logits(loaded):
    _, _, pair, _, runs = loaded
    for side, (logits, cache) in runs.items():
        readout = read_logits(pair.models()[side], cache[hooks.resid_post(pair.n_layers - 1)])
        assert _close(readout, logits), side


def test_readout_applies_the_softcap(tiny_pair):
    tiny = tiny_pair("gemma3-softcap")
    pair = hooklab.load_pair(pt=tiny.pt, it=tiny.it, device="cpu")
    model, last = pair.pt, pair.n_layers - 1
    assert hooklab.output_softcap(model) == 2.0
    with torch.no_grad():
        logits, cache = model.run_with_cache(
            probe_tokens(pair.tokenizer), names_filter=hooks.resid_post(last)
        )
        resid = cache[hooks.resid_post(last)]
        uncapped = hf_module(model.unembed)(hf_module(model.ln_final)(resid))
        # The cap must bite on these weights, or this test could not tell a missing cap.
        assert float((uncapped - logits).abs().max()) > 0.1
        assert float(logits.abs().max()) < 2.0
        assert _close(read_logits(model, resid), logits)


def test_mlp_path_on_resid_mid_reproduces_mlp_out(loaded):
    _, _, pair, _, runs = loaded
    for side, (_, cache) in runs.items():
        model = pair.models()[side]
        for layer in range(pair.n_layers):
            out = mlp_output(model, layer, cache[hooks.resid_mid(layer)])
            assert _close(out, cache[hooks.mlp_out(layer)]), (side, layer)


def test_mlp_path_with_a_norm_left_out_does_not_reproduce(loaded):
    # The reason the adapter carries the post-norms: without them the path is wrong.
    _, _, pair, _, runs = loaded
    path = pair.spec.mlp_path
    model, (_, cache) = pair.pt, runs["pt"]
    block = model.blocks[0]
    for skipped in [name for name in path if name != "mlp"]:
        out = cache[hooks.resid_mid(0)]
        for name in path:
            if name != skipped:
                out = hf_module(getattr(block, name))(out)
        assert not _close(out, cache[hooks.mlp_out(0)])


def test_donor_mlp_path_differs_from_host(loaded):
    # IT is PT perturbed: the IT MLP path on PT's residual must be tellable from PT's own.
    _, _, pair, _, runs = loaded
    _, cache = runs["pt"]
    donor = mlp_output(pair.it, 1, cache[hooks.resid_mid(1)])
    assert not _close(donor, cache[hooks.mlp_out(1)], rtol=1e-3)


def test_moe_layout_matches_the_modules(loaded):
    shape, _, pair, _, _ = loaded
    layout = moe_layout(pair.pt)
    if not shape.startswith("deepseek"):
        assert layout is None
        return
    config = pair.pt.original_model.config
    assert layout.first_dense_layers == config.first_k_dense_replace
    for layer in range(pair.n_layers):
        is_moe_module = hasattr(hf_module(pair.pt.blocks[layer].mlp), "experts")
        assert layout.is_moe_layer(layer) == is_moe_module, layer
    assert layout.n_routed_experts == 4 and layout.experts_per_token == 2


def test_attention_layout_matches_the_weights(loaded):
    _, _, pair, _, _ = loaded
    layout = attention_layout(pair.pt)
    attn = hf_module(pair.pt.blocks[0].attn)
    if layout.kind == "mla":
        kv_b = hf_module(attn.kv_b_proj).weight
        nope = layout.qk_head_dim - pair.pt.original_model.config.qk_rope_head_dim
        assert kv_b.shape == (layout.n_heads * (nope + layout.v_head_dim), layout.kv_lora_rank)
        q_a_proj = getattr(attn, "q_a_proj", None)
        if layout.q_lora_rank is None:
            assert q_a_proj is None
        else:
            assert hf_module(q_a_proj).weight.shape[0] == layout.q_lora_rank
        o_in = hf_module(attn.o_proj).weight.shape[1]
    else:
        o_in = hf_module(attn.o_proj).weight.shape[1]
    assert o_in == layout.n_heads * layout.v_head_dim


def test_unsupported_architecture_lists_the_supported_ones():
    with pytest.raises(UnsupportedArchitectureError) as info:
        hooklab.spec_for_architecture("GPT2LMHeadModel")
    message = str(info.value)
    assert "GPT2LMHeadModel" in message
    for family in hooklab.SUPPORTED_FAMILIES:
        assert family in message
