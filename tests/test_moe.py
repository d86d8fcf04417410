"""DeepSeek-V2: routing capture, expert parts, expert-level grafts, MLA per-head views."""

from __future__ import annotations

import pytest
import torch

import hooklab
from hooklab import hooks
from hooklab.architectures import hf_module, mlp_path_parameter_names
from hooklab.attention import attention_entropy, attention_heads
from hooklab.errors import HooklabError
from hooklab.forward import residual_stream
from hooklab.graft.engine import graft_hooks, module_change_norms
from hooklab.moe import (
    capture_routing,
    expert_usage,
    moe_part_output,
    moe_parts,
    recompute_routing,
    routing_agreement,
    routing_entropy,
)
from hooklab.synthetic import TINY_SHAPES, write_tiny_checkpoint

DEEPSEEK = ["deepseek_v2", "deepseek_v2-qlora"]


def _tokens():
    tokens = torch.randint(5, 500, (2, 9), generator=torch.Generator().manual_seed(4))
    tokens[:, 0] = 0
    return tokens


@pytest.fixture(scope="module", params=DEEPSEEK)
def pair(request, tiny_pair):
    tiny = tiny_pair(request.param)
    return hooklab.load_pair(pt=tiny.pt, it=tiny.it, device="cpu")


def _normed(model, layer, tokens):
    store = {}
    with (
        torch.no_grad(),
        model.hooks(fwd_hooks=[(hooks.resid_mid(layer), lambda a, hook: store.update(x=a))]),  # noqa: ARG005
    ):
        model(tokens, return_type=None)
    return store["x"], hf_module(model.blocks[layer].ln2)(store["x"])


def test_captured_routing_equals_routing_recomputed_from_the_gate(pair):
    tokens = _tokens()
    routing = capture_routing(pair.it, tokens)
    layout = hooklab.moe_layout(pair.it)
    assert routing.layers == layout.moe_layers and routing.layers[0] == layout.first_dense_layers
    for layer in routing.layers:
        _, normed = _normed(pair.it, layer, tokens)
        logits, experts, weights = recompute_routing(pair.it, layer, normed)
        assert torch.allclose(routing.logits[layer], logits, atol=1e-6)
        # same chosen set (order within the top-k may differ) and the same weights
        order_got = routing.experts[layer].argsort(-1)
        order_ref = experts.argsort(-1)
        assert torch.equal(
            routing.experts[layer].gather(-1, order_got), experts.gather(-1, order_ref)
        )
        assert torch.allclose(
            routing.weights[layer].gather(-1, order_got), weights.gather(-1, order_ref), atol=1e-6
        )


def test_shared_plus_routed_is_mlp_out(pair):
    tokens = _tokens()
    for layer in hooklab.moe_layout(pair.pt).moe_layers:
        store = {}
        with (
            torch.no_grad(),
            pair.pt.hooks(
                fwd_hooks=[
                    (hooks.mlp_out(layer), lambda a, hook, store=store: store.update(out=a)),  # noqa: ARG005
                    (hooks.resid_mid(layer), lambda a, hook, store=store: store.update(mid=a)),  # noqa: ARG005
                ]
            ),
        ):
            pair.pt(tokens, return_type=None)
            shared, routed = moe_parts(
                pair.pt, layer, hf_module(pair.pt.blocks[layer].ln2)(store["mid"])
            )
        assert torch.allclose(shared + routed, store["out"], atol=1e-6)
        assert shared.abs().max() > 0 and routed.abs().max() > 0


def test_routing_summaries(pair):
    tokens = _tokens()
    pt, it = capture_routing(pair.pt, tokens), capture_routing(pair.it, tokens)
    usage = expert_usage(it)
    layout = hooklab.moe_layout(pair.it)
    sums = usage.groupby("layer").share.sum()
    assert (sums.round(6) == layout.experts_per_token).all()
    same = routing_agreement(it, it)
    assert (same.overlap == 1).all() and (same.weighted_overlap.round(6) == 1).all()
    across = routing_agreement(pt, it)
    assert (across.overlap <= 1).all() and (across.weighted_overlap < 1).any()
    entropy = routing_entropy(it)
    assert ((entropy.entropy > 0) & (entropy.entropy <= entropy.max_entropy)).all()


