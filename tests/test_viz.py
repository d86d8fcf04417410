"""Figures from result tables: the right traces and numbers, and offline HTML."""

from __future__ import annotations

import re

import pytest

import hooklab
from hooklab.errors import HooklabError
from hooklab.graft.effects import graft_effects
from hooklab.graft.histories import make_histories
from hooklab.graft.sweep import GraftConfig, run_graft
from hooklab.lens import LogitLens
from hooklab.prompts import load_prompts
from hooklab.readout import ReadoutConfig, run_readout
from hooklab.summaries import layer_summary
from hooklab.viz import (
    commitment_figure,
    convergence_figure,
    graft_effects_figure,
    heatmap_figure,
    save_html,
)


@pytest.fixture(scope="module")
def tables(tiny_pair):
    tiny = tiny_pair("qwen3")
    pair = hooklab.load_pair(pt=tiny.pt, it=tiny.it, device="cpu")
    prompts = load_prompts()[:4]
    readout = run_readout(
        pair,
        prompts,
        ReadoutConfig(conditions=("native", "same_history"), max_new_tokens=4),
        progress=False,
    )
    histories = make_histories(pair, prompts, max_new_tokens=4, progress=False)
    graft = run_graft(
        pair,
        histories,
        GraftConfig(directions=("it-to-pt", "pt-to-it"), modes=("module", "random")),
        lenses={"pt": LogitLens(), "it": LogitLens()},
        progress=False,
    )
    return readout, graft


def test_convergence_figure_plots_the_summary(tables):
    readout, _ = tables
    figure = convergence_figure(readout)
    lines = [t for t in figure.data if t.mode == "lines+markers"]
    assert {t.name for t in lines} == {"PT", "IT"} and len(lines) == 4  # 2 conditions x 2 models
    summary = layer_summary(readout, ["kl_to_final"])
    expected = summary[(summary.condition == "native") & (summary.model == "it")]
    first_it = next(t for t in lines if t.name == "IT")
    assert list(first_it.y) == pytest.approx(list(expected.sort_values("depth")["mean"]))


def test_graft_effects_figure_puts_the_random_control_beside_the_graft(tables):
    _, graft = tables
    figure = graft_effects_figure(graft)
    names = {t.name for t in figure.data}
    assert names == {"module", "random"}
    effects = graft_effects(graft)
    bar = next(t for t in figure.data if t.name == "module" and t.xaxis == "x")
    rows = effects[(effects.direction == "it-to-pt") & (effects["mode"] == "module")]
    assert list(bar.y) == pytest.approx(list(rows["mean"]))


def test_commitment_and_heatmap(tables):
    readout, _ = tables
    assert len(commitment_figure(readout).data) == 2
    with pytest.raises(HooklabError, match="choose one of"):
        commitment_figure(readout, rule="kl<7")
    heat = heatmap_figure(readout, "instruction-00", condition="same_history")
    assert heat.data[0].z.shape[0] == readout.n_layers.iloc[0]
    with pytest.raises(HooklabError, match="no rows"):
        heatmap_figure(readout, "nope")


def test_html_is_self_contained(tables, tmp_path):
    readout, _ = tables
    path = save_html(convergence_figure(readout), tmp_path / "convergence.html")
    html = path.read_text()
    assert "Plotly.newPlot" in html  # the figure is drawn by the inlined plotly.js
    assert not re.search(r"<script[^>]+src=[\"']https?://", html)  # nothing from a CDN
    assert path.stat().st_size > 1_000_000  # plotly.js is inlined


def test_layer_topk_matches_the_readout(tiny_pair):  # noqa: ARG001
    # Known answer: at the last layer the top-1 prediction is the model's own final top-1.
    import torch

    from hooklab.viz.tokens import layer_topk

    pair = hooklab.load_pair("tiny", device="cpu")
    tokens = pair.tokenizer("The capital of France is")["input_ids"]
    ids, probs = layer_topk(pair.pt, tokens, [len(tokens) - 1], k=3)
    with torch.no_grad():
        logits = pair.pt(torch.tensor([tokens]))[0, -1]
    assert int(ids[0, -1, 0]) == int(logits.argmax())
    assert float(probs[0, -1, 0]) == pytest.approx(float(logits.softmax(-1).max()), rel=1e-5)
    assert (probs[..., :-1] >= probs[..., 1:]).all()  # sorted
