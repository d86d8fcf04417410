"""Token support under grafts: which kinds of tokens a graft promotes or suppresses.

For each prompt of a set of shared histories the host runs once ungrafted (keeping its block
inputs) and once grafted (resumed from the window's first layer, :mod:`hooklab.graft.engine`).
At every read (response) position and at each layer of the late region and the final layer,
both residuals are read with the host's own readout (:func:`~hooklab.architectures.read_logits`)
and reduced to

* the log probability mass of each token class (:mod:`hooklab.mechanism.token_classes`),
  ``log sum_{t in class} p(t)``;
* the log probability of the ``teacher`` token (the history's next token: IT's greedy choice)
  and of the ``host_top1`` token (the ungrafted host's top-1 at the final layer).

Changes are grafted minus ungrafted, averaged over a prompt's read positions, then over the
late layers (``delta_late``) or taken at the final layer (``delta_final``). The tokens the
graft promotes or suppresses most at the final layer are listed too, ranked by the change of
their probability mass ``p_grafted(t) − p_host(t)`` (``rank_by="prob"``, the default) or of
their log probability (``rank_by="logprob"``, which fills the list with near-zero-probability
tokens whose log probability moves a lot), each a mean over positions, then over prompts.
:attr:`TokenSupport.token_sums` keeps both per-token sums over prompts, so lists over several
parts are exact (:func:`top_tokens` of the summed sums). Logits are decoded one layer and
``chunk_rows`` positions at a time: never [layer, pos, d_vocab].
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float

from hooklab.architectures import model_device, read_logits
from hooklab.conditions import pad_batch
from hooklab.errors import HooklabError
from hooklab.forward import residual_stream, resume_residual_stream
from hooklab.graft.engine import DIRECTIONS, graft_hooks, module_change_norms
from hooklab.graft.histories import History
from hooklab.graft.windows import Window, parse_windows
from hooklab.mechanism.token_classes import CLASS_NAMES, DYNAMIC_CLASSES, classify_vocabulary
from hooklab.metrics import LATE_START_DEPTH, late_layers, layers_label
from hooklab.stats import bootstrap_mean_ci, in_prompt_order

__all__ = [
    "RANK_BY",
    "TokenSupport",
    "class_log_mass",
    "describe_tokens",
    "token_support",
    "top_tokens",
    "resolve_window",
]

#: how the promoted / suppressed token lists are ranked; the first is the default
RANK_BY = ("prob", "logprob")


def class_log_mass(
    logprobs: Float[torch.Tensor, "n d_vocab"], onehot: Float[torch.Tensor, "d_vocab n_classes"]
) -> Float[torch.Tensor, "n n_classes"]:
    """Per row, ``log sum_{t in class} p(t)`` of each class, in float64.

    ``onehot`` is a float64 [d_vocab, n_classes] membership matrix; when its classes partition
    the vocabulary the masses of a row sum to 1.
    """
    return torch.log(logprobs.double().exp() @ onehot)


def resolve_window(window: Window | str, n_layers: int) -> Window:
    """``window`` itself, or the single window a spec such as ``"late"`` or ``"2:4"`` names."""
    if isinstance(window, Window):
        return window
    windows = parse_windows(window, n_layers)
    if len(windows) != 1:
        raise HooklabError(
            f"window={window!r} names {len(windows)} windows; pass one (e.g. 'late' or '2:4')."
        )
    return windows[0]


@dataclass(frozen=True)
class TokenSupport:
    """Token-class support of one graft condition.

    Attributes:
        layers: one row per (prompt, layer read, quantity): ``host`` and ``grafted`` mean log
            mass (or log probability) over the prompt's read positions, ``delta`` their
            difference, ``n_tokens`` the positions averaged.
        per_prompt: one row per (prompt, quantity): ``delta_late`` (mean ``delta`` over the
            late layers) and ``delta_final`` (at the final layer).
        tokens: the ``top_k`` most ``promoted`` and ``suppressed`` tokens (:func:`top_tokens`):
            ``delta_prob`` / ``delta_logprob``, the final-layer change of the token's
            probability / log probability, mean over positions then prompts.
        token_sums: [2, d_vocab] float64, per token the sum over prompts of the prompt's mean
            change of log probability (row 0) and of probability (row 1): what exact lists
            over several parts add up.
        n_prompts: the prompts summed in ``token_sums``.
    """

    layers: pd.DataFrame
    per_prompt: pd.DataFrame
    tokens: pd.DataFrame
    token_sums: np.ndarray | None = None
    n_prompts: int = 0

    def summary(self, *, seed: int = 0, level: float = 0.95) -> pd.DataFrame:
        """Per quantity, the mean over prompts of ``delta_late`` and ``delta_final`` with
        bootstrap CIs (prompts are the units)."""
        rows = []
        per_prompt = in_prompt_order(self.per_prompt)  # bootstrap in prompt-id order
        for quantity, group in per_prompt.groupby("quantity", sort=False, observed=True):
            for column in ("delta_late", "delta_final"):
                ci = bootstrap_mean_ci(group[column].to_numpy(), seed=seed, level=level)
                rows.append(
                    {
                        "quantity": quantity,
                        "metric": column,
                        "mean": ci.mean,
                        "ci_low": ci.low,
                        "ci_high": ci.high,
                        "sem": ci.sem,
                        "n_prompts": ci.n,
                    }
                )
        return pd.DataFrame(rows)


def _quantities(
    logprobs: torch.Tensor, onehot: torch.Tensor, teacher: torch.Tensor, top1: torch.Tensor
) -> torch.Tensor:
    """[n, classes + 2] float64: class log masses, teacher and host-top-1 log probabilities."""
    gathered = logprobs.gather(1, torch.stack([teacher.clamp_min(0), top1], dim=1)).double()
    return torch.cat([class_log_mass(logprobs, onehot), gathered], dim=1)


@torch.no_grad()
def token_support(
    pair: Any,
    histories: Sequence[History],
    window: Window | str,
    *,
    direction: str = "it-to-pt",
    mode: str = "module",
    codes: np.ndarray | None = None,
    late_start_depth: float = LATE_START_DEPTH,
    top_k: int = 10,
    batch_size: int = 4,
    chunk_rows: int = 64,
    seed: int = 0,
    rank_by: str = RANK_BY[0],
) -> TokenSupport:
    """Token-class support of a graft of ``window`` in ``direction`` (see the module docstring).

    Args:
        pair: a :class:`~hooklab.pair.ModelPair`.
        histories: shared histories (the same tokens for both hosts).
        window: the grafted window, or a spec naming one window.
        direction: a key of :data:`hooklab.graft.engine.DIRECTIONS` (``it-to-pt``, ...).
        mode: ``module`` or ``random`` (the norm-matched random control).
        codes: [d_vocab] class codes; default :func:`classify_vocabulary` of the pair's
            tokenizer.
        late_start_depth: the late region is :func:`hooklab.metrics.late_layers` of it (depth
            >= late_start_depth, the final layer left out).
        top_k: promoted and suppressed tokens listed.
        batch_size: histories per forward pass.
        chunk_rows: positions decoded at once.
        seed: seed of the random control.
        rank_by: ``prob`` (default) or ``logprob``: how the token lists are ranked.
    """
    if rank_by not in RANK_BY:
        raise HooklabError(f"rank_by={rank_by!r}: use one of {', '.join(RANK_BY)}.")
    if direction not in DIRECTIONS:
        raise HooklabError(f"direction={direction!r}: use one of {', '.join(DIRECTIONS)}.")
    if mode not in ("module", "random"):
        raise HooklabError(f"mode={mode!r}: token support uses 'module' or 'random'.")
    if not histories:
        raise HooklabError("histories is empty: pass at least one shared history.")
    n_layers, d_vocab = pair.n_layers, pair.d_vocab
    window = resolve_window(window, n_layers)
    if codes is None:
        codes = classify_vocabulary(pair.tokenizer, d_vocab)
    codes = np.asarray(codes)
    if codes.shape != (d_vocab,):
        raise HooklabError(f"codes has shape {codes.shape}: expected ({d_vocab},), one per id.")
    host_side, donor_side = DIRECTIONS[direction]
    host, donor = pair.models()[host_side], pair.models()[donor_side]
    device = model_device(host)
    present = [c for c in range(len(CLASS_NAMES)) if (codes == c).any()]
    names = [CLASS_NAMES[c] for c in present] + list(DYNAMIC_CLASSES)
    onehot = torch.zeros((d_vocab, len(present)), dtype=torch.float64, device=device)
    code_tensor = torch.as_tensor(codes, dtype=torch.long, device=device)
    for column, code in enumerate(present):
        onehot[:, column] = (code_tensor == code).double()
    late = late_layers(n_layers, late_start_depth)
    read_layers = [n_layers - 1, *late]  # the final layer first: it gives the host's top-1
    layer_rows: list[pd.DataFrame] = []
    token_sum = torch.zeros((2, d_vocab), dtype=torch.float64, device=device)  # log p, p
    pad = pair.tokenizer.pad_token_id
    for first in range(0, len(histories), batch_size):
        batch = histories[first : first + batch_size]
        tokens, mask, read, targets = (
            t.to(device) for t in pad_batch(batch, 0 if pad is None else int(pad))
        )
        keys = [h.prompt_id for h in batch]
        base = residual_stream(host, tokens, attention_mask=mask, keep_block_inputs=True)
        norms = None
        if mode == "random":  # scaled to the module graft's change, from its own pass
            norms = module_change_norms(host, donor, tokens, window.layers, attention_mask=mask)
        hooks_ = graft_hooks(
            host, donor, window.layers, mode, module_norms=norms, row_keys=keys, seed=seed
        )
        grafted = resume_residual_stream(host, base, window.start, fwd_hooks=hooks_)
        rows = read.nonzero()[:, 0]
        streams = (base.resid_post[:, read], grafted.resid_post[:, read])  # [layer, n, d_model]
        teacher = targets[read]
        n, n_q = rows.shape[0], len(names)
        sums = torch.zeros((2, len(read_layers), len(batch), n_q), dtype=torch.float64)
        counts = torch.zeros((len(batch), n_q), dtype=torch.float64)
        batch_tokens = torch.zeros((2, len(batch), d_vocab), dtype=torch.float64, device=device)
        for start in range(0, n, chunk_rows):
            stop = min(start + chunk_rows, n)
            row, tgt = rows[start:stop], teacher[start:stop]
            valid = torch.ones((stop - start, n_q), dtype=torch.bool, device=device)
            valid[:, len(present)] = tgt >= 0
            counts.index_add_(0, row.cpu(), valid.double().cpu())
            top1 = None
            for index, layer in enumerate(read_layers):
                host_lp = torch.log_softmax(
                    read_logits(host, streams[0][layer, start:stop]).float(), dim=-1
                )
                if layer >= window.start:
                    graft_lp = torch.log_softmax(
                        read_logits(host, streams[1][layer, start:stop]).float(), dim=-1
                    )
                else:  # below the window the grafted stream is the host's, exactly
                    graft_lp = host_lp
                if top1 is None:
                    top1 = host_lp.argmax(dim=-1)
                    batch_tokens[0].index_add_(0, row, (graft_lp - host_lp).double())
                    batch_tokens[1].index_add_(0, row, (graft_lp.exp() - host_lp.exp()).double())
                for side, logprobs in enumerate((host_lp, graft_lp)):
                    values = _quantities(logprobs, onehot, tgt, top1)
                    values = torch.where(valid, values, torch.zeros_like(values))
                    sums[side, index].index_add_(0, row.cpu(), values.cpu())
        per_row = read.sum(dim=1).double().clamp_min(1).unsqueeze(1)
        token_sum += (batch_tokens / per_row).sum(dim=1)
        means = sums / counts.clamp_min(1)
        layer_rows.append(_layer_frame(keys, read_layers, names, means, counts, n_layers))
    layers = pd.concat(layer_rows, ignore_index=True)
    layers.insert(1, "direction", direction)
    layers.insert(2, "mode", mode)
    layers.insert(3, "window", window.name)
    per_prompt = _per_prompt(layers, late, n_layers)
    token_sums = token_sum.cpu().numpy()
    describe = describe_tokens(codes, pair.tokenizer)
    tokens_frame = top_tokens(token_sums, len(histories), describe, top_k, rank_by)
    return TokenSupport(layers, per_prompt, tokens_frame, token_sums, len(histories))


def _layer_frame(keys, read_layers, names, means, counts, n_layers) -> pd.DataFrame:
    frames = []
    for index, layer in enumerate(read_layers):
        host = means[0, index].numpy()
        grafted = means[1, index].numpy()
        frames.append(
            pd.DataFrame(
                {
                    "prompt_id": np.repeat(keys, len(names)),
                    "layer": layer,
                    "depth": layer / max(n_layers - 1, 1),
                    "quantity": np.tile(names, len(keys)),
                    "host": host.reshape(-1),
                    "grafted": grafted.reshape(-1),
                    "delta": (grafted - host).reshape(-1),
                    "n_tokens": counts.numpy().reshape(-1).astype(np.int64),
                }
            )
        )
    return pd.concat(frames, ignore_index=True)


def _per_prompt(layers: pd.DataFrame, late: list[int], n_layers: int) -> pd.DataFrame:
    keys = ["prompt_id", "direction", "mode", "window", "quantity"]
    late_rows = layers[layers["layer"].isin(late)]
    delta_late = late_rows.groupby(keys, sort=False)["delta"].mean().rename("delta_late")
    final = layers[layers["layer"] == n_layers - 1].set_index(keys)
    out = pd.concat([delta_late, final["delta"].rename("delta_final"), final["n_tokens"]], axis=1)
    return out.reset_index().assign(late_layers=layers_label(late))


def describe_tokens(codes, tokenizer) -> Callable[[list[int]], tuple[list[str], list[str]]]:
    """``ids -> (decoded tokens, class names)`` for :func:`top_tokens`."""

    def describe(ids: list[int]) -> tuple[list[str], list[str]]:
        tokens = tokenizer.batch_decode([[i] for i in ids])
        return list(tokens), [CLASS_NAMES[int(codes[i])] for i in ids]

    return describe


def top_tokens(
    sums: np.ndarray,
    n_prompts: int,
    describe: Callable[[list[int]], tuple[list[str], list[str]]],
    top_k: int,
    rank_by: str = RANK_BY[0],
) -> pd.DataFrame:
    """The ``top_k`` most promoted and suppressed tokens from per-token sums over prompts.

    Args:
        sums: [2, d_vocab], :attr:`TokenSupport.token_sums` (summed over parts for a run).
        n_prompts: the prompts behind ``sums``: each token's value is ``sums / n_prompts``.
        describe: ``ids -> (tokens, classes)`` (:func:`describe_tokens`).
        top_k: tokens per list; rank_by: ``prob`` (default) or ``logprob``.

    Returns:
        Rows ``kind, rank, token_id, token, token_class, delta_logprob, delta_prob,
        rank_by``; ties are broken by the smaller token id.
    """
    means = np.asarray(sums, dtype=np.float64) / max(n_prompts, 1)
    key = means[0] if rank_by == "logprob" else means[1]
    k = min(top_k, key.shape[0])
    frames = []
    for kind, largest in (("promoted", True), ("suppressed", False)):
        order = np.lexsort((np.arange(key.shape[0]), -key if largest else key))[:k]
        ids_list = [int(i) for i in order]
        tokens, classes = describe(ids_list)
        frames.append(
            pd.DataFrame(
                {
                    "kind": kind,
                    "rank": np.arange(k),
                    "token_id": ids_list,
                    "token": tokens,
                    "token_class": classes,
                    "delta_logprob": means[0, order],
                    "delta_prob": means[1, order],
                    "rank_by": rank_by,
                }
            )
        )
    return pd.concat(frames, ignore_index=True)
