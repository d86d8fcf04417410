"""``hooklab study plan``: what a study will cost, before any weights load.

Per pair and experiment: forward passes, rows and disk come from the experiment's own
:meth:`~hooklab.experiment.Experiment.plan`; tokens, GPU memory and GPU-hours from a stated
cost model (:class:`CostModel`, the ``[study.cost]`` table):

* tokens = forward passes x (``prompt_tokens`` + the config's ``max_new_tokens``): every pass
  is counted as a full sequence (an upper bound where generation reuses a KV cache);
* FLOPs = 2 x active parameters x tokens (the usual forward-pass estimate; attention's
  sequence-length term is left out; for a mixture of experts only the routed experts a token
  uses count) + the lens readout, 2 x d_model x d_vocab per layer and read position, with
  forward passes x ``max_new_tokens`` read positions (an upper bound: generation steps are
  not read);
* GPU-hours = FLOPs / (``peak_tflops`` x 1e12 x ``utilisation``) / 3600;
* GPU memory = weights (parameters x dtype bytes, both sides unless one is offloaded) +
  activations: the residual stream of every layer in float32 for the batch (both sides),
  one float32 ``[batch, seq, d_vocab]`` logits tensor, and 256 MiB of lens chunk buffers.

Calibration (:func:`calibrate`, ``hooklab study plan SPEC --measured``): once runs have
finished, each run's measured seconds (the sum of its parts' ``seconds`` in ``manifest.json``,
compute only: loading is not counted) is set beside the estimate, and the utilisation that
would have made the estimate exact, ``utilisation x estimated / measured``, is printed per run
with its median over runs: the value to put in ``[study.cost] utilisation`` for the next
study on the same hardware.

Parameter counts come from ``paper_pairs.json`` for the paper pairs (no hub access), and for
folders from their config, instantiated on PyTorch's ``meta`` device (no weights).
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch

from hooklab.config import Config
from hooklab.errors import HooklabError
from hooklab.study.spec import StudyPair, StudySpec

__all__ = [
    "CostModel",
    "PairSize",
    "PlanRow",
    "Calibration",
    "pair_size",
    "plan_study",
    "format_plan",
    "calibrate",
    "format_calibration",
]

_GIB = 2**30
_DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


@dataclass(frozen=True)
class CostModel(Config):
    """``[study.cost]``: the assumptions of the GPU-time and memory estimates."""

    section: ClassVar[str] = "study.cost"

    peak_tflops: float = 989.0
    """Peak dense bf16 TFLOP/s of one GPU (989: NVIDIA H100 SXM)."""
    utilisation: float = 0.4
    """Fraction of the peak sustained (0.4 = 40%)."""
    prompt_tokens: int = 64
    """Assumed tokens of a (chat-templated) prompt."""

    def __post_init__(self) -> None:
        if (
            not 0 < self.peak_tflops < math.inf
            or not 0 < self.utilisation <= 1
            or self.prompt_tokens < 1
        ):
            raise HooklabError(
                f"study.cost: peak_tflops={self.peak_tflops}, utilisation={self.utilisation}, "
                f"prompt_tokens={self.prompt_tokens}: peak_tflops must be finite and > 0, "
                "utilisation in (0, 1], prompt_tokens >= 1."
            )

    def describe(self) -> str:
        return (
            f"cost model: FLOPs = 2 x active params x tokens per forward pass + lens readout "
            f"2 x d_model x d_vocab x layers x (passes x max_new_tokens); tokens per pass "
            f"= {self.prompt_tokens} prompt tokens + max_new_tokens; GPU-hours = FLOPs / "
            f"({self.peak_tflops:g} TFLOP/s peak x {self.utilisation:.0%} sustained); memory = "
            "weights x dtype bytes + float32 residual stream of every layer + one float32 logits "
            "tensor + 256 MiB lens buffers (per batch)."
        )


@dataclass(frozen=True)
class PairSize:
    """What the plan knows of a pair's model (one side)."""

    n_params: int
    n_active_params: int
    n_layers: int
    d_model: int
    d_vocab: int
    source: str
    """'catalog' or 'config'."""
    n_ctx: int | None = None
    """The model's context length (``max_position_embeddings``), where known."""


def _active(n_params: int, shape: dict[str, Any]) -> int:
    """Parameters a token uses: for routed experts only ``num_experts_per_tok`` of them."""
    routed, used = shape.get("n_routed_experts"), shape.get("num_experts_per_tok")
    width = shape.get("moe_intermediate_size")
    if not (routed and used and width):
        return n_params
    moe_layers = int(shape["num_hidden_layers"]) - int(shape.get("first_k_dense_replace", 0))
    per_expert = 3 * int(shape["hidden_size"]) * int(width)  # gate, up and down projections
    return n_params - (int(routed) - int(used)) * per_expert * moe_layers


