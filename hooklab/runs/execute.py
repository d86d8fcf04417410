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
from hooklab.experiment import PartInput, PlanEstimate
from hooklab.graft.histories import prompt_digests
from hooklab.prompts import prompt_set_hash
from hooklab.runs.spec import RunSpec, load_spec
from hooklab.runs.storage import PartStore, PromptPart, plan_parts, select_shard
from hooklab.tables import MANIFEST

__all__ = [
    "RunPlan",
    "plan_run",
    "run_spec",
    "run_shard",
    "merge_run",
    "run_info",
    "read_run_identity",
    "is_finished",
    "RUN_FILE",
]

RUN_FILE = "run.json"
SPEC_FILE = "spec.toml"
LOADED_FILE = "loaded.json"  # what the models and lenses turned out to be (commits, shapes)


@dataclasses.dataclass(frozen=True)
class RunPlan:
    """What a run will do, before any model loads."""

    spec: RunSpec
    n_layers: int
    n_prompts: int
    parts: list[PromptPart]
    estimate: PlanEstimate

    @property
    def forward_passes(self) -> int:
        return self.estimate.forward_passes

    @property
    def rows(self) -> int:
        return self.estimate.rows

    def describe(self) -> str:
        return (
            f"{self.spec.experiment} run -> {self.spec.out}\n"
            f"  {self.n_prompts} prompts in {len(self.parts)} parts of up to "
            f"{self.spec.execution.part_size}, {self.spec.execution.shards} shard(s), "
            f"executor {self.spec.execution.executor}\n"
            f"  model: {self.n_layers} layers; about {self.forward_passes} forward passes "
            f"(sequences x passes), {self.rows:,} table rows, ~{self.estimate.megabytes:.1f} MB"
        )


def plan_run(spec: RunSpec) -> RunPlan:
    """Validate ``spec`` (no weights loaded, nothing written) and estimate its work.

    Local paths are made absolute against the working directory first (the run's
    ``spec.toml`` records them so, and is read from anywhere).
    """
    spec = spec.absolute()
    n_layers = spec.validate()
    prompts = spec.prompts.load()
    parts = plan_parts([p.id for p in prompts], spec.execution.part_size)
    estimate = spec.kind.plan(spec.experiment_config(), len(prompts), n_layers)
    _check_run_folder(spec, prompts)  # a dry run refuses the folders a run would
    return RunPlan(spec, n_layers, len(prompts), parts, estimate)


def _run_identity(spec: RunSpec, prompts: list) -> dict[str, Any]:
    return {
        "experiment": spec.experiment,
        "pair": spec.pair.to_dict(),
        "prompts": spec.prompts.to_dict(),
        "config": spec.experiment_config().to_dict(),
        "histories": spec.histories,
        "part_size": spec.execution.part_size,
        "prompt_set_hash": prompt_set_hash(prompts),
    }


def _differences(old: Any, new: Any, prefix: str = "") -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for key in sorted(set(old) | set(new)):
            out += _differences(old.get(key), new.get(key), f"{prefix}{key}.")
        return out
    return [] if old == new else [f"{prefix.rstrip('.')}: {old!r} there, {new!r} now"]


def _check_out_folder(out: Path, spec_toml: str) -> None:
    """Refuse to write into a folder that is neither empty nor a hooklab run.

    A folder holding only this very spec's ``spec.toml`` is this run's: killed (or, for a
    second process of the same run, caught) between writing ``spec.toml`` and ``run.json``.
    """
    if out.exists() and not out.is_dir():
        raise HooklabError(f"out={str(out)!r} is a file; name a folder for the run.")
    if out.is_dir() and not (out / RUN_FILE).is_file():
        stray = [p.name for p in out.iterdir() if not p.name.startswith(".")]
        if stray == [SPEC_FILE] and _same_text(out / SPEC_FILE, spec_toml):
            return
        if stray:
            raise HooklabError(
                f"out={str(out)!r} is not empty and holds no hooklab run ({', '.join(stray[:3])}"
                f"{'…' if len(stray) > 3 else ''}): choose a new or empty folder."
            )


