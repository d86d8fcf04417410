"""Token classes (a partition of the vocabulary) and token support under grafts: self-grafts
change nothing, class masses sum to 1, and every change equals a brute-force full pass."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import hooklab
from hooklab.architectures import read_logits
from hooklab.conditions import pad_batch
from hooklab.errors import HooklabError
from hooklab.forward import residual_stream
from hooklab.graft.engine import graft_hooks
from hooklab.graft.histories import History
from hooklab.mechanism import (
    CLASS_NAMES,
    TokenClass,
    class_log_mass,
    classify_text,
    classify_vocabulary,
    token_support,
)
from hooklab.metrics import late_layers
from hooklab.synthetic import build_tokenizer

SHAPES = ("llama", "gemma3", "deepseek_v2")


def _histories(n: int = 3) -> list[History]:
    generator = torch.Generator().manual_seed(7)
    out = []
    for i in range(n):
        body = torch.randint(5, 500, (7 + 2 * i,), generator=generator).tolist()
        # the last read position has no next token in the history: the teacher is undefined
        out.append(History(f"p{i}", (0, *body), 2, len(body) + (1 if i == 0 else 0)))
    return out


@pytest.fixture(scope="module")
def pairs(tiny_pair):
    made = {}

    def make(shape):
        if shape not in made:
            tiny = tiny_pair(shape)
            made[shape] = hooklab.load_pair(pt=tiny.pt, it=tiny.it, device="cpu")
        return made[shape]

    return make


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("<|eot_id|>", TokenClass.FORMAT),
        ("<｜end▁of▁sentence｜>", TokenClass.FORMAT),
        ("[INST]", TokenClass.FORMAT),
        ("\n\n", TokenClass.FORMAT),
        ("  ", TokenClass.FORMAT),
        (" -", TokenClass.FORMAT),
        ("1.", TokenClass.FORMAT),
        ("**", TokenClass.FORMAT),
        ("```", TokenClass.FORMAT),
        (" 3.14", TokenClass.NUMBER),
        ("1,000", TokenClass.NUMBER),
        (".", TokenClass.PUNCTUATION),
        ("?!", TokenClass.PUNCTUATION),
        (" The", TokenClass.FUNCTION),
        ("n't", TokenClass.FUNCTION),
        (" would", TokenClass.FUNCTION),
        (" elephant", TokenClass.CONTENT),
        ("über", TokenClass.CONTENT),
        ("well-known", TokenClass.CONTENT),
        ("x2", TokenClass.OTHER),
        (".com", TokenClass.OTHER),
        ("\ufffd", TokenClass.OTHER),
        ("\x00", TokenClass.OTHER),
    ],
)
def test_classify_text_rules(text, expected):
    assert classify_text(text) == expected
    assert classify_text(text, special=True) == TokenClass.FORMAT


@pytest.mark.parametrize("source", ["embedded", "synthetic"])
def test_classes_partition_the_vocabulary(source):
    tokenizer = hooklab.load_pair("tiny").tokenizer if source == "embedded" else build_tokenizer()
    codes = classify_vocabulary(tokenizer)
    assert codes.shape == (len(tokenizer),)
    # each id has exactly one class, and every class is used
    assert set(np.unique(codes)) == set(range(len(CLASS_NAMES)))
    counts = [(codes == c).sum() for c in range(len(CLASS_NAMES))]
    assert sum(counts) == len(tokenizer)
    ids = {text: tokenizer.convert_tokens_to_ids(text) for text in ("<eos>", "<end_of_turn>")}
    assert all(codes[i] == TokenClass.FORMAT for i in ids.values())
    for text, expected in (
        (" the", TokenClass.FUNCTION),
        ("7", TokenClass.NUMBER),
        (".", TokenClass.PUNCTUATION),
        ("\n", TokenClass.FORMAT),
    ):
        (token_id,) = tokenizer.encode(text, add_special_tokens=False)
        assert codes[token_id] == expected, text
    # a larger unembedding than the tokenizer: the extra rows are OTHER
    wider = classify_vocabulary(tokenizer, len(tokenizer) + 3)
    assert np.array_equal(wider[: len(tokenizer)], codes)
    assert (wider[len(tokenizer) :] == TokenClass.OTHER).all()


@pytest.mark.parametrize("shape", SHAPES)
def test_class_masses_sum_to_one_at_every_layer(pairs, shape):
    pair = pairs(shape)
    codes = classify_vocabulary(pair.tokenizer, pair.d_vocab)
    onehot = torch.nn.functional.one_hot(torch.as_tensor(codes, dtype=torch.long)).double()
    tokens, _, _, _ = pad_batch(_histories(), int(pair.tokenizer.pad_token_id))
    stream = residual_stream(pair.pt, tokens)
    for layer in range(pair.n_layers):
        logprobs = torch.log_softmax(read_logits(pair.pt, stream.resid_post[layer]).float(), -1)
        masses = class_log_mass(logprobs.flatten(0, 1), onehot)
        assert masses.shape == (tokens.numel(), len(CLASS_NAMES))
        assert torch.allclose(masses.exp().sum(-1), torch.ones(tokens.numel()).double(), atol=1e-6)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("mode", ["module", "random"])
def test_self_graft_changes_nothing(pairs, shape, mode):
    pair = pairs(shape)
    result = token_support(pair, _histories(), "late", direction="self-pt", mode=mode)
    assert (result.layers["delta"] == 0).all()
    assert (result.per_prompt[["delta_late", "delta_final"]] == 0).all().all()
    assert (result.tokens["delta_logprob"] == 0).all()
    # the table is not empty: every class, the teacher and the host's top-1, every prompt
    assert set(result.per_prompt["quantity"]) >= {*CLASS_NAMES, "teacher", "host_top1"}
    assert result.per_prompt["prompt_id"].nunique() == 3


@torch.no_grad()
def _brute_force(pair, histories, window_layers, late, mode="module"):
    """Per prompt: teacher and host-top-1 log-probability changes (late mean, final), and the
    mean final-layer change of every token, from two full passes and whole-vocabulary logits."""
    tokens, mask, read, targets = pad_batch(histories, int(pair.tokenizer.pad_token_id))
    keys = [h.prompt_id for h in histories]
    base = residual_stream(pair.pt, tokens, attention_mask=mask).resid_post
    hooks_ = graft_hooks(pair.pt, pair.it, window_layers, mode, row_keys=keys)
    grafted = residual_stream(pair.pt, tokens, attention_mask=mask, fwd_hooks=hooks_).resid_post
    logprobs = [
        torch.stack(
            [torch.log_softmax(read_logits(pair.pt, s[i]).double(), -1) for i in range(len(s))]
        )
        for s in (base, grafted)
    ]  # [layer, batch, pos, vocab]
    top1 = logprobs[0][-1].argmax(-1)
    out = {}
    for b, key in enumerate(keys):
        positions = read[b].nonzero()[:, 0]
        teach = positions[targets[b, positions] >= 0]

        def change(layer, pos, token, b=b):
            return float(
                (logprobs[1][layer, b, pos, token] - logprobs[0][layer, b, pos, token]).mean()
            )

        out[key] = {
            "teacher": (
                np.mean([change(layer, teach, targets[b, teach]) for layer in late]),
                change(-1, teach, targets[b, teach]),
            ),
            "host_top1": (
                np.mean([change(layer, positions, top1[b, positions]) for layer in late]),
                change(-1, positions, top1[b, positions]),
            ),
            "tokens": (logprobs[1][-1, b, positions] - logprobs[0][-1, b, positions]).mean(0),
        }
    return out


@pytest.mark.parametrize("shape", SHAPES)
def test_teacher_and_top1_changes_equal_a_brute_force_recomputation(pairs, shape):
    pair = pairs(shape)
    histories = _histories()
    result = token_support(
        pair,
        histories,
        "1:3",
        direction="it-to-pt",
        batch_size=2,
        chunk_rows=5,
        top_k=4,
        rank_by="logprob",
    )
    late = late_layers(pair.n_layers)
    expected = _brute_force(pair, histories, [1, 2], late)
    table = result.per_prompt.set_index(["prompt_id", "quantity"])
    for key, values in expected.items():
        for quantity in ("teacher", "host_top1"):
            got = table.loc[(key, quantity), ["delta_late", "delta_final"]].to_numpy(float)
            assert np.allclose(got, values[quantity], atol=1e-4), (key, quantity)
    # the graft does something here, so the checks above can fail
    assert table["delta_final"].abs().max() > 1e-3
    mean_tokens = torch.stack([v["tokens"] for v in expected.values()]).mean(0)
    promoted = result.tokens[result.tokens["kind"] == "promoted"]
    assert list(promoted["token_id"]) == mean_tokens.topk(4).indices.tolist()
    assert np.allclose(promoted["delta_logprob"], mean_tokens.topk(4).values.numpy(), atol=1e-4)
    suppressed = result.tokens[result.tokens["kind"] == "suppressed"]
    assert suppressed["delta_logprob"].is_monotonic_increasing
    summary = result.summary()
    assert set(summary["n_prompts"]) == {3}
    assert (summary["ci_low"] <= summary["mean"] + 1e-12).all()


def test_token_support_rejects_bad_arguments(pairs):
    pair = pairs("llama")
    with pytest.raises(HooklabError, match="direction"):
        token_support(pair, _histories(), "late", direction="sideways")
    with pytest.raises(HooklabError, match="window"):
        token_support(pair, _histories(), "early,late")
    with pytest.raises(HooklabError, match="codes"):
        token_support(pair, _histories(), "late", codes=np.zeros(3, dtype=np.int8))
