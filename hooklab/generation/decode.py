"""Free-running batched generation with forward hooks active at every decoding step.

Prompts are left-padded into batches with an attention mask and explicit position ids (each
row's real tokens sit at positions 0, 1, 2, ... whatever its padding), so a row's tokens do
not depend on which other prompts share its batch (up to the rounding of batched kernels:
exact for the float32 CPU models of the tests; in bfloat16 on a GPU a near-tie can flip).
With ``use_cache`` the Hugging Face KV cache behind the TransformerBridge is reused: after
the prompt, each step runs only the new token, so hooks see ``[batch, 1, d_model]``
activations. Interventions must therefore be position-wise; those that need a token's
absolute position or its prompt's key (the random control) read them from
:func:`current_step`, which :func:`generate` sets for every forward pass.

Sampling draws one uniform number per prompt and step from a generator seeded by
``(seed, prompt key)`` and inverts the (temperature-scaled, top-p-truncated) CDF, so a
prompt's sampled tokens do not depend on batch composition either.
"""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from jaxtyping import Float, Int

from hooklab.architectures import model_device
from hooklab.errors import HooklabError
from hooklab.forward import HookFn

__all__ = [
    "StepContext",
    "current_step",
    "step_context",
    "GenerationOutput",
    "generate",
    "forward_step",
]


@dataclass(frozen=True)
class StepContext:
    """What a hook may need to know about the forward pass it runs in.

    Attributes:
        positions: [batch, pos] absolute position of each token the pass computes (its index
            among its prompt's real tokens); ``-1`` at left padding.
        keys: one key per batch row (the prompt's key), for per-prompt random draws.
    """

    positions: Int[torch.Tensor, "batch pos"]
    keys: tuple[str, ...]


_CURRENT: contextvars.ContextVar[StepContext | None] = contextvars.ContextVar(
    "hooklab_generation_step", default=None
)


def current_step() -> StepContext:
    """The :class:`StepContext` of the forward pass running now (set by :func:`generate`)."""
    context = _CURRENT.get()
    if context is None:
        raise HooklabError(
            "this hook needs the token positions and prompt keys of the current pass, which "
            "hooklab.generation.generate sets; run it through generate(...) or wrap the forward "
            "pass in hooklab.generation.step_context(positions, keys)."
        )
    return context


@contextlib.contextmanager
def step_context(
    positions: Int[torch.Tensor, "batch pos"], keys: Sequence[str]
) -> Iterator[StepContext]:
    """Make ``positions`` and ``keys`` the :func:`current_step` inside the block."""
    context = StepContext(positions, tuple(keys))
    token = _CURRENT.set(context)
    try:
        yield context
    finally:
        _CURRENT.reset(token)


@dataclass(frozen=True, eq=False)
class GenerationOutput:
    """One prompt's response.

    Attributes:
        key: the prompt's key (its index as a string unless keys were given).
        token_ids: the generated tokens, the stop token included when there is one.
        stop_reason: ``"eot"`` (a stop token was generated) or ``"length"`` (max_new_tokens).
        n_tokens: ``len(token_ids)``.
        logits: [n_tokens, d_vocab] float32 logits each token was chosen from, when asked for.
    """

    key: str
    token_ids: tuple[int, ...]
    stop_reason: Literal["eot", "length"]
    n_tokens: int
    logits: Float[torch.Tensor, "n_tokens d_vocab"] | None = None


