"""Benchmark: the work of one study pair, hooklab vs the straightforward TransformerLens way.

One study pair's work is a convergence-gap readout (kl_to_final of both models on the shared
histories, the ``same_history`` condition) plus a graft sweep (late / mid / early windows, both
directions, logit lens, one mode: ``--mode module``, the paper's graft and the default, or
``--mode splice``; no random control). Both contenders start from the same pair, prompts and
shared histories (IT's greedy responses, made once beforehand and not timed):

  hooklab            ``run_readout`` (``conditions=("same_history",)``, the histories passed as
                     its sequences) then ``run_graft`` (every metric of both tables, batched,
                     each model's ungrafted pass computed once, each window resumed from its
                     first layer, layers shared with the ungrafted stream decoded once);
  transformer_lens   what a one-off script does, prompt by prompt: ``run_with_cache`` (residual
                     hooks only) on each side and ``transformer_lens.tools.analysis.logit_lens``
                     over the read positions, full-vocabulary log-probabilities at every layer,
                     KL to the final layer; then per (window x direction) a host
                     ``run_with_cache`` with hooks on each window layer's ``hook_mlp_out`` —
                     ``module``: the donor's MLP path (``ln2`` -> ``mlp``) on the host's own
                     ``hook_resid_mid``; ``splice``: the donor's cached ``hook_mlp_out`` from
                     one donor ``run_with_cache`` per graft — and the same decoding. It computes
                     kl_to_final (and the entropy logit_lens returns anyway), nothing else.

The pair is a synthetic llama-family one (``hook_mlp_out`` is the whole MLP path there).
Contenders are timed in interleaved rounds (``benchmarks/_rounds.py``); their peak extra memory
is measured in one separate, untimed call each, in a child process of its own. The mean
kl_to_final (and entropy) per (readout side or graft, layer) — means over each prompt's read
positions, then over prompts — of the two must agree (float32: max |difference| <= 1e-5).

Ratios (transformer_lens / hooklab, from the same round), not absolute seconds, are the
figures to quote: these machines are shared.

    python benchmarks/study_pair.py                             # CPU, 12 layers, d_vocab 32768
    python benchmarks/study_pair.py --layers 6 --d-vocab 8192 --prompts 4 --rounds 2
    python benchmarks/study_pair.py --device cuda --d-model 2048 --d-vocab 128256
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from _memory import PeakMemory
from _pairs import write_pair
from _rounds import interleaved

WINDOWS = "late,mid,early"
DIRECTIONS = ("it-to-pt", "pt-to-it")
METRICS = ("kl_to_final", "entropy")


def _load(args, root: Path):
    import hooklab

    return hooklab.load_pair(pt=root / "pt", it=root / "it", device=args.device, dtype=args.dtype)


# ---------------------------------------------------------------- contender 1: hooklab


def hooklab_contender(pair, prompts, histories, args):
    """Both tables, as a study run makes them (every metric, batched)."""
    from hooklab import GraftConfig, ReadoutConfig, load_lenses, run_graft, run_readout
    from hooklab.conditions import ReadSequence

    # the shared histories are the same_history sequences of both sides (same ids, positions)
    sequences = [
        ReadSequence(h.prompt_id, "same_history", side, h.tokens, h.read_from, h.read_to)
        for h in histories
        for side in ("pt", "it")
    ]
    readout_config = ReadoutConfig(conditions=("same_history",), max_new_tokens=args.max_new_tokens)
    graft_config = GraftConfig(
        directions=DIRECTIONS,
        windows=WINDOWS,
        modes=(args.mode,),
        max_new_tokens=args.max_new_tokens,
    )

    def run():
        lenses = load_lenses(pair, "logit")
        readout = run_readout(
            pair, prompts, readout_config, lenses=lenses, sequences=sequences, progress=False
        )
        graft = run_graft(pair, histories, graft_config, lenses=lenses, progress=False)
        return readout, graft

    return run


def hooklab_means(result) -> dict[tuple[str, ...], dict[str, np.ndarray]]:
    """Per (readout side | graft), the per-layer mean over prompts of per-prompt means."""
    readout, graft = result
    out: dict[tuple[str, ...], dict[str, np.ndarray]] = {}
    values = readout[["model", "prompt_id", "layer"]].assign(
        **{m: readout[m].astype(np.float64) for m in METRICS}
    )
    per_prompt = values.groupby(["model", "prompt_id", "layer"], observed=True).mean()
    per_prompt = per_prompt.groupby(["model", "layer"], observed=True).mean()
    for side in ("pt", "it"):
        rows = per_prompt.loc[side].sort_index()
        out[("readout", side)] = {m: rows[m].to_numpy() for m in METRICS}
    means = graft.groupby(["direction", "window", "layer"], observed=True)[list(METRICS)]
    means = means.mean()
    for (direction, window), rows in means.groupby(level=[0, 1], observed=True):
        rows = rows.droplevel([0, 1]).sort_index()
        out[("graft", direction, window)] = {m: rows[m].to_numpy() for m in METRICS}
    return out


# ------------------------------------------------------- contender 2: transformer_lens


def _lens_means(cache, n_layers: int, read_from: int, read_to: int) -> dict[str, np.ndarray]:
    """Per layer, the mean over the read positions of kl_to_final and entropy, via logit_lens."""
    from transformer_lens.tools.analysis import logit_lens

    # stack entry l + 1 (the input of block l + 1, or final_post) is hooklab's layer l
    lens = logit_lens(
        cache,
        layers=range(1, n_layers + 1),
        positions=(read_from, read_to),
        return_type="log_probs",
    )
    log_probs = lens.values[:, 0]  # [layer, pos, d_vocab], float32
    kl = (log_probs.exp() * (log_probs - log_probs[-1])).sum(-1)
    return {
        "kl_to_final": kl.double().mean(-1).cpu().numpy(),
        "entropy": lens.readout.entropy[:, 0].double().mean(-1).cpu().numpy(),
    }


def _module_hooks(donor, layers):
    """Host hooks replacing ``hook_mlp_out`` by the donor's ln2 -> mlp on the host's residual."""
    mid: dict[int, torch.Tensor] = {}

    def keep(layer):
        def hook(activation, **_):
            mid[layer] = activation

        return hook

    def replace(layer):
        def hook(_activation, **_):
            block = donor.blocks[layer]
            return block.mlp(block.ln2(mid.pop(layer)))

        return hook

    out = []
    for layer in layers:
        out.append((f"blocks.{layer}.hook_resid_mid", keep(layer)))
        out.append((f"blocks.{layer}.hook_mlp_out", replace(layer)))
    return out


def _splice_hooks(donor, tokens, layers):
    """One donor run_with_cache; host hooks returning its cached ``hook_mlp_out``."""
    names = [f"blocks.{layer}.hook_mlp_out" for layer in layers]
    _, donor_cache = donor.run_with_cache(tokens, names_filter=names)

    def patch(name):
        def hook(_activation, **_):
            return donor_cache[name]

        return hook

    return [(name, patch(name)) for name in names]


def transformer_lens_contender(pair, histories, args):
    """Prompt by prompt, run_with_cache + logit_lens; each graft its own forward pass(es)."""
    from hooklab.graft.engine import DIRECTIONS as HOST_DONOR
    from hooklab.graft.windows import parse_windows

    n_layers = pair.n_layers
    models = pair.models()
    windows = parse_windows(WINDOWS, n_layers)
    resid = [f"blocks.{layer}.hook_resid_pre" for layer in range(n_layers)]
    resid.append(f"blocks.{n_layers - 1}.hook_resid_post")
    wanted = resid + [
        f"blocks.{n}.hook_{h}" for n in range(n_layers) for h in ("resid_mid", "mlp_out")
    ]
    for model in models.values():  # the bridge hook names this contender relies on
        missing = [name for name in wanted if name not in model.hook_dict]
        assert not missing, f"hooks missing on the bridge: {missing[:3]}"

    def run():
        out: dict[tuple[str, ...], list[dict[str, np.ndarray]]] = {}
        for history in histories:
            tokens = torch.tensor([history.tokens], device=args.device)
            span = (n_layers, history.read_from, history.read_to)
            for side, model in models.items():
                _, cache = model.run_with_cache(tokens, names_filter=resid)
                out.setdefault(("readout", side), []).append(_lens_means(cache, *span))
            for direction in DIRECTIONS:
                host_side, donor_side = HOST_DONOR[direction]
                host, donor = models[host_side], models[donor_side]
                for window in windows:
                    layers = list(window.layers)
                    if args.mode == "splice":
                        hooks = _splice_hooks(donor, tokens, layers)
                    else:
                        hooks = _module_hooks(donor, layers)
                    with host.hooks(fwd_hooks=hooks):
                        _, cache = host.run_with_cache(tokens, names_filter=resid)
                    key = ("graft", direction, window.name)
                    out.setdefault(key, []).append(_lens_means(cache, *span))
        return out

    return run


def transformer_lens_means(result) -> dict[tuple[str, ...], dict[str, np.ndarray]]:
    return {
        key: {m: np.mean([p[m] for p in prompts], axis=0) for m in METRICS}
        for key, prompts in result.items()
    }


# ----------------------------------------------------------------------------- checks


def compare(fast: dict, naive: dict) -> dict[str, float]:
    """Max |difference| per metric over every (readout side | graft, layer) both have.

    The graft table's ungrafted hosts (window "none") are compared with the readout of the
    host side (the same tokens, positions and model).
    """
    from hooklab.graft.engine import DIRECTIONS as HOST_DONOR

    naive = dict(naive)
    for direction in DIRECTIONS:
        naive[("graft", direction, "none")] = naive[("readout", HOST_DONOR[direction][0])]
    assert set(fast) == set(naive), (sorted(fast), sorted(naive))
    return {m: max(float(np.max(np.abs(fast[k][m] - naive[k][m]))) for k in fast) for m in METRICS}


def largest_graft_effect(means: dict) -> float:
    """Largest |grafted - ungrafted host| of a layer's mean kl_to_final: the check's reach."""
    from hooklab.graft.engine import DIRECTIONS as HOST_DONOR

    effects = []
    for key, values in means.items():
        if key[0] == "graft":
            host = means[("readout", HOST_DONOR[key[1]][0])]
            effects.append(np.max(np.abs(values["kl_to_final"] - host["kl_to_final"])))
    return float(max(effects))


# ----------------------------------------------------------------------------- driver


def _contenders(args, root: Path, pair=None):
    from hooklab import load_histories, load_prompts

    pair = pair or _load(args, root)
    histories = load_histories(root)
    prompts = load_prompts()[: args.prompts]
    return (
        pair,
        histories,
        {
            "transformer_lens": transformer_lens_contender(pair, histories, args),
            "hooklab": hooklab_contender(pair, prompts, histories, args),
        },
    )


def _child(args) -> None:
    """Peak extra memory of one call of one contender, in a process of its own."""
    root = Path(args.root)
    _, _, contenders = _contenders(args, root)
    with torch.no_grad(), PeakMemory(args.device) as peak:
        contenders[args.measure]()
    print(json.dumps({"measure": args.measure, "peak_extra_bytes": max(peak.extra_bytes, 0)}))


def _peak_mb(args, name: str) -> float:
    command = [sys.executable, __file__, "--child", "--measure", name, "--root", args.root]
    for flag in ("layers", "d_model", "d_vocab", "prompts", "max_new_tokens", "dtype", "device"):
        command += [f"--{flag.replace('_', '-')}", str(getattr(args, flag))]
    command += ["--mode", args.mode]
    out = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])["peak_extra_bytes"] / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--d-model", type=int, default=512)
    parser.add_argument("--d-vocab", type=int, default=32768)
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--mode", default="module", choices=("module", "splice"))
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--skip-memory", action="store_true", help="no per-process peaks")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--measure", default="hooklab", help=argparse.SUPPRESS)
    parser.add_argument("--root", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(args)
        return

    root = Path(tempfile.mkdtemp(prefix="hooklab-bench-"))
    args.root = str(root)
    try:
        _run(args, root)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _run(args, root: Path) -> None:
    from hooklab import load_prompts, make_histories, save_histories

    write_pair(args, root)
    pair = _load(args, root)
    histories = make_histories(
        pair, load_prompts()[: args.prompts], max_new_tokens=args.max_new_tokens, progress=False
    )
    save_histories(histories, root)
    pair, histories, contenders = _contenders(args, root, pair)  # as the children do
    n_tokens = sum(len(h.tokens) for h in histories)
    n_read = sum(h.read_to - h.read_from for h in histories)
    print(
        f"study pair benchmark: llama, {args.layers} layers, d_model {args.d_model}, d_vocab "
        f"{args.d_vocab}, {len(histories)} histories ({n_tokens} tokens, {n_read} read), "
        f"windows {WINDOWS} x {len(DIRECTIONS)} directions, mode {args.mode}, {args.dtype} on "
        f"{args.device}, torch {torch.__version__}, {torch.get_num_threads()} threads; "
        "hooklab computes every metric of both tables, transformer_lens kl_to_final and entropy",
        flush=True,
    )

    last: dict[str, object] = {}  # each contender's latest result (small tables), for the check

    def keeping(name):
        def run():
            last[name] = contenders[name]()

        return run

    rounds = interleaved(
        {name: keeping(name) for name in contenders}, rounds=args.rounds, device=args.device
    )
    differences = compare(
        hooklab_means(last["hooklab"]), transformer_lens_means(last["transformer_lens"])
    )
    names = ("transformer_lens", "hooklab")
    peaks = {n: float("nan") if args.skip_memory else _peak_mb(args, n) for n in names}

    print(f"{'contender':>17} {'min / median s':>16} {'TL / hooklab':>14} {'peak MB':>8}")
    for name in ("transformer_lens", "hooklab"):
        ratio = rounds.ratio_summary("transformer_lens", "hooklab") if name == "hooklab" else ""
        print(f"{name:>17} {rounds.summary(name):>16} {ratio:>14} {peaks[name]:>8.0f}")
    print(
        "max |difference| of the per-layer means (hooklab vs transformer_lens): "
        + ", ".join(f"{m} {d:.1e}" for m, d in differences.items())
    )
    effect = largest_graft_effect(transformer_lens_means(last["transformer_lens"]))
    print(f"(largest graft effect on a layer's mean kl_to_final: {effect:.3f} nats)")
    if args.dtype == "float32" and differences["kl_to_final"] > 1e-5:
        print("CHECK FAILED: the two contenders' kl_to_final differ by more than 1e-5")


if __name__ == "__main__":
    main()
