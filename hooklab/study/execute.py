"""Running a study: every (pair, experiment) as an ordinary resumable run, then the study's
cross-pair tables, figures, claims and report.

Order per pair: ``readout`` first, then the other experiments; one that uses histories is
given the readout's folder, so IT's greedy responses are generated once per pair. A run whose
folder already has ``manifest.json`` is skipped (after checking that it is the same run). With
``execution.executor = "ray"`` each pair is one Ray task (``execution.num_gpus`` GPUs) running
its experiments in that order; otherwise pairs run one after the other here.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from hooklab.atomic import atomic_write_text
from hooklab.errors import HooklabError
from hooklab.prompts import prompt_set_hash
from hooklab.runs import load_spec, read_run_identity, run_spec
from hooklab.study.spec import StudySpec, load_study
from hooklab.tables import MANIFEST

__all__ = ["StudyRun", "check_study_folder", "run_study", "run_pair", "study_runs"]

STUDY_FILE = "study.toml"


@dataclass(frozen=True)
class StudyRun:
    """One finished run of a study."""

    label: str
    experiment: str
    folder: Path
    skipped: bool
    """It was complete before this call."""


def study_runs(study: StudySpec) -> list[tuple[str, str, Path]]:
    """``(label, experiment, folder)`` of every run, in running order."""
    return [
        (pair.label, experiment, study.run_dir(pair, experiment))
        for pair in study.pairs
        for experiment in study.experiments
    ]


def check_study_folder(study: StudySpec) -> None:
    """Refuse an out folder that holds something other than this study (nothing written).

    A study's folder is new, empty, or holds ``study.toml`` or a run of one of its pairs;
    any other folder may hold the user's own ``report.html`` or ``claims.csv``.
    """
    out = study.out_dir
    if out.exists() and not out.is_dir():
        raise HooklabError(f"study out={str(out)!r} is a file; name a folder for the study.")
    if not out.is_dir() or (out / STUDY_FILE).is_file():
        return
    if any(
        (out / label).is_dir() and any((out / label).glob("*/spec.toml"))
        for label in study.labels()
    ):
        return
    stray = sorted(p.name for p in out.iterdir() if not p.name.startswith("."))
    if stray:
        raise HooklabError(
            f"study out={str(out)!r} is not empty and holds no hooklab study "
            f"({', '.join(stray[:3])}{'…' if len(stray) > 3 else ''}): choose a new or empty "
            "folder (its files would be overwritten)."
        )


def _same_run(spec, folder: Path) -> None:
    """Refuse to skip a finished folder that holds another run than ``spec``: another spec,
    or the same spec over prompts whose files changed since (their content is compared)."""
    recorded = read_run_identity(folder).get("prompt_set_hash")
    if recorded != prompt_set_hash(spec.prompts.load()):
        raise HooklabError(
            f"{folder} holds a finished run over other prompts than the study's now (the "
            f"prompt file {spec.prompts.source!r} changed since: prompt_set_hash {recorded} "
            "there); restore the file, or remove that run (or use another study out folder) "
            "to run it on the new prompts."
        )
    done = load_spec(folder / "spec.toml", out=str(folder)).to_dict()
    wanted = spec.to_dict()
    differences = [k for k in sorted(set(done) | set(wanted)) if done.get(k) != wanted.get(k)]
    if differences:
        raise HooklabError(
            f"{folder} holds a finished run that differs from the study's in "
            f"{', '.join(differences)}; use another study out folder or remove that run."
        )


def run_pair(study: StudySpec, label: str, *, progress: bool = True) -> list[StudyRun]:
    """Run (or resume) every experiment of one pair, readout first; returns the runs."""
    pair = study.pair(label)
    done = []
    for experiment in study.experiments:
        spec = study.run_spec(pair, experiment)
        folder = Path(spec.out)
        if (folder / MANIFEST).is_file():
            _same_run(spec, folder)
            done.append(StudyRun(label, experiment, folder, True))
            continue
        if progress:
            print(f"[{study.name}] {label}: {experiment} -> {folder}", file=sys.stderr)
        table = run_spec(spec, progress=progress)
        if table is None:  # pragma: no cover - a local run with every shard always merges
            raise HooklabError(f"{folder}: the run did not finish; run the study again.")
        done.append(StudyRun(label, experiment, folder, False))
    return done


def _ray_pair(study_file: str, out: str, label: str) -> list[StudyRun]:
    return run_pair(load_study(study_file, out=out), label, progress=False)


def run_study(
    study: StudySpec,
    *,
    study_file: str | Path | None = None,
    pairs: list[str] | None = None,
    progress: bool = True,
    outputs: bool = True,
    pair_reports: bool = True,
) -> list[StudyRun]:
    """Validate the whole study, run every unfinished (pair, experiment), then write the
    cross-pair tables, figures, claims and report (``outputs``; ``pair_reports``: also each
    pair's own report of its runs, figures included).

    ``study_file`` (the TOML the study came from) is needed by the Ray executor: each worker
    reads it. ``pairs`` restricts the run to those labels (the outputs cover the finished ones).
    """
    study.validate()
    labels = study.labels() if pairs is None else pairs
    for label in labels:
        study.pair(label)
    check_study_folder(study)
    out = study.out_dir
    out.mkdir(parents=True, exist_ok=True)
    if study_file is not None:
        atomic_write_text(out / STUDY_FILE, Path(study_file).read_text(encoding="utf-8"))
    runs: list[StudyRun] = []
    if study.execution.executor == "ray":
        if study_file is None:
            raise HooklabError(
                "execution.executor='ray': run the study from its file (hooklab study run "
                "SPEC, or run_study(..., study_file=SPEC)) so that each worker can read it."
            )
        try:
            import ray
        except ImportError:
            raise HooklabError(
                "execution.executor='ray' needs Ray: pip install 'hooklab[ray]'."
            ) from None
        ray.init(
            address=study.execution.ray_address,
            ignore_reinit_error=True,
            include_dashboard=False,
            log_to_driver=False,
        )
        task = ray.remote(num_gpus=study.execution.num_gpus)(_ray_pair)
        path = str(Path(study_file).resolve())
        for result in ray.get([task.remote(path, str(out), label) for label in labels]):
            runs += result
    else:
        for label in labels:
            runs += run_pair(study, label, progress=progress)
    if outputs:
        from hooklab.study.report import write_study_outputs

        write_study_outputs(study, pair_reports=pair_reports)
    return runs
