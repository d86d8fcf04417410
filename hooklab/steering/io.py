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


#: How far from 1 a direction's norm may be (float32 rounding of a unit vector).
NORM_TOLERANCE = 1e-3


def _read_files(
    path: str | Path, tensor_path: Path, json_path: Path
) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """The sidecar and the tensors of a direction file, their form checked."""
    where = f"path={str(path)!r}"
    try:
        meta = json.loads(json_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise HooklabError(f"{where}: {json_path.name} is not JSON ({error}).") from None
    if not isinstance(meta, dict) or not all(
        isinstance(meta.get(k), t) for k, t in (("hook", str), ("source", str), ("layers", list))
    ):
        raise HooklabError(
            f"{where}: {json_path.name} is not a direction sidecar (expected an object with "
            "'hook', 'source' and 'layers'); write the files with save_directions."
        )
    try:
        tensors = load_file(str(tensor_path))
    except Exception as error:  # noqa: BLE001 - safetensors raises its own error type
        raise HooklabError(
            f"{where}: {tensor_path.name} is not a readable safetensors file ({error}); it may "
            "be truncated: copy it again or recompute the directions."
        ) from None
    _check_tensors(tensors, f"{where}: {tensor_path.name}")
    return meta, tensors


def _check_tensors(tensors: dict[str, torch.Tensor], where: str) -> None:
    """Refuse tensors that cannot be unit directions: wrong shape or dtype, NaN or inf,
    rows whose norm is neither 1 nor 0, no direction at all."""
    vectors, layers = tensors.get("directions"), tensors.get("layers")
    if vectors is None or layers is None:
        raise HooklabError(f"{where}: expected tensors 'directions' and 'layers' there.")
    if vectors.ndim != 2 or not vectors.is_floating_point() or layers.ndim != 1:
        raise HooklabError(
            f"{where}: 'directions' is {vectors.dtype} of shape {tuple(vectors.shape)} and "
            f"'layers' of shape {tuple(layers.shape)}; expected float [layer, d_model] and "
            "[layer]."
        )
    if layers.is_floating_point() or layers.shape[0] != vectors.shape[0]:
        raise HooklabError(f"{where}: 'layers' must hold one integer layer per direction row.")
    for name in ("directions", "mean_projection", "gain"):
        value = tensors.get(name)
        if value is not None and not bool(torch.isfinite(value.float()).all()):
            raise HooklabError(f"{where}: {name!r} holds NaN or inf; recompute the directions.")
    norms = vectors.float().norm(dim=-1)
    unit = (norms - 1).abs() <= NORM_TOLERANCE
    if not bool((unit | (norms == 0)).all()) or not bool(unit.any()):
        raise HooklabError(
            f"{where}: direction norms {[round(float(n), 4) for n in norms[:6]]}; expected "
            "unit rows (0 where a layer has no direction) and at least one direction. "
            "Normalise them, or recompute them with hooklab."
        )


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
    meta, tensors = _read_files(path, tensor_path, json_path)
    vectors, layers = tensors["directions"], tuple(int(x) for x in tensors["layers"])
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
