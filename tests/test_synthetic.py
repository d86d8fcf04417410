"""The offline model factory: tokenizer, tiny pairs, real shapes."""

from __future__ import annotations

import pytest
import torch
import transformers
from safetensors.torch import load_file

from hooklab.catalog import paper_pairs
from hooklab.synthetic import (
    TINY_SHAPES,
    build_random_model,
    build_tokenizer,
    real_shape_config,
    tiny_config,
)


def test_tokenizer_is_deterministic_and_has_a_chat_template():
    first, second = build_tokenizer(), build_tokenizer()
    assert first.get_vocab() == second.get_vocab()
    assert first.chat_template and first.bos_token_id == 0
    text = "Instruction tuning teaches a model to answer."
    assert first(text)["input_ids"][0] == first.bos_token_id
    assert first.decode(first(text, add_special_tokens=False)["input_ids"]) == text


def test_chat_template_plus_special_tokens_gives_the_double_bos_pitfall():
    tokenizer = build_tokenizer()
    chat = tokenizer.apply_chat_template(
        [{"role": "user", "content": "hi"}], add_generation_prompt=True, tokenize=False
    )
    assert tokenizer(chat)["input_ids"][:2] == [0, 0]
    assert tokenizer(chat, add_special_tokens=False)["input_ids"][:2] != [0, 0]


@pytest.mark.parametrize("shape", ["llama", "gemma3", "deepseek_v2"])
def test_it_differs_from_pt_in_every_weight_norms_included(tiny_pair, shape):
    tiny = tiny_pair(shape)
    pt = load_file(tiny.pt / "model.safetensors")
    it = load_file(tiny.it / "model.safetensors")
    assert pt.keys() == it.keys()
    norms = [name for name in pt if "norm" in name]
    assert norms
    for name in pt:
        assert not torch.equal(pt[name], it[name]), name
    for name in norms:  # norms are randomised in PT too, not left at their constant init
        assert float(pt[name].std()) > 0, name


def test_gemma3_tiny_shape_is_hybrid_local_global():
    config = tiny_config("gemma3")
    assert set(config.layer_types) == {"sliding_attention", "full_attention"}


def test_deepseek_tiny_shapes_cover_dense_first_layers_and_query_lora():
    plain, qlora = tiny_config("deepseek_v2"), tiny_config("deepseek_v2-qlora")
    assert plain.first_k_dense_replace == 1 and plain.q_lora_rank is None
    assert qlora.first_k_dense_replace == 2 and qlora.q_lora_rank == 24


def test_every_tiny_shape_builds():
    for shape in TINY_SHAPES:
        assert tiny_config(shape).get_text_config().hidden_size == 64


@pytest.mark.parametrize("name", list(paper_pairs()))
def test_real_shapes_have_the_published_parameter_counts(name):
    # Known answer: the parameter count each model card publishes.
    config = real_shape_config(name)
    with torch.device("meta"):
        model = transformers.AutoModelForCausalLM.from_config(config)
    n_params = sum(p.numel() for p in model.parameters())
    assert n_params == paper_pairs()[name].n_params_language_model


def test_random_model_at_a_real_shape_boots_as_a_bridge():
    model = build_random_model("mistral-7b-v0.3", device="cpu", dtype=torch.bfloat16, n_layers=1)
    assert (model.cfg.d_model, model.cfg.d_vocab, model.cfg.n_layers) == (4096, 32768, 1)
    with torch.no_grad():
        logits = model(torch.tensor([[0, 5, 6, 7]]))
    assert logits.shape == (1, 4, 32768) and logits.dtype == torch.bfloat16
