"""The command line, end to end through ``main(argv)``."""

from __future__ import annotations

import json

from hooklab.cli import main
from hooklab.synthetic import TINY_SHAPES


def test_demo_prints_and_writes_a_passing_parity_report(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert "Compatibility of the tiny llama pair" in printed and "NO" not in printed
    rows = json.loads((tmp_path / "parity.json").read_text())
    assert {row["shape"] for row in rows} == set(TINY_SHAPES)
    assert len(rows) == 2 * len(TINY_SHAPES)
    for row in rows:
        assert row["hf_logits"] <= 1e-5 and row["readout"] <= 1e-5 and row["mlp_path"] <= 1e-5


def test_check_on_a_local_pair(tiny_pair, capsys):
    tiny = tiny_pair("olmo2")
    assert (
        main(
            ["check", "--pt", str(tiny.pt), "--it", str(tiny.it), "--device", "cpu", "--hf-parity"]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "family='olmo2'" in out and "tokenization of probe 3" in out


def test_user_errors_exit_2_with_one_line(capsys):
    assert main(["check", "--pt", "/no/such/pt", "--it", "/no/such/it", "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("hooklab: error: pt='/no/such/pt': no such folder")
    assert "Traceback" not in err


def test_families_lists_every_paper_pair(capsys):
    assert main(["families"]) == 0
    out = capsys.readouterr().out
    assert "google/gemma-3-4b-it" in out and "deepseek_v2" in out
