"""The streaming lens readout: every metric at every (prompt, position, layer), never holding
[layer, batch, pos, d_vocab] logits.

One forward pass keeps the residual stream ([layer, batch, pos, d_model], d_vocab / d_model times
smaller than one layer of logits). Then positions are taken in chunks of ``chunk_rows``; for
each chunk the final distribution is computed once and every layer is decoded, reduced to its
metrics and dropped. Peak extra memory is a few [chunk_rows, d_vocab] float32 buffers,
independent of the number of layers.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Bool, Float, Int

from hooklab.architectures import model_device, read_logits
from hooklab.forward import HookFn, residual_stream
from hooklab.fused_readout import ReadoutBackend, choose_backend
from hooklab.lens.base import Lens, LogitLens
from hooklab.metric_specs import METRICS, metric_names
from hooklab.metrics import (
    FinalDistribution,
    Workspace,
    teacher_distribution,
)
from hooklab.types import Bridge

__all__ = ["LensReadout", "read_lens", "read_residuals", "read_variants"]


@dataclass(frozen=True)
class LensReadout:
    """Metrics of one model at every read position and layer.

    Attributes:
        metrics: name -> [batch, pos, layer] tensor (float32, bool or int64), on the CPU.
            Unread positions hold NaN (float), False (bool) or -1 (int).
        read: [batch, pos] which positions were read.
        final_top1: [batch, pos] the model's own top-1 token at each position (-1 if unread).
        n_layers: layers of the model.
    """

    metrics: dict[str, torch.Tensor]
    read: Bool[torch.Tensor, "batch pos"]
    final_top1: Int[torch.Tensor, "batch pos"]
    n_layers: int


def read_lens(
    model: Bridge,
    tokens: Int[torch.Tensor, "batch pos"],
    lens: Lens | None = None,
    *,
    attention_mask: Int[torch.Tensor, "batch pos"] | None = None,
    read_mask: Bool[torch.Tensor, "batch pos"] | None = None,
    targets: Int[torch.Tensor, "batch pos"] | None = None,
    fwd_hooks: Sequence[HookFn] = (),
    chunk_rows: int | None = None,
    workspace: Workspace | None = None,
    metrics: Sequence[str] = (),
    backend: str | None = None,
) -> LensReadout:
    """Lens metrics of ``model`` on ``tokens`` (docs/definitions.md).

    Args:
        model: a TransformerBridge (any dtype; metrics are float32).
        tokens: [batch, pos] ids, right-padded when ragged.
        lens: a :class:`~hooklab.lens.Lens`; default the logit lens.
        attention_mask: [batch, pos] 1 for real tokens (right padding).
        read_mask: [batch, pos] positions to read; default every real token.
        targets: [batch, pos] a target token per position (e.g. the next token of a fixed
            history), -1 where there is none; adds ``target_logprob`` and ``target_rank``.
        fwd_hooks: extra hooks during the forward pass (e.g. a graft).
        chunk_rows: positions decoded at once (default: what fits a 1 GiB workspace, see
            :meth:`~hooklab.metrics.Workspace.plan`).
        workspace: buffers to reuse across calls; saves re-faulting fresh memory on every call
            on the CPU.
        metrics: opt-in metrics to add (see :data:`hooklab.metric_specs.METRICS`), e.g.
            ``("js_to_final",)``.
        backend: how each chunk's metrics are computed (:data:`hooklab.fused_readout.BACKENDS`):
            ``"reference"``, ``"fused"`` or ``"auto"`` (fused on CUDA); default
            ``$HOOKLAB_READOUT``, else ``"auto"``.
    """
    device = model_device(model)
    tokens = tokens.to(device)
    mask = None if attention_mask is None else attention_mask.to(device)
    read = torch.ones_like(tokens, dtype=torch.bool) if mask is None else mask.bool()
    if read_mask is not None:
        read = read & read_mask.to(device).bool()
    stream = residual_stream(model, tokens, attention_mask=mask, fwd_hooks=fwd_hooks)
    return read_residuals(
        model,
        stream.resid_post,
        read,
        lens,
        targets=targets,
        chunk_rows=chunk_rows,
        workspace=workspace,
        metrics=metrics,
        backend=backend,
    )


def read_residuals(
    model: Bridge,
    resid_post: Float[torch.Tensor, "layer batch pos d_model"],
    read: Bool[torch.Tensor, "batch pos"],
    lens: Lens | None = None,
    *,
    targets: Int[torch.Tensor, "batch pos"] | None = None,
    teacher: tuple[Any, Float[torch.Tensor, "batch pos d_model"]] | None = None,
    chunk_rows: int | None = None,
    workspace: Workspace | None = None,
    metrics: Sequence[str] = (),
    backend: str | None = None,
) -> LensReadout:
    """Lens metrics of an already computed residual stream (see :func:`read_lens`).

    Args:
        teacher: ``(teacher_model, teacher_final_resid)``: adds ``kl_to_teacher`` =
            KL(p_layer ‖ p_teacher_final) at every layer, the teacher's final distribution
            being read from its last ``hook_resid_post`` on the same tokens.
    """
    return read_variants(
        model,
        resid_post,
        [],
        read,
        lens,
        targets=targets,
        teacher=teacher,
        chunk_rows=chunk_rows,
        workspace=workspace,
        metrics=metrics,
        backend=backend,
    )[0]


def read_variants(
    model: Bridge,
    resid_post: Float[torch.Tensor, "layer batch pos d_model"],
    variants: Sequence[tuple[int, Float[torch.Tensor, "layer batch pos d_model"]]],
    read: Bool[torch.Tensor, "batch pos"],
    lens: Lens | None = None,
    *,
    targets: Int[torch.Tensor, "batch pos"] | None = None,
    teacher: tuple[Any, Float[torch.Tensor, "batch pos d_model"]] | None = None,
    chunk_rows: int | None = None,
    workspace: Workspace | None = None,
    metrics: Sequence[str] = (),
    backend: str | None = None,
) -> list[LensReadout]:
    """Lens metrics of a residual stream and of variants of it that share its early layers.

    Each variant ``(start, variant_resid_post)`` equals ``resid_post`` below layer ``start``
    (a graft whose window starts there). Those shared layers are decoded once and compared with
    every variant's own final distribution, so a sweep of windows costs
    ``n_layers + sum(n_layers - start)`` unembeddings per position instead of
    ``(1 + n_variants) * n_layers``. Returns the base readout, then one per variant, each equal
    to what :func:`read_residuals` gives for that stream alone.
    """
    device = resid_post.device
    read = read.to(device)
    rows = _Rows(
        streams=[resid_post[:, read]] + [v[:, read] for _, v in variants],  # [layer, n, d_model]
        targets=None if targets is None else targets.to(device)[read],
        teacher=None if teacher is None else (teacher[0], teacher[1].to(device)[read]),
    )
    plan = _plan(model, rows, [int(start) for start, _ in variants], chunk_rows, workspace, metrics)
    kernels = choose_backend(device, backend)
    chunks = [
        _read_chunk(
            model, lens or LogitLens(), rows, plan, kernels, start, min(start + plan.chunk, rows.n)
        )
        for start in range(0, rows.n, plan.chunk)
    ]
    read_cpu = read.cpu()
    return [
        _assemble([chunk[source] for chunk in chunks], read_cpu, plan.names, plan.n_layers)
        for source in range(len(rows.streams))
    ]


@dataclass(frozen=True)
class _Rows:
    """The read positions of every stream, flattened: what the chunks are cut from."""

    streams: list[torch.Tensor]  # per source, [layer, n, d_model]
    targets: torch.Tensor | None  # [n] target ids, -1 where none
    teacher: tuple[Any, torch.Tensor] | None  # (teacher model, [n, d_model] final residual)

    @property
    def n(self) -> int:
        return int(self.streams[0].shape[1])


@dataclass(frozen=True)
class _Plan:
    """What every chunk does: metric names, unembedding jobs, chunk size, buffers."""

    n_layers: int
    starts: list[int]  # per source, the first layer it does not share with the base
    names: list[str]
    extra: tuple[str, ...]
    jobs: list[tuple[int, int]]  # (source, layer) pairs to unembed, final layers first
    chunk: int
    slice_rows: int  # positions whose metrics are reduced together (cache-sized on the CPU)
    workspace: Workspace

    def readers(self, source: int, layer: int) -> list[int]:
        """The sources whose metrics a (source, layer) job gives: a shared layer of the base
        is also every such variant's layer."""
        if source != 0 or layer == self.n_layers - 1:
            return [source]
        return [0] + [v for v in range(1, len(self.starts)) if self.starts[v] > layer]


