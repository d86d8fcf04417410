"""One device run (issue 25): hooklab at real shapes in bfloat16 on one GPU, in about 8 minutes.

For the Gemma 3 4B and DeepSeek-V2-Lite shapes (random weights, layers truncated to
``--layers`` so that both fit the time) it records, each contender timed in interleaved rounds
(benchmarks/_rounds.py, ratios taken within a round):

* readout: the streaming lens readout (every metric) on the reference and the fused path
  against the bf16 GEMM floor (one [layers x tokens, d_model] @ [d_model, d_vocab] matmul),
  the largest difference between the two paths' metrics, and each one's peak GPU memory;
* graft: the graft sweep (hooklab.graft.run_graft) against the naive way
  (tests/graft_reference.naive_graft), their speed-up, tables' difference and peak memory;
* behave: cached generation throughput (tokens/s) of every default behave arm;
* study: a small study (readout + graft on a synthetic pair) run end to end, its measured
  seconds beside ``hooklab study plan --measured``'s estimate.

Writes ``gpu_suite.json`` and ``gpu_suite.md`` under ``--out`` (default ``$OUT``, else
``out/gpu-suite``). ``--smoke`` runs the same code at toy shapes in float32 on the CPU in
seconds (tests/test_benchmarks.py runs it, so the script cannot rot).

On the device machine (its image has torch but lacks TransformerLens and others, and its
transformers is too old): first, on this machine, ``bash benchmarks/gpu_wheels.sh`` (fills the
git-ignored ``.gpu-wheels/``, about 50 MB), then call the device tool's ``run`` with
``carry=[".gpu-wheels"]``, ``timeout_s=540`` (the suite stops starting parts after
``--budget-s`` 360 s and rewrites its files after each part, so a cut-short run still returns
what it measured) and this command::

    set -o pipefail; W=.gpu-wheels; P="python3 -m pip install -q --no-index --find-links $W
    --no-build-isolation"; { $P -r $W/requirements.txt || $P --no-deps -r $W/requirements.txt; }
    && $P --no-deps -e . && PYTHONUNBUFFERED=1 python3 benchmarks/gpu_suite.py --out "$OUT"
    2>&1 | tee "$OUT/log.txt"

(one line; the fallback installs the wheels without resolving against the image's versions).

    python benchmarks/gpu_suite.py --smoke --out /tmp/gpu-suite   # CPU, toy shapes, seconds
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from _memory import PeakMemory
from _pairs import write_pair
from _rounds import interleaved, sync

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository, for tests/

#: The real shapes measured, and the tiny shape of the same family for --smoke.
SHAPES = {"gemma3-4b": "gemma3", "deepseek-v2-lite": "deepseek_v2"}


def _config(name: str, args: argparse.Namespace) -> Any:
    from hooklab.synthetic import real_shape_config, tiny_config

    config = tiny_config(SHAPES[name]) if args.smoke else real_shape_config(name)
    text = config.get_text_config()
    text.num_hidden_layers = min(args.layers, text.num_hidden_layers)
    if getattr(text, "layer_types", None):
        text.layer_types = text.layer_types[: text.num_hidden_layers]
    return text


def random_pair(name: str, args: argparse.Namespace) -> Any:
    """A ModelPair of two independently random models at ``name``'s shape (no download)."""
    import transformers

    from hooklab.architectures import spec_for_architecture
    from hooklab.compatibility import CompatibilityReport
    from hooklab.loading import CheckpointSource
    from hooklab.pair import ModelPair
    from hooklab.synthetic import build_model_from_config
    from hooklab.synthetic.tokenizer import saved_tokenizer_folder

    dtype = getattr(torch, args.dtype)
    sides = {}
    for seed, side in enumerate(("pt", "it")):
        torch.manual_seed(seed)
        sides[side] = build_model_from_config(_config(name, args), dtype=dtype, device=args.device)
    source = CheckpointSource(f"random-{name}", is_local=True)
    return ModelPair(
        pt=sides["pt"],
        it=sides["it"],
        tokenizer=transformers.AutoTokenizer.from_pretrained(saved_tokenizer_folder(512)),
        family=spec_for_architecture(str(sides["pt"].cfg.architecture)).family,
        pt_source=source,
        it_source=source,
        dtype=dtype,
        device=args.device,
        compatibility=CompatibilityReport(()),
    )


