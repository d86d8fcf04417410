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
import threading
import time

import torch


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


class _RssSampler:
    """Peak resident memory of this process while a block runs (CPU), sampled every 2 ms."""

    def __init__(self) -> None:
        import psutil

        self._process = psutil.Process()
        self.start = self.peak = 0
        self._stop = threading.Event()

    def __enter__(self):
        self.start = self.peak = self._process.memory_info().rss
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._process.memory_info().rss)
            time.sleep(0.002)

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._process.memory_info().rss)


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

    def contender():
        if args.measure == "a":
            return read_lens(model, tokens)
        if args.measure == "forward":
            return residual_stream(model, tokens)
        if args.measure == "b":
            return logit_lens(model, tokens, positions=None, return_type="log_probs")
        return rows @ weight.T

    cuda = args.device.startswith("cuda")
    with torch.no_grad():
        _sync(args.device)
        if cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
            baseline = torch.cuda.memory_allocated()
        times, peaks = [], []
        for _ in range(args.repeats):
            with _RssSampler() as rss:
                start = time.perf_counter()
                result = contender()
                _sync(args.device)
                times.append(time.perf_counter() - start)
                del result
            peaks.append(rss.peak - rss.start)
        peak = torch.cuda.max_memory_allocated() - baseline if cuda else max(peaks)
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
    header = (
        f"{'layers':>6} {'a: hooklab s':>13} {'(fwd s)':>8} {'b: TL s':>9} {'c: matmul s':>12}"
        f" {'a/c':>6} {'(a-fwd)/c':>10} {'a/b':>6} {'a mem MB':>9} {'b mem MB':>9}"
        f" {'c mem MB':>9}"
    )
    print(header)
    for layers in [int(x) for x in args.layer_counts.split(",")]:
        a = _run_child(args, "a", layers)
        fwd = _run_child(args, "forward", layers)
        c = _run_child(args, "c", layers)
        b = None if args.skip_b else _run_child(args, "b", layers)
        mb = lambda r: "-" if r is None else f"{r['peak_extra_bytes'] / 2**20:.0f}"  # noqa: E731
        b_s = "-" if b is None else f"{b['seconds']:.3f}"
        a_b = "-" if b is None else f"{a['seconds'] / b['seconds']:.2f}"
        print(
            f"{layers:>6} {a['seconds']:>13.3f} {fwd['seconds']:>8.3f} {b_s:>9} "
            f"{c['seconds']:>12.3f} {a['seconds'] / c['seconds']:>6.2f} "
            f"{(a['seconds'] - fwd['seconds']) / c['seconds']:>10.2f} {a_b:>6} {mb(a):>9} "
            f"{mb(b):>9} {mb(c):>9}",
            flush=True,
        )


if __name__ == "__main__":
    main()
