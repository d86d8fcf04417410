"""Where instruction tuning changed the weights: per-tensor relative change and cosine.

Two checkpoint folders (PT and IT, single-file or sharded safetensors) are read tensor by
tensor with ``safetensors.safe_open``: at most one tensor of each side is held at a time, and
it is read in row blocks converted to float64, so memory is bounded by a few blocks whatever
the model size. Each file is reopened per tensor, so the pages of its memory map that were
read are released as the scan goes on.

Tensor names are mapped to a module kind by :data:`MODULE_RULES`, a table of regular
expressions (data, not code): attention projections (q/k/v/o and MLA's q_a/q_b/kv_a/kv_b),
MLP matrices, norms, embeddings, and mixture-of-experts parts (router, shared experts, each
routed expert, stored one by one or fused along a leading expert axis).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from safetensors import safe_open

from hooklab.errors import HooklabError

__all__ = [
    "ModuleRule",
    "MODULE_RULES",
    "classify_tensor",
    "checkpoint_tensors",
    "weight_change",
    "weight_change_pivot",
]

INDEX_FILE = "model.safetensors.index.json"
CHUNK_ELEMENTS = 1 << 22  # float64 elements per block: 32 MiB per side


@dataclass(frozen=True)
class ModuleRule:
    """One name -> module-kind rule.

    Attributes:
        pattern: regular expression searched in the tensor name; the named groups ``layer``,
            ``expert`` and ``module`` (when present) fill those columns.
        group: coarse kind (``attention``, ``mlp``, ``moe_routed``, ``norm``, ...).
        module: the module name when the pattern has no ``module`` group.
        expert_axis: the tensor holds all routed experts along this axis (fused layout): one
            row per expert is written.
    """

    pattern: str
    group: str
    module: str = ""
    expert_axis: int | None = None


_LAYER = r"(?:^|\.)layers\.(?P<layer>\d+)\."
_SUFFIX = r"\.(?P<param>weight|bias)$"

MODULE_RULES: tuple[ModuleRule, ...] = (
    ModuleRule(r"(?:^|\.)(?:vision_tower|vision_model|visual)\.", "vision", "vision"),
    ModuleRule(r"(?:^|\.)multi_modal_projector\.", "projector", "projector"),
    ModuleRule(
        _LAYER + r"mlp\.experts\.(?P<expert>\d+)\.(?P<module>gate|up|down)_proj" + _SUFFIX,
        "moe_routed",
    ),
    ModuleRule(
        _LAYER + r"mlp\.experts\.(?P<module>gate_up|gate|up|down)_projs?$",
        "moe_routed",
        expert_axis=0,
    ),
    ModuleRule(
        _LAYER + r"mlp\.shared_experts?\.(?P<module>gate|up|down)_proj" + _SUFFIX, "moe_shared"
    ),
    ModuleRule(_LAYER + r"mlp\.gate\.(?:weight|e_score_correction_bias)$", "moe_router", "router"),
    ModuleRule(_LAYER + r"mlp\.(?P<module>gate|up|down|gate_up)_proj" + _SUFFIX, "mlp"),
    ModuleRule(
        _LAYER + r"self_attn\.(?P<module>q|k|v|o|q_a|q_b|kv_a|kv_b)_proj(?:_with_mqa)?" + _SUFFIX,
        "attention",
    ),
    ModuleRule(
        _LAYER + r"self_attn\.(?P<module>q_norm|k_norm|q_a_layernorm|kv_a_layernorm)" + _SUFFIX,
        "attention_norm",
    ),
    ModuleRule(
        _LAYER + r"(?P<module>input_layernorm|post_attention_layernorm|pre_feedforward_layernorm"
        r"|post_feedforward_layernorm)" + _SUFFIX,
        "norm",
    ),
    ModuleRule(r"(?:^|\.)embed_tokens\.weight$", "embedding", "embed"),
    ModuleRule(r"(?:^|\.)lm_head\.weight$", "embedding", "unembed"),
    ModuleRule(r"(?:^|\.)(?:norm|final_layernorm)\.weight$", "norm", "final_norm"),
)


@dataclass(frozen=True)
class TensorKind:
    """What :func:`classify_tensor` found for one tensor name."""

    group: str
    module: str
    layer: int | None
    expert: int | None
    expert_axis: int | None


def classify_tensor(name: str, rules: tuple[ModuleRule, ...] = MODULE_RULES) -> TensorKind:
    """The module kind of a checkpoint tensor name; group ``"other"`` when no rule matches.

    >>> classify_tensor("model.layers.3.self_attn.kv_b_proj.weight")
    TensorKind(group='attention', module='kv_b', layer=3, expert=None, expert_axis=None)
    """
    for rule in rules:
        match = re.search(rule.pattern, name)
        if match is None:
            continue
        found = match.groupdict()
        module = found.get("module") or rule.module
        if found.get("param") == "bias":
            module += ".bias"
        layer = found.get("layer")
        expert = found.get("expert")
        return TensorKind(
            rule.group,
            module,
            None if layer is None else int(layer),
            None if expert is None else int(expert),
            rule.expert_axis,
        )
    return TensorKind("other", "other", None, None, None)


#: The single weights file Hugging Face loads when a folder has no index.
WEIGHTS_FILE = "model.safetensors"


def checkpoint_tensors(folder: str | Path) -> dict[str, Path]:
    """Map every tensor name of a safetensors checkpoint folder to the file that holds it.

    Exactly the files the model loads are read: those ``model.safetensors.index.json`` names,
    else ``model.safetensors``; any other ``*.safetensors`` in the folder is ignored.

    Raises:
        HooklabError: naming the folder and file when the index or a weights file is missing,
            malformed or truncated, or a tensor the index names is not in its file.
    """
    folder = Path(folder)
    index = folder / INDEX_FILE
    if index.is_file():
        weight_map = _read_index(index)
    elif (folder / WEIGHTS_FILE).is_file():
        weight_map = None
    else:
        stray = sorted(p.name for p in folder.glob("*.safetensors"))
        raise HooklabError(
            f"folder={str(folder)!r} holds no {WEIGHTS_FILE} nor {INDEX_FILE}"
            + (f" (only {', '.join(stray[:3])}, which a model does not load)" if stray else "")
            + "; pass a checkpoint folder saved in the safetensors format (no *.safetensors "
            "file a model loads there)."
        )
    files = sorted(set(weight_map.values())) if weight_map is not None else [WEIGHTS_FILE]
    held = {file: _tensor_names(folder, file) for file in files}
    if weight_map is None:
        return {name: folder / WEIGHTS_FILE for name in sorted(held[WEIGHTS_FILE])}
    for name, file in weight_map.items():
        if name not in held[file]:
            raise HooklabError(
                f"{index}: names tensor {name!r} in {file}, which does not hold it; the "
                "checkpoint is incomplete: download it again."
            )
    return {name: folder / file for name, file in sorted(weight_map.items())}


def _read_index(index: Path) -> dict[str, str]:
    try:
        raw = json.loads(index.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise HooklabError(f"{index}: not a readable JSON index ({error}).") from None
    weight_map = raw.get("weight_map") if isinstance(raw, dict) else None
    if not isinstance(weight_map, dict) or not all(
        isinstance(k, str) and isinstance(v, str) and Path(v).name == v and v
        for k, v in weight_map.items()
    ):
        raise HooklabError(
            f"{index}: expected an object with a 'weight_map' of tensor name -> shard file "
            "name (in the same folder); download the checkpoint again."
        )
    return weight_map


def _tensor_names(folder: Path, file: str) -> set[str]:
    path = folder / file
    if not path.is_file():
        raise HooklabError(
            f"{folder / INDEX_FILE}: names the shard {file}, which is not in the folder; "
            "download the checkpoint again."
        )
    try:
        with safe_open(path, framework="pt") as handle:
            return set(handle.keys())
    except Exception as error:  # noqa: BLE001 - safetensors raises its own error type
        raise HooklabError(
            f"{path}: not a readable safetensors file ({error}); it may be truncated: "
            "download it again."
        ) from None


def _blocks(piece, shape: list[int], lead: tuple[int, ...]) -> Iterator[torch.Tensor]:
    """Row blocks of ``piece`` (a safetensors slice), below the leading indices ``lead``."""
    rest = shape[len(lead) :]
    if not rest:  # a scalar, or one expert's scalar
        yield piece[tuple(slice(i, i + 1) for i in lead)] if lead else piece[...]
        return
    row = math.prod(rest[1:])
    step = max(1, CHUNK_ELEMENTS // max(row, 1))
    head = tuple(slice(i, i + 1) for i in lead)
    for start in range(0, rest[0], step):
        yield piece[head + (slice(start, min(start + step, rest[0])),)]


def _moments(pt_piece, it_piece, shape: list[int], lead: tuple[int, ...]) -> dict[str, float]:
    sums = np.zeros(4)  # |a|^2, |b|^2, |a - b|^2, a . b
    for a, b in zip(_blocks(pt_piece, shape, lead), _blocks(it_piece, shape, lead), strict=True):
        a = a.to(torch.float64).reshape(-1)
        b = b.to(torch.float64).reshape(-1)
        diff = a - b
        sums += [a.dot(a).item(), b.dot(b).item(), diff.dot(diff).item(), a.dot(b).item()]
    norm_pt, norm_it, norm_diff = np.sqrt(sums[:3])
    denominator = norm_pt * norm_it
    return {
        "norm_pt": norm_pt,
        "norm_it": norm_it,
        "norm_diff": norm_diff,
        "dot": sums[3],
        "rel_change": norm_diff / norm_pt if norm_pt > 0 else float("nan"),
        "cosine": sums[3] / denominator if denominator > 0 else float("nan"),
    }


def _check_same_names(pt: dict[str, Path], it: dict[str, Path]) -> None:
    only_pt = sorted(set(pt) - set(it))
    only_it = sorted(set(it) - set(pt))
    if only_pt or only_it:
        raise HooklabError(
            f"the PT and IT checkpoints hold different tensors: only in PT {only_pt[:5]} "
            f"({len(only_pt)}), only in IT {only_it[:5]} ({len(only_it)}); pass two "
            "checkpoints of the same architecture and size."
        )


def weight_change(
    pt_folder: str | Path, it_folder: str | Path, *, rules: tuple[ModuleRule, ...] = MODULE_RULES
) -> pd.DataFrame:
    """Relative Frobenius change and cosine of every tensor between two checkpoints.

    Returns one row per tensor (per routed expert for fused expert tensors) with ``tensor``,
    ``layer`` (``<NA>`` outside the blocks), ``group``, ``module``, ``expert``, ``numel``,
    ``norm_pt``, ``norm_it``, ``norm_diff`` (Frobenius norms), ``dot``, ``rel_change`` =
    ||W_IT - W_PT||_F / ||W_PT||_F and ``cosine`` of the flattened tensors, all in float64.
    """
    pt_files, it_files = checkpoint_tensors(pt_folder), checkpoint_tensors(it_folder)
    _check_same_names(pt_files, it_files)
    rows = []
    for name, pt_file in pt_files.items():
        kind = classify_tensor(name, rules)
        with (
            safe_open(pt_file, framework="pt") as pt_handle,
            safe_open(it_files[name], framework="pt") as it_handle,
        ):
            pt_piece, it_piece = pt_handle.get_slice(name), it_handle.get_slice(name)
            shape, it_shape = list(pt_piece.get_shape()), list(it_piece.get_shape())
            if shape != it_shape:
                raise HooklabError(
                    f"tensor {name!r} has shape {shape} in PT but {it_shape} in IT; pass two "
                    "checkpoints of the same architecture and size."
                )
            leads: list[tuple[tuple[int, ...], int | None]] = [((), kind.expert)]
            if kind.expert_axis is not None and shape:
                leads = [((e,), e) for e in range(shape[kind.expert_axis])]
            for lead, expert in leads:
                numel = math.prod(shape[len(lead) :])
                rows.append(
                    {
                        "tensor": name,
                        "layer": kind.layer,
                        "group": kind.group,
                        "module": kind.module,
                        "expert": expert,
                        "numel": numel,
                        **_moments(pt_piece, it_piece, shape, lead),
                    }
                )
    frame = pd.DataFrame(rows)
    for column in ("layer", "expert"):
        frame[column] = frame[column].astype("Int64")
    return frame


def weight_change_pivot(frame: pd.DataFrame, value: str = "rel_change") -> pd.DataFrame:
    """A layer x module table of ``value`` for a heatmap (block tensors only).

    Columns are ``group.module``; routed experts are pooled into one column per matrix, as if
    their tensors were concatenated: ``rel_change`` = sqrt(sum |dW|^2) / sqrt(sum |W_PT|^2) and
    ``cosine`` = sum dot / sqrt(sum |W_PT|^2 * sum |W_IT|^2), exactly.
    """
    if value not in ("rel_change", "cosine"):
        raise HooklabError(f"value={value!r}: use 'rel_change' or 'cosine'.")
    blocks = frame[frame["layer"].notna()].copy()
    blocks["column"] = blocks["group"] + "." + blocks["module"]
    sums = (
        blocks.assign(
            pt2=blocks["norm_pt"] ** 2, it2=blocks["norm_it"] ** 2, diff2=blocks["norm_diff"] ** 2
        )
        .groupby(["layer", "column"], sort=True)[["pt2", "it2", "diff2", "dot"]]
        .sum()
    )
    if value == "rel_change":
        pooled = np.sqrt(sums["diff2"]) / np.sqrt(sums["pt2"])
    else:
        pooled = sums["dot"] / np.sqrt(sums["pt2"] * sums["it2"])
    table = pooled.unstack("column")
    table.index = table.index.astype(int)
    return table
