"""IT−PT directions from paired sums, and how stable they are.

``d_mean[l] = normalise(mean_IT[l] − mean_PT[l])``, the token-weighted means over every read
token (:func:`mean_direction`); the matched-token variant averages per-token-id differences
with equal weight per id (:func:`matched_direction`). Stability: the cosine of a direction
from a bootstrap resample of ``n`` prompts to the full-data direction, against ``n``
(:func:`bootstrap_stability`), and pairwise cosines of directions from ``k`` disjoint prompt
sets (:func:`split_cosines`). A zero difference gives a zero row (no direction), never NaN.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float

from hooklab.errors import HooklabError
from hooklab.steering.collect import PairedSums

__all__ = [
    "Directions",
    "normalise",
    "mean_direction",
    "matched_direction",
    "bootstrap_stability",
    "split_cosines",
    "cosine_table",
    "layer_cosine_matrix",
    "with_notes",
    "attach_projection",
]

SOURCES = ("mean", "matched", "ridge", "random", "other-layers")


@dataclass(frozen=True)
class Directions:
    """One unit direction per layer, with where it came from.

    Attributes:
        vectors: [layer, d_model] float32, unit rows (a zero row where there is no direction).
        layers: the layer of each row.
        hook: the activation the directions live on (``"mlp_out"``, ``"attn_out"``,
            ``"resid_post"``).
        source: ``"mean"``, ``"matched"``, ``"ridge"``, ``"random"`` or ``"other-layers"``.
        models: ``{"pt": id, "it": id}`` of the pair it was computed on.
        fingerprints: ``{"pt": sha, "it": sha}`` unembedding fingerprints of that pair.
        n_prompts: prompts it was computed from.
        n_tokens: read tokens it was computed from.
        mean_projection: [layer] IT's mean projection ``s = d·mean_IT`` (the injection scale),
            or ``None`` when unknown.
        gain: [layer] multiplier of the projection edit (1 except for projection-matched
            random controls, see :func:`~hooklab.steering.hooks.random_control`).
        notes: free-form JSON-able details (ridge lambdas, what a control matched, ...).
    """

    vectors: Float[torch.Tensor, "layer d_model"]
    layers: tuple[int, ...]
    hook: str
    source: str
    models: dict[str, str]
    fingerprints: dict[str, str]
    n_prompts: int
    n_tokens: int
    mean_projection: Float[torch.Tensor, " layer"] | None = None
    gain: Float[torch.Tensor, " layer"] | None = None
    notes: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.source not in SOURCES:
            raise HooklabError(f"source={self.source!r}: expected one of {', '.join(SOURCES)}.")
        if self.vectors.ndim != 2 or self.vectors.shape[0] != len(self.layers):
            raise HooklabError(
                f"vectors of shape {tuple(self.vectors.shape)} do not match "
                f"{len(self.layers)} layers: expected [layer, d_model]."
            )

    @property
    def d_model(self) -> int:
        return int(self.vectors.shape[1])

    def index(self, layer: int) -> int:
        """Row of ``layer`` in :attr:`vectors`."""
        if layer not in self.layers:
            raise HooklabError(
                f"layer={layer}: these directions cover layers {list(self.layers)}; compute "
                "them over the layers you steer."
            )
        return self.layers.index(layer)

    def vector(self, layer: int) -> Float[torch.Tensor, " d_model"]:
        """The unit direction at ``layer``."""
        return self.vectors[self.index(layer)]

    def gains(self) -> Float[torch.Tensor, " layer"]:
        """:attr:`gain`, ones when unset."""
        return torch.ones(len(self.layers)) if self.gain is None else self.gain


def normalise(
    vectors: Float[torch.Tensor, "... d_model"], eps: float = 0.0
) -> Float[torch.Tensor, "... d_model"]:
    """Rows scaled to unit norm; rows of norm ``<= eps`` become zero (not NaN)."""
    norms = vectors.norm(dim=-1, keepdim=True)
    safe = torch.where(norms > eps, norms, torch.ones_like(norms))
    return torch.where(norms > eps, vectors / safe, torch.zeros_like(vectors))


def _from_sums(sums: PairedSums, vectors: torch.Tensor, source: str, **kw: Any) -> Directions:
    units = normalise(vectors.to(torch.float64))
    mean_it = sums.means("it")
    projection = (units * mean_it).sum(-1)
    return Directions(
        vectors=units.to(torch.float32),
        layers=sums.layers,
        hook=sums.hook,
        source=source,
        models=dict(sums.models),
        fingerprints=dict(sums.fingerprints),
        n_prompts=sums.n_prompts,
        n_tokens=sums.n_tokens,
        mean_projection=projection.to(torch.float32),
        **kw,
    )


def mean_direction(sums: PairedSums, prompts: Sequence[int] | None = None) -> Directions:
    """``normalise(mean_IT − mean_PT)`` per layer, over all prompts or the given indices.

    The means are token-weighted (every read token counts once); the normalisation makes
    the direction the normalised sum of per-prompt differences of sums.
    """
    index = slice(None) if prompts is None else torch.as_tensor(list(prompts), dtype=torch.long)
    difference = (sums.it_sums[index] - sums.pt_sums[index]).sum(0)
    return _from_sums(sums, difference, "mean")


def matched_direction(sums: PairedSums, min_count: int = 1) -> Directions:
    """Mean over token ids of the per-id difference of means, normalised.

    ``d[l] = normalise(1/K' Σ_k (mean_IT[k, l] − mean_PT[k, l]))`` over the ``K'`` tracked ids
    seen at least ``min_count`` times: each id weighs the same, so a difference that only
    reflects which tokens are frequent does not dominate.
    """
    keep = sums.token_counts >= max(min_count, 1)
    if not bool(keep.any()):
        raise HooklabError(
            f"min_count={min_count}: no tracked token id occurs that often; lower it or "
            "collect with a larger top_k_tokens."
        )
    counts = sums.token_counts[keep].to(torch.float64)[:, None, None]
    per_id = (sums.it_token_sums[keep] - sums.pt_token_sums[keep]) / counts
    return _from_sums(sums, per_id.mean(0), "matched", notes={"n_token_ids": int(keep.sum())})


def _cosines(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Cosine along the last axis of (broadcast) ``a`` and ``b``; 0 where either is zero."""
    return (normalise(a.to(torch.float64)) * normalise(b.to(torch.float64))).sum(-1)


def bootstrap_stability(
    sums: PairedSums,
    ns: Sequence[int],
    *,
    n_resamples: int = 200,
    level: float = 0.95,
    seed: int = 0,
    replace_prompts: bool = True,
) -> pd.DataFrame:
    """Cosine of the mean direction from ``n`` resampled prompts to the full-data direction.

    For each ``n`` in ``ns``, ``n_resamples`` draws of ``n`` prompts (with replacement by
    default, the bootstrap; ``replace_prompts=False`` subsamples, needing ``n <= prompts``)
    give a direction each; returns one row per (n, layer): ``cos_mean``, ``cos_median``,
    percentile ``cos_low`` / ``cos_high`` at ``level``, ``n_resamples``.
    """
    differences = sums.it_sums - sums.pt_sums  # [prompt, layer, d_model]
    full = differences.sum(0)
    n_prompts = sums.n_prompts
    rng = np.random.default_rng(seed)
    rows = []
    for n in ns:
        if n < 1 or (not replace_prompts and n > n_prompts):
            raise HooklabError(
                f"ns contains {n}: expected 1 <= n"
                + ("" if replace_prompts else f" <= {n_prompts} (subsampling without replacement)")
            )
        if replace_prompts:
            draws = rng.integers(0, n_prompts, size=(n_resamples, n))
        else:
            draws = np.stack([rng.permutation(n_prompts)[:n] for _ in range(n_resamples)])
        cosines = []
        for chunk in np.array_split(draws, max(1, n_resamples // 32)):
            resampled = differences[torch.as_tensor(chunk)].sum(1)  # [r, layer, d_model]
            cosines.append(_cosines(resampled, full[None]))
        values = torch.cat(cosines).numpy()  # [resample, layer]
        tail = (1 - level) / 2
        low, high = np.quantile(values, [tail, 1 - tail], axis=0)
        for i, layer in enumerate(sums.layers):
            rows.append(
                {
                    "n": int(n),
                    "layer": layer,
                    "cos_mean": float(values[:, i].mean()),
                    "cos_median": float(np.median(values[:, i])),
                    "cos_low": float(low[i]),
                    "cos_high": float(high[i]),
                    "n_resamples": n_resamples,
                }
            )
    return pd.DataFrame(rows)


def split_cosines(sums: PairedSums, k: int = 2, *, seed: int = 0) -> pd.DataFrame:
    """Pairwise cosines of the mean directions of ``k`` disjoint, seeded prompt sets.

    Returns one row per (layer, split_a < split_b): ``cos``, ``n_prompts_a``, ``n_prompts_b``.
    """
    if not 2 <= k <= sums.n_prompts:
        raise HooklabError(f"k={k}: expected 2 <= k <= {sums.n_prompts} (the prompts collected).")
    order = np.random.default_rng(seed).permutation(sums.n_prompts)
    groups = np.array_split(order, k)
    directions = [mean_direction(sums, g.tolist()).vectors for g in groups]
    rows = []
    for a in range(k):
        for b in range(a + 1, k):
            cos = _cosines(directions[a], directions[b])
            for i, layer in enumerate(sums.layers):
                rows.append(
                    {
                        "layer": layer,
                        "split_a": a,
                        "split_b": b,
                        "cos": float(cos[i]),
                        "n_prompts_a": len(groups[a]),
                        "n_prompts_b": len(groups[b]),
                    }
                )
    return pd.DataFrame(rows)


def cosine_table(directions: Mapping[str, Directions]) -> pd.DataFrame:
    """Per layer, the cosine of every pair of named direction sets on their common layers.

    Returns rows ``layer, a, b, cos`` (``a`` before ``b`` in the mapping's order).
    """
    names = list(directions)
    rows = []
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            da, db = directions[a], directions[b]
            if da.d_model != db.d_model:
                raise HooklabError(f"directions {a!r} and {b!r} have different d_model.")
            for layer in sorted(set(da.layers) & set(db.layers)):
                cos = _cosines(da.vector(layer), db.vector(layer))
                rows.append({"layer": layer, "a": a, "b": b, "cos": float(cos)})
    return pd.DataFrame(rows, columns=["layer", "a", "b", "cos"])


def layer_cosine_matrix(directions: Directions) -> Float[torch.Tensor, "layer layer"]:
    """[layer, layer] cosines between the directions of different layers."""
    units = normalise(directions.vectors.to(torch.float64))
    return units @ units.T


def attach_projection(directions: Directions, sums: PairedSums) -> Directions:
    """A copy whose ``mean_projection`` is IT's mean projection ``d·mean_IT`` from ``sums``
    (e.g. for ridge or other-layer directions, to inject them at IT's scale)."""
    if directions.hook != sums.hook or any(x not in sums.layers for x in directions.layers):
        raise HooklabError(
            f"sums cover {sums.hook} at layers {list(sums.layers)}; the directions need "
            f"{directions.hook} at {list(directions.layers)}."
        )
    mean_it = sums.means("it")[[sums.layers.index(x) for x in directions.layers]]
    projection = (directions.vectors.to(torch.float64) * mean_it).sum(-1)
    return replace(directions, mean_projection=projection.to(torch.float32))


def with_notes(directions: Directions, **notes: Any) -> Directions:
    """A copy with ``notes`` added."""
    return replace(directions, notes={**directions.notes, **notes})
