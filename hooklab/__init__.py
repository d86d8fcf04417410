"""hooklab: model diffing of pretrained / instruction-tuned language-model pairs.

Public API::

    pair = hooklab.load_pair("gemma3-4b")                 # or load_pair(pt=DIR_A, it=DIR_B)
    logits = hooklab.read_logits(pair.it, resid)          # the model's own readout
    mlp = hooklab.mlp_output(pair.pt, layer, resid_mid)   # the family's MLP path
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
from hooklab.catalog import PaperPair, paper_pair, paper_pairs
from hooklab.compatibility import CompatibilityReport, check_compatibility
from hooklab.errors import (
    CheckpointUnavailableError,
    HooklabError,
    PairMismatchError,
    UnsupportedArchitectureError,
)
from hooklab.loading import CheckpointSource
from hooklab.pair import ModelPair, load_pair
from hooklab.parity import ParityReport, check_parity

__version__ = "0.1.0"

__all__ = [
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
