"""Direction files: ``NAME.safetensors`` (tensors) and ``NAME.json`` (what they are).

The safetensors file holds ``directions`` ([layer, d_model] float32), ``layers`` ([layer]
int64) and, when set, ``mean_projection`` and ``gain`` ([layer] float32). The JSON sidecar
records the pair's model ids, the unembedding fingerprints
(:func:`hooklab.lens.tuned.unembed_sha256`) of both models it was computed on, the hook, the
layers, the source, prompt and token counts and the notes. :func:`load_directions` refuses a
file made on another model.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from hooklab.atomic import atomic_write_text
from hooklab.errors import HooklabError
from hooklab.lens.tuned import unembed_sha256
from hooklab.steering.directions import Directions

__all__ = ["save_directions", "load_directions", "FORMAT_VERSION"]

FORMAT_VERSION = 1


def _paths(path: str | Path) -> tuple[Path, Path]:
    path = Path(path)
    stem = path.with_suffix("") if path.suffix in (".safetensors", ".json") else path
    return stem.with_name(stem.name + ".safetensors"), stem.with_name(stem.name + ".json")


def save_directions(directions: Directions, path: str | Path) -> Path:
    """Write ``path.safetensors`` and ``path.json`` (a suffix on ``path`` is ignored)."""
    tensor_path, json_path = _paths(path)
    tensor_path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {
        "directions": directions.vectors.detach().to(torch.float32).contiguous().cpu(),
        "layers": torch.tensor(directions.layers, dtype=torch.int64),
    }
    for name in ("mean_projection", "gain"):
        value = getattr(directions, name)
        if value is not None:
            tensors[name] = value.detach().to(torch.float32).contiguous().cpu()
    save_file(tensors, str(tensor_path))
    sidecar = {
        "format_version": FORMAT_VERSION,
        "hook": directions.hook,
        "layers": list(directions.layers),
        "d_model": directions.d_model,
        "source": directions.source,
        "models": directions.models,
        "unembed_sha256": directions.fingerprints,
        "n_prompts": directions.n_prompts,
        "n_tokens": directions.n_tokens,
        "notes": directions.notes,
    }
    atomic_write_text(json_path, json.dumps(sidecar, indent=2) + "\n")
    return tensor_path


def load_directions(path: str | Path, model: Any | None = None) -> Directions:
    """Read a direction file, checked against ``model`` when given.

    Raises:
        HooklabError: a missing or damaged file, or (with ``model``) a d_model or
            unembedding fingerprint that is not the model's.
    """
    tensor_path, json_path = _paths(path)
    if not tensor_path.is_file() or not json_path.is_file():
        raise HooklabError(
            f"path={str(path)!r}: expected {tensor_path.name} and {json_path.name} there; "
            "write them with save_directions."
        )
    try:
        meta = json.loads(json_path.read_text(encoding="utf-8"))
        tensors = load_file(str(tensor_path))
        vectors, layers = tensors["directions"], tuple(int(x) for x in tensors["layers"])
    except (OSError, ValueError, KeyError) as error:
        raise HooklabError(f"path={str(path)!r}: not a direction file ({error!r}).") from None
    if list(layers) != list(meta.get("layers", [])):
        raise HooklabError(f"path={str(path)!r}: the layer lists of the two files disagree.")
    if model is not None:
        d_model = int(model.cfg.d_model)
        if vectors.shape[1] != d_model:
            raise HooklabError(
                f"path={str(path)!r}: directions of d_model {vectors.shape[1]} for a model of "
                f"d_model {d_model}; they were computed on another model "
                f"({meta.get('models')}); compute directions for this one."
            )
        fingerprint = unembed_sha256(model)
        known = meta.get("unembed_sha256") or {}
        if fingerprint not in known.values():
            raise HooklabError(
                f"path={str(path)!r}: the model's unembedding fingerprint {fingerprint[:12]}… "
                f"is not that of the models the directions were computed on ({meta.get('models')}"
                f", {[v[:12] for v in known.values()]}); compute directions for this model."
            )
    return Directions(
        vectors=vectors,
        layers=layers,
        hook=meta["hook"],
        source=meta["source"],
        models=dict(meta.get("models") or {}),
        fingerprints=dict(meta.get("unembed_sha256") or {}),
        n_prompts=int(meta.get("n_prompts", 0)),
        n_tokens=int(meta.get("n_tokens", 0)),
        mean_projection=tensors.get("mean_projection"),
        gain=tensors.get("gain"),
        notes=dict(meta.get("notes") or {}),
    )
