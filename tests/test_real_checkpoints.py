"""A real checkpoint through the same loading code as any other: SmolLM2-135M-Instruct, shipped
by the package index as a Q4_1 GGUF file, dequantised by :mod:`hooklab.gguf`.

The pair is (PT = SmolLM2 with its late MLPs perturbed, IT = SmolLM2): attention and
everything but the late MLPs are shared, so grafting every MLP of IT into PT must give IT
exactly; IT's histories must be plain Hugging Face greedy decoding of the real model.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import transformers

import hooklab
from hooklab.architectures import read_logits
from hooklab.forward import residual_stream
from hooklab.generation import generate_arm
from hooklab.gguf import CONVERSION_RECORD
from hooklab.graft.engine import graft_hooks
from hooklab.graft.histories import make_histories
from hooklab.graft.sweep import GraftConfig, run_graft
from hooklab.kv_cache import check_cached_decoding
from hooklab.lens import LogitLens
from hooklab.loading import resolve_source
from hooklab.pair import check_adapter_on, check_generation_on
from hooklab.parity import check_parity, probe_tokens
from hooklab.prompts import Prompt, chat_prompt_ids, stop_token_ids
from hooklab.readout import ReadoutConfig, run_readout
from tests.real_models import plain_hf_greedy

pytestmark = pytest.mark.canary  # .ci/canary runs these on the newest and oldest transformers

LATE = range(22, 30)  # the MLPs perturbed in the PT side (SmolLM2-135M has 30 layers)
PROMPTS = [
    Prompt("thanks", "Write a short thank-you note to a neighbour."),
    Prompt("water", "List three ways to save water at home."),
]


@pytest.fixture(scope="module")
def converted(smollm2_gguf):
    return resolve_source(smollm2_gguf, None, argument="it")


@pytest.fixture(scope="module")
def pair(converted, smollm2_gguf, tmp_path_factory):
    folder = tmp_path_factory.mktemp("smollm2") / "late-mlps-perturbed"
    model = transformers.AutoModelForCausalLM.from_pretrained(converted.name_or_path)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if any(f"layers.{i}.mlp." in name for i in LATE):
                param.add_(0.2 * param.std() * torch.randn(param.shape, generator=generator))
    model.save_pretrained(folder)
    transformers.AutoTokenizer.from_pretrained(converted.name_or_path).save_pretrained(folder)
    return hooklab.load_pair(pt=folder, it=smollm2_gguf, device="cpu")


@pytest.fixture(scope="module")
def hf_it(converted):
    return transformers.AutoModelForCausalLM.from_pretrained(
        converted.name_or_path, attn_implementation="eager"
    ).eval()


def test_conversion_is_cached_recorded_and_gives_the_gguf_models_logits(converted, smollm2_gguf):
    assert converted.gguf == str(smollm2_gguf.resolve())
    record = json.loads(Path(converted.name_or_path, CONVERSION_RECORD).read_text())
    assert record["gguf_file"] == str(smollm2_gguf.resolve()) and len(record["gguf_sha256"]) == 64
    # a second load reuses the folder (no second conversion)
    again = resolve_source(smollm2_gguf, None, argument="it")
    assert again.name_or_path == converted.name_or_path
    quantised = transformers.AutoModelForCausalLM.from_pretrained(
        str(smollm2_gguf.parent), gguf_file=smollm2_gguf.name, dtype=torch.float32
    ).eval()
    plain = transformers.AutoModelForCausalLM.from_pretrained(converted.name_or_path).eval()
    tokens = torch.tensor([[1, 504, 2365, 6354, 16438, 27003, 690, 260, 23790, 2767]])
    with torch.no_grad():
        assert torch.equal(quantised(tokens).logits, plain(tokens).logits)


def test_adapter_generation_and_hf_parity_checks_pass(pair, converted):
    for side, model in pair.models().items():
        check_adapter_on(model, pair.tokenizer, side=side)
        check_generation_on(model, pair.tokenizer, side=side)
    tokens = probe_tokens(pair.tokenizer)
    report = check_parity(pair.it, tokens, hf_source=converted.name_or_path)
    assert report.passed(), report
    # the residual reaches 1e4, where float32 rounding alone leaves gaps over an absolute 1e-4
    # (measured 3.3e-3): the limit follows the scale
    assert report.resid_scale > 1e4 and report.limits()["resid_identity"] > 0.1
    decoding = check_cached_decoding(pair.it, tokens[:2])
    assert decoding.ok and decoding.bridge < 1e-3, decoding


def test_chat_template_has_the_default_system_prompt_no_extra_bos_and_im_end(pair):
    tokenizer = pair.tokenizer
    ids = chat_prompt_ids(tokenizer, "Hi")
    text = tokenizer.decode(ids)
    assert text.startswith("<|im_start|>system\nYou are a helpful AI assistant named SmolLM")
    assert text.endswith("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")
    assert ids.count(ids[0]) == 3 and ids[1] != ids[0]  # three turns opened, nothing doubled
    assert tokenizer.convert_tokens_to_ids("<|im_end|>") in stop_token_ids(tokenizer)


def test_it_histories_are_plain_hugging_face_greedy_decoding(pair, hf_it):
    histories = make_histories(pair, PROMPTS, max_new_tokens=12, progress=False)
    stops = stop_token_ids(pair.tokenizer)
    responses = set()
    for prompt, history in zip(PROMPTS, histories, strict=True):
        ids = chat_prompt_ids(pair.tokenizer, prompt.text)
        want = plain_hf_greedy(hf_it, ids, 12, stops)
        assert list(history.tokens) == ids + want, prompt.id
        responses.add(tuple(want))
    assert len(responses) == len(PROMPTS)  # two prompts, two responses (the 5.24 bug: one)


def test_native_readout_ends_at_the_models_own_distribution(pair):
    table = run_readout(
        pair, PROMPTS, ReadoutConfig(conditions=("native",), max_new_tokens=6), progress=False
    )
    last = table[table["layer"] == pair.n_layers - 1]
    assert (last["kl_to_final"] == 0).all()
    assert table["kl_to_final"].notna().all() and (table["kl_to_final"] >= 0).all()
    assert set(table["model"]) == {"pt", "it"}


def test_self_grafts_change_nothing_exactly(pair):
    histories = make_histories(pair, PROMPTS[:1], max_new_tokens=6, progress=False)
    config = GraftConfig(directions=("self-pt", "self-it"), windows="late", max_new_tokens=6)
    table = run_graft(
        pair, histories, config, lenses={"pt": LogitLens(), "it": LogitLens()}, progress=False
    )
    deltas = [c for c in table.columns if c.startswith("delta_")]
    grafted = table[table["mode"] != "none"]
    assert len(grafted) and deltas
    assert (grafted[deltas].abs().max() == 0).all()


def test_grafting_every_mlp_of_it_into_pt_reproduces_it(pair):
    tokens = torch.tensor([chat_prompt_ids(pair.tokenizer, PROMPTS[0].text)])
    every = range(pair.n_layers)
    with torch.no_grad():
        expected = pair.it(tokens)
        stream = residual_stream(
            pair.pt, tokens, fwd_hooks=graft_hooks(pair.pt, pair.it, every, "module")
        )
        assert torch.equal(read_logits(pair.pt, stream.resid_post[-1]), expected)
        assert not torch.allclose(pair.pt(tokens), expected, atol=1e-3)  # the sides differ


@pytest.mark.parametrize("arm", ["it", "pt+late:it", "it+late:random"])
def test_behave_arms_cached_equal_uncached(pair, arm):
    cached = generate_arm(pair, arm, PROMPTS, max_new_tokens=8, use_cache=True)
    uncached = generate_arm(pair, arm, PROMPTS, max_new_tokens=8, use_cache=False)
    assert [o.token_ids for o in cached] == [o.token_ids for o in uncached]
    assert len({o.token_ids for o in cached}) == len(PROMPTS)
