"""The streaming readout against a brute-force reference from Hugging Face hidden states."""

from __future__ import annotations

import pytest
import torch
import transformers
from transformer_lens.tools.analysis import logit_lens

import hooklab
from hooklab.metric_specs import METRICS
from hooklab.stream import read_lens
from hooklab.synthetic import TINY_SHAPES
from tests.test_metrics import ALL_BUT_TEACHER, brute_force


def _batch(vocab: int = 500) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    tokens = torch.randint(5, vocab, (3, 11), generator=generator)
    tokens[:, 0] = 0
    mask = torch.ones_like(tokens)
    mask[1, 7:] = 0  # ragged: right padding
    mask[2, 4:] = 0
    targets = torch.roll(tokens, -1, dims=1)
    targets[:, -1] = -1
    targets[mask == 0] = -1
    targets[1, 6] = -1
    targets[2, 3] = -1
    return tokens, mask, targets


def _hf_reference(folder, tokens, mask):
    """Per layer, the logits of the logit lens from Hugging Face's own hidden states."""
    config = transformers.AutoConfig.from_pretrained(folder)
    model = (
        getattr(transformers, config.architectures[0])
        .from_pretrained(folder, attn_implementation="eager")
        .eval()
    )
    text = config.get_text_config()
    decoder = model.model.language_model if hasattr(model.model, "language_model") else model.model
    cap = getattr(text, "final_logit_softcapping", None)
    with torch.no_grad():
        out = model(input_ids=tokens, attention_mask=mask, output_hidden_states=True)
        per_layer = []
        for layer in range(text.num_hidden_layers):
            if layer == text.num_hidden_layers - 1:
                per_layer.append(out.logits)  # HF's last hidden state is already normed
                continue
            logits = model.get_output_embeddings()(decoder.norm(out.hidden_states[layer + 1]))
            per_layer.append(torch.tanh(logits / cap) * cap if cap else logits)
    return per_layer


@pytest.mark.parametrize("shape", TINY_SHAPES)
def test_every_metric_equals_brute_force_from_hugging_face(tiny_pair, shape):
    tiny = tiny_pair(shape)
    pair = hooklab.load_pair(pt=tiny.pt, it=tiny.it, device="cpu")
    tokens, mask, targets = _batch()
    got = read_lens(
        pair.it, tokens, attention_mask=mask, targets=targets, chunk_rows=4, metrics=["js_to_final"]
    )
    assert list(got.metrics) == ALL_BUT_TEACHER
    reference = _hf_reference(tiny.it, tokens, mask)
    final = reference[-1]
    for b in range(tokens.shape[0]):
        n = int(mask[b].sum())
        has_target = targets[b, :n] >= 0
        for layer, logits in enumerate(reference):
            expected = brute_force(logits[b, :n], final[b, :n], targets[b, :n].clamp_min(0))
            for name, value in expected.items():
                ours = got.metrics[name][b, :n, layer]
                if "target" in METRICS[name].needs:
                    ours, value = ours[has_target], value[has_target]
                assert torch.allclose(ours.double(), value.double(), atol=5e-5, rtol=1e-4), (
                    shape,
                    b,
                    layer,
                    name,
                )
        assert not got.read[b, n:].any()
        assert torch.isnan(got.metrics["kl_to_final"][b, n:]).all()


@pytest.mark.parametrize("shape", TINY_SHAPES)
def test_last_layer_is_the_final_distribution(tiny_pair, shape):
    tiny = tiny_pair(shape)
    pair = hooklab.load_pair(pt=tiny.pt, it=tiny.it, device="cpu")
    tokens, mask, _ = _batch()
    got = read_lens(pair.pt, tokens, attention_mask=mask)
    read = got.read
    assert (got.metrics["kl_to_final"][..., -1][read] == 0).all()
    assert (got.metrics["kl_final_to_layer"][..., -1][read] == 0).all()
    assert got.metrics["top1_agree"][..., -1][read].all()
    assert (got.metrics["final_top1_rank"][..., -1][read] == 0).all()
    # Earlier layers are genuinely different (the test would not notice a wrong layer index).
    assert (got.metrics["kl_to_final"][..., 0][read] > 1e-4).all()


