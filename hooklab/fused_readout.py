"""The fused readout: the per-chunk lens metrics in a few passes over the vocabulary.

The reference path (:func:`hooklab.metrics.layer_metrics`) works in place in a
:class:`~hooklab.metrics.Workspace`, one torch operation per step: about a dozen passes over
each [n, d_vocab] block. That is the fast way on a CPU (the slices stay in the cache), but on a
GPU each pass is a round trip to memory, and at a 262k vocabulary the passes cost more than the
unembedding GEMM. Here the same metrics are written out of place, as pure functions of the
logits, so that ``torch.compile`` fuses them: one reduction pass for the maximum and the ranks,
one for the normaliser, one per final distribution for both KLs (the log-probabilities are
recomputed on the fly, never stored).

Which path runs is a :data:`BACKENDS` entry: ``HOOKLAB_READOUT=reference|fused|auto`` (default
``auto``: fused on CUDA, the reference everywhere else) or the ``backend`` argument of
:func:`hooklab.stream.read_variants`. The reference path's numbers are unchanged by this module.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any

import torch
from jaxtyping import Float, Int

from hooklab.errors import HooklabError
from hooklab.metric_specs import METRICS, Comparison
from hooklab.metrics import FinalDistribution, Workspace, final_distribution, layer_metrics

__all__ = [
    "ReadoutBackend",
    "BACKENDS",
    "READOUT_ENV",
    "choose_backend",
    "fused_final_distribution",
    "fused_layer_metrics",
]

#: Environment variable that forces a backend (``reference``, ``fused`` or ``auto``).
READOUT_ENV = "HOOKLAB_READOUT"


def _log_normaliser(z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    # [n] row maximum, its argmax and log-sum-exp of a float32 block.
    top, top1 = z.max(dim=-1)
    lse = top + torch.exp(z - top.unsqueeze(1)).sum(dim=-1).log()
    return top1, lse, top


def _core(
    logits: torch.Tensor,
    targets: torch.Tensor | None,
    teacher: torch.Tensor | None,
) -> dict[str, torch.Tensor]:
    """The layer-only reductions: top-1, normaliser, entropy, target and teacher metrics."""
    z = logits.float()
    top1, lse, _ = _log_normaliser(z)
    logp = z - lse.unsqueeze(1)
    p = torch.exp(logp)
    out = {"top1": top1, "lse": lse, "entropy": -(p * logp).sum(dim=-1)}
    if targets is not None:
        chosen = z.gather(1, targets.unsqueeze(1))
        out["target_rank"] = (z > chosen).sum(dim=-1)
        out["target_logprob"] = chosen.squeeze(1) - lse
    if teacher is not None:
        out["kl_to_teacher"] = (p * (logp - teacher)).sum(dim=-1).clamp_min(0.0)
    return out


def _compare(
    logits: torch.Tensor,
    lse: torch.Tensor,
    top1: torch.Tensor,
    final_logprobs: torch.Tensor,
    final_probs: torch.Tensor,
    final_top1: torch.Tensor,
) -> dict[str, torch.Tensor]:
    """One layer against one final distribution: both KLs in one pass, rank, agreement."""
    z = logits.float()
    logp = z - lse.unsqueeze(1)
    difference = logp - final_logprobs
    at_top = z.gather(1, final_top1.unsqueeze(1))
    return {
        "final_top1_rank": (z > at_top).sum(dim=-1),
        "top1_agree": top1 == final_top1,
        "final_top1_prob": torch.exp(at_top.squeeze(1) - lse),
        "kl_final_to_layer": (-(final_probs * difference).sum(dim=-1)).clamp_min(0.0),
        "kl_to_final": (torch.exp(logp) * difference).sum(dim=-1).clamp_min(0.0),
    }


def _own_final(logits: torch.Tensor, lse: torch.Tensor, top1: torch.Tensor) -> dict[str, Any]:
    """A final layer against its own final distribution: exactly no divergence."""
    z = logits.float()
    zeros = torch.zeros_like(lse)
    at_top = z.gather(1, top1.unsqueeze(1))
    return {
        "final_top1_rank": (z > at_top).sum(dim=-1),
        "top1_agree": torch.ones_like(top1, dtype=torch.bool),
        "final_top1_prob": torch.exp(at_top.squeeze(1) - lse),
        "kl_final_to_layer": zeros,
        "kl_to_final": zeros.clone(),
    }


def _normalise(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """[n, d_vocab] log-probabilities and probabilities, and the [n] top-1 of a block."""
    z = logits.float()
    top1, lse, _ = _log_normaliser(z)
    logp = z - lse.unsqueeze(1)
    return logp, torch.exp(logp), top1


@dataclass(frozen=True)
class _Kernels:
    core: Callable[..., dict[str, torch.Tensor]]
    compare: Callable[..., dict[str, torch.Tensor]]
    own: Callable[..., dict[str, Any]]
    normalise: Callable[..., tuple[torch.Tensor, torch.Tensor, torch.Tensor]]


_EAGER = _Kernels(_core, _compare, _own_final, _normalise)


class _Compiled:
    """A kernel through ``torch.compile`` (dynamic row counts: chunks and slices vary) that
    falls back to the same function uncompiled, with a warning, if compiling it fails (no
    compiler, an unsupported device): same numbers, only slower."""

    def __init__(self, fn: Callable[..., Any]) -> None:
        self.fn = fn
        self.compiled: Callable[..., Any] | None = torch.compile(fn, dynamic=True)

    def __call__(self, *args: Any) -> Any:
        if self.compiled is None:
            return self.fn(*args)
        try:
            return self.compiled(*args)
        except Exception as error:  # dynamo / inductor raise many types
            if isinstance(error, torch.OutOfMemoryError):
                raise
            warnings.warn(
                f"torch.compile of the fused readout's {self.fn.__name__} failed "
                f"({type(error).__name__}: {str(error)[:200]}); running it uncompiled",
                RuntimeWarning,
                stacklevel=2,
            )
            self.compiled = None
            return self.fn(*args)


@cache
def _compiled() -> _Kernels:
    """The kernels through ``torch.compile``, made once per process."""
    return _Kernels(*(_Compiled(fn) for fn in (_core, _compare, _own_final, _normalise)))


def _kernels(compiled: bool | None, device: torch.device) -> _Kernels:
    if compiled is None:
        compiled = device.type == "cuda"
    return _compiled() if compiled else _EAGER


def fused_final_distribution(
    logits: Float[torch.Tensor, "n d_vocab"],
    workspace: Workspace | None = None,
    slot: int = 0,
    offset: int = 0,
    *,
    compiled: bool | None = None,
) -> FinalDistribution:
    """:func:`hooklab.metrics.final_distribution` by the fused kernels (same arguments; the
    result is stored in ``workspace`` slot ``slot`` when one is given)."""
    logprobs, probs, top1 = _kernels(compiled, logits.device).normalise(logits)
    if workspace is not None:
        n = logits.shape[0]
        lp_buffer, p_buffer = (b[offset : offset + n] for b in workspace.finals[slot])
        logprobs, probs = lp_buffer.copy_(logprobs), p_buffer.copy_(probs)
    return FinalDistribution(logprobs=logprobs, probs=probs, top1=top1)


def _extras(
    logits: torch.Tensor, lse: torch.Tensor, final: FinalDistribution, extra: Sequence[str]
) -> dict[str, torch.Tensor]:
    """Opt-in metrics through their kernels (not fused: they are rare and costly anyway)."""
    if not extra:
        return {}
    logp = logits.float() - lse.unsqueeze(1)
    probs = torch.exp(logp)
    comparison = Comparison(logp, probs, final, torch.empty_like(logp), torch.empty_like(logp))
    return {name: METRICS[name].kernel(comparison) for name in extra}  # type: ignore[misc]


def fused_layer_metrics(
    logits: Float[torch.Tensor, "n d_vocab"],
    finals: list[FinalDistribution],
    targets: Int[torch.Tensor, " n"] | None = None,
    workspace: Workspace | None = None,  # noqa: ARG001 - same signature as the reference
    *,
    teacher_logprobs: Float[torch.Tensor, "n d_vocab"] | None = None,
    extra: Sequence[str] = (),
    own_final: bool = False,
    compiled: bool | None = None,
) -> list[dict[str, torch.Tensor]]:
    """:func:`hooklab.metrics.layer_metrics` in a few fused passes; ``logits`` is not changed.

    Args:
        logits: [n, d_vocab] logits in any float dtype (bfloat16 is read as is and accumulated
            in float32).
        own_final: ``logits`` are the final layer of the (single) final in ``finals``: its
            divergences are exactly 0, as on the reference path.
        compiled: run through ``torch.compile``; default on CUDA only.
    """
    kernels = _kernels(compiled, logits.device)
    shared = kernels.core(logits, targets, teacher_logprobs)
    top1, lse = shared.pop("top1"), shared.pop("lse")
    outs = []
    for final in finals:
        if own_final:
            out = kernels.own(logits, lse, top1)
        else:
            out = kernels.compare(logits, lse, top1, final.logprobs, final.probs, final.top1)
        out.update(shared)
        out.update(_extras(logits, lse, final, extra))
        outs.append(out)
    return outs


def _reference_layer_metrics(*args: Any, own_final: bool = False, **kwargs: Any) -> Any:
    # the reference path's own final is exact by construction (same operations, same shapes)
    del own_final
    return layer_metrics(*args, **kwargs)


@dataclass(frozen=True)
class ReadoutBackend:
    """How a chunk's metrics are computed.

    Attributes:
        name: registry key.
        final_distribution: as :func:`hooklab.metrics.final_distribution`.
        layer_metrics: as :func:`hooklab.metrics.layer_metrics`, plus ``own_final``.
    """

    name: str
    final_distribution: Callable[..., FinalDistribution]
    layer_metrics: Callable[..., list[dict[str, torch.Tensor]]]


BACKENDS: dict[str, ReadoutBackend] = {
    backend.name: backend
    for backend in (
        ReadoutBackend("reference", final_distribution, _reference_layer_metrics),
        ReadoutBackend("fused", fused_final_distribution, fused_layer_metrics),
    )
}


def choose_backend(device: torch.device | str, name: str | None = None) -> ReadoutBackend:
    """The backend ``name`` (default ``$HOOKLAB_READOUT``, else ``auto``) for ``device``:
    ``auto`` is ``fused`` on CUDA and ``reference`` on every other device."""
    name = name or os.environ.get(READOUT_ENV) or "auto"
    if name == "auto":
        name = "fused" if torch.device(device).type == "cuda" else "reference"
    if name not in BACKENDS:
        raise HooklabError(
            f"readout backend {name!r}: choose one of auto, {', '.join(BACKENDS)} "
            f"(argument backend= or ${READOUT_ENV})"
        )
    return BACKENDS[name]