def _seed_of(seed: int, key: str) -> int:
    digest = hashlib.sha256(f"sample\x00{seed}\x00{key}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def _pick(
    logits: Float[torch.Tensor, " d_vocab"],
    generator: torch.Generator | None,
    temperature: float,
    top_p: float,
) -> int:
    """Greedy (no generator) or inverse-CDF sampling from temperature / top-p logits."""
    if generator is None:
        return int(logits.argmax())
    probs = torch.softmax(logits.double().cpu() / temperature, dim=-1)
    if top_p < 1.0:
        ordered, order = torch.sort(probs, descending=True, stable=True)
        before = ordered.cumsum(0) - ordered  # mass strictly above each token
        keep = torch.zeros_like(probs, dtype=torch.bool)
        keep[order[before < top_p]] = True  # the smallest prefix reaching top_p (>= 1 token)
        probs = torch.where(keep, probs, torch.zeros_like(probs))
    cdf = probs.cumsum(0)
    u = torch.rand((), generator=generator, dtype=torch.float64) * cdf[-1]
    index = int(torch.searchsorted(cdf, u, right=True))
    index = min(index, probs.numel() - 1)
    while probs[index] == 0:  # u landed exactly on a boundary before a removed token
        index -= 1
    return index


def _check(
    prompts_ids: Sequence[Sequence[int]],
    keys: Sequence[str] | None,
    max_new_tokens: int,
    temperature: float,
    top_p: float,
    batch_size: int,
) -> list[str]:
    if max_new_tokens < 1:
        raise HooklabError(f"max_new_tokens={max_new_tokens}: generate at least 1 token.")
    if batch_size < 1:
        raise HooklabError(f"batch_size={batch_size}: use a positive batch size.")
    if not temperature > 0:
        raise HooklabError(f"temperature={temperature}: use a positive temperature.")
    if not 0 < top_p <= 1:
        raise HooklabError(f"top_p={top_p}: use a value in (0, 1]; 1 keeps every token.")
    empty = [i for i, ids in enumerate(prompts_ids) if len(ids) == 0]
    if empty:
        raise HooklabError(f"prompts_ids: prompts {empty[:5]} are empty; give each a token.")
    keys = [str(i) for i in range(len(prompts_ids))] if keys is None else [str(k) for k in keys]
    if len(keys) != len(prompts_ids):
        raise HooklabError(
            f"keys: {len(keys)} keys for {len(prompts_ids)} prompts; give one key per prompt."
        )
    if len(set(keys)) != len(keys):
        raise HooklabError("keys: prompt keys must be unique (they seed the random draws).")
    return keys


def generate(
    model: Any,
    prompts_ids: Sequence[Sequence[int]],
    *,
    hooks: Sequence[HookFn] = (),
    max_new_tokens: int,
    stop_ids: Sequence[int],
    pad_id: int,
    greedy: bool = True,
    temperature: float = 1.0,
    top_p: float = 1.0,
    seed: int = 0,
    batch_size: int = 8,
    use_cache: bool = True,
    keys: Sequence[str] | None = None,
    return_logits: bool = False,
) -> list[GenerationOutput]:
    """Generate a response to each prompt with ``hooks`` active at every step.

    Args:
        model: a TransformerBridge.
        prompts_ids: token ids of each prompt (BOS and template already applied).
        hooks: ``(hook_name, fn)`` pairs active during every forward pass; position-wise.
        max_new_tokens: most tokens generated per prompt.
        stop_ids: tokens that end a response (kept as its last token).
        pad_id: the token left padding and finished rows are filled with (masked or unread).
        greedy: argmax decoding; ``False`` samples with ``temperature`` and ``top_p``.
        temperature: softmax temperature of sampling.
        top_p: nucleus sampling mass (1 keeps every token).
        seed: seed of sampling; each prompt has its own generator keyed by (seed, key).
        batch_size: prompts per forward pass.
        use_cache: reuse the KV cache (only the new token runs per step); ``False`` reruns the
            whole sequence each step (a reference, and a fallback).
        keys: one unique key per prompt (default: its index), for per-prompt random draws.
        return_logits: keep the float32 logits of every generated token.

    Returns:
        One :class:`GenerationOutput` per prompt, in order.
    """
    keys = _check(prompts_ids, keys, max_new_tokens, temperature, top_p, batch_size)
    stops = {int(t) for t in stop_ids}
    out: list[GenerationOutput] = []
    with torch.no_grad(), model.hooks(fwd_hooks=list(hooks)):
        for start in range(0, len(prompts_ids), batch_size):
            batch = [list(map(int, p)) for p in prompts_ids[start : start + batch_size]]
            batch_keys = keys[start : start + batch_size]
            generators = (
                None
                if greedy
                else [torch.Generator().manual_seed(_seed_of(seed, k)) for k in batch_keys]
            )
            out += _generate_batch(
                model, batch, batch_keys, generators, max_new_tokens, stops, pad_id,
                temperature, top_p, use_cache, return_logits,
            )  # fmt: skip
    return out


