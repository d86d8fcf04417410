"""Studies: several experiments on several PT/IT pairs as one resumable job, with cross-pair
figures, a claims table and a report (see ``docs/study.md``)."""

from hooklab.study.claims import evaluate_claims, verdict
from hooklab.study.execute import StudyRun, run_pair, run_study
from hooklab.study.plan import (
    Calibration,
    CostModel,
    calibrate,
    format_calibration,
    format_plan,
    pair_size,
    plan_study,
)
from hooklab.study.report import write_study_outputs
from hooklab.study.spec import StudyPair, StudySpec, load_study

__all__ = [
    "Calibration",
    "CostModel",
    "calibrate",
    "format_calibration",
    "StudyPair",
    "StudyRun",
    "StudySpec",
    "evaluate_claims",
    "format_plan",
    "load_study",
    "pair_size",
    "plan_study",
    "run_pair",
    "run_study",
    "verdict",
    "write_study_outputs",
]
