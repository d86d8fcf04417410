"""Benchmark: generation under a graft, with the KV cache vs rerunning the whole sequence.

Runs the arm ``pt+late:it`` (PT with IT's late MLPs grafted in at every step) on the embedded
pair and on a larger tiny Llama-family pair, cached and uncached in interleaved rounds (so load
drifts hit both alike), with no stop token so both generate exactly the same number of tokens.
Prints tokens/s per round, the cached/uncached ratio per round and its median, and checks the
two produce identical tokens.

    python benchmarks/generation.py                       # CPU
    python benchmarks/generation.py --device cuda --rounds 5 --max-new-tokens 128
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from _pairs import load_synthetic_pair


def _bench(name, pair, args) -> None:
    from hooklab.generation import arm_hooks, arm_prompt_ids, generate, parse_arm
    from hooklab.prompts import load_prompts

    arm = parse_arm(args.arm, pair.n_layers)
    prompts = load_prompts()[: args.prompts]
    ids = [arm_prompt_ids(pair, arm, p.text) for p in prompts]
    host, hooks = arm_hooks(pair, arm)
    pad = pair.tokenizer.pad_token_id or 0

    def run(use_cache: bool):
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        start = time.perf_counter()
        outputs = generate(
            host,
            ids,
            hooks=hooks,
            max_new_tokens=args.max_new_tokens,
            stop_ids=[],
            pad_id=pad,
            batch_size=args.batch_size,
            use_cache=use_cache,
        )
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
        return [o.token_ids for o in outputs], sum(o.n_tokens for o in outputs) / seconds

    print(
        f"\n{name}: {pair.n_layers} layers, d_model {pair.d_model}, vocabulary {pair.d_vocab}, "
        f"arm {arm.text}, {len(ids)} prompts, {args.max_new_tokens} new tokens, "
        f"batch {args.batch_size}, {args.device} {args.dtype}"
    )
    run(True)  # warm-up
    ratios = []
    for round_ in range(args.rounds):
        cached_tokens, cached = run(True)
        uncached_tokens, uncached = run(False)
        if cached_tokens != uncached_tokens:
            raise SystemExit(f"{name}: cached and uncached generation differ (round {round_})")
        ratios.append(cached / uncached)
        print(
            f"  round {round_}: cached {cached:8.1f} tok/s   uncached {uncached:8.1f} tok/s   "
            f"ratio {ratios[-1]:.2f}x"
        )
    print(f"  median ratio cached/uncached: {statistics.median(ratios):.2f}x (identical tokens)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--arm", default="pt+late:it")
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--d-model", type=int, default=512)
    parser.add_argument("--d-vocab", type=int, default=8192)
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    import hooklab

    _bench("embedded pair", hooklab.load_pair("tiny", device=args.device, dtype=args.dtype), args)
    _bench("larger tiny pair", load_synthetic_pair(args), args)


if __name__ == "__main__":
    main()
