"""Executing a run spec: plan, run parts (resumable, sharded, on Ray if asked), merge, info."""

from __future__ import annotations

import dataclasses
import json
import socket
import time
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from tqdm.auto import tqdm

from hooklab.atomic import atomic_write_text
from hooklab.errors import HooklabError
from hooklab.prompts import prompt_set_hash
from hooklab.runs.spec import RunSpec, load_spec
from hooklab.runs.storage import Part, PartStore, plan_parts, select_shard

__all__ = ["RunPlan", "plan_run", "run_spec", "run_shard", "merge_run", "run_info", "RUN_FILE"]

RUN_FILE = "run.json"
SPEC_FILE = "spec.toml"
LOADED_FILE = "loaded.json"  # what the models and lenses turned out to be (commits, shapes)


@dataclasses.dataclass(frozen=True)
class RunPlan:
    """What a run will do, before any model loads."""

    spec: RunSpec
    n_layers: int
    n_prompts: int
    parts: list[Part]
    forward_passes: int
    rows: int

    def describe(self) -> str:
        megabytes = self.rows * 60 / 2**20  # ~60 bytes per row in Parquet, measured on tiny runs
        return (
            f"{self.spec.experiment} run -> {self.spec.out}\n"
            f"  {self.n_prompts} prompts in {len(self.parts)} parts of up to "
            f"{self.spec.execution.part_size}, {self.spec.execution.shards} shard(s), "
            f"executor {self.spec.execution.executor}\n"
            f"  model: {self.n_layers} layers; about {self.forward_passes} forward passes "
            f"(sequences x passes), {self.rows:,} table rows, ~{megabytes:.1f} MB"
        )


def plan_run(spec: RunSpec) -> RunPlan:
    """Validate ``spec`` (no weights loaded) and estimate its work."""
    n_layers = spec.validate()
    config = spec.experiment_config()
    prompts = spec.prompts.load()
    parts = plan_parts([p.id for p in prompts], spec.execution.part_size)
    n = len(prompts)
    if spec.experiment == "readout":
        generating = 2 if "native" in config.conditions else 1
        passes = n * (generating * config.max_new_tokens + 2 * len(config.conditions))
        rows = n * 2 * len(config.conditions) * config.max_new_tokens * n_layers
    else:
        from hooklab.graft.windows import parse_windows

        n_windows = len(parse_windows(config.windows, n_layers))
        variants = len(config.modes) * len(config.parts) * n_windows
        passes = n * (config.max_new_tokens + 2 + len(config.directions) * variants)
        rows = n * len(config.directions) * (1 + variants) * n_layers
    return RunPlan(spec, n_layers, n, parts, passes, rows)


def _check_or_write_run_file(spec: RunSpec, plan: RunPlan, prompts: list) -> None:
    out = Path(spec.out)
    out.mkdir(parents=True, exist_ok=True)
    what = {
        "experiment": spec.experiment,
        "pair": dataclasses.asdict(spec.pair),
        "prompts": dataclasses.asdict(spec.prompts),
        "config": spec.experiment_config().to_dict(),
        "histories": spec.histories,
        "part_size": spec.execution.part_size,
        "prompt_set_hash": prompt_set_hash(prompts),
    }
    path = out / RUN_FILE
    if path.is_file():
        previous = json.loads(path.read_text())
        if json.loads(json.dumps(previous["run"])) != json.loads(json.dumps(what)):
            raise HooklabError(
                f"{out} already holds a different run (its {RUN_FILE} differs from this spec); "
                "resume with the same spec, or choose another out folder."
            )
        if not (out / SPEC_FILE).is_file():  # written first, but be robust to older folders
            atomic_write_text(out / SPEC_FILE, spec.to_toml())
        return
    # spec.toml first, run.json last, each atomically: a run killed between the two writes
    # leaves no run.json, and the restart starts it afresh.
    atomic_write_text(out / SPEC_FILE, spec.to_toml())
    payload = {"run": what, "parts": [dataclasses.asdict(p) for p in plan.parts]}
    atomic_write_text(path, json.dumps(payload, indent=2, default=list))


def _is_out_of_memory(error: BaseException) -> bool:
    if isinstance(error, torch.cuda.OutOfMemoryError):
        return True
    return isinstance(error, RuntimeError) and "out of memory" in str(error).lower()


