"""Studies end to end: two small pairs (the embedded one and a tiny random Qwen 3 pair) x
readout + graft, 3 prompts: runs, history reuse, cross-pair tables against the runs' own
summaries, resume after SIGKILL, and the report in a real browser."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

import hooklab.viz.report
from hooklab.graft.histories import load_histories
from hooklab.study import load_study, run_study
from hooklab.synthetic import write_tiny_pair
from hooklab.viz.browser import find_browser, rendered_dom

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def write_study(folder: Path, pair_root: Path, out: str = "out") -> Path:
    qwen = write_tiny_pair("qwen3", pair_root, num_hidden_layers=6)
    text = f"""
[study]
name = "two <small> pairs"
out = "{out}"
seed = 1

[[study.pairs]]
name = "tiny"
device = "cpu"

[[study.pairs]]
pt = "{qwen.pt}"
it = "{qwen.it}"
device = "cpu"
label = "qwen3-tiny"
[study.pairs.overrides.graft]
batch_size = 2

[study.experiments.graft]
windows = "late,mid,early"
max_new_tokens = 3

[study.experiments.readout]
conditions = ["native", "same_history"]
max_new_tokens = 3

[study.prompts]
limit = 3

[study.execution]
part_size = 1
"""
    path = folder / "study.toml"
    path.write_text(text)
    return path


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    folder = tmp_path_factory.mktemp("study")
    path = write_study(folder, folder / "pairs")
    spec = load_study(path)
    with pytest.MonkeyPatch.context() as patch:
        # the pair reports' PNGs are hooklab report's (tested there); the study's are made
        patch.setattr(hooklab.viz.report, "find_browser", lambda: None)
        runs = run_study(spec, study_file=path, progress=False)
    return path, spec, runs


def test_runs_in_order_readout_first_and_graft_reuses_its_histories(study):
    _, spec, runs = study
    assert [(r.label, r.experiment) for r in runs] == [
        ("tiny", "readout"),
        ("tiny", "graft"),
        ("qwen3-tiny", "readout"),
        ("qwen3-tiny", "graft"),
    ]
    assert not any(r.skipped for r in runs)
    for pair in spec.pairs:
        readout, graft = spec.run_dir(pair, "readout"), spec.run_dir(pair, "graft")
        assert (graft / "manifest.json").is_file()
        run = json.loads((graft / "run.json").read_text())["run"]
        assert run["histories"] == str(readout)
        assert not (graft / "histories").exists()  # nothing generated again
        # the histories the graft was forced on are the readout's IT responses
        table = pd.read_parquet(graft / "graft.parquet")
        tokens = {h.prompt_id: h for h in load_histories(readout)}
        n_read = table.groupby("prompt_id", observed=True)["n_tokens"].max()
        for prompt_id, n in n_read.items():
            history = tokens[str(prompt_id)]
            assert n == history.read_to - history.read_from
    # the per-pair override reached that pair's run only
    configs = {
        p.label: json.loads((spec.run_dir(p, "graft") / "manifest.json").read_text())["config"]
        for p in spec.pairs
    }
    assert configs["qwen3-tiny"]["batch_size"] == 2 and configs["tiny"]["batch_size"] == 8


def test_a_second_run_keeps_every_finished_run(study):
    path, spec, _ = study
    before = {p: (p / "manifest.json").stat().st_mtime_ns for _, _, p in _runs(spec)}
    runs = run_study(spec, study_file=path, progress=False, outputs=False)
    assert all(r.skipped for r in runs)
    assert before == {p: (p / "manifest.json").stat().st_mtime_ns for _, _, p in _runs(spec)}


def test_plan_calibrates_against_the_finished_runs_measured_seconds(study, capsys):
    from hooklab.cli import main
    from hooklab.study import CostModel, calibrate, plan_study

    path, spec, _ = study
    calibrations = calibrate(spec)
    assert {(c.row.pair, c.row.experiment) for c in calibrations} == {
        (label, experiment) for label, experiment, _ in _runs(spec)
    }
    for c in calibrations:
        manifest = json.loads(
            (spec.run_dir(c.row.pair, c.row.experiment) / "manifest.json").read_text()
        )
        assert c.measured_seconds == pytest.approx(sum(p["seconds"] for p in manifest["parts"]))
        assert c.implied_utilisation == pytest.approx(
            0.4 * c.row.gpu_hours * 3600 / c.measured_seconds
        )
    # at the implied utilisation, the plan reproduces a run's measured time
    first = calibrations[0]
    replanned = plan_study(spec, cost=CostModel(utilisation=first.implied_utilisation))
    again = next(
        r for r in replanned if (r.pair, r.experiment) == (first.row.pair, first.row.experiment)
    )
    assert again.gpu_hours * 3600 == pytest.approx(first.measured_seconds)
    assert main(["study", "plan", str(path), "--measured"]) in (0, None)
    printed = capsys.readouterr().out
    assert "implied utilisation" in printed and "measured runs imply utilisation" in printed


def _runs(spec):
    from hooklab.study.execute import study_runs

    return study_runs(spec)


def test_study_tables_stack_the_runs_own_summaries(study):
    _, spec, _ = study
    out = spec.out_dir
    for name, file, experiment in (
        ("convergence_gap", "convergence_gap.csv", "readout"),
        ("effects", "effects.csv", "graft"),
        ("commitment", "commitment.csv", "readout"),
    ):
        stacked = pd.read_csv(out / "tables" / f"{name}.csv")
        for pair in spec.pairs:
            own = pd.read_csv(spec.run_dir(pair, experiment) / file)
            mine = stacked[stacked["pair"] == pair.label].drop(columns=["pair", "lens"])
            pd.testing.assert_frame_equal(mine.reset_index(drop=True), own, check_dtype=False)


def test_claims_recompute_the_runs_summaries_from_the_tables(study):
    _, spec, _ = study
    claims = pd.read_csv(spec.out_dir / "claims.csv").set_index(["pair", "claim"])
    for pair in spec.pairs:
        gap = pd.read_csv(spec.run_dir(pair, "readout") / "convergence_gap.csv")
        for condition in ("native", "same_history"):
            row = gap[(gap["region"] == "late") & (gap["condition"] == condition)].iloc[0]
            claim = claims.loc[(pair.label, f"gap_{condition}")]
            assert claim["measured"] == pytest.approx(row["mean"], abs=1e-12)
            assert (claim["ci_low"], claim["ci_high"]) == pytest.approx(
                (row["ci_low"], row["ci_high"]), abs=1e-12
            )
            assert claim["n_prompts"] == 3
        assert claims.loc[(pair.label, "gap_template_replay"), "verdict"] == "not run"
        effects = pd.read_csv(spec.run_dir(pair, "graft") / "effects.csv")

        def late(direction, mode, effects=effects):
            return effects[
                (effects["direction"] == direction)
                & (effects["mode"] == mode)
                & (effects["window"] == "late")
            ].iloc[0]

        # per-prompt values recomputed from graft.parquet give effects.csv's numbers
        for name, direction in (("graft_late", "it-to-pt"), ("swap_late", "pt-to-it")):
            row, claim = late(direction, "module"), claims.loc[(pair.label, name)]
            assert claim["measured"] == pytest.approx(row["mean"], abs=1e-9)
            assert (claim["ci_low"], claim["ci_high"]) == pytest.approx(
                (row["ci_low"], row["ci_high"]), abs=1e-9
            )
            assert claim["n_tokens"] == row["n_tokens"]
        # paired difference: the mean of differences is the difference of the means
        versus = claims.loc[(pair.label, "graft_vs_random")]
        expected = late("it-to-pt", "module")["mean"] - late("it-to-pt", "random")["mean"]
        assert versus["measured"] == pytest.approx(expected, abs=1e-9)
        # 3 prompts are fewer than MIN_PROMPTS: the data cannot decide any claim
        assert set(claims.loc[pair.label, "verdict"]) <= {"inconclusive", "not run"}
        random = claims.loc[(pair.label, "random_late")]
        assert random["measured"] == pytest.approx(late("it-to-pt", "random")["mean"], abs=1e-9)
    # the paper's figures are shown beside the claims that have one
    assert claims.loc[("tiny", "graft_late"), "paper"] == "+0.34 nats"


def test_outputs_exist_and_the_study_name_is_escaped(study):
    _, spec, _ = study
    out = spec.out_dir
    for name in ("figure1_convergence.html", "figure2_grafts.html"):
        assert (out / "figures" / name).is_file()
    assert (out / "commitment_delay.csv").is_file()
    page = (out / "report.html").read_text()
    assert "two &lt;small&gt; pairs" in page and "<small>" not in page
    for pair in spec.pairs:
        assert (out / pair.label / "report.html").is_file()
        assert f"{pair.label}/report.html" in page


@pytest.mark.skipif(find_browser() is None, reason="no Chromium: install Debian's chromium")
def test_study_report_and_figures_render_in_chromium(study):
    from PIL import Image, ImageStat

    _, spec, _ = study
    out = spec.out_dir
    dom = rendered_dom(out / "report.html")
    assert "<table" in dom and "<iframe" in dom and "graft_vs_random" in dom
    for name in ("figure1_convergence", "figure2_grafts"):
        assert "main-svg" in rendered_dom(out / "figures" / f"{name}.html")
        image = Image.open(out / "figures" / f"{name}.png").convert("L")
        assert ImageStat.Stat(image).stddev[0] > 5  # a drawn figure, not a blank page


def _study_process(path: Path) -> subprocess.Popen:
    code = "import sys; from hooklab.cli import main; sys.exit(main(sys.argv[1:]))"
    return subprocess.Popen(
        [sys.executable, "-c", code, "study", "run", str(path), "--no-pair-reports"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


def test_killed_and_resumed_study_gives_identical_tables(study, tmp_path):
    reference_path, reference, _ = study
    path = write_study(tmp_path, tmp_path / "pairs")
    spec = load_study(path)
    process = _study_process(path)
    deadline = time.time() + 300
    while time.time() < deadline and process.poll() is None:
        if list(spec.out_dir.glob("*/*/parts/part-*.json")):
            break
        time.sleep(0.02)
    assert process.poll() is None, "the study finished before it could be killed"
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (spec.out_dir / "claims.csv").exists()
    assert _study_process(path).wait(timeout=600) == 0
    for name in ("convergence_gap", "effects", "commitment", "summary_layers"):
        pd.testing.assert_frame_equal(
            pd.read_csv(spec.out_dir / "tables" / f"{name}.csv"),
            pd.read_csv(reference.out_dir / "tables" / f"{name}.csv"),
        )
    pd.testing.assert_frame_equal(
        pd.read_csv(spec.out_dir / "claims.csv"), pd.read_csv(reference.out_dir / "claims.csv")
    )
    for (_, experiment, mine), (_, _, theirs) in zip(_runs(spec), _runs(reference), strict=True):
        table = f"{experiment}.parquet"
        pd.testing.assert_frame_equal(
            pd.read_parquet(mine / table), pd.read_parquet(theirs / table)
        )


def test_ray_executor_runs_one_task_per_pair_with_the_local_tables(study, tmp_path):
    ray = pytest.importorskip("ray", reason="Ray is an optional extra: pip install 'hooklab[ray]'")
    _, reference, _ = study
    path = tmp_path / "ray.toml"
    path.write_text(
        '[study]\nname = "ray"\nout = "out"\nseed = 1\n'
        + "".join(f'[[study.pairs]]\nname = "tiny"\ndevice = "cpu"\nlabel = "{x}"\n' for x in "ab")
        + '[study.experiments.readout]\nconditions = ["native", "same_history"]\n'
        "max_new_tokens = 3\n[study.prompts]\nlimit = 3\n"
        '[study.execution]\npart_size = 1\nexecutor = "ray"\nnum_gpus = 0\n'
    )
    spec = load_study(path)
    try:
        runs = run_study(spec, study_file=path, progress=False, pair_reports=False)
    finally:
        ray.shutdown()
    assert [(r.label, r.experiment) for r in runs] == [("a", "readout"), ("b", "readout")]
    expected = pd.read_parquet(reference.run_dir("tiny", "readout") / "readout.parquet")
    floats = [c for c in expected.columns if expected[c].dtype.kind == "f"]
    for label in "ab":
        table = pd.read_parquet(spec.run_dir(label, "readout") / "readout.parquet")
        # the same sequences and tokens exactly; metrics to float32 noise (a Ray worker runs
        # torch on one thread, which sums in another order)
        others = [c for c in expected.columns if c not in floats]
        pd.testing.assert_frame_equal(table[others], expected[others])
        pd.testing.assert_frame_equal(
            table[floats], expected[floats], check_exact=False, rtol=1e-4, atol=1e-5
        )
    assert (spec.out_dir / "claims.csv").is_file()
