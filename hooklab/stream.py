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

from hooklab.architectures import read_logits
from hooklab.forward import HookFn, residual_stream
from hooklab.lens.base import Lens, LogitLens
from hooklab.metrics import (
    METRIC_NAMES,
    FinalDistribution,
    Workspace,
    final_distribution,
    layer_metrics,
    teacher_distribution,
)

__all__ = ["LensReadout", "read_lens", "read_residuals", "read_variants"]

_FLOAT_METRICS = (
    "kl_to_teacher",
    "kl_to_final",
    "kl_final_to_layer",
    "entropy",
    "final_top1_prob",
    "target_logprob",
)


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
    model: Any,
    tokens: Int[torch.Tensor, "batch pos"],
    lens: Lens | None = None,
    *,
    attention_mask: Int[torch.Tensor, "batch pos"] | None = None,
    read_mask: Bool[torch.Tensor, "batch pos"] | None = None,
    targets: Int[torch.Tensor, "batch pos"] | None = None,
    fwd_hooks: Sequence[HookFn] = (),
    chunk_rows: int | None = None,
    workspace: Workspace | None = None,
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
    """
    device = model.unembed.original_component.weight.device
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
    )


def read_residuals(
    model: Any,
    resid_post: Float[torch.Tensor, "layer batch pos d_model"],
    read: Bool[torch.Tensor, "batch pos"],
    lens: Lens | None = None,
    *,
    targets: Int[torch.Tensor, "batch pos"] | None = None,
    teacher: tuple[Any, Float[torch.Tensor, "batch pos d_model"]] | None = None,
    chunk_rows: int | None = None,
    workspace: Workspace | None = None,
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
    )[0]


def read_variants(
    model: Any,
    resid_post: Float[torch.Tensor, "layer batch pos d_model"],
    variants: Sequence[tuple[int, Float[torch.Tensor, "layer batch pos d_model"]]],
    read: Bool[torch.Tensor, "batch pos"],
    lens: Lens | None = None,
    *,
    targets: Int[torch.Tensor, "batch pos"] | None = None,
    teacher: tuple[Any, Float[torch.Tensor, "batch pos d_model"]] | None = None,
    chunk_rows: int | None = None,
    workspace: Workspace | None = None,
) -> list[LensReadout]:
    """Lens metrics of a residual stream and of variants of it that share its early layers.

    Each variant ``(start, variant_resid_post)`` equals ``resid_post`` below layer ``start``
    (a graft whose window starts there). Those shared layers are decoded once and compared with
    every variant's own final distribution, so a sweep of windows costs
    ``n_layers + sum(n_layers - start)`` unembeddings per position instead of
    ``(1 + n_variants) * n_layers``. Returns the base readout, then one per variant, each equal
    to what :func:`read_residuals` gives for that stream alone.
    """
    lens = lens or LogitLens()
    n_layers = int(model.cfg.n_layers)
    device = resid_post.device
    read = read.to(device)
    streams = [resid_post[:, read]] + [v[:, read] for _, v in variants]  # [layer, n, d_model]
    starts = [n_layers] + [int(start) for start, _ in variants]
    n_sources = len(streams)
    n_rows = streams[0].shape[1]
    row_targets = None if targets is None else targets.to(device)[read]
    teacher_rows = None
    if teacher is not None:
        teacher_model, teacher_resid = teacher
        teacher_rows = teacher_resid.to(device)[read]
    d_vocab = int(model.cfg.d_vocab)
    skipped = set()
    if row_targets is None:
        skipped |= {"target_logprob", "target_rank"}
    if teacher_rows is None:
        skipped.add("kl_to_teacher")
    names = [name for name in METRIC_NAMES if name not in skipped]
    if (
        workspace is None
        or workspace.d_vocab != d_vocab
        or workspace.n_finals < n_sources
        or (chunk_rows is not None and workspace.rows < min(chunk_rows, n_rows))
    ):
        workspace = Workspace.plan(
            d_vocab, n_layers, device, rows=chunk_rows, max_rows=max(n_rows, 1), n_finals=n_sources
        )
    chunk = min(chunk_rows or workspace.rows, workspace.rows)
    # Unembedding jobs per chunk: (source, layer) pairs whose residual is distinct. A layer
    # below a variant's start is read once, from the base stream, for the base and for every
    # such variant. The last layers go first (their logits are the final distributions).
    jobs = [(source, n_layers - 1) for source in range(n_sources)]
    jobs += [(0, layer) for layer in range(n_layers - 1)]
    jobs += [
        (source, layer)
        for source in range(1, n_sources)
        for layer in range(starts[source], n_layers - 1)
    ]
    group = workspace.layer_group
    flat: list[dict[str, list[torch.Tensor]]] = [
        {name: [] for name in names} for _ in range(n_sources)
    ]
    top1_chunks: list[list[torch.Tensor]] = [[] for _ in range(n_sources)]
    with torch.no_grad():
        for start in range(0, n_rows, chunk):
            stop = min(start + chunk, n_rows)
            n = stop - start
            tgt = None
            if row_targets is not None:
                tgt = row_targets[start:stop]
                has_target = tgt >= 0
                tgt = tgt.clamp_min(0)
            teacher_logprobs = None
            if teacher_rows is not None:
                teacher_logprobs = teacher_distribution(
                    read_logits(
                        teacher_model, teacher_rows[start:stop], out=workspace.teacher_buffer(n)
                    ),
                    workspace,
                )
            values: list[list[dict[str, torch.Tensor]]] = [
                [{} for _ in range(n_layers)] for _ in range(n_sources)
            ]
            finals: list[FinalDistribution] = []
            for first in range(0, len(jobs), group):
                batch = jobs[first : first + group]
                stacked = torch.cat(
                    [
                        streams[source][layer, start:stop]
                        if layer == n_layers - 1
                        else lens.translate(layer, streams[source][layer, start:stop])
                        for source, layer in batch
                    ]
                )
                logits = read_logits(model, stacked, out=workspace.logits[: len(batch) * n])
                for j, (source, layer) in enumerate(batch):
                    block = logits[j * n : (j + 1) * n]
                    if layer == n_layers - 1:
                        finals.append(final_distribution(block, workspace, slot=source))
                        top1_chunks[source].append(finals[source].top1)
                        readers = [source]
                    elif source == 0:
                        readers = [0] + [v for v in range(1, n_sources) if starts[v] > layer]
                    else:
                        readers = [source]
                    results = layer_metrics(
                        block,
                        [finals[r] for r in readers],
                        tgt,
                        workspace,
                        teacher_logprobs=teacher_logprobs,
                    )
                    for reader, result in zip(readers, results, strict=True):
                        if tgt is not None:
                            result["target_logprob"] = result["target_logprob"].masked_fill(
                                ~has_target, torch.nan
                            )
                            result["target_rank"] = result["target_rank"].masked_fill(
                                ~has_target, -1
                            )
                        values[reader][layer] = result
            for source in range(n_sources):
                for name in names:
                    flat[source][name].append(
                        torch.stack([v[name] for v in values[source]], dim=-1).cpu()
                    )
    read_cpu = read.cpu()
    return [
        _assemble(flat[source], top1_chunks[source], read_cpu, names, n_layers)
        for source in range(n_sources)
    ]


def _assemble(
    flat: dict[str, list[torch.Tensor]],
    top1_chunks: list[torch.Tensor],
    read: torch.Tensor,
    names: list[str],
    n_layers: int,
) -> LensReadout:
    batch, pos = read.shape
    metrics = {}
    for name in names:
        values = torch.cat(flat[name]) if flat[name] else torch.empty(0, n_layers)
        if name in _FLOAT_METRICS:
            full = torch.full((batch, pos, n_layers), torch.nan, dtype=torch.float32)
        elif name == "top1_agree":
            full = torch.zeros((batch, pos, n_layers), dtype=torch.bool)
        else:
            full = torch.full((batch, pos, n_layers), -1, dtype=torch.int64)
        full[read] = values.to(full.dtype)
        metrics[name] = full
    final_top1 = torch.full((batch, pos), -1, dtype=torch.int64)
    if top1_chunks:
        final_top1[read] = torch.cat(top1_chunks).cpu()
    return LensReadout(metrics=metrics, read=read, final_top1=final_top1, n_layers=n_layers)
