"""Lenses (logit, tuned), tuned-lens training, and loading lenses by spec."""

from hooklab.lens.base import Lens, LogitLens, lens_logits
from hooklab.lens.training import (
    TunedLensTrainConfig,
    TunedLensTrainResult,
    held_out_kl,
    train_tuned_lens,
)
from hooklab.lens.tuned import TunedLens, TunedLensConfig, unembed_hash

__all__ = [
    "Lens",
    "LogitLens",
    "TunedLens",
    "TunedLensConfig",
    "TunedLensTrainConfig",
    "TunedLensTrainResult",
    "held_out_kl",
    "lens_logits",
    "train_tuned_lens",
    "unembed_hash",
]
