"""Paired activation sums of PT and IT under forced decoding on shared histories.

Both models are fed the same token ids (IT's greedy responses under its chat template, see
:class:`~hooklab.graft.histories.History`); at every layer the chosen activation (``mlp_out``
by default, ``attn_out`` or ``resid_post``) is summed over each history's read span, the
response positions. Only running sums are kept, never [tokens, layers, d_model]:

* per-prompt sums [prompt, layer, d_model] (float64) and token counts [prompt], so that
  directions can be resampled at the prompt level (bootstrap, disjoint splits);
* per-token-id sums [K, layer, d_model] for the ``K`` most frequent token ids of the read
  spans. The activation at position ``t`` is keyed by the id of the token *at* ``t`` (the
  token the model has just read). Both models see the same tokens, so every id has the same
  count on both sides; the matched-token direction
  (:func:`~hooklab.steering.directions.matched_direction`) averages the per-id differences
  with equal weight per id, removing the token-frequency weighting of the plain mean.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Float, Int
from tqdm.auto import tqdm

from hooklab import hooks
from hooklab.conditions import pad_batch
from hooklab.errors import HooklabError
from hooklab.forward import residual_stream
from hooklab.graft.histories import History, check_histories
from hooklab.lens.tuned import unembed_sha256

__all__ = ["HOOKS", "hook_name", "PairedSums", "collect_paired", "frequent_token_ids"]

#: activations a direction can be collected on and steered at, by short name
HOOKS: dict[str, Callable[[int], str]] = {
    "mlp_out": hooks.mlp_out,
    "attn_out": hooks.attn_out,
    "resid_post": hooks.resid_post,
}


def hook_name(hook: str, layer: int) -> str:
    """The TransformerLens hook name of activation ``hook`` at ``layer``."""
    if hook not in HOOKS:
        raise HooklabError(f"hook={hook!r}: choose one of {', '.join(HOOKS)}.")
    return HOOKS[hook](layer)


@dataclass(frozen=True)
class PairedSums:
    """Running sums of one activation of PT and IT over the read spans of shared histories.

    Attributes:
        hook: short activation name (``"mlp_out"``).
        layers: the layers collected (index ``i`` of every layer axis is ``layers[i]``).
        prompt_ids: [prompt] ids, in collection order.
        it_sums: [prompt, layer, d_model] float64 per-prompt sums of IT's activation.
        pt_sums: [prompt, layer, d_model] the same for PT.
        counts: [prompt] read tokens per prompt.
        token_ids: [K] the token ids with per-id sums (most frequent first).
        it_token_sums: [K, layer, d_model] float64 IT sums per token id.
        pt_token_sums: [K, layer, d_model] the same for PT.
        token_counts: [K] occurrences of each id in the read spans.
        models: ``{"pt": id, "it": id}`` where the models came from.
        fingerprints: ``{"pt": sha, "it": sha}`` :func:`~hooklab.lens.tuned.unembed_sha256`.
    """

    hook: str
    layers: tuple[int, ...]
    prompt_ids: tuple[str, ...]
    it_sums: Float[torch.Tensor, "prompt layer d_model"]
    pt_sums: Float[torch.Tensor, "prompt layer d_model"]
    counts: Int[torch.Tensor, " prompt"]
    token_ids: Int[torch.Tensor, " K"]
    it_token_sums: Float[torch.Tensor, "K layer d_model"]
    pt_token_sums: Float[torch.Tensor, "K layer d_model"]
    token_counts: Int[torch.Tensor, " K"]
    models: dict[str, str]
    fingerprints: dict[str, str]

    @property
    def n_prompts(self) -> int:
        return len(self.prompt_ids)

    @property
    def n_tokens(self) -> int:
        return int(self.counts.sum())

    @property
    def d_model(self) -> int:
        return int(self.it_sums.shape[-1])

    def means(self, side: str) -> Float[torch.Tensor, "layer d_model"]:
        """The token-weighted mean activation of ``side`` (``"it"`` or ``"pt"``) per layer."""
        sums = {"it": self.it_sums, "pt": self.pt_sums}[side]
        return sums.sum(0) / max(self.n_tokens, 1)


def frequent_token_ids(histories: Sequence[History], k: int) -> list[int]:
    """The ``k`` most frequent token ids over the histories' read spans (ties: smaller id)."""
    counter: Counter[int] = Counter()
    for h in histories:
        counter.update(h.tokens[h.read_from : h.read_to])
    ranked = sorted(counter.items(), key=lambda item: (-item[1], item[0]))
    return [token for token, _ in ranked[:k]]


def _source_id(pair: Any, side: str) -> str:
    source = getattr(pair, f"{side}_source", None)
    return str(getattr(source, "name_or_path", "unknown"))