@pytest.mark.parametrize("part", ["moe", "shared", "routed"])
@pytest.mark.parametrize("router", ["host", "donor"])
def test_expert_level_grafts_between_identical_models_change_nothing(tiny_pair, part, router):
    tiny = tiny_pair("deepseek_v2")
    twins = hooklab.load_pair(pt=tiny.pt, it=tiny.pt, device="cpu")
    tokens = _tokens()
    base = residual_stream(twins.pt, tokens).resid_post
    every = range(twins.n_layers)
    norms = module_change_norms(twins.pt, twins.it, tokens, every, part=part, router=router)
    for mode in ("module", "random"):
        hooks_ = graft_hooks(
            twins.pt,
            twins.it,
            every,
            mode,
            part=part,
            router=router,
            row_keys=["a", "b"],
            module_norms=norms,
        )
        assert torch.equal(residual_stream(twins.pt, tokens, fwd_hooks=hooks_).resid_post, base)


def _routed_swapped(tiny_pair, tmp_path, shape):
    """B = A with only the routed experts of the perturbed twin (everything else shared)."""
    import transformers

    tiny = tiny_pair(shape)
    a = transformers.AutoModelForCausalLM.from_pretrained(tiny.pt)
    donor = transformers.AutoModelForCausalLM.from_pretrained(tiny.it)
    with torch.no_grad():
        for name, param in a.named_parameters():
            if ".mlp.experts." in name:
                param.copy_(donor.get_parameter(name))
    a.save_pretrained(tmp_path / "b")
    transformers.AutoTokenizer.from_pretrained(tiny.pt).save_pretrained(tmp_path / "b")
    return hooklab.load_pair(pt=tiny.pt, it=tmp_path / "b", device="cpu")


@pytest.mark.parametrize("shape", DEEPSEEK)
@pytest.mark.parametrize("router", ["host", "donor"])
def test_grafting_routed_experts_of_b_into_a_reproduces_b(tiny_pair, tmp_path, shape, router):
    pair = _routed_swapped(tiny_pair, tmp_path, shape)
    tokens = _tokens()
    layers = hooklab.moe_layout(pair.pt).moe_layers
    hooks_ = graft_hooks(pair.pt, pair.it, layers, "module", part="routed", router=router)
    with torch.no_grad():
        grafted = residual_stream(pair.pt, tokens, fwd_hooks=hooks_).resid_post
        expected = residual_stream(pair.it, tokens).resid_post
        assert torch.allclose(grafted, expected, atol=1e-6)
        # the shared-experts graft changes nothing here (shared experts are shared)
        shared = residual_stream(
            pair.pt,
            tokens,
            fwd_hooks=graft_hooks(pair.pt, pair.it, layers, "module", part="shared"),
        ).resid_post
        assert torch.equal(shared, residual_stream(pair.pt, tokens).resid_post)
        assert not torch.allclose(expected, residual_stream(pair.pt, tokens).resid_post, atol=1e-3)


def test_random_control_matches_each_parts_norm(tiny_pair):
    tiny = tiny_pair("deepseek_v2")
    pair = hooklab.load_pair(pt=tiny.pt, it=tiny.it, device="cpu")
    tokens = _tokens()
    for part in ("shared", "routed"):
        record: dict = {}
        norms = module_change_norms(pair.pt, pair.it, tokens, [2, 3], part=part)
        residual_stream(
            pair.pt,
            tokens,
            fwd_hooks=graft_hooks(
                pair.pt,
                pair.it,
                [2, 3],
                "random",
                part=part,
                row_keys=["a", "b"],
                record=record,
                module_norms=norms,
            ),
        )
        for layer in (2, 3):
            moved = (record[layer]["new_out"] - record[layer]["host_out"]).norm(dim=-1)
            assert torch.allclose(moved, norms[layer], rtol=1e-5, atol=1e-6)


def test_dense_layers_graft_as_ordinary_mlps(tiny_pair):
    tiny = tiny_pair("deepseek_v2-qlora")  # first_k_dense_replace = 2
    pair = hooklab.load_pair(pt=tiny.pt, it=tiny.it, device="cpu")
    mid, _ = _normed(pair.pt, 1, _tokens())
    for part in ("shared", "routed", "moe"):
        assert torch.equal(
            moe_part_output(pair.pt, pair.it, 1, mid, part), hooklab.mlp_output(pair.it, 1, mid)
        )


def test_expert_parts_on_a_dense_family_are_refused(tiny_pair):
    tiny = tiny_pair("llama")
    pair = hooklab.load_pair(pt=tiny.pt, it=tiny.it, device="cpu")
    with pytest.raises(HooklabError, match="needs an MoE model"):
        moe_part_output(pair.pt, pair.it, 1, torch.zeros(1, 2, 64), "routed")
    with pytest.raises(HooklabError, match="no mixture-of-experts blocks"):
        capture_routing(pair.pt, _tokens())


