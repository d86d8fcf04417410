"""Steering along the IT−PT direction: paired collection, directions, probes, hooks, files.

::

    sums = collect_paired(pair, histories, hook="mlp_out")       # running sums, both models
    d_mean = mean_direction(sums)                                 # normalise(mean_IT − mean_PT)
    fwd = steering_hooks(d_mean, alpha, n_layers=pair.n_layers)   # TransformerLens hooks
    with pair.it.hooks(fwd_hooks=fwd): ...
"""

from hooklab.steering.collect import (
    HOOKS,
    PairedSums,
    collect_paired,
    frequent_token_ids,
    hook_name,
)
from hooklab.steering.directions import (
    Directions,
    attach_projection,
    bootstrap_stability,
    cosine_table,
    layer_cosine_matrix,
    matched_direction,
    mean_direction,
    normalise,
    split_cosines,
)
from hooklab.steering.hooks import (
    default_layers,
    injection_hook,
    other_layer_control,
    projection_hook,
    projection_stats,
    random_control,
    random_directions,
    steering_hooks,
)
from hooklab.steering.io import load_directions, save_directions
from hooklab.steering.probes import (
    RidgeStats,
    collect_ridge,
    convergence_targets,
    fit_ridge,
    ridge_stats,
)

__all__ = [
    "HOOKS",
    "Directions",
    "PairedSums",
    "RidgeStats",
    "attach_projection",
    "bootstrap_stability",
    "collect_paired",
    "collect_ridge",
    "convergence_targets",
    "cosine_table",
    "default_layers",
    "fit_ridge",
    "frequent_token_ids",
    "hook_name",
    "injection_hook",
    "layer_cosine_matrix",
    "load_directions",
    "matched_direction",
    "mean_direction",
    "normalise",
    "other_layer_control",
    "projection_hook",
    "projection_stats",
    "random_control",
    "random_directions",
    "ridge_stats",
    "save_directions",
    "split_cosines",
    "steering_hooks",
]
