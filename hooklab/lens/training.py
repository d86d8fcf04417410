"""Training a tuned lens: minimise KL(p_final ‖ p_l) over a text corpus, per layer.

The model is frozen; only the translators learn. Each step runs one forward pass that keeps the
residual stream, then, layer by layer, reads it through the translator and the model's readout
and backpropagates that layer's loss at once, so memory never holds more than one layer's
[tokens, d_vocab] logits.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

import torch
from tqdm.auto import tqdm

from hooklab.architectures import model_device, read_logits
from hooklab.errors import HooklabError
from hooklab.forward import residual_stream
from hooklab.lens.tuned import TunedLens
from hooklab.types import Bridge

__all__ = ["TunedLensTrainConfig", "TunedLensTrainResult", "train_tuned_lens", "held_out_kl"]


@dataclass(frozen=True)
class TunedLensTrainConfig:
    """How to train a tuned lens.

    Attributes:
        token_budget: training tokens to consume (the number of steps follows from it).
        seq_len: tokens per training sequence.
        batch_size: sequences per step.
        optimizer: ``"adam"`` or ``"sgd"`` (SGD with Nesterov momentum 0.9, as tuned-lens).
        lr: learning rate.
        weight_decay: decay towards the identity translation.
        max_grad_norm: gradient clipping threshold.
        held_out_fraction: share of the sequences kept out of training for the KL report.
        seed: shuffling seed.
    """

    token_budget: int = 250_000
    seq_len: int = 128
    batch_size: int = 8
    optimizer: Literal["adam", "sgd"] = "adam"
    lr: float = 1e-3
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    held_out_fraction: float = 0.1
    seed: int = 0

    def __post_init__(self) -> None:
        if self.optimizer not in ("adam", "sgd"):
            raise HooklabError(f"optimizer={self.optimizer!r}: use 'adam' or 'sgd'.")
        for name in ("token_budget", "seq_len", "batch_size"):
            if getattr(self, name) < 1:
                raise HooklabError(f"{name}={getattr(self, name)} must be a positive integer.")
        if not 0 < self.held_out_fraction < 1:
            raise HooklabError(f"held_out_fraction={self.held_out_fraction} must be in (0, 1).")


@dataclass(frozen=True)
class TunedLensTrainResult:
    """What training did: steps, tokens, and held-out KL(p_final ‖ p_l) per layer, in nats."""

    steps: int
    tokens_seen: int
    held_out_tokens: int
    held_out_kl_before: list[float]
    held_out_kl_after: list[float]
    config: TunedLensTrainConfig

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "config": asdict(self.config)}


def _sequences(model: Bridge, texts: Sequence[str], seq_len: int) -> torch.Tensor:
    """Pack a corpus into [n, seq_len] rows, each starting with BOS."""
    tokenizer = model.tokenizer
    stream: list[int] = []
    for text in texts:
        stream.extend(tokenizer(text, add_special_tokens=False)["input_ids"])
        if tokenizer.eos_token_id is not None:
            stream.append(tokenizer.eos_token_id)
    body = seq_len - 1
    n_rows = len(stream) // body
    if n_rows < 2:
        raise HooklabError(
            f"the corpus has {len(stream)} tokens, too few for two sequences of seq_len="
            f"{seq_len}; pass more text or a smaller seq_len."
        )
    rows = torch.tensor(stream[: n_rows * body]).reshape(n_rows, body)
    bos = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else rows[0, 0].item()
    return torch.cat([torch.full((n_rows, 1), bos), rows], dim=1)


@contextlib.contextmanager
def _frozen(model: Bridge) -> Iterator[None]:
    flags = [(p, p.requires_grad) for p in model.parameters()]
    for param, _ in flags:
        param.requires_grad_(False)
    try:
        yield
    finally:
        for param, flag in flags:
            param.requires_grad_(flag)


def _layer_kl(model: Bridge, lens: TunedLens, layer: int, resid: torch.Tensor, final_logprobs):
    logprobs = torch.log_softmax(read_logits(model, lens.translate(layer, resid)).float(), -1)
    return (final_logprobs.exp() * (final_logprobs - logprobs)).sum(-1).mean()


def held_out_kl(
    model: Bridge, lens: TunedLens, sequences: torch.Tensor, batch_size: int = 8
) -> list[float]:
    """Mean KL(p_final ‖ p_l) per layer over ``sequences`` (last layer: 0 by construction)."""
    n_layers = int(model.cfg.n_layers)
    totals = torch.zeros(n_layers, dtype=torch.float64)
    device = model_device(model)
    with torch.no_grad(), _frozen(model):
        for start in range(0, sequences.shape[0], batch_size):
            batch = sequences[start : start + batch_size].to(device)
            resid = residual_stream(model, batch).resid_post
            final = torch.log_softmax(read_logits(model, resid[-1]).float(), -1)
            for layer in range(n_layers - 1):
                kl = _layer_kl(model, lens, layer, resid[layer], final)
                totals[layer] += float(kl) * batch.shape[0]
    return (totals / sequences.shape[0]).tolist()


def train_tuned_lens(
    model: Bridge,
    texts: Sequence[str],
    *,
    config: TunedLensTrainConfig | None = None,
    lens: TunedLens | None = None,
    name_or_path: str = "",
    revision: str | None = None,
    progress: bool = True,
    label: str = "tuned lens",
) -> tuple[TunedLens, TunedLensTrainResult]:
    """Train a tuned lens for ``model`` on ``texts``; report held-out KL before and after.

    Train PT and IT lenses separately: a lens is tied to its model's unembedding.

    Args:
        model: a TransformerBridge (frozen during training).
        texts: the training corpus.
        config: training settings (defaults: :class:`TunedLensTrainConfig`).
        lens: a lens to continue training; default a zero-initialised one.
        name_or_path: recorded as ``base_model_name_or_path``.
        revision: recorded as ``base_model_revision``.
        progress: show a progress bar.
        label: the progress bar's label (say which side it trains).
    """
    config = config or TunedLensTrainConfig()
    lens = lens or TunedLens.from_model(model, name_or_path=name_or_path, revision=revision)
    sequences = _sequences(model, texts, config.seq_len)
    generator = torch.Generator().manual_seed(config.seed)
    sequences = sequences[torch.randperm(sequences.shape[0], generator=generator)]
    n_held = max(1, int(round(sequences.shape[0] * config.held_out_fraction)))
    held, train = sequences[:n_held], sequences[n_held:]
    before = held_out_kl(model, lens, held, config.batch_size)

    params = [p for p in lens.parameters()]
    optimizer: torch.optim.Optimizer
    if config.optimizer == "adam":
        optimizer = torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)
    else:
        optimizer = torch.optim.SGD(
            params, lr=config.lr, momentum=0.9, nesterov=True, weight_decay=config.weight_decay
        )
    steps = max(1, math.ceil(config.token_budget / (config.batch_size * config.seq_len)))
    n_layers = int(model.cfg.n_layers)
    device = model_device(model)
    tokens_seen = 0
    bar = tqdm(range(steps), desc=label, disable=not progress, unit="step")
    with _frozen(model):
        for step in bar:
            rows = torch.arange(step * config.batch_size, (step + 1) * config.batch_size)
            batch = train[rows % train.shape[0]].to(device)
            resid = residual_stream(model, batch).resid_post
            with torch.no_grad():
                final = torch.log_softmax(read_logits(model, resid[-1]).float(), -1)
            optimizer.zero_grad(set_to_none=True)
            total = 0.0
            for layer in range(n_layers - 1):
                loss = _layer_kl(model, lens, layer, resid[layer], final)
                loss.backward()
                total += float(loss.detach())
            torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm)
            optimizer.step()
            tokens_seen += batch.numel()
            bar.set_postfix(kl=f"{total / max(n_layers - 1, 1):.3f}")
    after = held_out_kl(model, lens, held, config.batch_size)
    result = TunedLensTrainResult(
        steps=steps,
        tokens_seen=tokens_seen,
        held_out_tokens=int(held.numel()),
        held_out_kl_before=before,
        held_out_kl_after=after,
        config=config,
    )
    return lens, result
