"""load_pair: what it returns, and every refusal it promises, with the message it promises."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import huggingface_hub
import pytest
import torch
import transformers

import hooklab
from hooklab.errors import CheckpointUnavailableError, HooklabError, PairMismatchError
from hooklab.synthetic import build_tokenizer


def test_load_pair_returns_both_models_one_tokenizer_and_provenance(tiny_pair):
    tiny = tiny_pair("llama")
    pair = hooklab.load_pair(pt=tiny.pt, it=tiny.it, device="cpu")
    assert pair.family == "llama"
    assert pair.pt_source.is_local and pair.pt_source.name_or_path == str(tiny.pt.resolve())
    assert pair.it_source.name_or_path == str(tiny.it.resolve())
    assert pair.tokenizer.chat_template
    assert not pair.pt.compatibility_mode and not pair.it.compatibility_mode
    assert not pair.pt.training and not pair.it.training
    tokens = torch.tensor([[0, 10, 20, 30, 40]])
    with torch.no_grad():
        assert not torch.allclose(pair.pt(tokens), pair.it(tokens))
    described = pair.describe()
    assert described["n_layers"] == 4 and described["dtype"] == "float32"


def test_load_pair_in_bfloat16(tiny_pair):
    tiny = tiny_pair("qwen3")
    pair = hooklab.load_pair(pt=tiny.pt, it=tiny.it, device="cpu", dtype="bf16")
    assert next(pair.it.original_model.parameters()).dtype == torch.bfloat16
    assert pair.dtype == torch.bfloat16


def _mismatch(tiny_checkpoint, tiny_pair, **overrides) -> tuple[Path, Path]:
    reference = tiny_pair("llama").pt
    name = "llama-" + "-".join(f"{k}{v}" for k, v in overrides.items())
    return reference, tiny_checkpoint("llama", name, **overrides)


@pytest.mark.parametrize(
    ("overrides", "what", "pt_value", "it_value"),
    [
        ({"num_hidden_layers": 3}, "layer count", "4", "3"),
        ({"hidden_size": 32}, "d_model", "64", "32"),
        ({"vocab_size": 448}, "vocabulary size", "512", "448"),
    ],
)
def test_shape_mismatches_are_refused_naming_both_values(
    tiny_checkpoint, tiny_pair, overrides, what, pt_value, it_value
):
    pt, it = _mismatch(tiny_checkpoint, tiny_pair, **overrides)
    with pytest.raises(PairMismatchError) as info:
        hooklab.load_pair(pt=pt, it=it, device="cpu")
    message = str(info.value)
    assert f"{what}: pt={pt_value}  it={it_value}" in message
    assert (what, int(pt_value), int(it_value)) in info.value.differences


def test_architecture_mismatch_is_refused(tiny_pair):
    with pytest.raises(PairMismatchError) as info:
        hooklab.load_pair(pt=tiny_pair("llama").pt, it=tiny_pair("olmo2").it, device="cpu")
    message = str(info.value)
    assert "architecture" in message and "LlamaForCausalLM" in message
    assert "Olmo2ForCausalLM" in message


def test_tokenizer_mismatch_is_refused(tiny_pair, tmp_path):
    it = tmp_path / "it-other-tokenizer"
    shutil.copytree(tiny_pair("llama").it, it)
    build_tokenizer(vocab_size=300).save_pretrained(it)  # same config, other merges
    with pytest.raises(PairMismatchError) as info:
        hooklab.load_pair(pt=tiny_pair("llama").pt, it=it, device="cpu")
    assert "tokenization of probe" in str(info.value)


def test_mismatch_is_refused_before_any_weights_load(tiny_pair, tiny_checkpoint, monkeypatch):
    pt, it = _mismatch(tiny_checkpoint, tiny_pair, num_hidden_layers=3)

    def no_boot(*args, **kwargs):
        raise AssertionError("weights were loaded before the pair was checked")

    monkeypatch.setattr("hooklab.pair.boot_bridge", no_boot)
    with pytest.raises(PairMismatchError):
        hooklab.load_pair(pt=pt, it=it, device="cpu")


def test_missing_folder(tiny_pair):
    with pytest.raises(CheckpointUnavailableError, match=r"it='/no/such/folder': no such folder"):
        hooklab.load_pair(pt=tiny_pair("llama").pt, it="/no/such/folder", device="cpu")


def test_folder_without_config(tmp_path, tiny_pair):
    with pytest.raises(CheckpointUnavailableError, match="no config.json"):
        hooklab.load_pair(pt=tmp_path, it=tiny_pair("llama").it, device="cpu")


def test_hub_id_without_network_says_what_to_do(monkeypatch, tmp_path, tiny_pair):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    with pytest.raises(CheckpointUnavailableError) as info:
        hooklab.load_pair(pt="hooklab-tests/not-cached", it=tiny_pair("llama").it, device="cpu")
    message = str(info.value)
    assert "pt='hooklab-tests/not-cached'" in message
    assert "cannot be reached" in message and "hf download hooklab-tests/not-cached" in message


def _hub_error(kind: type[Exception]) -> Exception:
    import httpx

    request = httpx.Request("GET", "https://huggingface.co/org/model/resolve/main/config.json")
    response = httpx.Response(403, request=request)
    try:
        return kind("simulated hub refusal", response=response)
    except TypeError:  # httpx2-based hub clients
        import httpx2

        request2 = httpx2.Request("GET", str(request.url))
        return kind("simulated hub refusal", response=httpx2.Response(403, request=request2))


@pytest.mark.parametrize(
    ("kind", "expected"),
    [
        ("GatedRepoError", "gated model: accept its licence at https://huggingface.co/org/gated"),
        ("RepositoryNotFoundError", "is not a model on the Hugging Face hub"),
        ("RevisionNotFoundError", "revision 'v9' does not exist"),
    ],
)
def test_hub_refusals_say_what_to_do(monkeypatch, tiny_pair, kind, expected):  # noqa: ARG001
    # transformers wraps the hub's error in an OSError; hooklab reads the cause.
    hub_error = _hub_error(getattr(huggingface_hub.errors, kind))

    def refuse(*args, **kwargs):
        raise OSError("transformers' own wording") from hub_error

    monkeypatch.setattr(transformers.AutoConfig, "from_pretrained", refuse)
    with pytest.raises(CheckpointUnavailableError, match=expected):
        hooklab.load_pair(pt="org/gated", it="org/gated-it", pt_revision="v9", device="cpu")


def test_remote_code_stays_off_unless_asked(tmp_path):
    folder = tmp_path / "custom"
    folder.mkdir()
    (folder / "config.json").write_text(
        json.dumps(
            {
                "model_type": "hooklab_custom",
                "architectures": ["CustomForCausalLM"],
                "auto_map": {"AutoConfig": "configuration_custom.CustomConfig"},
            }
        )
    )
    with pytest.raises(CheckpointUnavailableError, match="trust_remote_code=True"):
        hooklab.load_pair(pt=folder, it=folder, device="cpu")


def test_trust_remote_code_is_passed_through_off_by_default(tiny_pair, monkeypatch):
    seen = []
    real_boot = hooklab.pair.boot_bridge

    def spy(*args, **kwargs):
        seen.append(kwargs["trust_remote_code"])
        return real_boot(*args, **kwargs)

    monkeypatch.setattr("hooklab.pair.boot_bridge", spy)
    tiny = tiny_pair("llama")
    hooklab.load_pair(pt=tiny.pt, it=tiny.it, device="cpu")
    assert seen == [False, False]


def test_unsupported_architecture_checkpoint_is_refused(tmp_path, tiny_pair):  # noqa: ARG001
    config = transformers.GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=512)
    transformers.GPT2LMHeadModel(config).save_pretrained(tmp_path / "gpt2")
    build_tokenizer().save_pretrained(tmp_path / "gpt2")
    with pytest.raises(hooklab.UnsupportedArchitectureError, match="GPT2LMHeadModel.*llama"):
        hooklab.load_pair(pt=tmp_path / "gpt2", it=tmp_path / "gpt2", device="cpu")


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({"name": "gemma3-4b", "pt": "a/b"}, "not both"),
        ({"pt": "a/b"}, "needs it"),
        ({"name": "gpt-5"}, "not a known pair name. Known names: gemma3-4b"),
        ({"name": "gemma3-4b", "dtype": "int8"}, "dtype='int8'"),
    ],
)
def test_bad_arguments_are_named(kwargs, expected):
    with pytest.raises(HooklabError, match=expected):
        hooklab.load_pair(**kwargs)


def test_paper_pairs_are_all_known_families():
    pairs = hooklab.paper_pairs()
    assert len(pairs) == 6
    assert {p.family for p in pairs.values()} == set(hooklab.SUPPORTED_FAMILIES)


def test_offload_keeps_one_side_on_the_cpu(tiny_pair):
    tiny = tiny_pair("deepseek_v2")
    pair = hooklab.load_pair(pt=tiny.pt, it=tiny.it, device="cpu", offload="pt")
    assert pair.describe()["devices"] == {"pt": "cpu", "it": "cpu"}
    with pytest.raises(HooklabError, match="offload='both': use 'pt' or 'it'"):
        hooklab.load_pair(pt=tiny.pt, it=tiny.it, device="cpu", offload="both")