def _context(shape: dict[str, Any]) -> int | None:
    value = shape.get("max_position_embeddings")
    return int(value) if value else None


def pair_size(pair: StudyPair) -> PairSize:
    """Parameter count and shape of ``pair``'s models, without weights."""
    from hooklab.catalog import paper_pairs

    name = (pair.pair.name or "").strip().lower()
    if name in paper_pairs():
        entry = paper_pairs()[name]
        shape = entry.shape
        n = entry.n_params_language_model
        source = "catalog"
    else:
        import transformers

        from hooklab.architectures import hf_text_config
        from hooklab.pair import check_pair

        kwargs = {**pair.pair._kwargs(), "device": None}  # a plan may be made off the GPU
        config = hf_text_config(check_pair(**kwargs).pt_config)
        with torch.device("meta"):
            model = transformers.AutoModelForCausalLM.from_config(config)
        n = sum(p.numel() for p in model.parameters())
        shape = config.to_dict()
        source = "config"
    return PairSize(
        n_params=int(n),
        n_active_params=int(_active(int(n), shape)),
        n_layers=int(shape["num_hidden_layers"]),
        d_model=int(shape["hidden_size"]),
        d_vocab=int(shape["vocab_size"]),
        source=source,
        n_ctx=_context(shape),
    )


@dataclass(frozen=True)
class PlanRow:
    """The estimate of one (pair, experiment) run."""

    pair: str
    experiment: str
    n_prompts: int
    n_layers: int
    forward_passes: int
    tokens: int
    rows: int
    disk_mb: float
    weights_gib: float
    activations_gib: float
    gpu_hours: float

    @property
    def gpu_memory_gib(self) -> float:
        return self.weights_gib + self.activations_gib


def _check_context(study: StudySpec, pair: StudyPair, size: PairSize, cost: CostModel) -> None:
    """Refuse responses that cannot fit the model's context with the assumed prompt."""
    if size.n_ctx is None:
        return
    for experiment in study.experiments:
        config = study.run_spec(pair, experiment, histories=False).experiment_config()
        new = max(int(getattr(config, f, 0) or 0) for f in ("max_new_tokens", "history_tokens"))
        if cost.prompt_tokens + new > size.n_ctx:
            raise HooklabError(
                f"study pair {pair.label!r}, {experiment}: {new} new tokens + "
                f"{cost.prompt_tokens} prompt tokens exceed the model's context of "
                f"{size.n_ctx} tokens; lower response_tokens (or max_new_tokens)."
            )


def plan_study(
    study: StudySpec, *, n_prompts: int | None = None, cost: CostModel | None = None
) -> list[PlanRow]:
    """Every run's estimate (validates the study; loads no weights). ``n_prompts`` replaces
    the prompt set's size (e.g. to price a larger set)."""
    if n_prompts is not None and (isinstance(n_prompts, bool) or n_prompts < 1):
        raise HooklabError(f"n_prompts={n_prompts}: price at least 1 prompt (or leave it out).")
    study.validate(check_devices=False)
    cost = cost or CostModel.from_dict(study.cost, section="study.cost")
    count = len(study.prompts.load()) if n_prompts is None else n_prompts
    rows = []
    for pair in study.pairs:
        size = pair_size(pair)
        _check_context(study, pair, size, cost)
        dtype_bytes = _DTYPE_BYTES[pair.pair.dtype]
        sides = 1 if pair.pair.offload else 2
        for experiment in study.experiments:
            spec = study.run_spec(pair, experiment, histories=False)
            config = spec.experiment_config()
            estimate = spec.kind.plan(config, count, size.n_layers)
            seq = cost.prompt_tokens + int(getattr(config, "max_new_tokens", 0))
            tokens = estimate.forward_passes * seq
            new = int(getattr(config, "max_new_tokens", 0))
            lens = 2 * size.d_model * size.d_vocab * size.n_layers * estimate.forward_passes * new
            flops = 2 * size.n_active_params * tokens + lens
            batch = int(getattr(config, "batch_size", 1))
            activations = (
                sides * batch * seq * (size.n_layers + 1) * size.d_model * 4
                + batch * seq * size.d_vocab * 4
                + 256 * 2**20
            )
            rows.append(
                PlanRow(
                    pair=pair.label,
                    experiment=experiment,
                    n_prompts=count,
                    n_layers=size.n_layers,
                    forward_passes=estimate.forward_passes,
                    tokens=tokens,
                    rows=estimate.rows,
                    disk_mb=estimate.megabytes,
                    weights_gib=sides * size.n_params * dtype_bytes / _GIB,
                    activations_gib=activations / _GIB,
                    gpu_hours=flops / (cost.peak_tflops * 1e12 * cost.utilisation) / 3600,
                )
            )
    return rows