def _same_text(path: Path, text: str) -> bool:
    try:
        return path.read_text(encoding="utf-8") == text
    except (OSError, UnicodeDecodeError):
        return False


def _check_run_folder(spec: RunSpec, prompts: list) -> bool:
    """Refuse an out folder that is not this run's (nothing written); whether it holds it."""
    out = Path(spec.out)
    _check_out_folder(out, spec.to_toml())
    path = out / RUN_FILE
    if not path.is_file():
        return False
    previous = _read_json(path)["run"]
    what = _run_identity(spec, prompts)
    differences = _differences(json.loads(json.dumps(previous)), json.loads(json.dumps(what)))
    if differences:
        raise HooklabError(
            f"{out} already holds a different run ({'; '.join(differences[:4])}); "
            "resume with the same spec, or choose another out folder."
        )
    return True


def _check_or_write_run_file(spec: RunSpec, plan: RunPlan, prompts: list) -> None:
    out = Path(spec.out)
    held = _check_run_folder(spec, prompts)
    out.mkdir(parents=True, exist_ok=True)
    path = out / RUN_FILE
    if held:
        if not (out / SPEC_FILE).is_file():  # written first, but be robust to older folders
            atomic_write_text(out / SPEC_FILE, spec.to_toml())
        return
    # spec.toml first, run.json last, each atomically: a run killed between the two writes
    # leaves no run.json, and the restart starts it afresh.
    atomic_write_text(out / SPEC_FILE, spec.to_toml())
    payload = {
        "run": _run_identity(spec, prompts),
        # the source files' hash, as read when the run started (not part of the identity:
        # a file whose prompts are unchanged, e.g. with a column added, still resumes)
        "prompt_source": spec.prompts.provenance(),
        # each prompt's text digest, so that runs reusing these histories check their texts
        "prompt_digests": prompt_digests(prompts),
        "parts": [dataclasses.asdict(p) for p in plan.parts],
    }
    atomic_write_text(path, json.dumps(payload, indent=2, default=list))


