"""Per-head attention entropy: equals Hugging Face eager attentions on every tiny shape
(GQA, Gemma 3's sliding-window layers, DeepSeek's MLA), a uniform-pattern identity, and
the paired IT - PT difference."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
import transformers

import hooklab
from hooklab import hooks
from hooklab.errors import HooklabError
from hooklab.mechanism.attention_entropy import attention_entropies, entropy_difference
from hooklab.synthetic import TINY_SHAPES


def _batch():
    # 14 tokens: longer than the sliding windows of the tiny gemma3 (6) and mistral (8) shapes;
    # the second row is right-padded after 10 tokens.
    tokens = torch.randint(5, 500, (2, 14), generator=torch.Generator().manual_seed(3))
    tokens[:, 0] = 0
    attention_mask = torch.ones_like(tokens)
    attention_mask[1, 10:] = 0
    tokens[1, 10:] = 2
    mask = attention_mask.bool().clone()
    mask[:, :2] = False
    return tokens, attention_mask, mask


@pytest.mark.parametrize("shape", TINY_SHAPES)
def test_entropy_equals_hugging_face_eager_attentions(tiny_pair, shape):
    folder = tiny_pair(shape).pt
    pair = hooklab.load_pair(pt=folder, it=tiny_pair(shape).it, device="cpu")
    tokens, attention_mask, mask = _batch()
    frame = attention_entropies(
        pair.pt, tokens, mask, attention_mask=attention_mask, row_ids=["x", "y"]
    )
    hf = transformers.AutoModelForCausalLM.from_pretrained(
        folder, dtype=torch.float32, attn_implementation="eager"
    ).eval()
    with torch.no_grad():
        attentions = hf(tokens, attention_mask=attention_mask, output_attentions=True).attentions
    assert len(attentions) == pair.n_layers
    n_heads = hooklab.attention_layout(pair.pt).n_heads
    weights = mask.double().unsqueeze(1)
    for layer, pattern in enumerate(attentions):
        pattern = pattern.double()
        assert pattern.shape[1] == n_heads
        entropy = -(torch.where(pattern > 0, pattern * pattern.log(), 0.0)).sum(-1)
        expected = ((entropy * weights).sum(-1) / weights.sum(-1)).numpy()  # [batch, head]
        got = frame[frame["layer"] == layer].pivot(index="row", columns="head", values="entropy")
        assert np.allclose(got.loc[["x", "y"]].to_numpy(), expected, atol=1e-5)
    assert list(frame.groupby("row")["n_tokens"].first()) == [12, 8]


def test_a_uniform_causal_pattern_has_entropy_log_of_the_keys_seen(tiny_pair):
    pair = hooklab.load_pair(pt=tiny_pair("llama").pt, it=tiny_pair("llama").it, device="cpu")
    tokens = torch.randint(5, 500, (1, 9), generator=torch.Generator().manual_seed(0))

    def uniform(pattern, hook):  # noqa: ARG001
        causal = torch.tril(torch.ones(pattern.shape[-2:]))
        return (causal / causal.sum(-1, keepdim=True)).expand_as(pattern).clone()

    mask = torch.zeros_like(tokens, dtype=torch.bool)
    mask[0, 4] = True  # the fifth query sees 5 keys
    edits = [(hooks.attn_pattern(layer), uniform) for layer in range(pair.n_layers)]
    frame = attention_entropies(pair.pt, tokens, mask, fwd_hooks=edits)
    assert np.allclose(frame["entropy"], math.log(5), atol=1e-6)
    plain = attention_entropies(pair.pt, tokens, mask)
    assert not np.allclose(plain["entropy"], math.log(5), atol=1e-3)


def test_entropy_difference_is_paired_by_prompt():
    rng = np.random.default_rng(0)
    rows = [
        {"row": f"p{r}", "layer": layer, "head": head, "entropy": rng.gamma(2.0), "n_tokens": 4}
        for r in range(5)
        for layer in range(3)
        for head in range(2)
    ]
    frame_pt = pd.DataFrame(rows)
    frame_it = frame_pt.copy()
    frame_it.loc[frame_it["layer"] == 2, "entropy"] += 0.5
    frame_it = frame_it.sample(frac=1.0, random_state=0)
    table = entropy_difference(frame_pt, frame_it).set_index("layer")
    assert table.at[2, "mean"] == pytest.approx(0.5)
    assert table.at[2, "ci_low"] == pytest.approx(0.5) and table.at[2, "ci_high"] == pytest.approx(
        0.5
    )
    assert table.at[0, "mean"] == pytest.approx(0.0, abs=1e-12)
    assert table.at[2, "mean_it"] - table.at[2, "mean_pt"] == pytest.approx(0.5)
    by_head = entropy_difference(frame_pt, frame_it, by_head=True)
    assert len(by_head) == 6 and (by_head["n_prompts"] == 5).all()
    with pytest.raises(HooklabError, match="different rows"):
        entropy_difference(frame_pt, frame_it[frame_it["row"] != "p1"])