def format_plan(rows: list[PlanRow], cost: CostModel) -> str:
    """The plan as a text table with totals, and the cost model's assumptions."""
    header = (
        f"{'pair':<18} {'experiment':<10} {'prompts':>7} {'layers':>6} {'fwd passes':>11} "
        f"{'tokens':>13} {'rows':>13} {'disk MB':>9} {'GPU mem GiB':>11} {'GPU-h':>8}"
    )
    lines = [header, "-" * len(header)]
    for r in rows:
        lines.append(
            f"{r.pair:<18} {r.experiment:<10} {r.n_prompts:>7} {r.n_layers:>6} "
            f"{r.forward_passes:>11,} {r.tokens:>13,} {r.rows:>13,} {r.disk_mb:>9.1f} "
            f"{r.gpu_memory_gib:>11.1f} {r.gpu_hours:>8.2f}"
        )
    lines.append("-" * len(header))
    memory = max((r.gpu_memory_gib for r in rows), default=0.0)
    lines.append(
        f"{'total':<18} {'':<10} {'':>7} {'':>6} {sum(r.forward_passes for r in rows):>11,} "
        f"{sum(r.tokens for r in rows):>13,} {sum(r.rows for r in rows):>13,} "
        f"{sum(r.disk_mb for r in rows):>9.1f} {memory:>11.1f} "
        f"{sum(r.gpu_hours for r in rows):>8.2f}"
    )
    lines += ["", cost.describe(), "GPU mem total: the largest run (weights + activations)."]
    return "\n".join(lines)


@dataclass(frozen=True)
class Calibration:
    """A finished run's estimate against its measured compute time."""

    row: PlanRow
    measured_seconds: float
    implied_utilisation: float
    """The utilisation at which the estimate would equal the measurement."""

    @property
    def estimated_seconds(self) -> float:
        return self.row.gpu_hours * 3600


def _measured_seconds(run_dir: Path) -> float | None:
    from hooklab.tables import read_manifest

    seconds = [p.get("seconds") for p in (read_manifest(run_dir) or {}).get("parts", [])]
    if not seconds or any(not isinstance(x, int | float) for x in seconds):
        return None
    return float(sum(seconds))


def calibrate(study: StudySpec, cost: CostModel | None = None) -> list[Calibration]:
    """Each finished run of ``study`` with its estimate (at the runs' own prompt count) and
    measured seconds; runs not finished yet are left out."""
    cost = cost or CostModel.from_dict(study.cost, section="study.cost")
    out = []
    for row in plan_study(study, cost=cost):
        measured = _measured_seconds(study.run_dir(row.pair, row.experiment))
        if measured is None or measured <= 0:
            continue
        implied = cost.utilisation * row.gpu_hours * 3600 / measured
        out.append(Calibration(row, measured, implied))
    return out


def format_calibration(calibrations: list[Calibration], cost: CostModel) -> str:
    """Estimated against measured seconds per finished run, and the implied utilisation."""
    if not calibrations:
        return "no finished runs to calibrate against (run the study first)."
    header = (
        f"{'pair':<18} {'experiment':<17} {'estimated s':>12} {'measured s':>11} "
        f"{'measured/est':>12} {'implied utilisation':>19}"
    )
    lines = [header, "-" * len(header)]
    for c in calibrations:
        lines.append(
            f"{c.row.pair:<18} {c.row.experiment:<17} {c.estimated_seconds:>12.3g} "
            f"{c.measured_seconds:>11.3g} {c.measured_seconds / c.estimated_seconds:>12.3g} "
            f"{c.implied_utilisation:>19.3g}"
        )
    median = statistics.median(c.implied_utilisation for c in calibrations)
    lines += [
        "",
        f"assumed: {cost.peak_tflops:g} TFLOP/s peak x {cost.utilisation:.0%}; measured runs "
        f"imply utilisation {median:.3g} (median over {len(calibrations)} runs): set "
        "[study.cost] utilisation to it to price the next study on this hardware.",
    ]
    return "\n".join(lines)
