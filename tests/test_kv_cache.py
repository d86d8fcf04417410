"""The KV cache behind the bridge: routed under the name each side uses, proven at every load,
and every history checked to be the model's own greedy decoding."""

from __future__ import annotations

import pytest
import torch

import hooklab
from hooklab import kv_cache
from hooklab.errors import GenerationCheckError
from hooklab.generation import generate
from hooklab.parity import ParityReport, tolerance_for
from hooklab.prompts import check_own_greedy, greedy_continuations

pytestmark = pytest.mark.canary


def _drop_the_cache(bridge):
    """A deliberately broken stack: the attention never sees the KV cache (what transformers
    5.24 did to TransformerLens 4.3's attention before hooklab routed it)."""

    def hook(_module, args, kwargs):
        for name in kv_cache.HF_CACHE_NAMES:
            kwargs.pop(name, None)
        return args, kwargs

    for module in bridge.original_model.modules():
        if kv_cache._recomputes_attention(module):
            module.register_forward_pre_hook(hook, with_kwargs=True)
    return 0


def test_a_bridge_whose_cached_decoding_is_wrong_is_refused_at_load(monkeypatch):
    monkeypatch.setattr(kv_cache, "route_kv_cache", _drop_the_cache)
    with pytest.raises(GenerationCheckError) as caught:
        hooklab.load_pair("tiny", device="cpu")
    message = str(caught.value)
    for needed in ("pt:", "llama", "float32", "torch ", "transformers ", "transformer-lens ",
                   "max |logit difference|", "docs/dependencies.md"):  # fmt: skip
        assert needed in message, needed
    # the same broken stack loads with the check off, and then really decodes wrongly
    broken = hooklab.load_pair("tiny", device="cpu", check_generation=False)
    prompts = [[0, 11, 12, 13, 14], [0, 21, 22, 23]]
    cached = generate(broken.it, prompts, max_new_tokens=6, stop_ids=[], pad_id=2)
    uncached = generate(broken.it, prompts, max_new_tokens=6, stop_ids=[], pad_id=2,
                        use_cache=False)  # fmt: skip
    assert [o.token_ids for o in cached] != [o.token_ids for o in uncached]


def test_routing_is_idempotent_and_reaches_every_recomputing_attention():
    pair = hooklab.load_pair("tiny", device="cpu")
    n = sum(kv_cache._recomputes_attention(m) for m in pair.it.original_model.modules())
    assert n == pair.n_layers
    assert kv_cache.route_kv_cache(pair.it) == n  # a second call installs nothing more
    hooks_on_block0 = len(pair.it.blocks[0].attn._forward_pre_hooks)
    kv_cache.route_kv_cache(pair.it)
    assert len(pair.it.blocks[0].attn._forward_pre_hooks) == hooks_on_block0


@pytest.mark.parametrize("name", kv_cache.HF_CACHE_NAMES)
def test_the_attention_gets_the_cache_whichever_name_the_decoder_layer_uses(name):
    sentinel = object()
    args, kwargs = kv_cache._to_bridge_name(None, (), {name: sentinel, "x": 1})
    assert kwargs == {kv_cache.BRIDGE_CACHE_NAME: sentinel, "x": 1}
    hook = kv_cache._to_declared_name("cache")
    assert hook(None, (), {name: sentinel}) == ((), {"cache": sentinel})


def test_cached_decoding_report_on_the_embedded_pair_is_rounding_only():
    pair = hooklab.load_pair("tiny", device="cpu")
    tokens = torch.tensor([[0, 5, 9, 44, 31, 7, 18, 60, 2, 3]] * 2)
    report = kv_cache.check_cached_decoding(pair.it, tokens, steps=4)
    assert report.ok and report.bridge < 1e-4 and report.hugging_face < 1e-4, report
    assert report.limit == tolerance_for("float32", report.scale)


def test_a_history_that_is_not_the_models_greedy_decoding_stops_the_run(monkeypatch):
    pair = hooklab.load_pair("tiny", device="cpu")
    prompt = [0, 11, 12, 13, 14]
    own = greedy_continuations(pair.it, [prompt], max_new_tokens=6, stop_ids=[], progress=False)
    check_own_greedy(pair.it, prompt, own[0])  # the model's own decoding passes
    wrong = [own[0][0], (own[0][1] + 1) % pair.d_vocab, *own[0][2:]]
    with pytest.raises(GenerationCheckError, match="response token 1"):
        check_own_greedy(pair.it, prompt, wrong)
    # and greedy_continuations (every history, native condition, template replay) checks it
    original = pair.it.original_model.generate

    def corrupted(*args, **kwargs):
        out = original(*args, **kwargs)
        out[0, -1] = (out[0, -1] + 1) % pair.d_vocab
        return out

    monkeypatch.setattr(pair.it.original_model, "generate", corrupted)
    with pytest.raises(GenerationCheckError):
        greedy_continuations(pair.it, [prompt], max_new_tokens=6, stop_ids=[], progress=False)


def test_parity_limits_follow_the_scale_of_what_they_compare():
    # SmolLM2-135M's float32 residuals reach 27,586 and rounding leaves 3.3e-3 (1.2e-7 of it)
    healthy = ParityReport("llama", "float32", 40, None, None, 3.3e-3, 1e-5, 2e-3,
                           logit_scale=40.0, resid_scale=27586.0, mlp_scale=27551.0)  # fmt: skip
    assert healthy.passed() and healthy.failures() == []
    broken = ParityReport("llama", "float32", 40, None, None, 1e-3, 1e-5, 1e-6,
                          logit_scale=40.0, resid_scale=1.0, mlp_scale=1.0)  # fmt: skip
    assert broken.failures() == ["resid_identity"]
    assert tolerance_for("bfloat16", 0.0) == 5e-2 and tolerance_for("float32", 0.0) == 1e-4


def test_check_exits_non_zero_when_it_prints_no(monkeypatch, capsys):
    from hooklab import parity
    from hooklab.cli import main

    real = parity.check_parity

    def failing(*args, **kwargs):  # the CLI's figures fail; the load-time checks do not
        report = real(*args, **kwargs)
        if "hf_source" not in kwargs:
            return report
        return ParityReport(**{**report.to_dict(), "mlp_path": 1.0})

    monkeypatch.setattr(parity, "check_parity", failing)
    assert main(["check", "--pair", "tiny", "--device", "cpu"]) == 1
    captured = capsys.readouterr()
    assert "NO (mlp_path)" in captured.out and "parity FAILED" in captured.err


def test_embedded_pair_histories_are_plain_hugging_face_greedy_decoding():
    import transformers

    from hooklab.graft.histories import make_histories
    from hooklab.pair import embedded_pair_folder
    from hooklab.prompts import chat_prompt_ids, load_prompts, stop_token_ids
    from tests.real_models import plain_hf_greedy

    pair = hooklab.load_pair("tiny", device="cpu")
    prompts = load_prompts("builtin")[:4]
    histories = make_histories(pair, prompts, max_new_tokens=12, progress=False)
    plain = transformers.AutoModelForCausalLM.from_pretrained(embedded_pair_folder() / "it").eval()
    stops = stop_token_ids(pair.tokenizer)
    for prompt, history in zip(prompts, histories, strict=True):
        ids = chat_prompt_ids(pair.tokenizer, prompt.text)
        want = plain_hf_greedy(plain, ids, 12, stops)
        assert list(history.tokens) == ids + want, prompt.id
    assert len({h.tokens[h.read_from :] for h in histories}) > 1  # the 5.24 bug: one for all