@pytest.mark.parametrize("shape", TINY_SHAPES)
def test_per_head_z_reassembles_to_the_attention_output(tiny_pair, shape):
    tiny = tiny_pair(shape)
    pair = hooklab.load_pair(pt=tiny.pt, it=tiny.it, device="cpu")
    tokens = _tokens()
    layer = pair.n_layers - 1
    heads = attention_heads(pair.it, tokens, layer)
    layout = hooklab.attention_layout(pair.it)
    assert heads.z.shape == (2, 9, layout.n_heads, layout.v_head_dim)
    assert heads.pattern.shape == (2, layout.n_heads, 9, 9)
    assert torch.allclose(heads.pattern.sum(-1), torch.ones(2, layout.n_heads, 9), atol=1e-5)
    store = {}
    with (
        torch.no_grad(),
        pair.it.hooks(
            fwd_hooks=[(f"blocks.{layer}.attn.hook_out", lambda a, hook: store.update(out=a))]  # noqa: ARG005
        ),
    ):
        pair.it(tokens, return_type=None)
    assembled = heads.head_outputs().sum(2) + heads.b_out
    assert torch.allclose(assembled, store["out"], atol=1e-5)
    entropy = attention_entropy(heads)
    assert entropy.shape == (layout.n_heads,) and (entropy >= 0).all()


def test_mla_head_size_is_not_d_model_over_heads(tiny_pair):
    # The bridge's usual head size d_model / n_heads (64 / 4 = 16) would split MLA's
    # value heads wrongly when v_head_dim differs; the tiny configs make them differ.
    tiny_dir = tiny_pair("deepseek_v2").pt
    other = write_tiny_checkpoint("deepseek_v2", tiny_dir.parent / "v24", v_head_dim=24)
    pair = hooklab.load_pair(pt=other, it=other, device="cpu")
    heads = attention_heads(pair.pt, _tokens(), 1)
    assert heads.z.shape[-2:] == (4, 24)
    assert "model.layers.1.mlp.experts.gate_up_proj" in mlp_path_parameter_names(pair.pt)


def test_readout_and_graft_suites_run_on_deepseek(tiny_pair):
    from hooklab.graft.effects import graft_effects
    from hooklab.graft.histories import make_histories
    from hooklab.graft.sweep import GraftConfig, run_graft
    from hooklab.lens import LogitLens
    from hooklab.prompts import load_prompts
    from hooklab.readout import ReadoutConfig, run_readout
    from hooklab.summaries import convergence_gap
    from tests.graft_reference import max_difference, naive_graft

    tiny = tiny_pair("deepseek_v2")
    pair = hooklab.load_pair(pt=tiny.pt, it=tiny.it, device="cpu")
    prompts = load_prompts()[:3]
    table = run_readout(
        pair,
        prompts,
        ReadoutConfig(conditions=("native", "same_history"), max_new_tokens=4),
        progress=False,
    )
    assert set(convergence_gap(table).condition) == {"native", "same_history"}
    histories = make_histories(pair, prompts, max_new_tokens=4, progress=False)
    config = GraftConfig(
        directions=("it-to-pt", "pt-to-it"),
        modes=("module", "random"),
        parts=("mlp", "shared", "routed"),
        router="donor",
        windows="late,0:2",
    )
    lenses = {"pt": LogitLens(), "it": LogitLens()}
    fast = run_graft(pair, histories, config, lenses=lenses, progress=False)
    naive = naive_graft(pair, histories, config, lenses=lenses)
    assert max_difference(fast, naive) <= 1e-5
    effects = graft_effects(fast)
    assert set(effects.part) == {"mlp", "shared", "routed"}
    # the early window 0:2 holds the dense layer 0 and MoE layer 1: parts differ there
    early = effects[(effects.window == "0:2") & (effects["mode"] == "module")]
    assert early.set_index(["direction", "part"])["mean"].nunique() > 1


def test_splice_with_expert_parts_is_refused():
    from hooklab.graft.sweep import GraftConfig

    with pytest.raises(HooklabError, match="need modes 'module' or 'random'"):
        GraftConfig(modes=("splice",), parts=("routed",))
    with pytest.raises(HooklabError, match="accepted parts are mlp, moe, shared, routed"):
        GraftConfig(parts=("experts",))
