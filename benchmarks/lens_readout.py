"""Benchmark: hooklab's streaming lens readout vs TransformerLens's logit_lens vs a bare matmul.

For one model shape and token count it times, and measures the peak extra memory of,
  (a) hooklab.stream.read_lens with every metric (the forward pass reported apart),
  (b) transformer_lens.tools.analysis.logit_lens decoding every layer at every position,
  (c) the physical floor: one [layers x tokens, d_model] @ [d_model, d_vocab] matmul in the
      model dtype,
and prints the ratios a/c and a/b, at two or more layer counts so that one can see whether
memory grows with depth. Each measurement runs in its own process (peak RSS is per process on
the CPU; torch.cuda.max_memory_allocated on a GPU). Ratios, not absolute times, are the figures
to quote: these machines are shared.

    python benchmarks/lens_readout.py                        # CPU, Gemma 3's 262,144 vocabulary
    python benchmarks/lens_readout.py --pair gemma3-4b --device cuda --dtype bfloat16
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

import torch
from _memory import PeakMemory


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


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def measure(args) -> dict:
    """Run one contender in this process; return its median time and peak extra memory."""
    from transformer_lens.tools.analysis import logit_lens

    from hooklab.forward import residual_stream
    from hooklab.stream import read_lens

    torch.manual_seed(0)
    model = _model(args, args.layers)
    d_vocab = int(model.cfg.d_vocab)
    batch = max(1, args.tokens // args.seq_len)
    tokens = torch.randint(10, min(d_vocab, 500), (batch, args.seq_len), device=args.device)
    weight = model.unembed.original_component.weight
    rows = torch.randn(
        args.layers * tokens.numel(), int(model.cfg.d_model), dtype=weight.dtype, device=args.device
    )

    from hooklab.metrics import Workspace

    # "a_warm": the workspace made once, as run_readout does across batches
    workspace = Workspace.plan(d_vocab, args.layers, args.device, max_rows=tokens.numel())

    def contender():
        if args.measure == "a":
            return read_lens(model, tokens)
        if args.measure == "a_warm":
            return read_lens(model, tokens, workspace=workspace)
        if args.measure == "forward":
            return residual_stream(model, tokens)
        if args.measure == "b":
            return logit_lens(model, tokens, positions=None, return_type="log_probs")
        return rows @ weight.T

    with torch.no_grad():
        _sync(args.device)
        if args.device.startswith("cuda"):
            torch.cuda.empty_cache()
        times, peaks = [], []
        for _ in range(args.repeats):
            with PeakMemory(args.device) as peak:
                start = time.perf_counter()
                result = contender()
                _sync(args.device)
                times.append(time.perf_counter() - start)
                del result
            peaks.append(peak.extra_bytes)
        peak = max(peaks)
    return {
        "measure": args.measure,
        "layers": args.layers,
        "seconds": statistics.median(times),
        "peak_extra_bytes": max(peak, 0),
    }


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
        "--repeats",
        str(args.repeats),
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
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip-b", action="store_true", help="skip TransformerLens (memory)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--measure", default="a", help=argparse.SUPPRESS)
    parser.add_argument("--layers", type=int, default=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args)))
        return
    shape = args.pair or f"d_model={args.d_model} d_vocab={args.d_vocab}"
    print(
        f"lens readout benchmark: {shape}, {args.tokens} tokens, {args.dtype} on {args.device},"
        f" torch {torch.__version__}, {torch.get_num_threads()} threads"
    )
    print(
        f"{'layers':>6} {'a s':>8} {'a warm s':>9} {'fwd s':>7} {'b: TL s':>8} {'c s':>8} "
        f"{'a/c':>5} {'warm/c':>7} {'a/b':>5} {'a MB':>6} {'warm MB':>8} {'b MB':>6} {'c MB':>6}"
    )
    for layers in [int(x) for x in args.layer_counts.split(",")]:
        a = _run_child(args, "a", layers)
        warm = _run_child(args, "a_warm", layers)
        fwd = _run_child(args, "forward", layers)
        c = _run_child(args, "c", layers)
        b = None if args.skip_b else _run_child(args, "b", layers)

        def mb(result):
            return "-" if result is None else f"{result['peak_extra_bytes'] / 2**20:.0f}"

        b_s = "-" if b is None else f"{b['seconds']:.2f}"
        a_b = "-" if b is None else f"{a['seconds'] / b['seconds']:.2f}"
        print(
            f"{layers:>6} {a['seconds']:>8.2f} {warm['seconds']:>9.2f} {fwd['seconds']:>7.2f} "
            f"{b_s:>8} {c['seconds']:>8.2f} {a['seconds'] / c['seconds']:>5.2f} "
            f"{warm['seconds'] / c['seconds']:>7.2f} {a_b:>5} {mb(a):>6} {mb(warm):>8} "
            f"{mb(b):>6} {mb(c):>6}",
            flush=True,
        )


if __name__ == "__main__":
    main()
