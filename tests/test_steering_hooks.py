"""Steering hooks: exact no-ops, orthogonal directions, planted directions, batched grids."""

from __future__ import annotations

import dataclasses

import pytest
import torch

import hooklab
from hooklab import hooks
from hooklab.graft.histories import History
from hooklab.steering import (
    Directions,
    collect_paired,
    mean_direction,
    other_layer_control,
    projection_stats,
    random_control,
    random_directions,
    steering_hooks,
)


def _unit_rows(n_layers: int, d_model: int, seed: int = 3) -> Directions:
    generator = torch.Generator().manual_seed(seed)
    vectors = torch.randn(n_layers, d_model, generator=generator)
    vectors = vectors / vectors.norm(dim=-1, keepdim=True)
    return Directions(
        vectors=vectors,
        layers=tuple(range(n_layers)),
        hook="mlp_out",
        source="random",
        models={},
        fingerprints={},
        n_prompts=0,
        n_tokens=0,
        mean_projection=torch.full((n_layers,), 2.0),
    )


def _tokens(batch: int = 2, pos: int = 10, vocab: int = 512) -> torch.Tensor:
    return torch.randint(3, vocab, (batch, pos), generator=torch.Generator().manual_seed(0))


def _logits(model, tokens, fwd_hooks=()) -> torch.Tensor:
    with torch.no_grad(), model.hooks(fwd_hooks=list(fwd_hooks)):
        return model(tokens, return_type="logits")


@pytest.fixture(scope="module")
def loaded(tiny_pair):
    made = {}

    def load(shape: str):
        if shape not in made:
            tiny = tiny_pair(shape)
            made[shape] = hooklab.load_pair(pt=tiny.pt, it=tiny.it, device="cpu")
        return made[shape]

    return load


@pytest.mark.parametrize("shape", ["llama", "gemma3"])
@pytest.mark.parametrize("hook", ["mlp_out", "attn_out", "resid_post"])
def test_alpha_one_is_bitwise_noop(loaded, shape, hook):
    pair = loaded(shape)
    model, n_layers = pair.it, pair.n_layers
    directions = _unit_rows(n_layers, pair.d_model)
    directions = dataclasses.replace(directions, hook=hook)
    tokens = _tokens()
    plain = _logits(model, tokens)
    every = list(range(n_layers))
    same = _logits(model, tokens, steering_hooks(directions, 1.0, n_layers=n_layers, layers=every))
    assert torch.equal(plain, same)
    grid = torch.ones(tokens.shape[0])
    assert torch.equal(
        plain, _logits(model, tokens, steering_hooks(directions, grid, n_layers=n_layers))
    )
    moved = _logits(model, tokens, steering_hooks(directions, 0.5, n_layers=n_layers, layers=every))
    assert not torch.allclose(plain, moved)  # the hooks do act (the test can fail)
    injected = steering_hooks(directions, 0.0, n_layers=n_layers, mode="inject")
    assert torch.equal(plain, _logits(model, tokens, injected))


def test_direction_orthogonal_to_every_activation_changes_nothing(tiny_pair):
    tiny = tiny_pair("llama")
    pair = hooklab.load_pair(pt=tiny.pt, it=tiny.it, device="cpu")
    model, n_layers, d_model = pair.it, pair.n_layers, pair.d_model
    with torch.no_grad():  # mlp_out's last coordinate is now always exactly 0
        for layer in range(n_layers):
            hooklab.architectures.hf_module(model.blocks[layer].mlp).down_proj.weight[-1] = 0.0
    tokens = _tokens()
    captured = []
    capture = [
        (hooks.mlp_out(layer), lambda a, hook: captured.append(a))  # noqa: ARG005
        for layer in range(n_layers)  # noqa: ARG005
    ]
    plain = _logits(model, tokens, capture)
    assert all(bool((a[..., -1] == 0).all()) for a in captured)
    every = list(range(n_layers))
    for index, should_change in ((d_model - 1, False), (0, True)):
        vectors = torch.zeros(n_layers, d_model)
        vectors[:, index] = 1.0
        directions = Directions(vectors, tuple(every), "mlp_out", "random", {}, {}, 0, 0)
        for alpha in (0.0, 3.0):
            fwd = steering_hooks(directions, alpha, n_layers=n_layers, layers=every)
            steered = _logits(model, tokens, fwd)
            assert torch.equal(plain, steered) != should_change


@pytest.fixture(scope="module")
def planted(tiny_checkpoint):
    """A pair whose IT equals PT except for ``c·u`` added to mlp_out at the last (= late) layer."""
    folder = tiny_checkpoint("llama", "llama-mlp-bias", mlp_bias=True)
    pair = hooklab.load_pair(pt=folder, it=folder, device="cpu")
    u = torch.randn(pair.d_model, generator=torch.Generator().manual_seed(7))
    u = u / u.norm()
    last = pair.n_layers - 1
    with torch.no_grad():
        hooklab.architectures.hf_module(pair.it.blocks[last].mlp).down_proj.bias.add_(5.0 * u)
    g = torch.Generator().manual_seed(1)
    histories = [
        History(f"p{i}", tuple(torch.randint(3, 512, (12 + i,), generator=g).tolist()), 4, 12)
        for i in range(5)
    ]
    return pair, u, histories


