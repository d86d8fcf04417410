"""The command line, end to end through ``main(argv)``."""

from __future__ import annotations

import json

import pytest

from hooklab.cli import main
from hooklab.synthetic import TINY_SHAPES


@pytest.mark.canary
def test_parity_prints_and_writes_a_passing_parity_report(tmp_path, capsys):
    assert main(["parity", "--out", str(tmp_path)]) == 0
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


def test_demo_runs_the_main_job_on_the_embedded_pair(tmp_path, capsys):
    import re

    # the whole demo, as README command 1 runs it: its numbers are the ones hooklab ships
    assert main(["demo", "--out", str(tmp_path)]) == 0
    captured = capsys.readouterr()
    printed = captured.out
    assert "convergence gap (IT - PT late-region KL), native" in printed
    assert "the numbers hooklab states for its locked versions: the same" in printed
    assert "DIFFER" not in captured.err
    assert "late random graft it-to-pt" in printed and "report.html" in printed
    report = (tmp_path / "report.html").read_text()
    assert "hooklab demo: the embedded PT/IT pair" in report
    for name in ("convergence", "commitment", "heatmap", "graft_effects"):
        assert (
            f"figures/{name}.html" in report and (tmp_path / "figures" / f"{name}.html").is_file()
        )
    assert "<table" in report and "token_views/" in report
    views = list((tmp_path / "token_views").glob("*.html"))
    assert views
    for page in [*views, *(tmp_path / "figures").glob("*.html")]:
        text = page.read_text()
        assert not re.search(r"<script[^>]+src=[\"']https?://", text), page  # works offline
    assert "CircuitsVis.render" in views[0].read_text()
    assert views[0].read_text().count("top-3 predictions of each layer") == 2  # PT and IT
    # the report command rebuilds it from the run folders alone
    assert (
        main(
            [
                "report",
                str(tmp_path / "readout"),
                str(tmp_path / "graft"),
                "--out",
                str(tmp_path / "again"),
            ]
        )
        == 0
    )
    assert (tmp_path / "again" / "report.html").is_file()


def test_demo_says_loudly_when_its_numbers_differ_from_the_shipped_ones():
    from hooklab import demo

    shipped = demo.expected_headlines()
    found = tuple(demo.Headline(key, key, *values) for key, values in shipped["headlines"].items())
    assert demo.compare(found, limit=None) == []
    assert demo.compare(found[:1], limit=6) == []  # another prompt set: not comparable
    moved = (demo.Headline(found[0].key, "x", found[0].mean + 0.01, 0.0, 1.0), *found[1:])
    lines = demo.compare(moved, limit=None)
    assert lines[0].startswith("!! These numbers DIFFER") and "transformers" in lines[0]
    assert found[0].key in lines[1] and len(lines) == 2


def test_demo_runs_on_any_pair_given_as_pt_and_it(tiny_pair, tmp_path, capsys):
    tiny = tiny_pair("qwen3")
    args = ["demo", "--pt", str(tiny.pt), "--it", str(tiny.it), "--out", str(tmp_path)]
    assert main([*args, "--limit", "3"]) == 0
    captured = capsys.readouterr()
    assert "late module graft it-to-pt" in captured.out
    assert "locked versions" not in captured.out + captured.err  # no shipped numbers to compare
    assert (tmp_path / "report.html").is_file() and (tmp_path / "graft" / "effects.csv").is_file()
    assert f"hooklab demo: PT {tiny.pt}, IT {tiny.it}" in (tmp_path / "report.html").read_text()


def test_parity_labels_the_softcap_as_a_value_and_names_its_temporary_folder(monkeypatch, capsys):
    import hooklab.synthetic

    roots = []
    write = hooklab.synthetic.write_tiny_pair

    def recording(shape, root):
        roots.append(str(root))
        return write(shape, root)

    monkeypatch.setattr(hooklab.synthetic, "TINY_SHAPES", ("gemma3-softcap",))
    monkeypatch.setattr(hooklab.synthetic, "write_tiny_pair", recording)
    assert main(["parity"]) == 0
    printed = capsys.readouterr().out
    assert "softcap = the logit soft-cap" in printed and "max |difference|" in printed
    header = next(line for line in printed.splitlines() if line.startswith("Parity"))
    assert "softcap" in header.split("max |difference|")[0]
    assert all("hooklab-parity-" in root and "demo" not in root for root in roots)