def _plan(
    model: Bridge,
    rows: _Rows,
    variant_starts: list[int],
    chunk_rows: int | None,
    workspace: Workspace | None,
    extra: Sequence[str],
) -> _Plan:
    n_layers, d_vocab = int(model.cfg.n_layers), int(model.cfg.d_vocab)
    starts = [n_layers, *variant_starts]
    n_sources = len(starts)
    available = {"target"} if rows.targets is not None else set()
    available |= {"teacher"} if rows.teacher is not None else set()
    names = metric_names(available, extra)
    if (
        workspace is None
        or workspace.d_vocab != d_vocab
        or workspace.n_finals < n_sources
        or (chunk_rows is not None and workspace.rows < min(chunk_rows, rows.n))
    ):
        device = rows.streams[0].device
        workspace = Workspace.plan(
            d_vocab, n_layers, device, rows=chunk_rows, max_rows=max(rows.n, 1), n_finals=n_sources
        )
    # Unembedding jobs per chunk: (source, layer) pairs whose residual is distinct. A layer
    # below a variant's start is read once, from the base stream, for the base and for every
    # such variant. The last layers go first (their logits are the final distributions).
    jobs = [(source, n_layers - 1) for source in range(n_sources)]
    jobs += [(0, layer) for layer in range(n_layers - 1)]
    jobs += [(s, layer) for s in range(1, n_sources) for layer in range(starts[s], n_layers - 1)]
    return _Plan(
        n_layers=n_layers,
        starts=starts,
        names=names,
        extra=tuple(n for n in names if METRICS[n].opt_in),
        jobs=jobs,
        chunk=(chunk := min(chunk_rows or workspace.rows, workspace.rows)),
        slice_rows=_slice_rows(workspace, d_vocab, chunk),
        workspace=workspace,
    )


