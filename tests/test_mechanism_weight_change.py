"""Weight-change localization: rules cover every tiny shape, known answers, brute force."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from hooklab.errors import HooklabError
from hooklab.mechanism.weight_change import (
    checkpoint_tensors,
    classify_tensor,
    weight_change,
    weight_change_pivot,
)
from hooklab.synthetic import TINY_SHAPES


def _state(folder):
    out = {}
    for name, file in checkpoint_tensors(folder).items():
        out[name] = load_file(file)[name]
    return out


@pytest.mark.parametrize("shape", TINY_SHAPES)
def test_every_tensor_of_every_tiny_shape_has_a_module_kind(tiny_pair, shape):
    names = list(checkpoint_tensors(tiny_pair(shape).pt))
    kinds = {name: classify_tensor(name) for name in names}
    assert [n for n, k in kinds.items() if k.group == "other"] == []
    block = [k for k in kinds.values() if k.layer is not None]
    # every block has its attention output projection and a block norm
    layers = sorted({k.layer for k in block})
    assert layers == list(range(4))
    for layer in layers:
        modules = {(k.group, k.module) for k in block if k.layer == layer}
        assert ("attention", "o") in modules
        assert any(g == "norm" for g, _ in modules)
        assert any(g in ("mlp", "moe_shared") and m == "down" for g, m in modules)
    assert not any(k.layer is not None and k.group == "vision" for k in kinds.values())


def test_known_names_of_real_checkpoints_are_classified():
    cases = {
        "model.layers.7.mlp.experts.63.up_proj.weight": ("moe_routed", "up", 7, 63),
        "model.layers.7.mlp.shared_experts.down_proj.weight": ("moe_shared", "down", 7, None),
        "model.layers.7.mlp.gate.weight": ("moe_router", "router", 7, None),
        "model.layers.2.self_attn.kv_a_proj_with_mqa.weight": ("attention", "kv_a", 2, None),
        "model.layers.2.self_attn.q_a_layernorm.weight": (
            "attention_norm",
            "q_a_layernorm",
            2,
            None,
        ),
        "language_model.model.layers.5.self_attn.q_proj.weight": ("attention", "q", 5, None),
        "model.layers.0.self_attn.q_proj.bias": ("attention", "q.bias", 0, None),
        "vision_tower.vision_model.encoder.layers.3.mlp.fc1": ("vision", "vision", None, None),
        "model.layers.1.mlp.experts.gate_up_proj": ("moe_routed", "gate_up", 1, None),
        "model.norm.weight": ("norm", "final_norm", None, None),
    }
    for name, (group, module, layer, expert) in cases.items():
        kind = classify_tensor(name)
        assert (kind.group, kind.module, kind.layer, kind.expert) == (group, module, layer, expert)


def test_a_model_against_itself_changes_nowhere(tiny_pair):
    folder = tiny_pair("deepseek_v2").pt
    frame = weight_change(folder, folder)
    assert (frame["rel_change"] == 0).all() and (frame["norm_diff"] == 0).all()
    assert np.allclose(frame["cosine"], 1.0, atol=1e-12)
    assert len(frame) == len(checkpoint_tensors(folder))


def test_one_perturbed_matrix_is_the_only_change(tiny_pair, tmp_path):
    source = tiny_pair("llama").pt
    state = _state(source)
    target = "model.layers.2.mlp.up_proj.weight"
    state[target] = state[target] + 0.5 * torch.randn_like(state[target])
    save_file(state, tmp_path / "model.safetensors", metadata={"format": "pt"})
    frame = weight_change(source, tmp_path)
    changed = frame[frame["rel_change"] > 0]
    assert list(changed["tensor"]) == [target]
    assert (changed["group"] == "mlp").all() and (changed["layer"] == 2).all()
    pivot = weight_change_pivot(frame)
    stacked = pivot.stack()
    nonzero = list(stacked[stacked > 0].index)
    assert nonzero == [(2, "mlp.up")]


def test_equals_brute_force_on_a_tiny_pair_and_sharding_changes_nothing(tiny_pair, tmp_path):
    tiny = tiny_pair("deepseek_v2")
    frame = weight_change(tiny.pt, tiny.it).set_index("tensor")
    pt, it = _state(tiny.pt), _state(tiny.it)
    for name, a in pt.items():
        a, b = a.double().flatten(), it[name].double().flatten()
        assert frame.at[name, "rel_change"] == pytest.approx(
            float((b - a).norm() / a.norm()), rel=1e-10
        )
        assert frame.at[name, "cosine"] == pytest.approx(
            float(a.dot(b) / (a.norm() * b.norm())), rel=1e-10
        )
    # the IT side rewritten as three shards with an index: same table
    names = sorted(it)
    weight_map = {}
    for index, part in enumerate(np.array_split(np.array(names), 3)):
        file = f"model-{index + 1:05d}-of-00003.safetensors"
        save_file({n: it[n] for n in part}, tmp_path / file, metadata={"format": "pt"})
        weight_map.update({n: file for n in part})
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    sharded = weight_change(tiny.pt, tmp_path).set_index("tensor")
    assert np.array_equal(sharded["rel_change"], frame["rel_change"])


def test_fused_experts_give_one_row_per_expert_and_pool_exactly(tmp_path, monkeypatch):
    import hooklab.mechanism.weight_change as module

    monkeypatch.setattr(module, "CHUNK_ELEMENTS", 7)  # many blocks, ragged last block
    generator = torch.Generator().manual_seed(0)
    fused = torch.randn(3, 4, 6, generator=generator)
    moved = fused.clone()
    moved[1] += torch.randn(4, 6, generator=generator)
    for folder, tensor in (("pt", fused), ("it", moved)):
        (tmp_path / folder).mkdir()
        save_file(
            {"model.layers.0.mlp.experts.down_proj": tensor, "model.norm.weight": torch.ones(6)},
            tmp_path / folder / "model.safetensors",
        )
    frame = weight_change(tmp_path / "pt", tmp_path / "it")
    experts = frame[frame["group"] == "moe_routed"]
    assert list(experts["expert"]) == [0, 1, 2]
    assert list(experts["rel_change"] > 0) == [False, True, False]
    expected = float((moved[1].double() - fused[1].double()).norm() / fused[1].double().norm())
    assert experts["rel_change"].iloc[1] == pytest.approx(expected, rel=1e-12)
    pooled = float((moved.double() - fused.double()).norm() / fused.double().norm())
    assert weight_change_pivot(frame).at[0, "moe_routed.down"] == pytest.approx(pooled, rel=1e-12)


def test_mismatched_checkpoints_are_refused(tiny_pair, tmp_path):
    source = tiny_pair("llama").pt
    state = _state(source)
    state.pop("model.norm.weight")
    save_file(state, tmp_path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(HooklabError, match="only in PT"):
        weight_change(source, tmp_path)
    with pytest.raises(HooklabError, match="no model.safetensors"):
        weight_change(source, tmp_path / "missing")
    shutil.rmtree(tmp_path)


def test_doctests():
    import doctest

    import hooklab.mechanism.weight_change as weight_change_module
    import hooklab.metrics as metrics  # the late region's examples (delta_cosine's copy is gone)

    for module in (weight_change_module, metrics):
        result = doctest.testmod(module)
        assert result.attempted > 0 and result.failed == 0
