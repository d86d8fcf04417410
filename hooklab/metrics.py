"""Lens metrics (docs/definitions.md), computed as reductions over the vocabulary.

All in float32 log-space. ``kl_to_final`` is KL(p_layer ‖ p_final), the paper's primary metric;
ranks count strictly larger logits (0 = top), without sorting the vocabulary.

The hot path works in place in a :class:`Workspace` of preallocated [rows, d_vocab] buffers:
on a 262k vocabulary a fresh buffer per operation costs more (page faults) than the arithmetic.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from jaxtyping import Bool, Float, Int

from hooklab.metric_specs import METRICS, Comparison

__all__ = [
    "Workspace",
    "FinalDistribution",
    "final_distribution",
    "chunk_metrics",
    "layer_metrics",
    "teacher_distribution",
    "first_committed_layer",
    "late_layers",
    "layers_from_label",
    "layers_label",
    "LATE_START_DEPTH",
]


class Workspace:
    """Reusable float32 buffers for up to ``rows`` positions of a ``d_vocab`` vocabulary.

    ``logits`` holds ``layer_group`` layers' logits of the same positions ([layer_group * rows,
    d_vocab]), so that several layers are unembedded in one larger, faster matmul. There is one
    slot of final-distribution buffers per ``n_finals`` (a graft sweep compares the layers it
    shares with the ungrafted host against every window's final distribution), and one
    optional teacher buffer.
    """

    def __init__(
        self,
        rows: int,
        d_vocab: int,
        device: torch.device | str = "cpu",
        layer_group: int = 1,
        n_finals: int = 1,
    ):
        def buffer(rows_: int = rows) -> torch.Tensor:
            return torch.empty((rows_, d_vocab), dtype=torch.float32, device=device)

        self.rows = rows
        self.d_vocab = d_vocab
        self.layer_group = layer_group
        self.n_finals = n_finals
        self.logits = buffer(layer_group * rows)
        self.probs = buffer()
        self.scratch = buffer()
        self.finals = [(buffer(), buffer()) for _ in range(n_finals)]
        self._difference: torch.Tensor | None = None
        self._teacher: torch.Tensor | None = None

    def difference_buffer(self, n: int) -> torch.Tensor:
        """[n, d_vocab] buffer for log-probability differences against several finals."""
        if self._difference is None:
            self._difference = torch.empty_like(self.probs)
        return self._difference[:n]

    def teacher_buffer(self, n: int) -> torch.Tensor:
        """[n, d_vocab] buffer for a teacher's final log-probabilities (made on first use)."""
        if self._teacher is None:
            self._teacher = torch.empty_like(self.probs)
        return self._teacher[:n]

    @classmethod
    def like(cls, logits: torch.Tensor) -> Workspace:
        return cls(logits.shape[0], logits.shape[1], logits.device)

    @classmethod
    def plan(
        cls,
        d_vocab: int,
        n_layers: int,
        device: torch.device | str = "cpu",
        *,
        budget_bytes: int = 1 << 30,
        rows: int | None = None,
        max_rows: int | None = None,
        n_finals: int = 1,
    ) -> Workspace:
        """A workspace of about ``budget_bytes``: up to 8 layers per matmul, rows to fit.

        Its size depends on the vocabulary, the budget and ``n_finals``, never on the number of
        layers beyond the group of 8.
        """
        group = max(1, min(n_layers, 8))
        if rows is None:
            buffers = group + 5 + 2 * n_finals
            rows = max(1, budget_bytes // (4 * d_vocab * buffers))
        if max_rows is not None:
            rows = max(1, min(rows, max_rows))
        return cls(rows, d_vocab, device, layer_group=group, n_finals=n_finals)


@dataclass(frozen=True)
class FinalDistribution:
    """A final distribution at a chunk of positions, kept for every layer's metrics.

    Attributes:
        logprobs: [n, d_vocab] float32 log-probabilities.
        probs: [n, d_vocab] float32 probabilities.
        top1: [n] argmax token.
    """

    logprobs: Float[torch.Tensor, "n d_vocab"]
    probs: Float[torch.Tensor, "n d_vocab"]
    top1: Int[torch.Tensor, " n"]


def _dot(a: torch.Tensor, b: torch.Tensor, scratch: torch.Tensor) -> torch.Tensor:
    # Row-wise dot product: multiply into scratch, then a pairwise sum (~100x more accurate
    # over a 262k vocabulary than bmm's running float32 sum).
    return torch.mul(a, b, out=scratch).sum(dim=-1)


def _count_greater(z: torch.Tensor, threshold: torch.Tensor, scratch: torch.Tensor) -> torch.Tensor:
    # Per row, how many entries exceed the row's threshold. Comparing into a float buffer and
    # summing is 7x faster than summing a bool tensor (which converts to int64), and exact:
    # float32 holds integer counts exactly up to 2**24, far above any vocabulary.
    torch.gt(z, threshold.unsqueeze(1), out=scratch)
    return scratch.sum(dim=-1).to(torch.int64)


def _inside(view: torch.Tensor, buffer: torch.Tensor) -> bool:
    start = buffer.data_ptr()
    end = start + buffer.numel() * buffer.element_size()
    return start <= view.data_ptr() < end


def _log_softmax_(z: torch.Tensor, probs: torch.Tensor, top: torch.Tensor) -> None:
    # z <- log softmax(z) in place, probs <- softmax(z); top is z's row maximum. The final
    # distribution and every layer go through this same function, so identical logits give
    # bitwise identical results.
    z.sub_(top)
    torch.exp(z, out=probs)
    total = probs.sum(dim=-1, keepdim=True)
    z.sub_(total.log())
    probs.div_(total)


def final_distribution(
    logits: Float[torch.Tensor, "n d_vocab"],
    workspace: Workspace | None = None,
    slot: int = 0,
    offset: int = 0,
) -> FinalDistribution:
    """Log-probabilities and the top-1 of a final distribution, kept in ``workspace`` slot
    ``slot`` at rows ``offset:offset + n``. ``logits`` is copied, not changed."""
    workspace = workspace or Workspace.like(logits)
    n = logits.shape[0]
    logprobs, probs = (buffer[offset : offset + n] for buffer in workspace.finals[slot])
    logprobs.copy_(logits)
    top, top1 = logprobs.max(dim=-1)
    _log_softmax_(logprobs, probs, top.unsqueeze(1))
    return FinalDistribution(logprobs=logprobs, probs=probs, top1=top1)


def teacher_distribution(
    logits: Float[torch.Tensor, "n d_vocab"], workspace: Workspace
) -> Float[torch.Tensor, "n d_vocab"]:
    """Another model's final log-probabilities, in place in ``workspace.teacher_buffer``."""
    n = logits.shape[0]
    logprobs = workspace.teacher_buffer(n)
    if logits.data_ptr() != logprobs.data_ptr():
        logprobs.copy_(logits)
    _log_softmax_(logprobs, workspace.scratch[:n], logprobs.amax(dim=-1, keepdim=True))
    return logprobs


def layer_metrics(
    logits: Float[torch.Tensor, "n d_vocab"],
    finals: list[FinalDistribution],
    targets: Int[torch.Tensor, " n"] | None = None,
    workspace: Workspace | None = None,
    *,
    teacher_logprobs: Float[torch.Tensor, "n d_vocab"] | None = None,
    extra: Sequence[str] = (),
) -> list[dict[str, torch.Tensor]]:
    """All metrics of one layer at a chunk of positions, against each of ``finals``.

    The layer-only reductions (softmax, entropy, target, teacher) are done once; only the
    comparisons with a final distribution are repeated per final. ``logits`` may be a slice of
    ``workspace.logits`` (then it is overwritten with log-probabilities); otherwise it is copied
    there first. Returns, per final, [n] tensors keyed by metric name
    (:data:`hooklab.metric_specs.METRICS`): the target metrics only with ``targets``;
    ``kl_to_teacher``, KL(p_layer ‖ p_teacher), only with ``teacher_logprobs``; the opt-in
    metrics named in ``extra`` through their kernels.
    """
    n = logits.shape[0]
    workspace = workspace or Workspace.like(logits)
    z = logits
    if not _inside(logits, workspace.logits):
        z = workspace.logits[:n]
        z.copy_(logits)
    probs, scratch = workspace.probs[:n], workspace.scratch[:n]
    rows = torch.arange(n, device=z.device)
    shared: dict[str, torch.Tensor] = {}
    outs: list[dict[str, torch.Tensor]] = [{} for _ in finals]
    # Ranks on the raw logits, before any arithmetic could merge near-ties.
    for out, final in zip(outs, finals, strict=True):
        out["final_top1_rank"] = _count_greater(z, z[rows, final.top1], scratch)
    if targets is not None:
        shared["target_rank"] = _count_greater(z, z[rows, targets], scratch)
    top, top1 = z.max(dim=-1)
    _log_softmax_(z, probs, top.unsqueeze(1))  # z is now log p
    shared["entropy"] = -_dot(probs, z, scratch)
    if targets is not None:
        shared["target_logprob"] = z[rows, targets]
    if teacher_logprobs is not None:
        torch.sub(z, teacher_logprobs, out=scratch)
        shared["kl_to_teacher"] = scratch.mul_(probs).sum(dim=-1).clamp_min_(0.0)
    for index, (out, final) in enumerate(zip(outs, finals, strict=True)):
        out.update(shared)
        out["top1_agree"] = top1 == final.top1
        out["final_top1_prob"] = probs[rows, final.top1]
        for name in extra:  # before the in-place difference below overwrites z
            buffer = workspace.difference_buffer(n)
            out[name] = METRICS[name].kernel(Comparison(z, probs, final, scratch, buffer))  # type: ignore[misc]
        # Both KLs from one difference of log-probabilities: summing p * (log p - log q) term
        # by term avoids the cancellation of two entropy-sized sums. With one final (or the
        # last one) the difference is taken in place.
        last = index == len(finals) - 1
        difference = (
            z.sub_(final.logprobs)
            if last
            else torch.sub(z, final.logprobs, out=workspace.difference_buffer(n))
        )
        out["kl_final_to_layer"] = (-_dot(final.probs, difference, scratch)).clamp_min_(0.0)
        out["kl_to_final"] = _dot(probs, difference, scratch).clamp_min_(0.0)
    return outs


def chunk_metrics(
    logits: Float[torch.Tensor, "n d_vocab"],
    final: FinalDistribution,
    targets: Int[torch.Tensor, " n"] | None = None,
    workspace: Workspace | None = None,
    *,
    teacher_logprobs: Float[torch.Tensor, "n d_vocab"] | None = None,
    extra: Sequence[str] = (),
) -> dict[str, torch.Tensor]:
    """All metrics of one layer at a chunk of positions against one final distribution."""
    return layer_metrics(
        logits, [final], targets, workspace, teacher_logprobs=teacher_logprobs, extra=extra
    )[0]


def first_committed_layer(
    committed: Bool[torch.Tensor, "... layer"],
) -> tuple[Int[torch.Tensor, "..."], Bool[torch.Tensor, "..."]]:
    """The smallest layer from which ``committed`` holds at every later layer.

    Args:
        committed: per layer, whether the commitment criterion holds (e.g. ``kl < tau``).

    Returns:
        ``(layer, never)``: the commitment layer, and whether the position never commits (the
        criterion fails at the last layer); such positions get ``n_layers - 1``.

    >>> first_committed_layer(torch.tensor([True, False, True, True]))
    (tensor(2), tensor(False))
    """
    n_layers = committed.shape[-1]
    # Suffix-AND: holds_from[l] is True when the criterion holds at l and every later layer.
    holds_from = committed.flip(-1).cumprod(dim=-1).flip(-1).bool()
    n_holding = holds_from.sum(dim=-1)
    never = n_holding == 0
    layer = torch.where(never, torch.full_like(n_holding, n_layers - 1), n_layers - n_holding)
    return layer, never


#: Default depth at which the late region starts: the last 25% of the stack by depth. The one
#: default of every read-out's late region (docs/definitions.md section 4); the late *window*
#: of interventions (grafts, steering) is a different thing, ``hooklab.graft.windows``.
LATE_START_DEPTH = 0.75


def late_layers(n_layers: int, late_start_depth: float = LATE_START_DEPTH) -> list[int]:
    """The late region of every read-out: layers of depth ``l / (L - 1) >= late_start_depth``.

    The one definition used by every experiment that averages a read-out over "the late
    layers" (readout, graft effects, token support, patching, opposition, attention entropy,
    steering's ``late_kl_to_final``, probes, study tables). The final layer (depth 1) is left
    out everywhere (its ``kl_to_final`` is 0 by construction under every lens, and one region
    keeps experiments comparable). When no other layer is that deep, the region is the layer
    before the final one, so it always holds at least one layer. Depths are compared with a
    tolerance of 1e-12 (``20 / 25`` is 0.8).

    Args:
        n_layers: ``L``, the number of layers (at least 2).
        late_start_depth: the smallest depth in the region, in [0, 1].

    >>> late_layers(32)  # depth 24/31 = 0.774 is the first >= 0.75 (23/31 = 0.742 is not)
    [24, 25, 26, 27, 28, 29, 30]
    >>> late_layers(6)  # depth 4/5 = 0.8; 3/5 = 0.6 is not late
    [4]
    >>> late_layers(4)  # only the final layer is that deep: the layer before it
    [2]
    >>> late_layers(6, late_start_depth=0.5)
    [3, 4]
    """
    if n_layers < 2:
        raise ValueError(f"n_layers={n_layers}: a late region needs at least two layers")
    if not 0.0 <= late_start_depth <= 1.0:
        raise ValueError(
            f"late_start_depth={late_start_depth}: expected a depth in [0, 1] (e.g. "
            f"{LATE_START_DEPTH} for the last 25% of layers)"
        )
    last = n_layers - 1
    threshold = late_start_depth - 1e-12
    layers = [layer for layer in range(last) if layer / last >= threshold]
    return layers or [last - 1]


def layers_from_label(label: str) -> list[int]:
    """The layers a :func:`layers_label` names (``"24-30"``, ``"4"``, ``"1,3"``).

    >>> layers_from_label("24-26"), layers_from_label("4"), layers_from_label("1,3")
    ([24, 25, 26], [4], [1, 3])
    """
    layers: list[int] = []
    for piece in str(label).split(","):
        if "-" in piece:
            first, last = piece.split("-")
            layers.extend(range(int(first), int(last) + 1))
        elif piece.strip():
            layers.append(int(piece))
    return layers


def layers_label(layers: Sequence[int]) -> str:
    """A short label of consecutive layers, as written in summary tables.

    >>> layers_label([4]), layers_label([24, 25, 26, 27, 28, 29, 30])
    ('4', '24-30')
    """
    if not layers:
        return ""
    layers = list(layers)
    if layers == list(range(layers[0], layers[-1] + 1)):
        return str(layers[0]) if len(layers) == 1 else f"{layers[0]}-{layers[-1]}"
    return ",".join(map(str, layers))
