"""Delta-cosine profiles: a built -h update, plain Hugging Face hidden states, padding, CIs."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
import transformers

import hooklab
from hooklab import hooks
from hooklab.errors import HooklabError
from hooklab.graft.histories import History
from hooklab.mechanism.batches import history_batch
from hooklab.mechanism.delta_cosine import delta_cosines, opposition_summary
from hooklab.synthetic import TINY_SHAPES


def _tokens(batch=2, width=11, seed=4):
    tokens = torch.randint(5, 500, (batch, width), generator=torch.Generator().manual_seed(seed))
    tokens[:, 0] = 0
    return tokens


@pytest.mark.parametrize("shape", TINY_SHAPES)
def test_an_update_built_as_minus_h_has_cosine_minus_one(tiny_pair, shape):
    pair = hooklab.load_pair(pt=tiny_pair(shape).pt, it=tiny_pair(shape).it, device="cpu")
    last = pair.n_layers - 1
    saved = {}

    def save_mid(activation, hook):  # noqa: ARG001
        saved["mid"] = activation.clone()

    def minus_mid(activation, hook):  # noqa: ARG001
        return -saved["mid"]

    tokens = _tokens()
    mask = torch.ones_like(tokens, dtype=torch.bool)
    edit = [(hooks.resid_mid(last), save_mid), (hooks.mlp_out(last), minus_mid)]
    frame = delta_cosines(pair.it, tokens, mask, fwd_hooks=edit).set_index(["layer", "component"])
    # mlp_out = -resid_mid, so resid_post = 0 and the whole block's update is -resid_pre
    assert np.allclose(frame.loc[(last, "mlp"), "cosine"], -1.0, atol=1e-5)
    assert np.allclose(frame.loc[(last, "block"), "cosine"], -1.0, atol=1e-5)
    assert np.allclose(frame.loc[(last, "block"), "norm_ratio"], 1.0, atol=1e-5)
    plain = delta_cosines(pair.it, tokens, mask).set_index(["layer", "component"])
    assert not np.allclose(plain.loc[(last, "mlp"), "cosine"], -1.0, atol=1e-2)
    assert plain["cosine"].between(-1 - 1e-6, 1 + 1e-6).all()
    assert (plain["n_tokens"] == tokens.shape[1]).all()


def _masked_mean(values, mask):
    return ((values * mask).sum(1) / mask.sum(1)).numpy()


@pytest.mark.parametrize("shape", TINY_SHAPES)
def test_block_cosine_equals_plain_hugging_face_hidden_states(tiny_pair, shape):
    folder = tiny_pair(shape).it
    pair = hooklab.load_pair(pt=tiny_pair(shape).pt, it=folder, device="cpu")
    tokens = _tokens(seed=7)
    mask = torch.zeros_like(tokens, dtype=torch.bool)
    mask[0, 3:9] = True
    mask[1, 5:11] = True
    frame = delta_cosines(pair.it, tokens, mask, row_ids=["a", "b"])
    hf = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    with torch.no_grad():
        states = hf(tokens, output_hidden_states=True).hidden_states
    # hidden_states[L] is after the final norm: compare the blocks 0..L-2
    for layer in range(pair.n_layers - 1):
        pre, post = states[layer].double(), states[layer + 1].double()
        cosine = torch.nn.functional.cosine_similarity(post - pre, pre, dim=-1)
        got = frame[(frame["layer"] == layer) & (frame["component"] == "block")]
        assert list(got["row"]) == ["a", "b"]
        assert np.allclose(got["cosine"], _masked_mean(cosine, mask.double()), atol=1e-5)
        assert list(got["n_tokens"]) == [6, 6]


def test_sublayer_cosines_equal_a_cached_reference_and_padding_changes_nothing(tiny_pair):
    tiny = tiny_pair("gemma3")
    pair = hooklab.load_pair(pt=tiny.pt, it=tiny.it, device="cpu")
    histories = [
        History("long", tuple(_tokens(1, 12, 1)[0].tolist()), 4, 12),
        History("short", tuple(_tokens(1, 8, 2)[0].tolist()), 3, 8),
    ]
    batch = history_batch(histories)
    frame = delta_cosines(
        pair.pt,
        batch.tokens,
        batch.read_mask,
        attention_mask=batch.attention_mask,
        row_ids=batch.prompt_ids,
    )
    for history in histories:
        tokens = torch.tensor([history.tokens])
        _, cache = pair.pt.run_with_cache(tokens)
        mask = torch.zeros_like(tokens, dtype=torch.double)
        mask[0, history.read_from : history.read_to] = 1
        for layer in range(pair.n_layers):
            pre = cache[hooks.resid_pre(layer)].double()
            mid = cache[hooks.resid_mid(layer)].double()
            post = cache[hooks.resid_post(layer)].double()
            expected = {
                "attn": torch.nn.functional.cosine_similarity(mid - pre, pre, dim=-1),
                "mlp": torch.nn.functional.cosine_similarity(post - mid, mid, dim=-1),
                "block": torch.nn.functional.cosine_similarity(post - pre, pre, dim=-1),
            }
            for component, cosine in expected.items():
                got = frame[
                    (frame["row"] == history.prompt_id)
                    & (frame["layer"] == layer)
                    & (frame["component"] == component)
                ]["cosine"]
                assert got.item() == pytest.approx(_masked_mean(cosine, mask)[0], abs=1e-5)


def test_opposition_summary_known_shift_and_pairing():
    rng = np.random.default_rng(0)
    rows = []
    for row in range(6):
        for layer in range(10):
            for component in ("attn", "mlp", "block"):
                rows.append(
                    {
                        "row": f"p{row}",
                        "layer": layer,
                        "component": component,
                        "cosine": rng.normal(),
                        "norm_ratio": 1.0,
                        "n_tokens": 5,
                    }
                )
    frame_pt = pd.DataFrame(rows)
    frame_it = frame_pt.copy()
    late = frame_it["layer"].isin([7, 8])  # depth >= 0.75 of 10 layers (7/9, 8/9), not the final
    frame_it.loc[late & (frame_it["component"] == "mlp"), "cosine"] -= 0.25
    frame_it = frame_it.sample(frac=1.0, random_state=1)  # order must not matter
    summary = opposition_summary(frame_pt, frame_it)
    assert summary.late_layers == (7, 8)
    late_table = summary.late.set_index("component")
    assert late_table.at["mlp", "mean"] == pytest.approx(-0.25)
    assert late_table.at["mlp", "ci_low"] == pytest.approx(-0.25)
    assert late_table.at["attn", "mean"] == pytest.approx(0.0, abs=1e-12)
    assert (late_table["late_layers"] == "7-8").all()
    assert (late_table["n_prompts"] == 6).all()
    per = summary.per_layer.set_index(["model", "component", "layer"])
    expected = frame_pt[(frame_pt["component"] == "mlp") & (frame_pt["layer"] == 3)]["cosine"]
    assert per.at[("pt", "mlp", 3), "mean"] == pytest.approx(expected.mean())
    assert (
        per.at[("pt", "mlp", 3), "ci_low"] < expected.mean() < per.at[("pt", "mlp", 3), "ci_high"]
    )
    with pytest.raises(HooklabError, match="different rows"):
        opposition_summary(frame_pt, frame_it[frame_it["row"] != "p0"])


def test_shared_histories_end_to_end(tiny_pair):
    from hooklab.graft.histories import make_histories
    from hooklab.mechanism.attention_entropy import attention_entropies, entropy_difference
    from hooklab.prompts import load_prompts

    tiny = tiny_pair("qwen3")
    pair = hooklab.load_pair(pt=tiny.pt, it=tiny.it, device="cpu")
    histories = make_histories(pair, load_prompts()[:3], max_new_tokens=4, progress=False)
    batch = history_batch(histories, pad_id=pair.tokenizer.pad_token_id or 0)
    frames, entropies = {}, {}
    for side, model in (("pt", pair.pt), ("it", pair.it)):
        args = (model, batch.tokens, batch.read_mask)
        kwargs = {"attention_mask": batch.attention_mask, "row_ids": batch.prompt_ids}
        frames[side] = delta_cosines(*args, **kwargs)
        entropies[side] = attention_entropies(*args, **kwargs)
    summary = opposition_summary(frames["pt"], frames["it"])
    assert summary.late_layers == (2,)  # L = 4: the final layer is never late
    assert (summary.late["n_prompts"] == 3).all()
    counts = frames["it"].groupby("row")["n_tokens"].first()
    assert dict(counts) == {h.prompt_id: h.read_to - h.read_from for h in histories}
    difference = entropy_difference(entropies["pt"], entropies["it"])
    assert list(difference["layer"]) == [0, 1, 2, 3] and (difference["n_prompts"] == 3).all()
    assert np.isfinite(difference["mean"]).all() and (difference["mean"] != 0).any()