def test_planted_direction_is_recovered_and_alpha_zero_removes_it(planted):
    pair, u, histories = planted
    sums = collect_paired(pair, histories, batch_size=2)
    directions = mean_direction(sums)
    last = pair.n_layers - 1
    assert float(directions.vector(last) @ u) > 0.999
    # the layers below the edit are identical in both models: no direction there
    assert bool((directions.vectors[:last] == 0).all())
    assert directions.mean_projection[last] > 1.0  # IT's mean projection carries c = 5
    after, before = [], []
    fwd = [(hooks.mlp_out(last), lambda a, hook: before.append(a.clone()))]  # noqa: ARG005
    fwd += steering_hooks(directions, 0.0, n_layers=pair.n_layers)  # late window = last layer
    fwd += [(hooks.mlp_out(last), lambda a, hook: after.append(a.clone()))]  # noqa: ARG005
    tokens = torch.tensor([list(histories[0].tokens)])
    _logits(pair.it, tokens, fwd)
    d = directions.vector(last)
    assert float((before[0] @ d).abs().min()) > 1.0  # the component was there
    residual = (after[0] @ d).abs() / after[0].norm(dim=-1)
    assert float(residual.max()) <= 1e-6


def test_batched_alpha_grid_equals_one_alpha_at_a_time(loaded):
    pair = loaded("gemma3")
    model, n_layers = pair.it, pair.n_layers
    directions = _unit_rows(n_layers, pair.d_model)
    alphas = torch.tensor([0.0, 0.5, 1.0, 2.0])
    row = _tokens(1, 9)
    tokens = row.expand(len(alphas), -1)
    for mode in ("project", "inject"):
        grid = _logits(
            model, tokens, steering_hooks(directions, alphas, n_layers=n_layers, mode=mode)
        )
        for i, alpha in enumerate(alphas.tolist()):
            fwd = steering_hooks(directions, alpha, n_layers=n_layers, mode=mode)
            same_batch = _logits(model, tokens, fwd)[i]
            assert torch.equal(grid[i], same_batch)
            alone = _logits(model, row, fwd)[0]
            torch.testing.assert_close(grid[i], alone, rtol=1e-5, atol=1e-5)
        assert not torch.allclose(grid[0], grid[3])
    with pytest.raises(hooklab.HooklabError, match="one value per batch row"):
        _logits(model, tokens, steering_hooks(directions, alphas[:3], n_layers=n_layers))


def test_projection_stats_and_random_control_against_brute_force(planted):
    pair, _, histories = planted
    directions = mean_direction(collect_paired(pair, histories))
    control = random_control(directions, pair.it, histories, seed=4)
    assert control.source == "random" and torch.equal(
        control.mean_projection, directions.mean_projection
    )
    # brute force: every read token's mlp_out, one history at a time
    rows = {layer: [] for layer in directions.layers}
    for h in histories:
        kept: dict[int, torch.Tensor] = {}
        fwd = [
            (
                hooks.mlp_out(layer),
                lambda a, hook, layer=layer, kept=kept: kept.__setitem__(layer, a[0]),  # noqa: ARG005
            )
            for layer in directions.layers
        ]
        _logits(pair.it, torch.tensor([list(h.tokens)]), fwd)
        for layer in directions.layers:
            rows[layer].append(kept[layer][h.read_from : h.read_to].double())
    stats = projection_stats(pair.it, histories, [directions, control])
    for i, layer in enumerate(directions.layers):
        x = torch.cat(rows[layer])
        for s, d in enumerate((directions, control)):
            projection = x @ d.vector(layer).double()
            torch.testing.assert_close(stats[s]["mean"][i], projection.mean(), rtol=1e-5, atol=1e-7)
            torch.testing.assert_close(
                stats[s]["mean_abs"][i], projection.abs().mean(), rtol=1e-5, atol=1e-7
            )
        # the matched quantity: gain * mean|r.h| == mean|d.h|
        matched = control.gain[i] * stats[1]["mean_abs"][i]
        torch.testing.assert_close(matched.double(), stats[0]["mean_abs"][i], rtol=1e-5, atol=1e-7)


def test_random_and_other_layer_controls():
    directions = _unit_rows(6, 16)
    first, again = random_directions(directions, seed=1), random_directions(directions, seed=1)
    assert torch.equal(first.vectors, again.vectors)
    torch.testing.assert_close(first.vectors.norm(dim=-1), torch.ones(6))
    assert not torch.equal(first.vectors, random_directions(directions, seed=2).vectors)
    other = other_layer_control(directions, [1, 2], [4, 5])
    expected = directions.vectors[1] + directions.vectors[2]
    expected = expected / expected.norm()
    assert other.layers == (4, 5) and other.source == "other-layers"
    torch.testing.assert_close(other.vector(4), expected)
    torch.testing.assert_close(other.vector(5), expected)
    with pytest.raises(hooklab.HooklabError, match="layer=0"):
        steering_hooks(other, 0.0, n_layers=6, layers=[0])