def forward_step(
    model: Any,
    inputs: Int[torch.Tensor, "batch fresh"],
    mask: Int[torch.Tensor, "batch pos"],
    positions: Int[torch.Tensor, "batch fresh"],
    cache: Any,
    *,
    use_cache: bool,
) -> tuple[Float[torch.Tensor, "batch fresh d_vocab"], Any]:
    """One decoding pass of a bridge: the logits of ``inputs`` and the KV cache after it.

    ``mask`` covers every position so far (cached and fresh); ``positions`` are the fresh
    tokens' absolute positions (``-1`` at left padding). Without ``use_cache`` ``inputs`` must
    be the whole sequence and the returned cache is ``None``.
    """
    if not use_cache:
        logits = model(
            inputs, attention_mask=mask, position_ids=positions.clamp_min(0), use_cache=False
        )
        return logits, None
    return model(
        inputs,
        attention_mask=mask,
        position_ids=positions.clamp_min(0),
        past_key_values=cache,
        use_cache=True,
        return_type="logits_and_cache",
    )


def _generate_batch(
    model: Any,
    batch: list[list[int]],
    keys: list[str],
    generators: list[torch.Generator] | None,
    max_new_tokens: int,
    stops: set[int],
    pad_id: int,
    temperature: float,
    top_p: float,
    use_cache: bool,
    return_logits: bool,
) -> list[GenerationOutput]:
    device = model_device(model)
    width = max(len(ids) for ids in batch)
    tokens = torch.full((len(batch), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for row, ids in enumerate(batch):
        tokens[row, width - len(ids) :] = torch.tensor(ids)
        mask[row, width - len(ids) :] = 1
    tokens, mask = tokens.to(device), mask.to(device)
    positions = mask.cumsum(-1) - 1  # -1 on the left padding
    generated: list[list[int]] = [[] for _ in batch]
    kept: list[list[torch.Tensor]] = [[] for _ in batch]
    done = [False] * len(batch)
    cache = None
    for step in range(max_new_tokens):
        fresh = positions.shape[1] if (step == 0 or not use_cache) else 1
        inputs, pos = tokens[:, -fresh:], positions[:, -fresh:]
        with step_context(pos, keys):
            logits, cache = forward_step(model, inputs, mask, pos, cache, use_cache=use_cache)
        last = logits[:, -1].float()
        chosen = []
        for row in range(len(batch)):
            if done[row]:
                chosen.append(pad_id)
                continue
            generator = None if generators is None else generators[row]
            token = _pick(last[row], generator, temperature, top_p)
            generated[row].append(token)
            if return_logits:
                kept[row].append(last[row].cpu())
            done[row] = token in stops
            chosen.append(token)
        if all(done):
            break
        new = torch.tensor(chosen, device=device).unsqueeze(1)
        tokens = torch.cat([tokens, new], dim=1)
        mask = torch.cat([mask, torch.ones_like(new)], dim=1)
        positions = torch.cat([positions, positions[:, -1:] + 1], dim=1)
    return [
        GenerationOutput(
            key=key,
            token_ids=tuple(ids),
            stop_reason="eot" if ids and ids[-1] in stops else "length",
            n_tokens=len(ids),
            logits=torch.stack(rows) if return_logits else None,
        )
        for key, ids, rows in zip(keys, generated, kept, strict=True)
    ]
