"""Benchmark: a graft sweep of 8 windows over a 24-layer model, hooklab vs the naive way.

The naive way is what a one-off script does per window: one donor forward pass (for its MLP
outputs) and one full host forward pass with the graft hooks, then the lens readout. hooklab
runs each model's ungrafted pass once per batch, keeps the donor's MLP outputs and every
block's inputs, and reruns only the host's blocks from each window's first layer.

The naive way is the test suite's reference (``tests/graft_reference.py``), imported from
there so that the benchmark times exactly what the tests check against.

The two run interleaved in rounds (benchmarks/_rounds.py: one warm-up round, then each round
runs both, in a rotated order). Prints minimum / median wall time and the peak extra memory of
both, their ratio within each round (minimum / median), the share spent in the lens readout,
and the largest difference between the two tables (must be <= 1e-5).

    python benchmarks/graft_sweep.py                   # CPU, 24 layers, d_model 512
    python benchmarks/graft_sweep.py --device cuda --d-model 2048 --d-vocab 128256
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from _memory import PeakMemory
from _pairs import load_synthetic_pair
from _rounds import interleaved, sync

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository, for tests/


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--layers", type=int, default=24)
    parser.add_argument("--d-model", type=int, default=512)
    parser.add_argument("--d-vocab", type=int, default=512)
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--windows", default="sliding:3:3")
    parser.add_argument("--mode", default="splice")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds (after one warm-up)")
    args = parser.parse_args()

    import hooklab.stream as stream
    from hooklab.graft.histories import make_histories
    from hooklab.graft.sweep import GraftConfig, run_graft
    from hooklab.lens import LogitLens
    from hooklab.prompts import load_prompts
    from tests.graft_reference import max_difference, naive_graft

    pair = load_synthetic_pair(args)
    histories = make_histories(
        pair, load_prompts()[: args.prompts], max_new_tokens=args.max_new_tokens, progress=False
    )
    config = GraftConfig(
        directions=("it-to-pt",), windows=args.windows, modes=(args.mode,), batch_size=args.prompts
    )
    lenses = {"pt": LogitLens(), "it": LogitLens()}
    n_tokens = sum(len(h.tokens) for h in histories)
    print(
        f"graft sweep benchmark: {args.layers} layers, d_model {args.d_model}, d_vocab "
        f"{args.d_vocab}, {args.prompts} histories ({n_tokens} tokens), windows "
        f"{args.windows}, mode {args.mode}, {args.dtype} on {args.device}, "
        f"{torch.get_num_threads()} threads"
    )

    readout_seconds = {"value": 0.0}

    def timer(original):
        def timed(*a, **k):
            start = time.perf_counter()
            try:
                return original(*a, **k)
            finally:
                readout_seconds["value"] += time.perf_counter() - start

        return timed

    timed, timed_residuals = timer(stream.read_variants), timer(stream.read_residuals)

    import hooklab.graft.sweep as sweep_module
    import tests.graft_reference as reference_module

    # the optimised sweep reads through read_variants, the naive one through read_residuals
    sweep_module.read_variants = timed
    reference_module.read_residuals = timed_residuals
    readout_share: dict[str, list[float]] = {"naive": [], "hooklab": []}
    tables = {}

    def contender(name, run):
        def call():
            readout_seconds["value"] = 0.0
            tables[name] = run()
            readout_share[name].append(readout_seconds["value"])

        return call

    contenders = {
        "naive": contender("naive", lambda: naive_graft(pair, histories, config, lenses=lenses)),
        "hooklab": contender(
            "hooklab", lambda: run_graft(pair, histories, config, lenses=lenses, progress=False)
        ),
    }
    rounds = interleaved(contenders, rounds=args.rounds, device=args.device)
    peaks = {}
    for name, call in contenders.items():  # one more call each, for its peak memory
        with PeakMemory(args.device) as peak:
            call()
            sync(args.device)
        peaks[name] = peak.extra_bytes / 2**20
    difference = max_difference(tables["hooklab"], tables["naive"])
    print("\nseconds (min / median over rounds)")
    print(f"{'':>8} {'total s':>15} {'readout s (median)':>19} {'peak MB':>8}")
    for name in contenders:
        share = statistics.median(readout_share[name][1 : args.rounds + 1])
        print(f"{name:>8} {rounds.summary(name):>15} {share:>19.2f} {peaks[name]:>8.0f}")
    outside = [
        (n - rn) / (h - rh)
        for n, h, rn, rh in zip(
            rounds.seconds["naive"],
            rounds.seconds["hooklab"],
            readout_share["naive"][1 : args.rounds + 1],
            readout_share["hooklab"][1 : args.rounds + 1],
            strict=True,
        )
    ]
    print(
        f"speed-up naive / hooklab within each round (min / median): total "
        f"{rounds.ratio_summary('naive', 'hooklab')}, outside the readout "
        f"{min(outside):.2f} / {statistics.median(outside):.2f}; max |difference| "
        f"{difference:.1e}"
    )


if __name__ == "__main__":
    main()
