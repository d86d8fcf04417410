"""Tuned lenses: identity at zero, training, the tuned-lens file layout, refusals, safety."""

from __future__ import annotations

import hashlib
import json
import os
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import hooklab
from hooklab.architectures import hf_module, read_logits
from hooklab.errors import HooklabError
from hooklab.forward import residual_stream
from hooklab.lens import LogitLens, TunedLens, TunedLensTrainConfig, train_tuned_lens
from hooklab.lens.tuned import unembed_hash, unembed_sha256
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


def _trained(pair, model) -> TunedLens:  # noqa: ARG001
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
        "hooklab_unembed_sha256",
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
    with pytest.warns(UserWarning, match="only its sizes were checked"):
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
    with pytest.raises(HooklabError, match="params.pt.*objects other than tensors") as error:
        TunedLens.load(tmp_path / "evil", pair.pt)
    assert "weights_only=False" not in str(error.value)  # never advise running the file
    assert error.value.__cause__ is None and error.value.__suppress_context__
    assert not (tmp_path / "hooklab-lens-pwned").exists()


def test_missing_lens_files_are_named(pair, tmp_path):
    with pytest.raises(HooklabError, match="must hold config.json and params.pt"):
        TunedLens.load(tmp_path, pair.pt)


def _with_unembedding(weight: torch.Tensor) -> SimpleNamespace:
    return SimpleNamespace(unembed=SimpleNamespace(weight=weight))  # a bare module stand-in


def test_unembed_hash_ignores_numpy_print_options(pair, tmp_path):
    # The tuned-lens package's formula, under numpy's default print options.
    weight = hf_module(pair.pt.unembed).weight.detach().float().numpy()
    with np.printoptions(threshold=1000, edgeitems=3, linewidth=75, precision=8):
        package = hashlib.sha256(str.encode(np.array_str(weight, precision=1))).hexdigest()
    assert unembed_hash(pair.pt) == package
    _trained(pair, pair.pt).save(tmp_path / "lens")
    with np.printoptions(threshold=sys.maxsize, linewidth=10, edgeitems=1, precision=3):
        assert unembed_hash(pair.pt) == package
        TunedLens.load(tmp_path / "lens", pair.pt)  # the right lens is not refused


def test_strong_fingerprint_sees_every_entry_and_not_the_dtype():
    weight = torch.randn(64, 300, generator=torch.Generator().manual_seed(0)).bfloat16().float()
    changed = weight.clone()
    changed[30, 150] += 0.5  # an interior entry: numpy's summary shows only the corners
    assert unembed_hash(_with_unembedding(weight)) == unembed_hash(_with_unembedding(changed))
    assert unembed_sha256(_with_unembedding(weight)) != unembed_sha256(_with_unembedding(changed))
    # the same checkpoint read in float32 or bfloat16 has one fingerprint
    assert unembed_sha256(_with_unembedding(weight)) == unembed_sha256(
        _with_unembedding(weight.bfloat16())
    )
    assert unembed_sha256(_with_unembedding(weight)) != unembed_sha256(
        _with_unembedding(weight.reshape(300, 64))
    )


def _edit_config(folder, **changes) -> None:
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, **changes}))


def test_lens_without_the_package_hash_is_still_checked(pair, tmp_path):
    _trained(pair, pair.it).save(tmp_path / "it-lens")
    _edit_config(tmp_path / "it-lens", unembed_hash=None)
    with pytest.raises(HooklabError, match="trained on another model.*fingerprint"):
        TunedLens.load(tmp_path / "it-lens", pair.pt)
    # the strong fingerprint is checked when present, even where the weak hash agrees
    _trained(pair, pair.pt).save(tmp_path / "pt-lens")
    _edit_config(tmp_path / "pt-lens", hooklab_unembed_sha256="0" * 64)
    with pytest.raises(HooklabError, match="trained on another model"):
        TunedLens.load(tmp_path / "pt-lens", pair.pt)
    # with no fingerprint at all only the sizes can be checked, and the user is told
    _edit_config(tmp_path / "pt-lens", hooklab_unembed_sha256=None, unembed_hash=None)
    with pytest.warns(UserWarning, match="only its sizes were checked"):
        TunedLens.load(tmp_path / "pt-lens", pair.pt)


@pytest.mark.parametrize(
    ("damage", "match"),
    [
        ("config-json", "config.json' is not a valid JSON file"),
        ("config-list", "config.json' must hold a JSON object"),
        ("config-keys", "config.json' is not a tuned-lens config"),
        ("config-bytes", "config.json' is not a valid JSON file"),
        ("params-truncated", "params.pt' cannot be read: it is truncated"),
        ("params-text", "params.pt' cannot be read: it is truncated"),
        ("params-list", "params.pt' must hold a dict of tensors"),
        ("params-shape", "params.pt' does not hold this lens's translators"),
    ],
)
def test_damaged_lens_files_are_named(pair, tmp_path, damage, match):
    folder = _trained(pair, pair.pt).save(tmp_path / "lens")
    config, params = folder / "config.json", folder / "params.pt"
    if damage == "config-json":
        config.write_text(config.read_text()[:-5])
    elif damage == "config-list":
        config.write_text("[1, 2]")
    elif damage == "config-keys":
        config.write_text(json.dumps({"d_model": 4}))
    elif damage == "config-bytes":
        config.write_bytes(b"\xff\xfe{}")
    elif damage == "params-truncated":
        params.write_bytes(params.read_bytes()[:200])
    elif damage == "params-text":
        params.write_text("not a torch file")
    elif damage == "params-list":
        torch.save([torch.zeros(2)], params)
    else:
        state = torch.load(params, weights_only=True)
        state["1.weight"] = torch.zeros(3, 3)
        torch.save(state, params)
    with pytest.raises(HooklabError, match=match) as error:
        TunedLens.load(folder, pair.pt)
    assert "Re-save the lens" in str(error.value) or "train" in str(error.value)
    assert "weights_only=False" not in str(error.value)
