"""The benchmarks' synthetic PT/IT pair: a Llama-family checkpoint of a chosen size, random
weights, and an IT side with every weight perturbed (hooklab.synthetic)."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any


def write_pair(args: Any, root: str | Path | None = None) -> tuple[Path, Path]:
    """Write the pair's checkpoints (``args``: layers, d_model, d_vocab) under ``root`` (default
    a fresh temporary folder); returns the PT and IT folders."""
    from hooklab.synthetic import write_perturbed_checkpoint, write_tiny_checkpoint

    root = Path(root or tempfile.mkdtemp(prefix="hooklab-bench-"))
    overrides = dict(
        num_hidden_layers=args.layers,
        hidden_size=args.d_model,
        intermediate_size=4 * args.d_model,
        num_attention_heads=args.d_model // 64,
        num_key_value_heads=args.d_model // 64,
        vocab_size=args.d_vocab,
    )
    pt = write_tiny_checkpoint("llama", root / "pt", **overrides)
    it = write_perturbed_checkpoint(pt, root / "it")
    return Path(pt), Path(it)


def load_synthetic_pair(args: Any, root: str | Path | None = None) -> Any:
    """The pair written by :func:`write_pair`, loaded on ``args.device`` in ``args.dtype``."""
    import hooklab

    pt, it = write_pair(args, root)
    return hooklab.load_pair(pt=pt, it=it, device=args.device, dtype=args.dtype)
