"""Study specs and plans without weights: validation before anything runs, the plan of the six
paper pairs offline, and the plan's numbers against their stated formulas."""

from __future__ import annotations

from pathlib import Path

import pytest

import hooklab.pair
from hooklab.catalog import paper_pairs
from hooklab.cli import main
from hooklab.errors import HooklabError
from hooklab.study import CostModel, load_study, pair_size, plan_study

PAPER = """
[study]
name = "paper"
out = "out"

{pairs}

[study.experiments.graft]
windows = "late,mid,early"

[study.experiments.readout]
conditions = ["native", "same_history", "template_replay"]

[study.cost]
peak_tflops = 500.0
utilisation = 0.5
prompt_tokens = 40
"""


def _paper_spec(folder: Path) -> Path:
    pairs = "\n".join(
        f'[[study.pairs]]\nname = "{name}"\ndtype = "bfloat16"\ndevice = "cuda"'
        for name in paper_pairs()
    )
    path = folder / "paper.toml"
    path.write_text(PAPER.format(pairs=pairs))
    return path


@pytest.fixture
def no_weights(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a plan must not load weights")

    monkeypatch.setattr(hooklab.pair, "boot_bridge", refuse)


@pytest.mark.usefixtures("no_weights")
def test_plan_of_the_six_paper_pairs_prints_the_cost_table_offline(tmp_path, capsys):
    path = _paper_spec(tmp_path)
    assert main(["study", "plan", str(path), "--n-prompts", "500"]) == 0
    text = capsys.readouterr().out
    for name in paper_pairs():
        assert text.count(name) == 2  # readout and graft rows
    assert "GPU-h" in text and "500 TFLOP/s" in text and "50%" in text and "40 prompt" in text


@pytest.mark.usefixtures("no_weights")
def test_plan_numbers_follow_the_stated_cost_model(tmp_path):
    study = load_study(_paper_spec(tmp_path))
    cost = CostModel.from_dict(study.cost)
    rows = {(r.pair, r.experiment): r for r in plan_study(study, n_prompts=500)}
    gemma = paper_pairs()["gemma3-4b"]
    row = rows[("gemma3-4b", "readout")]
    # the readout's own plan: 3 conditions, native generates on both sides, 32 new tokens
    assert row.forward_passes == 500 * (2 * 32 + 2 * 3)
    assert row.rows == 500 * 2 * 3 * 32 * 34
    assert row.tokens == row.forward_passes * (40 + 32)
    lens = 2 * 2560 * 262208 * 34 * row.forward_passes * 32
    flops = 2 * gemma.n_params_language_model * row.tokens + lens
    assert row.gpu_hours == pytest.approx(flops / (500e12 * 0.5) / 3600, rel=1e-12)
    assert row.weights_gib == pytest.approx(2 * gemma.n_params_language_model * 2 / 2**30)
    assert cost.utilisation == 0.5
    # a mixture of experts counts the experts a token uses: 64 routed, 6 used, 26 MoE layers
    deepseek = pair_size(load_study(_paper_spec(tmp_path)).pair("deepseek-v2-lite"))
    unused = (64 - 6) * 3 * 2048 * 1408 * 26
    assert deepseek.n_active_params == deepseek.n_params - unused


def test_parameter_count_of_a_folder_pair_is_the_models_own(tmp_path):
    path = tmp_path / "s.toml"
    path.write_text(
        '[study]\nname = "x"\nout = "o"\n[[study.pairs]]\nname = "tiny"\ndevice = "cpu"\n'
        "[study.experiments.readout]\n"
    )
    size = pair_size(load_study(path).pairs[0])
    model = hooklab.load_pair("tiny", device="cpu").pt.original_model
    assert size.n_params == sum(p.numel() for p in model.parameters())
    assert (size.n_layers, size.source) == (6, "config")


def _study(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "s.toml"
    path.write_text('[study]\nname = "x"\nout = "o"\n' + body)
    return path


PAIR = '[[study.pairs]]\nname = "qwen3-4b"\ndevice = "cpu"\n'


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (PAIR + "[study.experiments.nosuch]\n", "nosuch"),
        (
            PAIR + '[study.experiments.readout]\nlense = "logit"\n',
            "study.experiments.readout.lense",
        ),
        (
            PAIR + "[study.pairs.overrides.graft]\nwindows = 3\n[study.experiments.graft]\n",
            "study.experiments.graft.windows",
        ),
        (
            PAIR + "[study.pairs.overrides.graft]\nbatch_size = 2\n[study.experiments.readout]\n",
            "no 'graft' experiment",
        ),
        (PAIR + PAIR + "[study.experiments.readout]\n", "used twice"),
        ("[study.experiments.readout]\n", "at least one pair"),
        (PAIR + "[study.experiments.readout]\nseed = 3\n", "seed"),
        (PAIR + "[study.experiments.readout]\n[study.execution]\nshards = 0\n", "shards"),
        ('[[study.pairs]]\npt = "a"\nit = "b"\n[study.experiments.readout]\n', "label"),
        (
            "response_tokens = 0\n" + PAIR + "[study.experiments.readout]\n",
            "study.response_tokens=0",
        ),
        (
            'response_tokens = "64"\n' + PAIR + "[study.experiments.readout]\n",
            "study.response_tokens='64'",
        ),
        (PAIR + '[study.experiments.readout]\n[study.prompts]\nformat = "xls"\n', "format"),
    ],
)
@pytest.mark.usefixtures("no_weights")
def test_bad_studies_are_refused_before_anything_runs(tmp_path, body, message):
    with pytest.raises(HooklabError, match=message):
        load_study(_study(tmp_path, body))