def test_streamed_equals_unstreamed(tiny_pair):
    tiny = tiny_pair("gemma3-softcap")
    pair = hooklab.load_pair(pt=tiny.pt, it=tiny.it, device="cpu")
    tokens, mask, targets = _batch()
    streamed = read_lens(pair.it, tokens, attention_mask=mask, targets=targets, chunk_rows=1)
    whole = read_lens(pair.it, tokens, attention_mask=mask, targets=targets, chunk_rows=10_000)
    for name in streamed.metrics:
        assert torch.allclose(
            streamed.metrics[name].double(), whole.metrics[name].double(), atol=1e-6, equal_nan=True
        ), name
    # And against TransformerLens decoding every layer at once (full vocabulary in memory).
    full = logit_lens(pair.it, tokens[:1], positions=None, return_type="log_probs")
    stack = full.values[1:, 0]  # entries: embeddings, then each block's output
    final = stack[-1]
    kl = (stack.exp() * (stack - final)).sum(-1).T  # [pos, layer]
    assert torch.allclose(streamed.metrics["kl_to_final"][0], kl, atol=1e-5)


def test_bfloat16_model_gives_float32_metrics(tiny_pair):
    tiny = tiny_pair("llama")
    pair32 = hooklab.load_pair(pt=tiny.pt, it=tiny.it, device="cpu")
    pair16 = hooklab.load_pair(pt=tiny.pt, it=tiny.it, device="cpu", dtype="bfloat16")
    tokens, mask, _ = _batch()
    full = read_lens(pair32.it, tokens, attention_mask=mask)
    half = read_lens(pair16.it, tokens, attention_mask=mask)
    assert half.metrics["kl_to_final"].dtype == torch.float32
    assert (half.metrics["kl_to_final"][..., -1][half.read] == 0).all()
    read = half.read
    difference = (half.metrics["kl_to_final"][read] - full.metrics["kl_to_final"][read]).abs()
    assert float(difference.max()) < 0.05
    assert float(difference.max()) > 0  # bfloat16 really ran


def test_read_mask_limits_positions(tiny_pair):
    tiny = tiny_pair("llama")
    pair = hooklab.load_pair(pt=tiny.pt, it=tiny.it, device="cpu")
    tokens, mask, _ = _batch()
    read_mask = torch.zeros_like(mask, dtype=torch.bool)
    read_mask[:, 2:4] = True
    got = read_lens(pair.it, tokens, attention_mask=mask, read_mask=read_mask)
    assert got.read.sum() == 6
    everything = read_lens(pair.it, tokens, attention_mask=mask)
    assert torch.allclose(
        got.metrics["entropy"][:, 2:4], everything.metrics["entropy"][:, 2:4], atol=1e-6
    )


@pytest.mark.parametrize("slice_rows", [1, 3])
def test_cache_slices_give_the_whole_chunks_metrics(tiny_pair, monkeypatch, slice_rows):
    """On the CPU the metrics are reduced in cache-sized slices of a chunk; every metric, with
    targets, a teacher, an opt-in metric and variants sharing early layers, must equal the
    unsliced reduction, and each final layer must still be exactly its own final."""
    import hooklab.stream as stream
    from hooklab.forward import residual_stream

    tiny = tiny_pair("llama")
    pair = hooklab.load_pair(pt=tiny.pt, it=tiny.it, device="cpu")
    tokens, mask, targets = _batch()
    with torch.no_grad():
        base = residual_stream(pair.it, tokens, attention_mask=mask).resid_post
        teacher = residual_stream(pair.pt, tokens, attention_mask=mask).resid_post[-1]
    variant = base.clone()
    variant[2:] += 0.3 * torch.randn_like(variant[2:], generator=None)
    read = mask.bool()

    def readouts():
        return stream.read_variants(
            pair.it,
            base,
            [(2, variant)],
            read,
            targets=targets,
            teacher=(pair.pt, teacher),
            chunk_rows=7,
            metrics=["js_to_final"],
        )

    whole = readouts()
    d_vocab = int(pair.it.cfg.d_vocab)
    monkeypatch.setattr(stream, "CPU_CACHE_BYTES", slice_rows * stream._SLICE_BUFFERS * 4 * d_vocab)
    sliced = readouts()
    for ours, reference in zip(sliced, whole, strict=True):
        assert torch.equal(ours.final_top1, reference.final_top1)
        for name, value in reference.metrics.items():
            assert torch.allclose(
                ours.metrics[name].double(), value.double(), atol=1e-6, equal_nan=True
            ), name
        assert (ours.metrics["kl_to_final"][..., -1][read] == 0).all()
        assert (ours.metrics["final_top1_rank"][..., -1][read] == 0).all()
    assert not torch.allclose(sliced[1].metrics["kl_to_final"], sliced[0].metrics["kl_to_final"])
