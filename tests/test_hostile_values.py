"""Values no one should accept, refused before any work (issue 21, items 14 and 15)."""

from __future__ import annotations

import pytest

import hooklab
from hooklab.cli import main
from hooklab.errors import HooklabError

STUDY = """
[study]
name = "values"
out = "out"
{study}

[[study.pairs]]
name = "tiny"
device = "cpu"

[study.experiments.readout]
conditions = ["native"]
max_new_tokens = 2
{readout}

[study.experiments.graft]
windows = "late"
{graft}

[study.experiments.behave]
arms = ["pt", "it"]
prompt_set = "tiny"
{behave}

[study.prompts]
source = "behaviour-tiny"
limit = 2

[study.cost]
{cost}
"""


def _plan(tmp_path, capsys, *options, **sections) -> tuple[int, str]:
    keys = {k: sections.get(k, "") for k in ("study", "readout", "graft", "behave", "cost")}
    path = tmp_path / "study.toml"
    path.write_text(STUDY.format(**keys))
    status = main(["study", "plan", str(path), *options])
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    return status, captured.out + captured.err


def test_the_plan_itself_passes(tmp_path, capsys):
    status, text = _plan(tmp_path, capsys)
    assert status == 0, text


@pytest.mark.parametrize("n", ["-5", "0"])
def test_plan_refuses_a_non_positive_prompt_count(tmp_path, capsys, n):
    status, text = _plan(tmp_path, capsys, "--n-prompts", n)
    assert status == 2 and f"n_prompts={n}" in text and "GPU-h" not in text


@pytest.mark.parametrize(
    "sections, expected",
    [
        ({"cost": "peak_tflops = inf"}, "peak_tflops=inf"),
        ({"cost": "peak_tflops = nan"}, "peak_tflops=nan"),
        ({"study": "response_tokens = 1000000000"}, "exceed the model's context"),
        ({"readout": 'lens = "tuned:no-such-lens"'}, "no tuned lens"),
        ({"graft": "late_start_depth = nan"}, "late_start_depth=nan"),
        ({"readout": "late_start_depth = nan"}, "late_start_depth=nan"),
        ({"behave": "temperature = inf"}, "temperature=inf"),
    ],
    ids=["peak-inf", "peak-nan", "huge-response", "missing-lens", "graft-nan", "readout-nan",
         "temperature-inf"],
)  # fmt: skip
def test_plan_refuses_values_no_run_could_use(tmp_path, capsys, sections, expected):
    status, text = _plan(tmp_path, capsys, **sections)
    assert status == 2 and expected in text, text


def test_graft_config_checks_its_lens():
    with pytest.raises(HooklabError, match="lens='bogus'"):
        hooklab.GraftConfig(lens="bogus")


def test_run_readout_honours_truncate_long_prompts():
    from hooklab.conditions import context_length

    pair = hooklab.load_pair("tiny")
    long_text = " ".join(f"word{i}" for i in range(2 * context_length(pair)))
    prompts = [hooklab.Prompt("long", long_text)]
    config = hooklab.ReadoutConfig(max_new_tokens=2, truncate_long_prompts=True)
    with pytest.warns(UserWarning, match="were cut"):
        table = hooklab.run_readout(pair, prompts, config, progress=False)
    assert set(table["prompt_id"]) == {"long"}
    with pytest.raises(HooklabError, match="truncate_long_prompts=True"):
        hooklab.run_readout(pair, prompts, hooklab.ReadoutConfig(max_new_tokens=2), progress=False)