def _peak_mib(device: str, call: Callable[[], object]) -> float:
    with torch.no_grad(), PeakMemory(device) as peak:
        value = call()
        sync(device)
        del value
    return max(peak.extra_bytes, 0) / 2**20


def _timed(rounds: Any, names: list[str], baseline: str, args: Any, calls: dict) -> dict:
    """Median seconds, within-round ratios to ``baseline`` (min / median) and peak MiB."""
    out: dict[str, Any] = {}
    for name in names:
        ratios = rounds.ratios(name, baseline)
        out[name] = {
            "median_s": statistics.median(rounds.seconds[name]),
            "min_s": min(rounds.seconds[name]),
            f"ratio_to_{baseline}_min": min(ratios),
            f"ratio_to_{baseline}_median": statistics.median(ratios),
            "peak_mib": _peak_mib(args.device, calls[name]),
        }
    return out


def readout_section(pair: Any, args: argparse.Namespace) -> dict:
    """Readout (reference, fused) against the GEMM floor."""
    from hooklab.architectures import unembedding_weight
    from hooklab.forward import residual_stream
    from hooklab.metrics import Workspace
    from hooklab.stream import read_residuals

    model = pair.it
    n_layers, d_vocab = int(model.cfg.n_layers), int(model.cfg.d_vocab)
    tokens = torch.randint(10, 500, (args.batch, args.seq_len), device=args.device)
    with torch.no_grad():
        resid = residual_stream(model, tokens).resid_post
    read = torch.ones_like(tokens, dtype=torch.bool)
    workspace = Workspace.plan(d_vocab, n_layers, args.device, max_rows=tokens.numel())
    weight = unembedding_weight(model)
    rows = torch.randn(
        n_layers * tokens.numel(), weight.shape[1], dtype=weight.dtype, device=args.device
    )
    calls = {
        "floor": lambda: rows @ weight.T,
        "reference": lambda: read_residuals(
            model, resid, read, workspace=workspace, backend="reference"
        ),
        "fused": lambda: read_residuals(model, resid, read, workspace=workspace, backend="fused"),
    }
    rounds = interleaved(calls, rounds=args.rounds, device=args.device)
    result = _timed(rounds, list(calls), "floor", args, calls)
    reference, fused = calls["reference"](), calls["fused"]()
    result["max_difference"] = {
        name: float((fused.metrics[name].double() - value.double()).abs().max())
        for name, value in reference.metrics.items()
    }
    result["shape"] = {
        "layers": n_layers,
        "tokens": tokens.numel(),
        "d_vocab": d_vocab,
        "d_model": int(model.cfg.d_model),
    }
    return result


def _histories(pair: Any, args: argparse.Namespace) -> list:
    from hooklab.graft.histories import make_histories
    from hooklab.prompts import load_prompts

    prompts = load_prompts()[: args.prompts]
    return make_histories(pair, prompts, max_new_tokens=args.max_new_tokens, progress=False)


def graft_section(pair: Any, args: argparse.Namespace) -> dict:
    """The graft sweep against the naive way (one donor and one host pass per window)."""
    from hooklab.graft.sweep import GraftConfig, run_graft
    from hooklab.lens import LogitLens
    from tests.graft_reference import max_difference, naive_graft

    histories = _histories(pair, args)
    config = GraftConfig(
        directions=("it-to-pt",), windows=args.windows, modes=("module",), batch_size=args.prompts
    )
    lenses = {"pt": LogitLens(), "it": LogitLens()}
    tables: dict[str, Any] = {}

    def contender(name: str, run: Callable[[], Any]) -> Callable[[], None]:
        def call() -> None:
            tables[name] = run()

        return call

    calls = {
        "naive": contender("naive", lambda: naive_graft(pair, histories, config, lenses=lenses)),
        "hooklab": contender(
            "hooklab", lambda: run_graft(pair, histories, config, lenses=lenses, progress=False)
        ),
    }
    rounds = interleaved(calls, rounds=args.rounds, device=args.device)
    result = _timed(rounds, list(calls), "hooklab", args, calls)
    result["speedup_median"] = result["naive"]["ratio_to_hooklab_median"]
    result["max_difference"] = float(max_difference(tables["hooklab"], tables["naive"]))
    result["histories_tokens"] = sum(len(h.tokens) for h in histories)
    return result


