"""Tuned lenses: identity at zero, training, the tuned-lens file layout, refusals, safety."""

from __future__ import annotations

import json
import os

import pytest
import torch

import hooklab
from hooklab.architectures import read_logits
from hooklab.errors import HooklabError
from hooklab.forward import residual_stream
from hooklab.lens import LogitLens, TunedLens, TunedLensTrainConfig, train_tuned_lens
from hooklab.prompts import load_prompts
from hooklab.stream import read_lens
from hooklab.synthetic.tokenizer import _corpus


@pytest.fixture(scope="module")
def pair(tiny_pair):
    tiny = tiny_pair("qwen3")
    return hooklab.load_pair(pt=tiny.pt, it=tiny.it, device="cpu")


def _tokens(pair) -> torch.Tensor:
    return torch.tensor(
        [pair.tokenizer("The river runs past the old mill and the boats.")["input_ids"]]
    )


def test_zero_initialised_tuned_lens_equals_logit_lens(pair):
    tokens = _tokens(pair)
    tuned = read_lens(pair.pt, tokens, TunedLens.from_model(pair.pt))
    logit = read_lens(pair.pt, tokens, LogitLens())
    for name in logit.metrics:
        assert torch.equal(tuned.metrics[name], logit.metrics[name]), name


def _corpus_texts() -> list[str]:
    return _corpus() * 6 + [p.text for p in load_prompts()] * 4


def test_training_reduces_held_out_kl(pair):
    config = TunedLensTrainConfig(token_budget=12_000, seq_len=32, batch_size=8, lr=3e-3)
    lens, result = train_tuned_lens(pair.pt, _corpus_texts(), config=config, progress=False)
    before, after = result.held_out_kl_before, result.held_out_kl_after
    assert before[-1] == after[-1] == 0  # the last layer is never translated
    assert sum(after[:-1]) < 0.8 * sum(before[:-1])
    assert result.tokens_seen >= 12_000 and result.held_out_tokens > 0
    # Training left the model itself untouched and trainable as before.
    assert all(p.grad is None for p in pair.pt.parameters())


def test_sgd_nesterov_also_trains(pair):
    config = TunedLensTrainConfig(
        token_budget=4_000, seq_len=32, batch_size=8, lr=0.05, optimizer="sgd"
    )
    _, result = train_tuned_lens(pair.pt, _corpus_texts(), config=config, progress=False)
    assert sum(result.held_out_kl_after) < sum(result.held_out_kl_before)


def _trained(pair, model) -> TunedLens:
    lens = TunedLens.from_model(model, name_or_path="tiny")
    with torch.no_grad():
        for translator in lens.translators:
            translator.weight.normal_(0, 0.05)
            translator.bias.normal_(0, 0.05)
    return lens


def test_save_load_round_trip_in_the_tuned_lens_layout(pair, tmp_path):
    lens = _trained(pair, pair.pt)
    lens.save(tmp_path / "lens")
    config = json.loads((tmp_path / "lens" / "config.json").read_text())
    assert set(config) == {
        "base_model_name_or_path",
        "base_model_revision",
        "d_model",
        "num_hidden_layers",
        "bias",
        "unembed_hash",
        "lens_type",
    }
    params = torch.load(tmp_path / "lens" / "params.pt", weights_only=True)
    assert set(params) == {f"{i}.{p}" for i in range(pair.n_layers) for p in ("weight", "bias")}
    loaded = TunedLens.load(tmp_path / "lens", pair.pt)
    tokens = _tokens(pair)
    assert torch.equal(
        read_lens(pair.pt, tokens, lens).metrics["kl_to_final"],
        read_lens(pair.pt, tokens, loaded).metrics["kl_to_final"],
    )


def test_translator_indexing_follows_the_tuned_lens_package(pair, tmp_path):
    # A lens written as the tuned-lens package writes it: translator i reads hidden_states[i],
    # the input of block i; hooklab's layer l (output of block l) must use translator l + 1.
    d = pair.d_model
    state = {}
    for i in range(pair.n_layers):
        state[f"{i}.weight"] = torch.zeros(d, d)
        state[f"{i}.bias"] = torch.zeros(d)
    state["2.bias"] = torch.linspace(-1, 1, d)
    folder = tmp_path / "from-package"
    folder.mkdir()
    torch.save(state, folder / "params.pt")
    (folder / "config.json").write_text(
        json.dumps(
            {
                "base_model_name_or_path": "tiny",
                "d_model": d,
                "num_hidden_layers": pair.n_layers,
                "bias": True,
                "base_model_revision": None,
                "unembed_hash": None,
                "lens_type": "linear_tuned_lens",
                "some_future_key": 1,
            }
        )
    )
    lens = TunedLens.load(folder, pair.pt)
    resid = residual_stream(pair.pt, _tokens(pair)).resid_post
    expected = read_logits(pair.pt, resid[1] + state["2.bias"])
    with torch.no_grad():
        assert torch.allclose(read_logits(pair.pt, lens.translate(1, resid[1])), expected)
        assert torch.equal(lens.translate(0, resid[0]), resid[0])


def test_lens_of_another_model_is_refused(pair, tmp_path):
    _trained(pair, pair.it).save(tmp_path / "it-lens")
    with pytest.raises(
        HooklabError, match="trained on another model.*one lens for PT and one for IT"
    ):
        TunedLens.load(tmp_path / "it-lens", pair.pt)


def test_lens_of_another_size_is_refused(pair, tiny_pair, tmp_path):
    other = hooklab.load_pair(
        pt=tiny_pair("deepseek_v2").pt, it=tiny_pair("deepseek_v2").it, device="cpu"
    )
    lens = TunedLens.from_model(other.pt)
    lens.config = type(lens.config)(**{**lens.config.to_dict(), "num_hidden_layers": 7})
    lens.save(tmp_path / "seven")
    with pytest.raises(
        HooklabError, match="num_hidden_layers=7 but the model has num_hidden_layers=4"
    ):
        TunedLens.load(tmp_path / "seven", pair.pt)


class _Payload:
    def __reduce__(self):
        return (os.system, ("touch hooklab-lens-pwned",))


def test_lens_file_cannot_run_code(pair, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _trained(pair, pair.pt).save(tmp_path / "evil")
    torch.save({"0.weight": _Payload()}, tmp_path / "evil" / "params.pt")
    with pytest.raises(Exception, match="(?i)weights_only|unpickl"):
        TunedLens.load(tmp_path / "evil", pair.pt)
    assert not (tmp_path / "hooklab-lens-pwned").exists()


def test_missing_lens_files_are_named(pair, tmp_path):
    with pytest.raises(HooklabError, match="must hold config.json and params.pt"):
        TunedLens.load(tmp_path, pair.pt)
