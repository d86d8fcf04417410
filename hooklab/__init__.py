"""hooklab: model diffing of pretrained / instruction-tuned language-model pairs.

Public API (everything the README and the notebooks use is importable from here)::

    pair = hooklab.load_pair("gemma3-4b")                 # or load_pair(pt=DIR_A, it=DIR_B)
    logits = hooklab.read_logits(pair.it, resid)          # the model's own readout
    mlp = hooklab.mlp_output(pair.pt, layer, resid_mid)   # the family's MLP path
    table = hooklab.run_readout(pair, hooklab.load_prompts(), hooklab.ReadoutConfig())
    hooklab.convergence_gap(table)                        # IT - PT, late region, CIs
    histories = hooklab.make_histories(pair, hooklab.load_prompts())
    effects = hooklab.graft_effects(hooklab.run_graft(pair, histories, hooklab.GraftConfig()))
"""

from hooklab.architectures import (
    SUPPORTED_FAMILIES,
    ArchitectureSpec,
    AttentionLayout,
    MoELayout,
    attention_layout,
    mlp_output,
    moe_layout,
    output_softcap,
    read_logits,
    spec_for_architecture,
    spec_for_model,
)
from hooklab.behaviour import load_behaviour_prompts
from hooklab.behaviour.runner import arm_generations, score_records
from hooklab.behaviour.stats import arm_means, design_comparisons, gap_closed, paired_differences
from hooklab.behaviour.viewer import behaviour_figure, write_viewer
from hooklab.catalog import PaperPair, paper_pair, paper_pairs
from hooklab.compatibility import CompatibilityReport, check_compatibility
from hooklab.errors import (
    CheckpointUnavailableError,
    HooklabError,
    PairMismatchError,
    UnsupportedArchitectureError,
)
from hooklab.experiment import (
    Experiment,
    get_experiment,
    register_experiment,
    registered_experiments,
)
from hooklab.experiments.opposition import read_summary as read_opposition_summary
from hooklab.experiments.token_support import support_figure as token_support_figure
from hooklab.graft import (
    GraftConfig,
    graft_effects,
    layer_effects,
    load_histories,
    make_histories,
    run_graft,
    save_histories,
)
from hooklab.loading import CheckpointSource
from hooklab.mechanism import patching_heatmap
from hooklab.mechanism.figures import (
    attention_entropy_figure,
    delta_cosine_figure,
    weight_change_figure,
)
from hooklab.pair import ModelPair, load_pair
from hooklab.parity import ParityReport, check_parity
from hooklab.prompt_files import PromptColumns
from hooklab.prompts import Prompt, load_prompts
from hooklab.readout import ReadoutConfig, load_lenses, run_readout
from hooklab.runs import ExecutionSpec, PairSpec, PromptSpec, RunSpec, load_spec, run_spec
from hooklab.steering.sweep import SteerConfig, behaviour_file
from hooklab.steering.sweep_figures import dose_response_figure
from hooklab.summaries import (
    commitment_layers,
    commitment_summary,
    convergence_gap,
    depth_summary,
    layer_summary,
)
from hooklab.synthetic import build_random_model, write_tiny_pair
from hooklab.viz import (
    commitment_figure,
    convergence_figure,
    graft_effects_figure,
    heatmap_figure,
    save_html,
)
from hooklab.viz.report import write_report
from hooklab.viz.tokens import token_view_html, write_token_view

__version__ = "0.1.0"

__all__ = [
    "arm_generations",
    "arm_means",
    "behaviour_figure",
    "design_comparisons",
    "gap_closed",
    "load_behaviour_prompts",
    "paired_differences",
    "score_records",
    "write_viewer",
    "ExecutionSpec",
    "Experiment",
    "GraftConfig",
    "PairSpec",
    "Prompt",
    "PromptSpec",
    "ReadoutConfig",
    "RunSpec",
    "commitment_figure",
    "commitment_layers",
    "commitment_summary",
    "convergence_figure",
    "convergence_gap",
    "depth_summary",
    "registered_experiments",
    "get_experiment",
    "graft_effects",
    "graft_effects_figure",
    "heatmap_figure",
    "layer_effects",
    "layer_summary",
    "load_histories",
    "load_lenses",
    "load_prompts",
    "PromptColumns",
    "load_spec",
    "make_histories",
    "register_experiment",
    "run_graft",
    "run_readout",
    "run_spec",
    "save_histories",
    "save_html",
    "token_view_html",
    "write_report",
    "read_opposition_summary",
    "token_support_figure",
    "patching_heatmap",
    "attention_entropy_figure",
    "delta_cosine_figure",
    "weight_change_figure",
    "SteerConfig",
    "behaviour_file",
    "dose_response_figure",
    "write_tiny_pair",
    "build_random_model",
    "write_token_view",
    "SUPPORTED_FAMILIES",
    "ArchitectureSpec",
    "AttentionLayout",
    "CheckpointSource",
    "CheckpointUnavailableError",
    "CompatibilityReport",
    "HooklabError",
    "ModelPair",
    "MoELayout",
    "PairMismatchError",
    "PaperPair",
    "ParityReport",
    "UnsupportedArchitectureError",
    "__version__",
    "attention_layout",
    "check_compatibility",
    "check_parity",
    "load_pair",
    "mlp_output",
    "moe_layout",
    "output_softcap",
    "paper_pair",
    "paper_pairs",
    "read_logits",
    "spec_for_architecture",
    "spec_for_model",
]