def _run_part(
    spec: RunSpec, pair: Any, lenses: dict, prompts: list, config: Any, part: Part
) -> tuple[pd.DataFrame, int]:
    """The rows of one part; on out-of-memory the batch is halved and the part retried."""
    batch_size = config.batch_size
    while True:
        try:
            current = dataclasses.replace(config, batch_size=batch_size)
            if spec.experiment == "readout":
                from hooklab.readout import run_readout

                return run_readout(
                    pair, prompts, current, lenses=lenses, progress=False
                ), batch_size
            from hooklab.graft.histories import load_histories, make_histories, save_histories
            from hooklab.graft.sweep import run_graft

            if spec.histories is not None:
                wanted = {p.id for p in prompts}
                histories = [h for h in load_histories(spec.histories) if h.prompt_id in wanted]
            else:
                histories = make_histories(
                    pair, prompts, max_new_tokens=current.max_new_tokens, progress=False
                )
                save_histories(histories, Path(spec.out) / "histories", f"{part.name}.jsonl")
            frame = run_graft(
                pair,
                histories,
                current,
                lenses=lenses,
                categories={p.id: p.category for p in prompts},
                progress=False,
            )
            return frame, batch_size
        except Exception as error:  # noqa: BLE001 - only out-of-memory is retried
            if not _is_out_of_memory(error):
                raise
            if batch_size == 1:
                raise HooklabError(
                    "out of memory with batch_size=1: use a smaller model dtype, "
                    "a GPU with more memory, or offload one side."
                ) from error
            batch_size //= 2
            if torch.cuda.is_available():
                torch.cuda.empty_cache()


def run_shard(
    spec: RunSpec, shard: tuple[int, int] = (0, 1), *, progress: bool = True
) -> list[str]:
    """Run the unfinished parts of one shard; returns the names of the parts it wrote."""
    from hooklab.readout import load_lenses

    plan = plan_run(spec)
    prompts = spec.prompts.load()
    _check_or_write_run_file(spec, plan, prompts)
    store = PartStore(spec.out)
    store.clean_temporaries()
    todo = [part for part in select_shard(plan.parts, shard) if not store.is_done(part)]
    if not todo:
        return []
    pair = spec.pair.load()
    config = spec.experiment_config()
    lenses = load_lenses(pair, config.lens)
    loaded = {
        "pair": pair.describe(),
        "lenses": {side: lens.describe() for side, lens in lenses.items()},
    }
    atomic_write_text(Path(spec.out) / LOADED_FILE, json.dumps(loaded, indent=2, default=str))
    by_id = {p.id: p for p in prompts}
    written = []
    for part in tqdm(todo, desc=f"shard {shard[0]}/{shard[1]}", disable=not progress, unit="part"):
        started = time.time()
        frame, batch_size = _run_part(
            spec, pair, lenses, [by_id[i] for i in part.prompt_ids], config, part
        )
        store.write(
            part,
            frame,
            {
                "seconds": round(time.time() - started, 3),
                "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "host": socket.gethostname(),
                "device": str(pair.device),
                "batch_size": batch_size,
                "shard": f"{shard[0]}/{shard[1]}",
            },
        )
        written.append(part.name)
    return written


def _ray_shard(spec_toml: str, out: str, shard: tuple[int, int]) -> list[str]:
    import tempfile

    with tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False) as handle:
        handle.write(spec_toml)
    spec = load_spec(handle.name, out=out)
    return run_shard(spec, shard, progress=False)


def run_spec(
    spec: RunSpec,
    *,
    shard: tuple[int, int] | None = None,
    progress: bool = True,
    merge: bool = True,
) -> Path | None:
    """Run a spec: one shard, all shards here, or all shards on Ray; merge when complete."""
    if shard is not None:
        run_shard(spec, shard, progress=progress)
    elif spec.execution.executor == "ray":
        try:
            import ray
        except ImportError:
            raise HooklabError(
                "execution.executor='ray' needs Ray: pip install 'hooklab[ray]'."
            ) from None
        plan_run(spec)  # refuse a bad spec before starting workers
        spec = spec.absolute()  # workers may start in another directory
        ray.init(
            address=spec.execution.ray_address,
            ignore_reinit_error=True,
            include_dashboard=False,
            log_to_driver=False,
        )
        task = ray.remote(num_gpus=spec.execution.num_gpus)(_ray_shard)
        n = spec.execution.shards
        ray.get([task.remote(spec.to_toml(), spec.out, (i, n)) for i in range(n)])
    else:
        for index in range(spec.execution.shards):
            run_shard(spec, (index, spec.execution.shards), progress=progress)
    if not merge:
        return None
    store = PartStore(spec.out)
    plan = json.loads((Path(spec.out) / RUN_FILE).read_text())
    if all(store.is_done(Part(p["index"], tuple(p["prompt_ids"]))) for p in plan["parts"]):
        return merge_run(spec.out)
    return None


