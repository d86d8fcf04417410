"""Benchmark: hooklab's streaming lens readout vs TransformerLens's logit_lens vs a bare matmul.

For one model shape and token count it times
  (a) hooklab.stream.read_lens with every metric (forward pass included; warm workspace, as
      run_readout reuses one across batches),
  (lens) the readout alone: hooklab.stream.read_residuals on an already computed residual
      stream (unembedding + every metric),
  (fwd) the forward pass alone (hooklab.forward.residual_stream),
  (b) transformer_lens.tools.analysis.logit_lens decoding every layer at every position,
  (c) the physical floor: one [layers x tokens, d_model] @ [d_model, d_vocab] matmul in the
      model dtype,
interleaved in rounds (benchmarks/_rounds.py: each round runs every contender once, in a
rotated order), and prints minimum / median seconds and the ratios lens/c, a/c and a/b taken
within each round (minimum / median over rounds), at two or more layer counts. The peak extra
memory of each contender is measured once in its own process (peak RSS is per process on the
CPU; torch.cuda.max_memory_allocated on a GPU), so that one can see whether it grows with
depth. Ratios, not absolute times, are the figures to quote: these machines are shared.

    python benchmarks/lens_readout.py                        # CPU, Gemma 3's 262,144 vocabulary
    python benchmarks/lens_readout.py --pair gemma3-4b --device cuda --dtype bfloat16
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

import torch
from _memory import PeakMemory
from _rounds import interleaved, sync


def _model(args, n_layers: int):
    from hooklab.synthetic import build_model_from_config, build_random_model, real_shape_config

    dtype = getattr(torch, args.dtype)
    if args.pair:
        return build_random_model(args.pair, dtype=dtype, device=args.device, n_layers=n_layers)
    config = real_shape_config("gemma3-4b")
    config.num_hidden_layers = n_layers
    config.layer_types = config.layer_types[:n_layers]
    config.hidden_size = args.d_model
    config.vocab_size = args.d_vocab
    config.intermediate_size = args.d_mlp
    return build_model_from_config(config, dtype=dtype, device=args.device)


def _contenders(args, model, tokens, *, warm: bool = True) -> dict:
    """name -> a call that runs one contender on the same model and tokens. ``warm``: the
    readouts reuse one workspace made beforehand (timing, as run_readout does across batches);
    otherwise each call makes its own (memory: the workspace is part of the readout's peak)."""
    from transformer_lens.tools.analysis import logit_lens

    from hooklab.architectures import unembedding_weight
    from hooklab.forward import residual_stream
    from hooklab.metrics import Workspace
    from hooklab.stream import read_lens, read_residuals

    d_vocab = int(model.cfg.d_vocab)
    weight = unembedding_weight(model)
    rows = torch.randn(
        args.layers * tokens.numel(), int(model.cfg.d_model), dtype=weight.dtype, device=args.device
    )
    # the workspace made once, as run_readout does across batches
    workspace = (
        Workspace.plan(d_vocab, args.layers, args.device, max_rows=tokens.numel()) if warm else None
    )
    with torch.no_grad():
        resid = residual_stream(model, tokens).resid_post
    read = torch.ones_like(tokens, dtype=torch.bool)
    contenders = {
        "a": lambda: read_lens(model, tokens, workspace=workspace),
        "lens": lambda: read_residuals(model, resid, read, workspace=workspace),
        "fwd": lambda: residual_stream(model, tokens),
        "c": lambda: rows @ weight.T,
    }
    if not args.skip_b:
        contenders["b"] = lambda: logit_lens(model, tokens, positions=None, return_type="log_probs")
    return contenders


def _inputs(args):
    torch.manual_seed(0)
    model = _model(args, args.layers)
    d_vocab = int(model.cfg.d_vocab)
    batch = max(1, args.tokens // args.seq_len)
    tokens = torch.randint(10, min(d_vocab, 500), (batch, args.seq_len), device=args.device)
    return model, tokens


def measure_memory(args) -> dict:
    """Run one contender once in this process; return its peak extra memory."""
    model, tokens = _inputs(args)
    contender = _contenders(args, model, tokens, warm=False)[args.measure]
    with torch.no_grad():
        contender()  # warm (lazy initialisation); its memory is freed again
        sync(args.device)
        if args.device.startswith("cuda"):
            torch.cuda.empty_cache()
        with PeakMemory(args.device) as peak:
            result = contender()
            sync(args.device)
            del result
    return {"measure": args.measure, "peak_extra_bytes": max(peak.extra_bytes, 0)}


def _run_child(args, measure_name: str, layers: int) -> dict:
    command = [
        sys.executable,
        __file__,
        "--child",
        "--measure",
        measure_name,
        "--layers",
        str(layers),
        "--tokens",
        str(args.tokens),
        "--seq-len",
        str(args.seq_len),
        "--d-model",
        str(args.d_model),
        "--d-vocab",
        str(args.d_vocab),
        "--d-mlp",
        str(args.d_mlp),
        "--dtype",
        args.dtype,
        "--device",
        args.device,
    ] + (["--pair", args.pair] if args.pair else [])
    out = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pair", help="a paper pair's real shape (random weights), e.g. gemma3-4b")
    parser.add_argument("--d-model", type=int, default=2560)
    parser.add_argument("--d-vocab", type=int, default=262_144)
    parser.add_argument("--d-mlp", type=int, default=1024)
    parser.add_argument("--layer-counts", default="4,8", help="comma-separated, e.g. 4,8,16")
    parser.add_argument("--tokens", type=int, default=256)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds (after one warm-up)")
    parser.add_argument("--skip-b", action="store_true", help="skip TransformerLens (memory)")
    parser.add_argument("--skip-memory", action="store_true", help="no per-process peaks")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--measure", default="a", help=argparse.SUPPRESS)
    parser.add_argument("--layers", type=int, default=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure_memory(args)))
        return
    shape = args.pair or f"d_model={args.d_model} d_vocab={args.d_vocab}"
    print(
        f"lens readout benchmark: {shape}, {args.tokens} tokens, {args.dtype} on {args.device},"
        f" torch {torch.__version__}, {torch.get_num_threads()} threads, {args.rounds} rounds"
    )
    table = []
    for layers in [int(x) for x in args.layer_counts.split(",")]:
        args.layers = layers
        print(f"{layers} layers:", flush=True)
        model, tokens = _inputs(args)
        rounds = interleaved(
            _contenders(args, model, tokens), rounds=args.rounds, device=args.device
        )
        del model
        peaks = {}
        if not args.skip_memory:
            for name in rounds.seconds:
                peaks[name] = _run_child(args, name, layers)["peak_extra_bytes"] / 2**20
        table.append((layers, rounds, peaks))
    names = ["a", "lens", "fwd", "b", "c"]
    print("\nseconds (min / median over rounds); ratios within each round (min / median)")
    print(
        f"{'layers':>6} "
        + " ".join(f"{n + ' s':>15}" for n in names)
        + f" {'lens/c':>13} {'a/c':>13} {'a/b':>13}   peak MB: "
        + " ".join(names)
    )
    for layers, rounds, peaks in table:
        cells = [rounds.summary(n) if n in rounds.seconds else "-" for n in names]
        ratios = [
            rounds.ratio_summary(x, y) if x in rounds.seconds and y in rounds.seconds else "-"
            for x, y in (("lens", "c"), ("a", "c"), ("a", "b"))
        ]
        memory = " ".join(f"{peaks[n]:.0f}" if n in peaks else "-" for n in names)
        print(
            f"{layers:>6} "
            + " ".join(f"{c:>15}" for c in cells)
            + " "
            + " ".join(f"{r:>13}" for r in ratios)
            + f"   {memory}",
            flush=True,
        )


if __name__ == "__main__":
    main()
