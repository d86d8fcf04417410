"""Component patching: resumed equals a full pass, a last-layer resid_post patch gives the
donor's final distribution, patching every MLP of B into A gives B, identical models give 0."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import hooklab
from hooklab.architectures import read_logits
from hooklab.conditions import pad_batch
from hooklab.errors import HooklabError
from hooklab.forward import residual_stream
from hooklab.graft.histories import History
from hooklab.mechanism import (
    COMPONENTS,
    Setter,
    donor_cache,
    patch,
    patching_heatmap,
    patching_summary,
    run_patching,
    setters_for,
)
from hooklab.synthetic import write_mlp_swapped_checkpoint

SHAPES = ("llama", "gemma3", "deepseek_v2")


def _tokens() -> tuple[torch.Tensor, torch.Tensor]:
    tokens = torch.randint(5, 500, (2, 9), generator=torch.Generator().manual_seed(4))
    tokens[:, 0] = 0
    mask = torch.ones_like(tokens)
    mask[1, 6:] = 0
    return tokens, mask


def _histories() -> list[History]:
    generator = torch.Generator().manual_seed(5)
    bodies = [torch.randint(5, 500, (n,), generator=generator).tolist() for n in (7, 9, 6)]
    return [History(f"p{i}", (0, *b), 2, len(b)) for i, b in enumerate(bodies)]


@pytest.fixture(scope="module")
def pairs(tiny_pair, tiny_root):
    """(shape, kind) -> the tiny PT/IT pair, twins (PT, PT), or (A, A with IT's MLPs)."""
    made = {}

    def make(shape, kind="pair"):
        if (shape, kind) not in made:
            tiny = tiny_pair(shape)
            if kind == "pair":
                made[shape, kind] = hooklab.load_pair(pt=tiny.pt, it=tiny.it, device="cpu")
            elif kind == "twins":
                made[shape, kind] = hooklab.load_pair(pt=tiny.pt, it=tiny.pt, device="cpu")
            else:
                folder = tiny_root / shape / "mlp-swapped-patching"
                b = write_mlp_swapped_checkpoint(tiny.pt, tiny.it, folder)
                made[shape, kind] = hooklab.load_pair(pt=tiny.pt, it=b, device="cpu")
        return made[shape, kind]

    return make


def _all_hooks(n_layers: int) -> list[str]:
    return [hook(layer) for hook in COMPONENTS.values() for layer in range(n_layers)]


@pytest.mark.parametrize("shape", SHAPES)
def test_resumed_patch_equals_a_full_pass(pairs, shape):
    pair = pairs(shape)
    tokens, mask = _tokens()
    cache = donor_cache(pair.it, tokens, _all_hooks(pair.n_layers), attention_mask=mask)
    base = residual_stream(pair.pt, tokens, attention_mask=mask, keep_block_inputs=True)
    for component in COMPONENTS:
        for layers in ([1], [2, 3]):
            setters = setters_for(component, layers)
            full = patch(pair.pt, cache, tokens, setters, attention_mask=mask)
            resumed = patch(pair.pt, cache, tokens, setters, attention_mask=mask, base=base)
            assert torch.equal(resumed.resid_post, full.resid_post), (component, layers)
            # layers before the patch are the host's own; the patch changes the later ones
            assert torch.equal(full.resid_post[: layers[0]], base.resid_post[: layers[0]])
            assert not torch.allclose(full.resid_post[-1], base.resid_post[-1])


@pytest.mark.parametrize("shape", SHAPES)
def test_last_layer_resid_post_patch_gives_the_donors_final_distribution(pairs, shape):
    tokens, mask = _tokens()
    pair = pairs(shape)
    last = pair.n_layers - 1
    cache = donor_cache(pair.it, tokens, [COMPONENTS["resid_post"](last)], attention_mask=mask)
    base = residual_stream(pair.pt, tokens, attention_mask=mask, keep_block_inputs=True)
    patched = patch(pair.pt, cache, tokens, [Setter("resid_post", last)], base=base)
    it_final = residual_stream(pair.it, tokens, attention_mask=mask).resid_post[-1]
    assert torch.equal(patched.resid_post[-1], it_final)
    # with the host's readout equal to the donor's (A and A-with-B's-MLPs), the logits are
    # the donor's own, exactly
    swapped = pairs(shape, "swapped")
    cache = donor_cache(swapped.it, tokens, [COMPONENTS["resid_post"](last)], attention_mask=mask)
    patched = patch(swapped.pt, cache, tokens, [Setter("resid_post", last)], attention_mask=mask)
    with torch.no_grad():
        expected = swapped.it(tokens, attention_mask=mask)
        assert torch.equal(read_logits(swapped.pt, patched.resid_post[-1]), expected)
        assert not torch.allclose(swapped.pt(tokens, attention_mask=mask), expected, atol=1e-3)


@pytest.mark.parametrize("shape", SHAPES)
def test_patching_every_mlp_out_of_b_into_a_reproduces_b(pairs, shape):
    pair = pairs(shape, "swapped")  # identical except the MLP path
    tokens, mask = _tokens()
    every = range(pair.n_layers)
    cache = donor_cache(
        pair.it, tokens, [COMPONENTS["mlp_out"](x) for x in every], attention_mask=mask
    )
    patched = patch(pair.pt, cache, tokens, setters_for("mlp_out", every), attention_mask=mask)
    with torch.no_grad():
        assert torch.equal(
            read_logits(pair.pt, patched.resid_post[-1]), pair.it(tokens, attention_mask=mask)
        )


def test_setter_positions_write_only_there(pairs):
    pair = pairs("llama")
    tokens, mask = _tokens()
    name = COMPONENTS["attn_out"](1)
    cache = donor_cache(pair.it, tokens, [name], attention_mask=mask)
    seen = {}

    def keep(activation, hook):  # noqa: ARG001
        seen["value"] = activation.detach().clone()

    positions = torch.zeros_like(tokens, dtype=torch.bool)
    positions[:, 3:5] = True
    setter = Setter("attn_out", 1, positions=positions)
    residual_stream(
        pair.pt, tokens, attention_mask=mask, fwd_hooks=[setter.hook(cache), (name, keep)]
    )
    host = {}
    residual_stream(
        pair.pt,
        tokens,
        attention_mask=mask,
        fwd_hooks=[(name, lambda a, hook: host.setdefault("v", a.clone()))],  # noqa: ARG005
    )
    assert torch.equal(seen["value"][positions], cache[name][positions])
    assert torch.equal(seen["value"][~positions], host["v"][~positions])
    with pytest.raises(HooklabError, match="component"):
        Setter("embed", 0)
    with pytest.raises(HooklabError, match="donor_cache"):
        Setter("mlp_out", 2).hook(cache)


@pytest.mark.parametrize("shape", SHAPES)
def test_patching_between_identical_models_changes_nothing(pairs, shape):
    table = run_patching(pairs(shape, "twins"), _histories(), directions=("it-to-pt", "pt-to-it"))
    assert len(table) == 3 * 2 * len(COMPONENTS) * pairs(shape).n_layers
    assert (table[["delta_late_kl", "delta_teacher_logprob"]] == 0).all().all()


@pytest.mark.parametrize("shape", SHAPES)
def test_run_patching_equals_a_brute_force_recomputation(pairs, shape):
    pair = pairs(shape)
    histories = _histories()
    table = run_patching(pair, histories, batch_size=2)
    summary = patching_summary(table)
    assert set(summary["n_prompts"]) == {3}
    # brute force: a full patched pass per condition, whole-vocabulary logits per layer
    tokens, mask, read, targets = pad_batch(histories, int(pair.tokenizer.pad_token_id))
    late = hooklab.metrics.late_layers(pair.n_layers)
    cache = donor_cache(pair.it, tokens, _all_hooks(pair.n_layers), attention_mask=mask)

    @torch.no_grad()
    def measures(resid_post):
        logprobs = torch.stack(
            [torch.log_softmax(read_logits(pair.pt, r).double(), -1) for r in resid_post]
        )
        final = logprobs[-1]
        kl = torch.stack([(logprobs[x].exp() * (logprobs[x] - final)).sum(-1) for x in late]).mean(
            0
        )
        teacher = final.gather(-1, targets.clamp_min(0).unsqueeze(-1)).squeeze(-1)
        counts = read.sum(1)
        return (kl * read).sum(1) / counts, (teacher * read).sum(1) / counts

    base = measures(residual_stream(pair.pt, tokens, attention_mask=mask).resid_post)
    for component in COMPONENTS:
        for layer in (0, pair.n_layers - 1):
            stream = patch(pair.pt, cache, tokens, [Setter(component, layer)], attention_mask=mask)
            kl, teacher = measures(stream.resid_post)
            rows = table[(table["component"] == component) & (table["layer"] == layer)]
            assert np.allclose(rows["delta_late_kl"], (kl - base[0]).numpy(), atol=1e-4)
            assert np.allclose(
                rows["delta_teacher_logprob"], (teacher - base[1]).numpy(), atol=1e-4
            )
    # the last-layer residual patch moves the teacher's log probability (the test can fail)
    last = table[(table["component"] == "resid_post") & (table["layer"] == pair.n_layers - 1)]
    assert last["delta_teacher_logprob"].abs().max() > 1e-3
    figure = patching_heatmap(summary)
    assert np.asarray(figure.data[0].z).shape == (pair.n_layers, len(COMPONENTS))


def test_window_patching(pairs):
    pair = pairs("llama")
    table = run_patching(pair, _histories(), components=("mlp_out",), windows="early,late")
    assert list(table["window"].unique()) == ["early", "late"]
    assert (table["layer"] == -1).all()
    with pytest.raises(HooklabError, match="per-layer"):
        patching_heatmap(patching_summary(table))
    with pytest.raises(HooklabError, match="direction"):
        run_patching(pair, _histories(), directions=("self-pt",))
