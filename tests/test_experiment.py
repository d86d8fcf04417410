"""The experiment interface: registry, one source of defaults (Python = TOML = CLI), typed
spec values, and a new experiment added as one module (the worked example in the docs)."""

from __future__ import annotations

import dataclasses
import re
import sys
import types
from pathlib import Path

import pandas as pd
import pytest

from hooklab.cli import main
from hooklab.cli_config import config_parameters, options_to_dict
from hooklab.errors import HooklabError
from hooklab.experiment import get_experiment, registered_experiments
from hooklab.graft.sweep import GraftConfig
from hooklab.runs import ExecutionSpec, PairSpec, PromptSpec, load_spec

DOCS = Path(__file__).resolve().parents[1] / "docs" / "experiments.md"


def test_the_shipped_experiments_are_registered():
    assert {"readout", "graft"} <= set(registered_experiments())
    with pytest.raises(HooklabError, match="experiment='nope': use one of .*graft.*readout"):
        get_experiment("nope")


@pytest.mark.parametrize("name", sorted(registered_experiments()))
def test_python_toml_and_cli_defaults_agree(name, tmp_path):
    experiment = get_experiment(name)
    python = experiment.config_type()
    toml = experiment.config_type.from_dict({}, section=name)
    # the CLI's defaults, read back the way the CLI reads what a user types
    cli_defaults = {p.name: p.default for p in config_parameters(experiment.config_type)}
    cli = experiment.config_type.from_dict(
        options_to_dict(experiment.config_type, cli_defaults), section=name
    )
    assert python == toml == cli
    # and end to end: the spec `hooklab NAME` writes with no experiment options
    spec_file = tmp_path / "spec.toml"
    assert (
        main(
            [name, "--out", str(tmp_path / "out"), "--pair", "tiny", "--write-spec", str(spec_file)]
        )
        == 0
    )
    assert load_spec(spec_file).config == python
    for spec_type in (PairSpec, PromptSpec, ExecutionSpec):
        defaults = {p.name: p.default for p in config_parameters(spec_type)}
        assert spec_type.from_dict(options_to_dict(spec_type, defaults)) == spec_type()


def test_graft_means_one_experiment_everywhere(tmp_path):
    # `hooklab graft` with no options, a [graft] with no keys and GraftConfig(): the symmetric
    # design with the random control, and 'both' is accepted everywhere
    config = GraftConfig()
    assert config.directions == ("it-to-pt", "pt-to-it") and config.modes == ("module", "random")
    assert GraftConfig(directions=("both",)) == config
    assert GraftConfig.from_dict({"directions": "both"}) == config
    spec = tmp_path / "g.toml"
    spec.write_text('experiment = "graft"\nout = "o"\n[pair]\nname = "tiny"\n[graft]\n')
    assert load_spec(spec).config == config


@pytest.mark.parametrize(
    ("section", "raw", "message"),
    [
        ("execution", {"part_size": "2"}, r"execution.part_size='2': expected an integer"),
        ("graft", {"batch_size": 1.5}, r"graft.batch_size=1.5: expected an integer"),
        ("graft", {"modes": "module,nope"}, r"graft.modes='nope': accepted values are module"),
        ("graft", {"router": "both"}, r"graft.router='both': accepted values are host, donor"),
        ("prompts", {"limit": 0}, r"prompts.limit=0: use a number of prompts >= 1"),
        ("prompts", {"limit": -1}, r"prompts.limit=-1"),
        ("pair", {"trust_remote_code": "yes"}, r"pair.trust_remote_code='yes': expected true"),
    ],
)
def test_spec_values_are_type_checked(tmp_path, section, raw, message):
    body = {"pair": {"name": "tiny"}, section: raw}
    lines = ['experiment = "graft"', 'out = "o"']
    for name, values in body.items():
        lines.append(f"[{name}]")
        lines += [f"{k} = {v!r}".replace("'", '"') for k, v in values.items()]
    path = tmp_path / "spec.toml"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(HooklabError, match=message):
        load_spec(path)


def test_a_string_is_one_value_not_its_characters():
    assert GraftConfig.from_dict({"directions": "it-to-pt"}).directions == ("it-to-pt",)


def _docs_example() -> str:
    text = DOCS.read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    (block,) = [b for b in blocks if "register_experiment(" in b]
    return block


@pytest.fixture
def example_experiment():
    """The worked example of docs/experiments.md, imported as if it were a new module."""
    from hooklab import cli
    from hooklab.experiment import _REGISTRY

    module = types.ModuleType("hooklab.experiments.final_entropy_doc_example")
    sys.modules[module.__name__] = module
    exec(compile(_docs_example(), str(DOCS), "exec"), module.__dict__)
    yield module
    _REGISTRY.pop("final_entropy", None)
    cli.app.registered_commands[:] = [
        c for c in cli.app.registered_commands if c.name != "final_entropy"
    ]
    del sys.modules[module.__name__]


def test_a_new_experiment_is_one_module(example_experiment, tmp_path, capsys):
    # registered once, it is a command, a run spec, resumable parts, a report section
    assert "final_entropy" in registered_experiments()
    out = tmp_path / "run"
    assert (
        main(
            [
                "final_entropy",
                "--out",
                str(out),
                "--pair",
                "tiny",
                "--device",
                "cpu",
                "--limit",
                "3",
                "--part-size",
                "2",
            ]
        )
        == 0
    )
    table = pd.read_parquet(out / "final_entropy.parquet")
    assert len(table) == 6 and set(table["model"]) == {"pt", "it"}
    assert (out / "parts" / "part-00001.json").is_file()  # 3 prompts in parts of 2
    capsys.readouterr()
    assert main(["report", str(out), "--out", str(tmp_path / "report")]) == 0
    assert "final_entropy" in (tmp_path / "report" / "report.html").read_text()
    config = dataclasses.replace(example_experiment.FinalEntropyConfig(), template=False)
    assert config.to_dict()["template"] is False