def _read_json(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(value, dict):
            raise ValueError(f"a JSON object was expected, not {type(value).__name__}")
        return value
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise HooklabError(
            f"{path} is damaged ({error}); if the run folder was being written when it broke, "
            "delete the folder and run again."
        ) from None


def read_run_identity(folder: str | Path) -> dict[str, Any]:
    """What a run folder's ``run.json`` says the run is (experiment, pair, prompts, config,
    ``prompt_set_hash``, ...).

    Raises:
        HooklabError: when the file is missing or damaged.
    """
    identity = _read_json(Path(folder) / RUN_FILE).get("run")
    if not isinstance(identity, dict):
        raise HooklabError(f"{Path(folder) / RUN_FILE} is damaged (no 'run' object); run again.")
    return identity


def _is_out_of_memory(error: BaseException) -> bool:
    if isinstance(error, torch.cuda.OutOfMemoryError):
        return True
    return isinstance(error, RuntimeError) and "out of memory" in str(error).lower()


def _run_part(spec: RunSpec, pair: Any, context: Any, prompts: list, part: PromptPart):
    """The rows of one part; on out-of-memory the batch is halved and the part retried."""
    kind = spec.kind
    config = spec.experiment_config()
    batch_size = getattr(config, "batch_size", 1)
    while True:
        try:
            current = kind.with_batch_size(config, batch_size)
            frame = kind.run_part(
                PartInput(
                    pair=pair,
                    config=current,
                    prompts=prompts,
                    context=context,
                    out=Path(spec.out),
                    part_name=part.name,
                    histories=None if spec.histories is None else Path(spec.histories),
                )
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
    spec = spec.absolute()  # spec.toml is read relative to its own folder: record absolutes
    plan = plan_run(spec)
    prompts = spec.prompts.load()
    _check_or_write_run_file(spec, plan, prompts)
    store = PartStore(spec.out)
    mine = select_shard(plan.parts, shard)
    store.clean_temporaries(mine)  # only this shard's: another shard may be writing its own
    todo = [part for part in mine if not store.is_done(part)]
    if not todo:
        return []
    pair = spec.pair.load()
    context = spec.kind.prepare(pair, spec.experiment_config())
    loaded = {"pair": pair.describe(), **spec.kind.describe_context(context)}
    atomic_write_text(Path(spec.out) / LOADED_FILE, json.dumps(loaded, indent=2, default=str))
    by_id = {p.id: p for p in prompts}
    written = []
    label = f"{spec.experiment} {Path(spec.out).name}, shard {shard[0]}/{shard[1]}"
    for part in tqdm(todo, desc=label, disable=not progress, unit="part"):
        started = time.time()
        frame, batch_size = _run_part(
            spec, pair, context, [by_id[i] for i in part.prompt_ids], part
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

    with tempfile.TemporaryDirectory(prefix="hooklab-shard-") as folder:
        path = Path(folder) / SPEC_FILE
        path.write_text(spec_toml)
        spec = load_spec(path, out=out)
    return run_shard(spec, shard, progress=False)


def run_spec(
    spec: RunSpec,
    *,
    shard: tuple[int, int] | None = None,
    progress: bool = True,
    merge: bool = True,
) -> Path | None:
    """Run a spec: one shard, all shards here, or all shards on Ray; merge when complete.

    Relative paths are read against the working directory (see :func:`plan_run`)."""
    spec = spec.absolute()
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
    plan = _read_json(Path(spec.out) / RUN_FILE)
    if all(store.is_done(PromptPart(p["index"], tuple(p["prompt_ids"]))) for p in plan["parts"]):
        return merge_run(spec.out)
    return None


def is_finished(spec: RunSpec) -> bool:
    """Whether ``spec``'s out folder already holds its merged run (check it with
    :func:`plan_run` first: that refuses a folder holding another run)."""
    return (Path(spec.absolute().out) / MANIFEST).is_file()


def merge_run(out_dir: str | Path) -> Path:
    """Build the final table, manifest and summaries of a run from its parts."""
    from hooklab.tables import write_table

    out = Path(out_dir)
    if not (out / RUN_FILE).is_file():
        raise HooklabError(f"{out} holds no {RUN_FILE}: it is not a hooklab run folder.")
    run = _read_json(out / RUN_FILE)
    store = PartStore(out)
    parts = [PromptPart(p["index"], tuple(p["prompt_ids"])) for p in run["parts"]]
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
    kind = spec.kind
    # summaries first, the table and its manifest last: a merge that breaks half way (disk
    # full) leaves no manifest, so the folder never looks finished
    (out / MANIFEST).unlink(missing_ok=True)
    kind.summarise(frame, out, spec.experiment_config())
    manifest = _manifest(spec, run, [store.marker(p) for p in parts])
    return write_table(frame, out, kind.table, manifest)


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
        "prompt_source": run.get("prompt_source", {}),
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
    manifest_path = out / MANIFEST
    if not manifest_path.is_file():
        if (out / RUN_FILE).is_file():
            run = _read_json(out / RUN_FILE)
            store = PartStore(out)
            done = sum(
                store.is_done(PromptPart(p["index"], tuple(p["prompt_ids"]))) for p in run["parts"]
            )
            return (
                f"{out}: {run['run']['experiment']} run, not merged yet: {done} of "
                f"{len(run['parts'])} parts done."
            )
        raise HooklabError(f"{out} holds neither manifest.json nor {RUN_FILE}.")
    manifest = _read_json(manifest_path)
    try:
        return _describe_manifest(out, manifest)
    except (KeyError, TypeError, AttributeError) as error:
        raise HooklabError(
            f"{manifest_path} is not a hooklab manifest (no {error}); pass a run's out folder."
        ) from None


def _describe_manifest(out: Path, manifest: dict[str, Any]) -> str:
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
