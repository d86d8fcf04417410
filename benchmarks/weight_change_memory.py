"""Benchmark: peak memory of ``hooklab.mechanism.weight_change`` on a sharded PT/IT pair.

Writes two sharded random checkpoints in the real DeepSeek-V2-Lite tensor layout (MLA
attention, dense first layer, shared and 64 routed experts stored one by one, bfloat16)
straight to safetensors, one shard at a time, without building a model; then runs
``weight_change`` on them and prints its peak extra RSS next to the largest tensor and the
checkpoint size. Memory must be bounded by O(largest tensor), not by the model.

    python benchmarks/weight_change_memory.py --scale 0.125 --shard-gb 0.25   # 2 x 0.61 GiB
    python benchmarks/weight_change_memory.py --scale 1 --root /big/disk      # 2 x 29.3 GiB

Sizes: scale 1 (the real shape, 15.71 B parameters, 5,291 tensors) writes 2 x 29.3 GiB, its
largest tensor (embedding / unembedding, 102400 x 2048) is 400 MiB; scale 0.25: 2 x 2.1 GiB,
100 MiB; scale 0.125: 2 x 0.61 GiB, 50 MiB (the vocabulary is never scaled). Measured at
scale 0.125 with 0.25 GiB shards (3 shards per side) on a busy 2-core CPU: peak extra RSS
104 MiB for 1.2 GiB read, 5,291 rows, 512 s.
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import tempfile
import time
import zlib
from pathlib import Path

import torch
from _memory import PeakMemory
from safetensors.torch import save_file


def tensor_shapes(scale: float) -> list[tuple[str, tuple[int, ...]]]:
    """(name, shape) of every tensor of DeepSeek-V2-Lite, widths multiplied by ``scale``."""
    from hooklab.synthetic import real_shape_config

    c = real_shape_config("deepseek-v2-lite")

    def s(width: int) -> int:
        return max(8, int(round(width * scale / 8)) * 8)

    hidden, inter, expert = s(c.hidden_size), s(c.intermediate_size), s(c.moe_intermediate_size)
    heads, rope, nope, v = (
        c.num_attention_heads,
        c.qk_rope_head_dim,
        c.qk_nope_head_dim,
        c.v_head_dim,
    )
    lora = s(c.kv_lora_rank)
    shapes = [("model.embed_tokens.weight", (c.vocab_size, hidden))]
    for layer in range(c.num_hidden_layers):
        p = f"model.layers.{layer}."
        shapes += [
            (p + "input_layernorm.weight", (hidden,)),
            (p + "post_attention_layernorm.weight", (hidden,)),
            (p + "self_attn.q_proj.weight", (heads * (nope + rope), hidden)),
            (p + "self_attn.kv_a_proj_with_mqa.weight", (lora + rope, hidden)),
            (p + "self_attn.kv_a_layernorm.weight", (lora,)),
            (p + "self_attn.kv_b_proj.weight", (heads * (nope + v), lora)),
            (p + "self_attn.o_proj.weight", (hidden, heads * v)),
        ]
        if layer < c.first_k_dense_replace:
            mlp = [("mlp.", inter)]
        else:
            shapes.append((p + "mlp.gate.weight", (c.n_routed_experts, hidden)))
            mlp = [("mlp.shared_experts.", expert * c.n_shared_experts)]
            mlp += [(f"mlp.experts.{e}.", expert) for e in range(c.n_routed_experts)]
        for prefix, width in mlp:
            shapes += [
                (p + prefix + "gate_proj.weight", (width, hidden)),
                (p + prefix + "up_proj.weight", (width, hidden)),
                (p + prefix + "down_proj.weight", (hidden, width)),
            ]
    shapes += [("model.norm.weight", (hidden,)), ("lm_head.weight", (c.vocab_size, hidden))]
    return shapes


def write_pair(root: Path, scale: float, shard_bytes: int) -> tuple[int, int]:
    """Write ``root/pt`` and ``root/it`` (IT = PT + 1% noise); returns (bytes, largest)."""
    shapes = tensor_shapes(scale)
    shards: list[list[tuple[str, tuple[int, ...]]]] = [[]]
    size = 0
    for name, shape in shapes:
        nbytes = 2 * math.prod(shape)
        if shards[-1] and size + nbytes > shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append((name, shape))
        size += nbytes
    for side in ("pt", "it"):
        (root / side).mkdir(parents=True, exist_ok=True)
    weight_map = {}
    for index, shard in enumerate(shards):
        file = f"model-{index + 1:05d}-of-{len(shards):05d}.safetensors"
        pt, it = {}, {}
        for name, shape in shard:
            generator = torch.Generator().manual_seed(zlib.crc32(name.encode()))
            tensor = torch.randn(shape, generator=generator) * 0.02
            pt[name] = tensor.bfloat16()
            it[name] = (tensor + 0.01 * 0.02 * torch.randn(shape, generator=generator)).bfloat16()
            weight_map[name] = file
        save_file(pt, root / "pt" / file, metadata={"format": "pt"})
        save_file(it, root / "it" / file, metadata={"format": "pt"})
        del pt, it
    index = json.dumps({"metadata": {}, "weight_map": weight_map})
    for side in ("pt", "it"):
        (root / side / "model.safetensors.index.json").write_text(index)
    total = sum(2 * math.prod(shape) for _, shape in shapes)
    return total, max(2 * math.prod(shape) for _, shape in shapes)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scale", type=float, default=0.125, help="width factor (1 = real)")
    parser.add_argument("--shard-gb", type=float, default=0.25)
    parser.add_argument("--root", default=None, help="where to write (default: a temp folder)")
    args = parser.parse_args()

    from hooklab.mechanism.weight_change import weight_change

    root = Path(args.root or tempfile.mkdtemp(prefix="hooklab-wc-"))
    start = time.perf_counter()
    total, largest = write_pair(root, args.scale, int(args.shard_gb * 2**30))
    print(f"wrote 2 x {total / 2**30:.2f} GiB in {time.perf_counter() - start:.0f} s to {root}")
    start = time.perf_counter()
    with PeakMemory("cpu") as peak:
        frame = weight_change(root / "pt", root / "it")
    seconds = time.perf_counter() - start
    print(f"tensors: {len(frame)}, largest tensor: {largest / 2**20:.0f} MiB (bfloat16)")
    print(f"weight_change: {seconds:.1f} s, peak extra RSS {peak.extra_bytes / 2**20:.0f} MiB")
    print(f"process max RSS: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10:.0f} MiB")
    print(frame.groupby("group")["rel_change"].describe()[["count", "mean", "max"]])


if __name__ == "__main__":
    main()