def behave_section(pair: Any, args: argparse.Namespace) -> dict:
    """Cached generation throughput of each behave arm (no stop token: a fixed length)."""
    from hooklab.generation import arm_hooks, arm_prompt_ids, generate, parse_arm
    from hooklab.prompts import load_prompts

    prompts = load_prompts()[: args.prompts]
    out = {}
    for text in args.arms.split(","):
        arm = parse_arm(text, pair.n_layers)
        ids = [arm_prompt_ids(pair, arm, p.text) for p in prompts]
        host, hooks = arm_hooks(pair, arm)

        def run(host: Any = host, hooks: Any = hooks, ids: Any = ids) -> list:
            return generate(
                host,
                ids,
                hooks=hooks,
                max_new_tokens=args.max_new_tokens,
                stop_ids=[],
                pad_id=0,
                batch_size=args.prompts,
                use_cache=True,
            )

        run()  # warm-up
        sync(args.device)
        start = time.perf_counter()
        outputs = run()
        sync(args.device)
        seconds = time.perf_counter() - start
        out[arm.text] = {
            "tokens_per_s": sum(o.n_tokens for o in outputs) / seconds,
            "seconds": seconds,
        }
    return out


def study_section(args: argparse.Namespace, root: Path) -> dict:
    """A small study end to end; its measured seconds against the plan's estimate."""
    from hooklab.study import CostModel, calibrate, format_calibration, load_study, run_study

    shape = argparse.Namespace(**vars(args))
    shape.layers, shape.d_model, shape.d_vocab = args.study_shape
    pt, it = write_pair(shape, root / "study-pair")
    spec = root / "study.toml"
    spec.write_text(
        f'[study]\nname = "gpu-suite"\nout = "{root / "study"}"\n'
        f"response_tokens = {args.max_new_tokens}\n"
        f'[[study.pairs]]\npt = "{pt}"\nit = "{it}"\nlabel = "synthetic"\n'
        f'dtype = "{args.dtype}"\ndevice = "{args.device}"\n'
        "[study.experiments.readout]\n"
        f'[study.experiments.graft]\nwindows = "late,mid,early"\nbatch_size = {args.prompts}\n'
        f"[study.prompts]\nlimit = {args.prompts}\n"
    )
    study = load_study(spec)
    start = time.perf_counter()
    run_study(study, progress=False, outputs=False, pair_reports=False)
    wall = time.perf_counter() - start
    cost = CostModel.from_dict(study.cost)
    calibrations = calibrate(study, cost)
    return {
        "wall_s": wall,
        "runs": [
            {
                "experiment": c.row.experiment,
                "estimated_s": c.estimated_seconds,
                "measured_s": c.measured_seconds,
                "implied_utilisation": c.implied_utilisation,
            }
            for c in calibrations
        ],
        "plan_measured": format_calibration(calibrations, cost),
        "shape": dict(zip(("layers", "d_model", "d_vocab"), args.study_shape, strict=True)),
    }


def _guarded(
    results: dict, key: str, call: Callable[[], Any], deadline: float, device: str
) -> None:
    """``results[key] = call()``, or the error / the skip: one failing part keeps the others."""
    if time.monotonic() > deadline:
        results[key] = {"skipped": "time budget spent"}
        return
    print(f"== {key}", flush=True)
    start = time.monotonic()
    try:
        results[key] = call()
    except Exception as error:  # a device run has one chance: record and go on
        results[key] = {
            "error": f"{type(error).__name__}: {error}",
            "traceback": traceback.format_exc()[-4000:],
        }
    if isinstance(results[key], dict):
        results[key]["section_s"] = time.monotonic() - start
    if device.startswith("cuda"):
        torch.cuda.empty_cache()


def machine() -> dict:
    from importlib.metadata import version

    import transformers

    import hooklab.versions  # noqa: F401 - importable: the package works

    cuda = torch.cuda.is_available()
    return {
        "device": "cuda" if cuda else "cpu",
        "gpu": torch.cuda.get_device_name(0) if cuda else None,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "transformer_lens": version("transformer-lens"),
        "cpu_threads": torch.get_num_threads(),
    }


def _fmt(value: Any, spec: str = ".3g") -> str:
    return format(value, spec) if isinstance(value, int | float) else "-"


