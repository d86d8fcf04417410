"""Batch runs: specs, resumable part storage, sharding, executors (local, Ray), provenance."""

from hooklab.runs.execute import (
    RunPlan,
    is_finished,
    merge_run,
    plan_run,
    read_run_identity,
    run_info,
    run_shard,
    run_spec,
)
from hooklab.runs.spec import ExecutionSpec, PairSpec, PromptSpec, RunSpec, load_spec
from hooklab.runs.storage import PartStore, PromptPart, parse_shard, plan_parts, select_shard

__all__ = [
    "ExecutionSpec",
    "PairSpec",
    "PromptPart",
    "PartStore",
    "PromptSpec",
    "RunPlan",
    "RunSpec",
    "is_finished",
    "load_spec",
    "merge_run",
    "parse_shard",
    "plan_parts",
    "plan_run",
    "read_run_identity",
    "run_info",
    "run_shard",
    "run_spec",
    "select_shard",
]
