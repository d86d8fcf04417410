"""Offline models for tests, notebooks and benchmarks: tiny checkpoints and real-shape randoms."""

from hooklab.synthetic.checkpoints import (
    TINY_SHAPES,
    TinyPair,
    build_model_from_config,
    build_random_model,
    real_shape_config,
    tiny_config,
    write_mlp_swapped_checkpoint,
    write_perturbed_checkpoint,
    write_tiny_checkpoint,
    write_tiny_pair,
)
from hooklab.synthetic.tokenizer import build_tokenizer

__all__ = [
    "TINY_SHAPES",
    "TinyPair",
    "build_model_from_config",
    "build_random_model",
    "build_tokenizer",
    "real_shape_config",
    "tiny_config",
    "write_mlp_swapped_checkpoint",
    "write_perturbed_checkpoint",
    "write_tiny_checkpoint",
    "write_tiny_pair",
]