#: Bytes of a slice's working set that stay in a CPU's last-level cache (a few MiB per core).
CPU_CACHE_BYTES = 20 << 20
#: [slice, d_vocab] float32 buffers a slice's metrics touch: logits, probabilities, scratch
#: and one final distribution's log-probabilities and probabilities.
_SLICE_BUFFERS = 5


def _slice_rows(workspace: Workspace, d_vocab: int, chunk: int) -> int:
    """Positions reduced together: what keeps a slice in the cache on the CPU; the whole
    chunk on an accelerator, where each extra slice is one more round of kernel launches."""
    if workspace.logits.device.type != "cpu":
        return chunk
    return max(1, min(chunk, CPU_CACHE_BYTES // (_SLICE_BUFFERS * 4 * d_vocab)))


def _chunk_targets(
    rows: _Rows, start: int, stop: int
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """The chunk's target ids (0 where there is none) and which rows have one."""
    if rows.targets is None:
        return None, None
    targets = rows.targets[start:stop]
    return targets.clamp_min(0), targets >= 0


def _chunk_teacher(rows: _Rows, workspace: Workspace, start: int, stop: int) -> torch.Tensor | None:
    """The teacher's final log-probabilities at the chunk, or ``None``."""
    if rows.teacher is None:
        return None
    teacher_model, teacher_rows = rows.teacher
    out = workspace.teacher_buffer(stop - start)
    logits = read_logits(teacher_model, teacher_rows[start:stop], out=out)
    return teacher_distribution(logits, workspace)


def _unembed(
    model: Bridge,
    lens: Lens,
    rows: _Rows,
    plan: _Plan,
    jobs: list[tuple[int, int]],
    start: int,
    stop: int,
) -> torch.Tensor:
    """[len(jobs) * n, d_vocab] logits of a group of jobs, in ``plan.workspace.logits``."""
    last = plan.n_layers - 1
    stacked = torch.cat(
        [
            rows.streams[source][layer, start:stop]
            if layer == last
            else lens.translate(layer, rows.streams[source][layer, start:stop])
            for source, layer in jobs
        ]
    )
    return read_logits(model, stacked, out=plan.workspace.logits[: len(jobs) * (stop - start)])


def _mask_targets(
    result: dict[str, torch.Tensor], has_target: torch.Tensor | None
) -> dict[str, torch.Tensor]:
    """Target metrics set to their fill value where a position has no target."""
    if has_target is None:
        return result
    for name, spec in METRICS.items():
        if "target" in spec.needs and name in result:
            result[name] = result[name].masked_fill(~has_target, spec.fill)
    return result


_Chunk = tuple[dict[str, torch.Tensor], torch.Tensor]  # name -> [n, layer] values, [n] top-1


def _read_chunk(
    model: Bridge,
    lens: Lens,
    rows: _Rows,
    plan: _Plan,
    kernels: ReadoutBackend,
    start: int,
    stop: int,
) -> list[_Chunk]:
    """Every source's metrics at the positions ``start:stop`` of ``rows``, on the CPU.

    Each group of jobs is unembedded in one matmul; its metrics are then reduced in slices of
    ``plan.slice_rows`` positions, every job of the group per slice, so that on the CPU a
    slice's logits, final distributions and scratch buffers stay in the cache across the
    dozen passes the metrics make over the vocabulary. The final distributions are made slice
    by slice too, so a final layer and its own final go through identical shapes (its
    ``kl_to_final`` is exactly 0).
    """
    n, last, workspace = stop - start, plan.n_layers - 1, plan.workspace
    slices = [(a, min(a + plan.slice_rows, n)) for a in range(0, n, plan.slice_rows)]
    # per source, per layer, per slice: the metrics; concatenated at the end
    values: list[list[list[dict[str, torch.Tensor]]]] = [
        [[] for _ in range(plan.n_layers)] for _ in plan.starts
    ]
    finals: dict[tuple[int, int], FinalDistribution] = {}  # (source, slice start) -> final
    with torch.no_grad():
        targets, has_target = _chunk_targets(rows, start, stop)
        teacher = _chunk_teacher(rows, workspace, start, stop)
        group = workspace.layer_group
        for first in range(0, len(plan.jobs), group):
            jobs = plan.jobs[first : first + group]
            logits = _unembed(model, lens, rows, plan, jobs, start, stop)
            for a, b in slices:
                for j, (source, layer) in enumerate(jobs):
                    block = logits[j * n + a : j * n + b]
                    if layer == last:  # final layers come first, in source order
                        finals[source, a] = kernels.final_distribution(
                            block, workspace, slot=source, offset=a
                        )
                    readers = plan.readers(source, layer)
                    results = kernels.layer_metrics(
                        block,
                        [finals[reader, a] for reader in readers],
                        None if targets is None else targets[a:b],
                        workspace,
                        teacher_logprobs=None if teacher is None else teacher[a:b],
                        extra=plan.extra,
                        own_final=layer == last,
                    )
                    mask = None if has_target is None else has_target[a:b]
                    for reader, result in zip(readers, results, strict=True):
                        values[reader][layer].append(_mask_targets(result, mask))
    return [
        (
            {
                name: torch.stack(
                    [torch.cat([part[name] for part in parts]) for parts in per_layer], dim=-1
                ).cpu()
                for name in plan.names
            },
            torch.cat([finals[source, a].top1 for a, _ in slices]).cpu(),
        )
        for source, per_layer in enumerate(values)
    ]


def _assemble(
    chunks: list[_Chunk], read: torch.Tensor, names: list[str], n_layers: int
) -> LensReadout:
    """One source's chunks scattered back to [batch, pos, layer], unread positions filled."""
    batch, pos = read.shape
    metrics = {}
    for name in names:
        spec = METRICS[name]
        parts = [values[name] for values, _ in chunks]
        values = torch.cat(parts) if parts else torch.empty(0, n_layers)
        full = torch.full((batch, pos, n_layers), spec.fill, dtype=spec.dtype)
        full[read] = values.to(spec.dtype)
        metrics[name] = full
    final_top1 = torch.full((batch, pos), -1, dtype=torch.int64)
    if chunks:
        final_top1[read] = torch.cat([top1 for _, top1 in chunks])
    return LensReadout(metrics=metrics, read=read, final_top1=final_top1, n_layers=n_layers)
