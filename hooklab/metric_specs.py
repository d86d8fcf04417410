"""The metric table: one :class:`MetricSpec` per lens metric (docs/definitions.md).

Every place that needs to know about metrics (which are float, what an unread position holds,
which need a target token or a teacher, which are summarised by default, which are opt-in)
reads :data:`METRICS`. The core metrics are computed together by the fused reductions of
:func:`hooklab.metrics.layer_metrics`; an *extension* metric is one entry here plus its
``kernel``, a function of one layer-versus-final :class:`Comparison`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from jaxtyping import Float

from hooklab.errors import HooklabError

if TYPE_CHECKING:
    from hooklab.metrics import FinalDistribution

__all__ = [
    "NEEDS",
    "Comparison",
    "MetricSpec",
    "METRICS",
    "SUMMARY_METRICS",
    "metric_names",
    "check_extra_metrics",
]

#: What a metric may need beyond a layer's logits and the final distribution.
NEEDS = ("target", "teacher")


@dataclass(frozen=True)
class Comparison:
    """One layer against one final distribution at a chunk of ``n`` positions (all float32).

    Attributes:
        logprobs: [n, d_vocab] the layer's log-probabilities (read only).
        probs: [n, d_vocab] the layer's probabilities (read only).
        final: the final distribution.
        scratch: [n, d_vocab] free buffer.
        buffer: [n, d_vocab] a second free buffer.
    """

    logprobs: Float[torch.Tensor, "n d_vocab"]
    probs: Float[torch.Tensor, "n d_vocab"]
    final: FinalDistribution
    scratch: Float[torch.Tensor, "n d_vocab"]
    buffer: Float[torch.Tensor, "n d_vocab"]


@dataclass(frozen=True)
class MetricSpec:
    """One metric.

    Attributes:
        name: the column name.
        dtype: torch dtype of its values.
        fill: what an unread position (or one without what the metric needs) holds.
        needs: any of :data:`NEEDS`; the metric is computed only when they are given.
        summary: summarised by default (:data:`SUMMARY_METRICS`).
        opt_in: computed only when asked for by name (costly extensions).
        kernel: for extension metrics, the [n] values of a :class:`Comparison`; ``None`` for
            the core metrics of :func:`hooklab.metrics.layer_metrics`.
    """

    name: str
    dtype: torch.dtype
    fill: float | int | bool
    needs: frozenset[str] = frozenset()
    summary: bool = False
    opt_in: bool = False
    kernel: Callable[[Comparison], torch.Tensor] | None = None

    def missing(self, values: torch.Tensor) -> torch.Tensor:
        """Where ``values`` hold :attr:`fill` (bool, same shape)."""
        if isinstance(self.fill, float) and math.isnan(self.fill):
            return torch.isnan(values)
        return values == self.fill


def _js_to_final(c: Comparison) -> Float[torch.Tensor, " n"]:
    # JS(p, q) = 0.5 KL(p || m) + 0.5 KL(q || m), m = (p + q) / 2, in nats. log m =
    # max(log p, log q) + log1p(exp(-|log p - log q|)) - log 2 stays finite where both
    # probabilities underflow, and equals log p exactly where p = q (so JS is exactly 0 there).
    log_m = torch.sub(c.logprobs, c.final.logprobs, out=c.buffer).abs_().neg_().exp_()
    log_m.log1p_().sub_(math.log(2.0))
    log_m.add_(torch.maximum(c.logprobs, c.final.logprobs, out=c.scratch))
    to_p = torch.sub(c.logprobs, log_m, out=c.scratch).mul_(c.probs).sum(dim=-1)
    to_q = torch.sub(c.final.logprobs, log_m, out=c.scratch).mul_(c.final.probs).sum(dim=-1)
    return to_p.add_(to_q).mul_(0.5).clamp_min_(0.0)


_NAN = float("nan")
_TARGET = frozenset({"target"})

METRICS: dict[str, MetricSpec] = {
    spec.name: spec
    for spec in (
        MetricSpec("kl_to_final", torch.float32, _NAN, summary=True),
        MetricSpec("kl_to_teacher", torch.float32, _NAN, needs=frozenset({"teacher"})),
        MetricSpec("kl_final_to_layer", torch.float32, _NAN, summary=True),
        MetricSpec("entropy", torch.float32, _NAN, summary=True),
        MetricSpec("top1_agree", torch.bool, False, summary=True),
        MetricSpec("final_top1_rank", torch.int64, -1, summary=True),
        MetricSpec("final_top1_prob", torch.float32, _NAN, summary=True),
        MetricSpec("target_logprob", torch.float32, _NAN, needs=_TARGET),
        MetricSpec("target_rank", torch.int64, -1, needs=_TARGET),
        MetricSpec("js_to_final", torch.float32, _NAN, opt_in=True, kernel=_js_to_final),
    )
}

#: Metrics summarised by default.
SUMMARY_METRICS: tuple[str, ...] = tuple(s.name for s in METRICS.values() if s.summary)


def check_extra_metrics(extra: Iterable[str], argument: str = "metrics") -> tuple[str, ...]:
    """``extra`` as a tuple, refusing names that are not opt-in metrics."""
    extra = tuple(extra)
    allowed = [s.name for s in METRICS.values() if s.opt_in]
    bad = [name for name in extra if name not in allowed]
    if bad:
        raise HooklabError(
            f"{argument}={','.join(bad)}: not an opt-in metric; choose from {', '.join(allowed)} "
            "(the other metrics are always computed)."
        )
    return extra


def metric_names(available: Iterable[str] = NEEDS, extra: Iterable[str] = ()) -> list[str]:
    """Names computed when ``available`` (subset of :data:`NEEDS`) is given, in table order:
    every metric that is not opt-in and needs nothing missing, plus the opt-in ``extra``."""
    available, extra = set(available), set(check_extra_metrics(extra))
    return [
        s.name
        for s in METRICS.values()
        if s.needs <= available and (not s.opt_in or s.name in extra)
    ]