def merge_run(out_dir: str | Path) -> Path:
    """Build the final table, manifest and summaries of a run from its parts."""
    from hooklab.tables import write_table

    out = Path(out_dir)
    if not (out / RUN_FILE).is_file():
        raise HooklabError(f"{out} holds no {RUN_FILE}: it is not a hooklab run folder.")
    run = json.loads((out / RUN_FILE).read_text())
    store = PartStore(out)
    parts = [Part(p["index"], tuple(p["prompt_ids"])) for p in run["parts"]]
    missing = [p.name for p in parts if not store.is_done(p)]
    if missing:
        raise HooklabError(
            f"{len(missing)} of {len(parts)} parts are missing or damaged "
            f"({', '.join(missing[:5])}{'…' if len(missing) > 5 else ''}); run "
            "the spec again (it redoes only those) and merge."
        )
    frame = pd.concat([store.read(p) for p in parts], ignore_index=True)
    for column in frame.columns:
        if frame[column].dtype == object:
            frame[column] = frame[column].astype("category")
    spec = load_spec(out / SPEC_FILE, out=str(out))
    manifest = _manifest(spec, run, [store.marker(p) for p in parts])
    experiment = run["run"]["experiment"]
    name = "readout" if experiment == "readout" else "graft"
    path = write_table(frame, out, name, manifest)
    seed = spec.seed
    if experiment == "readout":
        from hooklab.readout import write_readout_summaries

        write_readout_summaries(frame, out, seed=seed)
    else:
        from hooklab.graft.effects import write_graft_summaries

        write_graft_summaries(frame, out, seed=seed)
    return path


def _manifest(spec: RunSpec, run: dict, markers: list) -> dict[str, Any]:
    from hooklab.tables import environment

    loaded_path = Path(spec.out) / LOADED_FILE
    loaded = json.loads(loaded_path.read_text()) if loaded_path.is_file() else {}
    return {
        **environment(),
        "pair": loaded.get("pair", run["run"]["pair"]),
        "pair_spec": run["run"]["pair"],
        "lenses": loaded.get("lenses", {}),
        "prompt_set_hash": run["run"]["prompt_set_hash"],
        "n_prompts": sum(len(p["prompt_ids"]) for p in run["parts"]),
        "config": {"experiment": spec.experiment, **run["run"]["config"]},
        "seed": spec.seed,
        "parts": [
            {
                k: m[k]
                for k in (
                    "name",
                    "index",
                    "n_rows",
                    "seconds",
                    "host",
                    "device",
                    "batch_size",
                    "shard",
                    "finished",
                )
                if k in m
            }
            | {"name": f"part-{m['index']:05d}"}
            for m in markers
        ],
    }


def run_info(out_dir: str | Path) -> str:
    """A readable summary of a run folder's manifest and parts."""
    out = Path(out_dir)
    manifest_path = out / "manifest.json"
    if not manifest_path.is_file():
        if (out / RUN_FILE).is_file():
            run = json.loads((out / RUN_FILE).read_text())
            store = PartStore(out)
            done = sum(
                store.is_done(Part(p["index"], tuple(p["prompt_ids"]))) for p in run["parts"]
            )
            return (
                f"{out}: {run['run']['experiment']} run, not merged yet: {done} of "
                f"{len(run['parts'])} parts done."
            )
        raise HooklabError(f"{out} holds neither manifest.json nor {RUN_FILE}.")
    manifest = json.loads(manifest_path.read_text())
    lines = [
        f"{out}: {manifest['config'].get('experiment', '?')} run, {manifest.get('n_rows')} "
        f"rows in {manifest.get('table')}",
        f"  created {manifest['created']} on {manifest['host']}, git {manifest['git_commit']}",
        "  versions: " + ", ".join(f"{k} {v}" for k, v in manifest["versions"].items()),
        f"  pair: {json.dumps(manifest['pair'])}",
        f"  prompts: {manifest['n_prompts']} (set {manifest['prompt_set_hash'][:12]}…), "
        f"seed {manifest['seed']}",
        f"  config: {json.dumps(manifest['config'])}",
    ]
    parts = manifest.get("parts", [])
    if parts:
        seconds = sum(p.get("seconds", 0) for p in parts)
        hosts = sorted({f"{p.get('host')} ({p.get('device')})" for p in parts})
        lines.append(f"  parts: {len(parts)}, {seconds:.1f} s in all, on {', '.join(hosts)}")
    return "\n".join(lines)
