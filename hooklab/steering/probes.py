"""d_conv: ridge probes from an activation to a per-token convergence target.

Per layer, a linear probe ``y ≈ b + x·w`` predicts a target per read token (e.g. the token's
late-region KL-to-final of IT, :func:`convergence_targets`) from the activation ``x``; the
direction is ``normalise(w)`` (pointing towards a larger target). Everything is done from
sufficient statistics accumulated per fold of prompts (count, Σx, Σy, XᵀX, Xᵀy, Σy², float64),
never from stored activations: memory is ``folds × layers × d_model²`` float64, so pick the
layers you need on large models.

The objective is ``Σ (y − b − x·w)² + λ·(tr C / d)·‖w‖²`` with ``C`` the centred scatter of the
training rows: ``λ`` is relative to the mean eigenvalue of ``C``, so one grid suits any scale.
``λ`` is chosen per layer by held-out prompts (leave-one-fold-out, summed squared error), then
the probe is refitted on every fold.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float

from hooklab.conditions import pad_batch
from hooklab.errors import HooklabError
from hooklab.forward import residual_stream
from hooklab.graft.histories import History
from hooklab.lens.base import Lens
from hooklab.lens.tuned import unembed_sha256
from hooklab.metrics import LATE_START_DEPTH, late_layers
from hooklab.steering.collect import _source_id, hook_name
from hooklab.steering.directions import Directions, normalise
from hooklab.stream import read_lens

__all__ = [
    "RidgeStats",
    "ridge_stats",
    "collect_ridge",
    "fit_ridge",
    "convergence_targets",
    "DEFAULT_LAMBDAS",
]

DEFAULT_LAMBDAS: tuple[float, ...] = tuple(10.0**e for e in range(-5, 3))


@dataclass(frozen=True)
class RidgeStats:
    """Per-fold sufficient statistics of ``(x, y)`` rows at each layer.

    Attributes:
        layers: the layers (axis 1 of the per-layer tensors).
        count: [fold] rows per fold.
        sum_x: [fold, layer, d_model].
        sum_y: [fold].
        xtx: [fold, layer, d_model, d_model].
        xty: [fold, layer, d_model].
        yty: [fold].
        hook: activation name; ``side``: whose activation (``"it"``/``"pt"``).
        models, fingerprints: of the pair, as in :class:`~hooklab.steering.collect.PairedSums`.
        n_prompts: prompts accumulated.
    """

    layers: tuple[int, ...]
    count: torch.Tensor
    sum_x: torch.Tensor
    sum_y: torch.Tensor
    xtx: torch.Tensor
    xty: torch.Tensor
    yty: torch.Tensor
    hook: str = "mlp_out"
    side: str = "it"
    models: dict[str, str] | None = None
    fingerprints: dict[str, str] | None = None
    n_prompts: int = 0

    @property
    def n_folds(self) -> int:
        return int(self.count.shape[0])


def _empty(n_folds: int, n_layers: int, d_model: int) -> dict[str, torch.Tensor]:
    f64 = torch.float64
    return {
        "count": torch.zeros(n_folds, dtype=f64),
        "sum_x": torch.zeros(n_folds, n_layers, d_model, dtype=f64),
        "sum_y": torch.zeros(n_folds, dtype=f64),
        "xtx": torch.zeros(n_folds, n_layers, d_model, d_model, dtype=f64),
        "xty": torch.zeros(n_folds, n_layers, d_model, dtype=f64),
        "yty": torch.zeros(n_folds, dtype=f64),
    }


def _add_x(acc: dict, fold: int, i: int, x: torch.Tensor, y: torch.Tensor) -> None:
    acc["sum_x"][fold, i] += x.sum(0)
    acc["xtx"][fold, i] += x.T @ x
    acc["xty"][fold, i] += x.T @ y


def _add_y(acc: dict, fold: int, y: torch.Tensor) -> None:
    acc["count"][fold] += y.numel()
    acc["sum_y"][fold] += y.sum()
    acc["yty"][fold] += (y * y).sum()


def ridge_stats(
    x: Float[torch.Tensor, "n layer d_model"],
    y: Float[torch.Tensor, " n"],
    folds: Sequence[int],
    *,
    layers: Sequence[int] | None = None,
    n_folds: int | None = None,
) -> RidgeStats:
    """Statistics of in-memory rows (``folds[i]``: the fold of row ``i``), e.g. for tests."""
    x, y = x.to(torch.float64), y.to(torch.float64)
    folds_t = torch.as_tensor(list(folds), dtype=torch.long)
    n_folds = int(folds_t.max()) + 1 if n_folds is None else n_folds
    acc = _empty(n_folds, x.shape[1], x.shape[2])
    for fold in range(n_folds):
        rows = folds_t == fold
        _add_y(acc, fold, y[rows])
        for i in range(x.shape[1]):
            _add_x(acc, fold, i, x[rows, i], y[rows])
    layers = tuple(range(x.shape[1])) if layers is None else tuple(layers)
    return RidgeStats(layers=layers, **acc)  # type: ignore[arg-type]  # acc holds the sums


def collect_ridge(
    pair: Any,
    histories: Sequence[History],
    targets: Sequence[np.ndarray],
    *,
    side: str = "it",
    hook: str = "mlp_out",
    layers: Sequence[int] | None = None,
    n_folds: int = 4,
    seed: int = 0,
    batch_size: int = 8,
) -> RidgeStats:
    """Accumulate ridge statistics of ``side``'s activation against ``targets``.

    Args:
        targets: one array per history, of length ``read_to - read_from`` (the value of
            each read token, in order); NaNs are skipped.
        n_folds: prompt folds for choosing λ (prompts are dealt to folds after a seeded
            shuffle, so a prompt's tokens are never split between training and held-out).
    """
    model = getattr(pair, side)
    n_layers, d_model = int(model.cfg.n_layers), int(model.cfg.d_model)
    layers = tuple(range(n_layers)) if layers is None else tuple(layers)
    if len(targets) != len(histories):
        raise HooklabError(
            f"targets: {len(targets)} arrays for {len(histories)} histories; give one per history."
        )
    for h, t in zip(histories, targets, strict=True):
        if len(t) != h.read_to - h.read_from:
            raise HooklabError(
                f"targets for prompt {h.prompt_id!r}: {len(t)} values for a read span of "
                f"{h.read_to - h.read_from} tokens; give one value per read token."
            )
    if not 2 <= n_folds <= len(histories):
        raise HooklabError(f"n_folds={n_folds}: expected 2 <= n_folds <= {len(histories)}.")
    order = np.random.default_rng(seed).permutation(len(histories))
    fold_of = np.empty(len(histories), dtype=np.int64)
    fold_of[order] = np.arange(len(histories)) % n_folds
    acc = _empty(n_folds, len(layers), d_model)
    pad_id = int(getattr(pair.tokenizer, "pad_token_id", None) or 0)
    for start in range(0, len(histories), batch_size):
        batch = histories[start : start + batch_size]
        tokens, mask, read, _ = pad_batch(batch, pad_id)
        ys, keeps, batch_folds = [], [], []
        for row in range(len(batch)):
            y = torch.as_tensor(np.asarray(targets[start + row], dtype=np.float64))
            keeps.append(~torch.isnan(y))
            ys.append(y[keeps[-1]])
            batch_folds.append(int(fold_of[start + row]))
            _add_y(acc, batch_folds[-1], ys[-1])

        def make(i: int, batch: Sequence[History] = batch, ys=ys, keeps=keeps, folds=batch_folds):
            def add(activation: torch.Tensor, hook: Any) -> None:  # noqa: ARG001
                values = activation.detach().to(torch.float64).cpu()
                for row, h in enumerate(batch):
                    x = values[row, h.read_from : h.read_to][keeps[row]]
                    _add_x(acc, folds[row], i, x, ys[row])

            return add

        fwd = [(hook_name(hook, layer), make(i)) for i, layer in enumerate(layers)]
        residual_stream(model, tokens, attention_mask=mask, fwd_hooks=fwd)
    return RidgeStats(
        layers=layers,
        hook=hook,
        side=side,
        models={s: _source_id(pair, s) for s in ("pt", "it")},
        fingerprints={s: unembed_sha256(getattr(pair, s)) for s in ("pt", "it")},
        n_prompts=len(histories),
        **acc,
    )


def _solve(stats: RidgeStats, train: torch.Tensor, i: int, lam: float):
    """Coefficients ``(w, b)`` at layer row ``i`` from the folds in ``train`` ([fold] bool)."""
    n = stats.count[train].sum()
    mx = stats.sum_x[train, i].sum(0) / n
    my = stats.sum_y[train].sum() / n
    scatter = stats.xtx[train, i].sum(0) - n * torch.outer(mx, mx)
    cross = stats.xty[train, i].sum(0) - n * mx * my
    d = scatter.shape[0]
    penalty = lam * torch.trace(scatter).clamp_min(1e-300) / d
    w = torch.linalg.solve(scatter + penalty * torch.eye(d, dtype=scatter.dtype), cross)
    return w, my - mx @ w


def _sse(stats: RidgeStats, fold: int, i: int, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Σ (y − b − x·w)² over the rows of ``fold``, from its statistics."""
    n, sx, sy = stats.count[fold], stats.sum_x[fold, i], stats.sum_y[fold]
    return (
        stats.yty[fold]
        - 2 * b * sy
        - 2 * w @ stats.xty[fold, i]
        + n * b * b
        + 2 * b * (w @ sx)
        + w @ stats.xtx[fold, i] @ w
    )


def fit_ridge(
    stats: RidgeStats, lambdas: Sequence[float] = DEFAULT_LAMBDAS
) -> tuple[Directions, pd.DataFrame]:
    """Ridge directions with λ chosen per layer on held-out folds of prompts.

    Returns the directions (source ``"ridge"``, the chosen λ per layer in ``notes``) and a
    table of ``layer, lambda, cv_sse, cv_r2, chosen`` (``cv_r2`` = 1 − held-out SSE / the
    held-out SSE of predicting each training mean).
    """
    if stats.n_folds < 2 or bool((stats.count == 0).any()):
        raise HooklabError("fit_ridge: needs at least 2 non-empty folds; use more prompts.")
    rows, vectors, chosen = [], [], []
    folds = range(stats.n_folds)
    zero = torch.zeros(stats.sum_x.shape[-1], dtype=torch.float64)
    for i, layer in enumerate(stats.layers):
        errors, baseline = [], 0.0
        for k in folds:
            train = torch.tensor([f != k for f in folds])
            my = stats.sum_y[train].sum() / stats.count[train].sum()
            baseline += float(_sse(stats, k, i, zero, my))
        for lam in lambdas:
            sse = 0.0
            for k in folds:
                train = torch.tensor([f != k for f in folds])
                w, b = _solve(stats, train, i, lam)
                sse += float(_sse(stats, k, i, w, b))
            errors.append(sse)
        best = int(np.nanargmin(errors))
        chosen.append(float(lambdas[best]))
        for j, lam in enumerate(lambdas):
            rows.append(
                {
                    "layer": layer,
                    "lambda": float(lam),
                    "cv_sse": errors[j],
                    "cv_r2": 1 - errors[j] / baseline if baseline > 0 else float("nan"),
                    "chosen": j == best,
                }
            )
        w, _ = _solve(stats, torch.ones(stats.n_folds, dtype=torch.bool), i, lambdas[best])
        vectors.append(w)
    units = normalise(torch.stack(vectors))
    directions = Directions(
        vectors=units.to(torch.float32),
        layers=stats.layers,
        hook=stats.hook,
        source="ridge",
        models=dict(stats.models or {}),
        fingerprints=dict(stats.fingerprints or {}),
        n_prompts=stats.n_prompts,
        n_tokens=int(stats.count.sum()),
        notes={"lambda": chosen, "side": stats.side, "n_folds": stats.n_folds},
    )
    return directions, pd.DataFrame(rows)


def convergence_targets(
    model: Any,
    histories: Sequence[History],
    *,
    lens: Lens | None = None,
    late_start_depth: float = LATE_START_DEPTH,
    pad_id: int = 0,
    batch_size: int = 8,
) -> list[np.ndarray]:
    """Each read token's late-region KL-to-final on ``model``: the mean of ``kl_to_final``
    over :func:`~hooklab.metrics.late_layers` (the final layer excluded), one array per
    history (length ``read_to - read_from``), via :func:`hooklab.stream.read_lens`."""
    late = late_layers(int(model.cfg.n_layers), late_start_depth)
    out = []
    for start in range(0, len(histories), batch_size):
        batch = histories[start : start + batch_size]
        tokens, mask, read, _ = pad_batch(batch, pad_id)
        readout = read_lens(model, tokens, lens, attention_mask=mask, read_mask=read)
        kl = readout.metrics["kl_to_final"][..., late].mean(-1)  # [batch, pos]
        out += [
            kl[row, h.read_from : h.read_to].numpy().astype(np.float64)
            for row, h in enumerate(batch)
        ]
    return out
