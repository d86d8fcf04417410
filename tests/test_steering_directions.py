"""Paired collection, directions, stability, ridge probes and direction files."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

import hooklab
from hooklab.graft.histories import History
from hooklab.steering import (
    HOOKS,
    Directions,
    PairedSums,
    attach_projection,
    bootstrap_stability,
    collect_paired,
    cosine_table,
    fit_ridge,
    load_directions,
    matched_direction,
    mean_direction,
    ridge_stats,
    save_directions,
    split_cosines,
)


@pytest.fixture(scope="module")
def llama(tiny_pair):
    tiny = tiny_pair("llama")
    return hooklab.load_pair(pt=tiny.pt, it=tiny.it, device="cpu")


def _histories(n: int = 5) -> list[History]:
    g = torch.Generator().manual_seed(2)
    out = []
    for i in range(n):
        length = 8 + 3 * i
        tokens = tuple(torch.randint(3, 40, (length,), generator=g).tolist())  # repeats ids
        out.append(History(f"p{i}", tokens, 3, length - 1))
    return out


@pytest.mark.parametrize("hook", ["attn_out", "resid_post"])
def test_collection_equals_brute_force(llama, hook):
    histories = _histories()
    sums = collect_paired(llama, histories, hook=hook, top_k_tokens=6, batch_size=2)
    assert sums.layers == tuple(range(llama.n_layers)) and sums.n_prompts == 5
    for side, per_prompt, per_token in (
        ("it", sums.it_sums, sums.it_token_sums),
        ("pt", sums.pt_sums, sums.pt_token_sums),
    ):
        model = getattr(llama, side)
        token_sums = torch.zeros_like(per_token)
        for p, h in enumerate(histories):
            kept = {}
            fwd = [
                (
                    HOOKS[hook](layer),
                    lambda a, hook, layer=layer, kept=kept: kept.__setitem__(layer, a[0]),  # noqa: ARG005
                )
                for layer in sums.layers
            ]
            with torch.no_grad(), model.hooks(fwd_hooks=fwd):
                model(torch.tensor([list(h.tokens)]), return_type=None)
            x = torch.stack([kept[layer] for layer in sums.layers], 1).double()  # [pos, layer, d]
            read = x[h.read_from : h.read_to]
            torch.testing.assert_close(per_prompt[p], read.sum(0), rtol=1e-5, atol=1e-5)
            for position in range(h.read_from, h.read_to):
                token = h.tokens[position]
                if token in sums.token_ids.tolist():
                    token_sums[sums.token_ids.tolist().index(token)] += x[position]
        torch.testing.assert_close(per_token, token_sums, rtol=1e-5, atol=1e-5)
    counted = [t for h in histories for t in h.tokens[h.read_from : h.read_to]]
    assert sums.counts.tolist() == [h.read_to - h.read_from for h in histories]
    assert sums.token_counts.tolist() == [counted.count(t) for t in sums.token_ids.tolist()]
    assert sorted(sums.token_counts.tolist(), reverse=True) == sums.token_counts.tolist()


def _synthetic_sums(prompt_diffs: torch.Tensor, counts: list[int]) -> PairedSums:
    """Sums whose per-prompt IT − PT differences are ``prompt_diffs`` [prompt, layer, d]."""
    n, n_layers, d = prompt_diffs.shape
    pt = torch.randn(n, n_layers, d, dtype=torch.float64)
    return PairedSums(
        hook="mlp_out",
        layers=tuple(range(n_layers)),
        prompt_ids=tuple(f"p{i}" for i in range(n)),
        it_sums=pt + prompt_diffs,
        pt_sums=pt,
        counts=torch.tensor(counts),
        token_ids=torch.tensor([5, 6]),
        it_token_sums=torch.zeros(2, n_layers, d, dtype=torch.float64),
        pt_token_sums=torch.zeros(2, n_layers, d, dtype=torch.float64),
        token_counts=torch.tensor([1, 1]),
        models={"pt": "a", "it": "b"},
        fingerprints={"pt": "x", "it": "y"},
    )


def test_matched_direction_weighs_token_ids_equally():
    sums = _synthetic_sums(torch.zeros(2, 1, 3, dtype=torch.float64), [1, 1])
    # id 5: 10 tokens, IT − PT mean e0; id 6: 1 token, IT − PT mean e1
    e = torch.eye(3, dtype=torch.float64)
    sums = dataclasses.replace(
        sums,
        it_token_sums=torch.stack([10 * (e[2] + e[0]), 1 * (e[2] + e[1])])[:, None],
        pt_token_sums=torch.stack([10 * e[2], 1 * e[2]])[:, None],
        token_counts=torch.tensor([10, 1]),
    )
    matched = matched_direction(sums)
    expected = torch.tensor([1.0, 1.0, 0.0]) / 2**0.5
    torch.testing.assert_close(matched.vectors[0], expected)
    assert matched.source == "matched" and matched.notes["n_token_ids"] == 2
    only_frequent = matched_direction(sums, min_count=2)
    torch.testing.assert_close(only_frequent.vectors[0], torch.tensor([1.0, 0.0, 0.0]))


def test_stability_identities():
    torch.manual_seed(0)
    u = torch.zeros(2, 8, dtype=torch.float64)
    u[0, 0] = u[1, 1] = 1.0
    diffs = 3.0 * u + torch.randn(12, 2, 8, dtype=torch.float64)
    sums = _synthetic_sums(diffs, [4] * 12)
    full = mean_direction(sums)
    torch.testing.assert_close(
        full.vectors, (diffs.sum(0) / diffs.sum(0).norm(dim=-1, keepdim=True)).float()
    )
    # subsampling every prompt gives the full direction exactly
    table = bootstrap_stability(sums, [12], n_resamples=5, replace_prompts=False)
    np.testing.assert_allclose(table["cos_mean"], 1.0, atol=1e-12)
    # the bootstrap cosine rises towards 1 with n
    table = bootstrap_stability(sums, [2, 4, 12, 100, 1000], n_resamples=300, seed=1)
    by_n = table.groupby("n")["cos_mean"].mean()
    assert list(by_n) == sorted(by_n) and by_n[1000] > 0.99 and by_n[2] < 0.95
    assert (table["cos_low"] <= table["cos_median"]).all()
    assert (table["cos_median"] <= table["cos_high"]).all()
    attached = attach_projection(dataclasses.replace(full, mean_projection=None), sums)
    torch.testing.assert_close(attached.mean_projection, full.mean_projection)
    expected = (full.vectors.double() * sums.it_sums.sum(0) / sums.n_tokens).sum(-1)
    torch.testing.assert_close(full.mean_projection, expected.float())
    splits = split_cosines(sums, 3, seed=0)
    assert len(splits) == 3 * 2 and set(splits["n_prompts_a"]) == {4}
    assert splits["cos"].between(-1, 1).all()
    # a difference that is the same for every prompt gives identical splits
    same = _synthetic_sums(u.expand(6, -1, -1).clone(), [2] * 6)
    np.testing.assert_allclose(split_cosines(same, 2)["cos"], 1.0, atol=1e-12)
    with pytest.raises(hooklab.HooklabError, match="k=1"):
        split_cosines(sums, 1)


def test_ridge_matches_numpy_and_chooses_lambda_on_held_out_prompts():
    rng = np.random.default_rng(0)
    n, d = 400, 6
    x = rng.normal(size=(n, 2, d)) * np.array([1.0, 3.0, 0.5, 2.0, 1.0, 1.0])
    w_true = rng.normal(size=d)
    folds = np.arange(n) % 4
    y = x[:, 0] @ w_true + 0.01 * rng.normal(size=n) + 2.0  # layer 0 predicts y
    stats = ridge_stats(torch.tensor(x), torch.tensor(y), folds)
    directions, table = fit_ridge(stats, lambdas=[1e-6, 1e-2, 1.0, 100.0])
    cos = float(directions.vectors[0].double() @ torch.tensor(w_true / np.linalg.norm(w_true)))
    assert cos > 0.999
    assert directions.notes["lambda"][0] == 1e-6
    chosen = table[table["chosen"]]
    assert len(chosen) == 2 and chosen["cv_r2"].iloc[0] > 0.99
    # brute force: centred ridge by numpy, held-out SSE of one lambda
    lam = 1.0
    sse = 0.0
    for k in range(4):
        train, test = folds != k, folds == k
        xt, yt = x[train, 1], y[train]
        mx, my = xt.mean(0), yt.mean()
        scatter = (xt - mx).T @ (xt - mx)
        penalty = lam * np.trace(scatter) / d
        w = np.linalg.solve(scatter + penalty * np.eye(d), (xt - mx).T @ (yt - my))
        sse += float(((y[test] - (my - mx @ w) - x[test, 1] @ w) ** 2).sum())
    row = table[(table["layer"] == 1) & (table["lambda"] == lam)]
    np.testing.assert_allclose(row["cv_sse"].iloc[0], sse, rtol=1e-9)
    # layer 1 is unrelated to y: heavy shrinkage wins on held-out prompts
    assert directions.notes["lambda"][1] >= 1.0


def test_directions_round_trip_and_refuse_another_model(llama, tmp_path):
    histories = _histories(4)
    sums = collect_paired(llama, histories, layers=[1, 3])
    directions = mean_direction(sums)
    directions = dataclasses.replace(directions, gain=torch.tensor([1.5, 0.5]), notes={"k": [1]})
    path = save_directions(directions, tmp_path / "d_mean")
    assert path.name == "d_mean.safetensors" and (tmp_path / "d_mean.json").is_file()
    for model in (llama.pt, llama.it, None):
        loaded = load_directions(tmp_path / "d_mean.safetensors", model)
        assert torch.equal(loaded.vectors, directions.vectors)
        assert loaded.layers == (1, 3) and loaded.hook == "mlp_out" and loaded.source == "mean"
        assert torch.equal(loaded.mean_projection, directions.mean_projection)
        assert torch.equal(loaded.gain, directions.gain)
        assert loaded.fingerprints == directions.fingerprints == sums.fingerprints
        assert (loaded.n_prompts, loaded.n_tokens, loaded.notes) == (4, sums.n_tokens, {"k": [1]})
    foreign = dataclasses.replace(directions, fingerprints={"pt": "0" * 64, "it": "1" * 64})
    save_directions(foreign, tmp_path / "foreign")
    with pytest.raises(hooklab.HooklabError, match="fingerprint"):
        load_directions(tmp_path / "foreign", llama.it)
    unit = torch.nn.functional.normalize(torch.ones(2, llama.d_model + 1), dim=-1)
    wide = dataclasses.replace(directions, vectors=unit)
    save_directions(wide, tmp_path / "wide")
    with pytest.raises(hooklab.HooklabError, match="d_model"):
        load_directions(tmp_path / "wide", llama.it)
    with pytest.raises(hooklab.HooklabError, match="save_directions"):
        load_directions(tmp_path / "missing", llama.it)


def test_cosine_table():
    e = torch.eye(3)
    a = Directions(e[:2], (0, 1), "mlp_out", "mean", {}, {}, 0, 0)
    b = Directions(torch.stack([e[0], -e[1], e[2]]), (0, 1, 2), "mlp_out", "ridge", {}, {}, 0, 0)
    table = cosine_table({"a": a, "b": b})
    assert table["layer"].tolist() == [0, 1] and table["cos"].tolist() == [1.0, -1.0]