def _sum_hooks(
    hook: str,
    layers: Sequence[int],
    read: torch.Tensor,
    slots: torch.Tensor,
    prompt_out: torch.Tensor,
    token_out: torch.Tensor,
) -> list[tuple[str, Callable[..., None]]]:
    """Hooks adding each layer's activation, summed over the read positions, into the sums.

    ``read`` [batch, pos] bool, ``slots`` [batch, pos] index of the token id in ``token_out``
    (-1 when not tracked or not read); ``prompt_out`` [batch, layer, d_model],
    ``token_out`` [K, layer, d_model], both float64.
    """
    weights = read.to(torch.float64)
    tracked = slots >= 0
    index = slots[tracked]

    def make(i: int) -> Callable[..., None]:
        def add(activation: torch.Tensor, hook: Any) -> None:  # noqa: ARG001
            values = activation.detach().to(torch.float64)  # on the model's device
            device = values.device
            per_prompt = torch.einsum("bpd,bp->bd", values, weights.to(device))
            prompt_out[:, i] += per_prompt.to(prompt_out.device)
            if index.numel():
                picked = values[tracked.to(device)].to(token_out.device)
                token_out[:, i].index_add_(0, index, picked)

        return add

    return [(hook_name(hook, layer), make(i)) for i, layer in enumerate(layers)]


def collect_paired(
    pair: Any,
    histories: Sequence[History],
    *,
    hook: str = "mlp_out",
    layers: Sequence[int] | None = None,
    top_k_tokens: int = 64,
    batch_size: int = 8,
    progress: bool = False,
) -> PairedSums:
    """Per-prompt and per-token-id sums of ``hook`` for PT and IT on the same histories.

    Args:
        pair: a :class:`~hooklab.pair.ModelPair` (or any object with ``pt``, ``it``,
            ``tokenizer``).
        histories: shared histories; each is read over ``read_from:read_to``.
        hook: ``"mlp_out"``, ``"attn_out"`` or ``"resid_post"``.
        layers: layers to collect (default all).
        top_k_tokens: how many of the most frequent read token ids get per-id sums.
        batch_size: histories per forward pass (right-padded; padding is never read).
        progress: show a progress bar.
    """
    n_layers = int(pair.pt.cfg.n_layers)
    d_model = int(pair.pt.cfg.d_model)
    layers = tuple(range(n_layers)) if layers is None else tuple(int(x) for x in layers)
    if not layers or any(not 0 <= x < n_layers for x in layers):
        raise HooklabError(f"layers={list(layers)}: expected layers in 0..{n_layers - 1}.")
    hook_name(hook, 0)  # validates the name
    if not histories:
        raise HooklabError("histories: none given; make them with make_histories(pair, prompts).")
    if batch_size < 1:
        raise HooklabError(f"batch_size={batch_size} must be at least 1.")
    ids = [h.prompt_id for h in histories]
    check_histories(histories, ids, vocab_size=int(pair.pt.cfg.d_vocab))
    token_ids = frequent_token_ids(histories, top_k_tokens)
    slot_of = torch.full((int(pair.pt.cfg.d_vocab),), -1, dtype=torch.long)
    slot_of[torch.tensor(token_ids, dtype=torch.long)] = torch.arange(len(token_ids))
    shape = (len(histories), len(layers), d_model)
    sums = {side: torch.zeros(shape, dtype=torch.float64) for side in ("pt", "it")}
    token_shape = (len(token_ids), len(layers), d_model)
    token_sums = {side: torch.zeros(token_shape, dtype=torch.float64) for side in ("pt", "it")}
    counts = torch.zeros(len(histories), dtype=torch.long)
    token_counts = torch.zeros(len(token_ids), dtype=torch.long)
    pad_id = int(getattr(pair.tokenizer, "pad_token_id", None) or 0)
    starts = range(0, len(histories), batch_size)
    for start in tqdm(starts, desc="collect", disable=not progress):
        batch = histories[start : start + batch_size]
        tokens, mask, read, _ = pad_batch(batch, pad_id)
        slots = torch.where(read, slot_of[tokens], torch.full_like(tokens, -1))
        counts[start : start + len(batch)] = read.sum(1)
        tracked = slots[slots >= 0]
        token_counts += torch.bincount(tracked, minlength=len(token_ids))
        for side in ("pt", "it"):
            model = getattr(pair, side)
            out = sums[side][start : start + len(batch)]
            fwd = _sum_hooks(hook, layers, read, slots, out, token_sums[side])
            residual_stream(model, tokens, attention_mask=mask, fwd_hooks=fwd)
    return PairedSums(
        hook=hook,
        layers=layers,
        prompt_ids=tuple(h.prompt_id for h in histories),
        it_sums=sums["it"],
        pt_sums=sums["pt"],
        counts=counts,
        token_ids=torch.tensor(token_ids, dtype=torch.long),
        it_token_sums=token_sums["it"],
        pt_token_sums=token_sums["pt"],
        token_counts=token_counts,
        models={side: _source_id(pair, side) for side in ("pt", "it")},
        fingerprints={side: unembed_sha256(getattr(pair, side)) for side in ("pt", "it")},
    )
