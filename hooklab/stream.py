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
from hooklab.metrics import Workspace, chunk_metrics, final_distribution, teacher_distribution

__all__ = ["LensReadout", "read_lens", "read_residuals"]

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
    """Lens metrics of ``model`` on ``tokens`` (DESIGN.md section 3).

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
    lens = lens or LogitLens()
    n_layers = int(model.cfg.n_layers)
    device = resid_post.device
    read = read.to(device)
    rows = resid_post[:, read]  # [layer, n, d_model]
    teacher_rows = None
    if teacher is not None:
        teacher_model, teacher_resid = teacher
        teacher_rows = teacher_resid.to(device)[read]
    n_rows = rows.shape[1]
    row_targets = None
    if targets is not None:
        row_targets = targets.to(device)[read]
    d_vocab = int(model.cfg.d_vocab)
    names = [
        "kl_to_final",
        "kl_final_to_layer",
        "entropy",
        "top1_agree",
        "final_top1_rank",
        "final_top1_prob",
    ]
    if row_targets is not None:
        names += ["target_logprob", "target_rank"]
    if teacher_rows is not None:
        names += ["kl_to_teacher"]
    flat = {name: [] for name in names}
    top1_chunks = []
    if (
        workspace is None
        or workspace.d_vocab != d_vocab
        or (chunk_rows is not None and workspace.rows < min(chunk_rows, n_rows))
    ):
        workspace = Workspace.plan(
            d_vocab, n_layers, device, rows=chunk_rows, max_rows=max(n_rows, 1)
        )
    chunk = min(chunk_rows or workspace.rows, workspace.rows)
    # Layers go through the unembedding in groups of `group`, the last layer in the first
    # group: its logits are the final distribution, needed by every other layer's metrics.
    # They are computed once (n_layers matmul rows per position, not n_layers + 1).
    group = workspace.layer_group
    order = [n_layers - 1, *range(n_layers - 1)]
    groups = [order[i : i + group] for i in range(0, n_layers, group)]
    with torch.no_grad():
        for start in range(0, n_rows, chunk):
            stop = min(start + chunk, n_rows)
            n = stop - start
            tgt = None
            if row_targets is not None:
                tgt = row_targets[start:stop]
                has_target = tgt >= 0
                tgt = tgt.clamp_min(0)
            per_layer: list[dict[str, torch.Tensor]] = [{} for _ in range(n_layers)]
            final = None
            teacher_logprobs = None
            if teacher_rows is not None:
                teacher_logprobs = teacher_distribution(
                    read_logits(
                        teacher_model, teacher_rows[start:stop], out=workspace.teacher_buffer(n)
                    ),
                    workspace,
                )
            for layers in groups:
                stacked = torch.cat(
                    [
                        rows[layer, start:stop]
                        if layer == n_layers - 1
                        else lens.translate(layer, rows[layer, start:stop])
                        for layer in layers
                    ]
                )
                logits = read_logits(model, stacked, out=workspace.logits[: len(layers) * n])
                if final is None:
                    final = final_distribution(logits[:n], workspace)
                    top1_chunks.append(final.top1)
                for j, layer in enumerate(layers):
                    values = chunk_metrics(
                        logits[j * n : (j + 1) * n],
                        final,
                        tgt,
                        workspace,
                        teacher_logprobs=teacher_logprobs,
                    )
                    if tgt is not None:
                        values["target_logprob"] = values["target_logprob"].masked_fill(
                            ~has_target, torch.nan
                        )
                        values["target_rank"] = values["target_rank"].masked_fill(~has_target, -1)
                    per_layer[layer] = values
            for name in names:
                flat[name].append(torch.stack([v[name] for v in per_layer], dim=-1).cpu())
    read_cpu = read.cpu()
    batch, pos = read_cpu.shape
    metrics = {}
    for name in names:
        values = torch.cat(flat[name]) if flat[name] else torch.empty(0, n_layers)
        if name in _FLOAT_METRICS:
            full = torch.full((batch, pos, n_layers), torch.nan, dtype=torch.float32)
        elif name == "top1_agree":
            full = torch.zeros((batch, pos, n_layers), dtype=torch.bool)
        else:
            full = torch.full((batch, pos, n_layers), -1, dtype=torch.int64)
        full[read_cpu] = values.to(full.dtype)
        metrics[name] = full
    final_top1 = torch.full((batch, pos), -1, dtype=torch.int64)
    if top1_chunks:
        final_top1[read_cpu] = torch.cat(top1_chunks).cpu()
    return LensReadout(metrics=metrics, read=read_cpu, final_top1=final_top1, n_layers=n_layers)