@pytest.mark.usefixtures("no_weights")
def test_a_window_outside_a_pair_is_refused_naming_the_pair(tmp_path):
    study = load_study(_study(tmp_path, PAIR + '[study.experiments.graft]\nwindows = "30:40"\n'))
    with pytest.raises(HooklabError, match="qwen3-4b.*graft.windows"):
        study.validate()
    assert not (tmp_path / "o").exists()


def test_run_specs_put_readout_first_and_chain_histories(tmp_path):
    study = load_study(
        _study(
            tmp_path,
            PAIR + '[study.experiments.graft]\n[study.experiments.readout]\nlens = "logit"\n',
        )
    )
    assert list(study.experiments) == ["readout", "graft"]
    pair = study.pairs[0]
    graft = study.run_spec(pair, "graft")
    assert graft.histories == str(tmp_path / "o" / "qwen3-4b" / "readout")
    assert graft.out == str(tmp_path / "o" / "qwen3-4b" / "graft")
    # a template-replay-only readout holds no IT response: the graft makes its own
    replay = load_study(
        _study(
            tmp_path,
            PAIR + "[study.experiments.graft]\n[study.experiments.readout]\n"
            'conditions = ["template_replay"]\n',
        )
    )
    assert replay.run_spec(replay.pairs[0], "graft").histories is None


def test_response_tokens_caps_every_generation_unless_an_experiment_sets_its_own(tmp_path):
    body = (
        "response_tokens = 7\n"
        + PAIR
        + "[study.experiments.readout]\n[study.experiments.steer]\n"
        + "[study.experiments.graft]\nmax_new_tokens = 3\n[study.experiments.weight-change]\n"
    )
    study = load_study(_study(tmp_path, body))
    pair = study.pairs[0]
    assert study.config(pair, "readout").max_new_tokens == 7
    steer = study.config(pair, "steer")
    assert (steer.max_new_tokens, steer.history_tokens) == (7, 7)
    assert study.config(pair, "graft").max_new_tokens == 3  # its own table wins
    assert study.run_spec(pair, "readout").experiment_config().max_new_tokens == 7