def markdown(results: dict) -> str:
    """The table for the closing note and benchmarks/README."""
    m = results["machine"]
    lines = [
        f"GPU suite on {m['gpu'] or 'CPU'} (torch {m['torch']}, {results['dtype']}, "
        f"{'smoke' if results['smoke'] else 'real shapes'})",
        "",
        "| shape | part | contender | median s | ratio | peak MiB |",
        "|---|---|---|---|---|---|",
    ]
    for name in SHAPES:
        for part, baseline in (("readout", "floor"), ("graft", "hooklab")):
            section = results.get(name, {}).get(part, {})
            for contender in ("floor", "reference", "fused", "naive", "hooklab"):
                row = section.get(contender)
                if isinstance(row, dict):
                    lines.append(
                        f"| {name} | {part} | {contender} | {_fmt(row['median_s'])} | "
                        f"{_fmt(row[f'ratio_to_{baseline}_median'])}x {baseline} | "
                        f"{_fmt(row['peak_mib'], '.0f')} |"
                    )
            if "error" in section:
                lines.append(f"| {name} | {part} | error | {section['error'][:80]} | | |")
        for arm, row in results.get(name, {}).get("behave", {}).items():
            if isinstance(row, dict):
                lines.append(
                    f"| {name} | behave (cached) | {arm} | {_fmt(row['seconds'])} | "
                    f"{_fmt(row['tokens_per_s'], '.0f')} tok/s | |"
                )
    for run in results.get("study", {}).get("runs", []):
        lines.append(
            f"| study | {run['experiment']} | measured / estimated | "
            f"{_fmt(run['measured_s'])} | "
            f"{_fmt(run['measured_s'] / run['estimated_s'])}x estimate | |"
        )
    return "\n".join(lines) + "\n"


def _arguments() -> argparse.Namespace:
    from hooklab.generation.arms import DEFAULT_ARMS

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default=os.environ.get("OUT") or "out/gpu-suite")
    parser.add_argument("--smoke", action="store_true", help="toy shapes, float32, CPU")
    parser.add_argument("--layers", type=int, default=8, help="layers kept of each real shape")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--windows", default="late,mid,early")
    parser.add_argument("--arms", default=",".join(DEFAULT_ARMS), help="behave arms timed")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--budget-s", type=float, default=360, help="skip parts after this")
    args = parser.parse_args()
    args.device = "cuda" if torch.cuda.is_available() and not args.smoke else "cpu"
    args.dtype = "float32" if args.smoke else "bfloat16"
    args.study_shape = (8, 2048, 32_768)
    if args.smoke:
        args.layers, args.batch, args.seq_len, args.prompts = 4, 2, 8, 2
        args.max_new_tokens, args.rounds, args.study_shape = 4, 1, (4, 64, 256)
        args.arms = "pt,pt+late:it"
    return args


def _write(out: Path, results: dict) -> None:
    """Both files, rewritten after every part: a run cut short still leaves what it measured."""
    (out / "gpu_suite.json").write_text(json.dumps(results, indent=2, default=str))
    (out / "gpu_suite.md").write_text(markdown(results))


def _shape_parts(
    name: str, args: argparse.Namespace, results: dict, save: Callable[[], None], deadline: float
) -> None:
    """Readout, graft and behave at one shape, into ``results[name]``."""
    built: list[Any] = []

    def build() -> dict:
        start = time.perf_counter()
        built.append(random_pair(name, args))
        return {"seconds": time.perf_counter() - start}

    _guarded(results[name], "build", build, deadline, args.device)
    if not built:
        return
    pair = built[0]
    parts = (("readout", readout_section), ("graft", graft_section), ("behave", behave_section))
    for key, section in parts:
        _guarded(results[name], key, lambda s=section: s(pair, args), deadline, args.device)
        save()


def main() -> None:
    args = _arguments()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + args.budget_s
    results: dict[str, Any] = {
        "machine": machine(),
        "smoke": args.smoke,
        "dtype": args.dtype,
        "args": {k: v for k, v in vars(args).items()},
    }
    print(json.dumps(results["machine"]), flush=True)
    for name in SHAPES:
        results[name] = {}
        _shape_parts(name, args, results, lambda: _write(out, results), deadline)
    with tempfile.TemporaryDirectory(prefix="hooklab-gpu-suite-") as root:
        _guarded(results, "study", lambda: study_section(args, Path(root)), deadline, args.device)
    _write(out, results)
    print(markdown(results), flush=True)
    print(f"wrote {out / 'gpu_suite.json'} and {out / 'gpu_suite.md'}")


if __name__ == "__main__":
    main()
