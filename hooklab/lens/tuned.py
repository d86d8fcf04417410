"""The tuned lens: one affine translator per layer, in the public tuned-lens file layout.

``T_l(h) = h + A_l h + b_l`` with ``A_l, b_l`` initialised at zero (so an untrained tuned lens
is the logit lens). Saved as the tuned-lens package does: ``config.json`` and ``params.pt``
with keys ``{i}.weight`` / ``{i}.bias``, where translator ``i`` reads the hidden state that
*enters* block ``i`` (Hugging Face ``hidden_states[i]``). hooklab's layer ``l`` is the output of
block ``l``, i.e. translator ``l + 1``; translator 0 (the embeddings) is kept at zero. Lenses
trained with the tuned-lens package therefore load as they are.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hooklab.errors import HooklabError
from hooklab.lens.base import Lens

__all__ = ["TunedLensConfig", "TunedLens", "unembed_hash"]

CONFIG_FILE, PARAMS_FILE = "config.json", "params.pt"


def unembed_hash(model: Any) -> str:
    """The tuned-lens package's fingerprint of a model's unembedding matrix.

    SHA-256 of numpy's one-decimal summary of ``W_U`` (as ``tuned_lens.utils.tensor_hash``),
    which is robust to dtype and identifies the model.
    """
    weight = model.unembed.original_component.weight.detach().float().cpu().numpy()
    return hashlib.sha256(str.encode(np.array_str(weight, precision=1))).hexdigest()


@dataclass(frozen=True)
class TunedLensConfig:
    """The ``config.json`` of a tuned lens (field names as in the tuned-lens package)."""

    base_model_name_or_path: str
    d_model: int
    num_hidden_layers: int
    bias: bool = True
    base_model_revision: str | None = None
    unembed_hash: str | None = None
    lens_type: str = "linear_tuned_lens"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> TunedLensConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in raw.items() if k in known})


class TunedLens(Lens):
    """Per-layer affine translators (see the module docstring for the indexing)."""

    name = "tuned"

    def __init__(self, config: TunedLensConfig):
        super().__init__()
        self.config = config
        self.translators = torch.nn.ModuleList(
            torch.nn.Linear(config.d_model, config.d_model, bias=config.bias)
            for _ in range(config.num_hidden_layers)
        )
        for translator in self.translators:
            torch.nn.init.zeros_(translator.weight)
            if translator.bias is not None:
                torch.nn.init.zeros_(translator.bias)

    @classmethod
    def from_model(
        cls, model: Any, *, name_or_path: str = "", revision: str | None = None, bias: bool = True
    ) -> TunedLens:
        """A zero-initialised tuned lens for ``model`` (equal to the logit lens until trained)."""
        config = TunedLensConfig(
            base_model_name_or_path=name_or_path or str(getattr(model.cfg, "model_name", "")),
            d_model=int(model.cfg.d_model),
            num_hidden_layers=int(model.cfg.n_layers),
            bias=bias,
            base_model_revision=revision,
            unembed_hash=unembed_hash(model),
        )
        device = model.unembed.original_component.weight.device
        return cls(config).to(device)

    def translator_for(self, layer: int) -> torch.nn.Linear:
        """The translator applied to the output of block ``layer``."""
        return self.translators[layer + 1]

    def translate(self, layer: int, resid: torch.Tensor) -> torch.Tensor:
        translator = self.translator_for(layer)
        h = resid.to(translator.weight.dtype)
        return (h + translator(h)).to(resid.dtype)

    def describe(self) -> dict[str, Any]:
        return {"lens": self.name, **self.config.to_dict()}

    def save(self, folder: str | Path) -> Path:
        """Write ``config.json`` and ``params.pt`` (the tuned-lens layout) to ``folder``."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().cpu() for k, v in self.translators.state_dict().items()}
        torch.save(state, folder / PARAMS_FILE)
        (folder / CONFIG_FILE).write_text(json.dumps(self.config.to_dict(), indent=2))
        return folder

    @classmethod
    def load(cls, folder: str | Path, model: Any) -> TunedLens:
        """Load a lens saved by hooklab or the tuned-lens package, refusing one for another model.

        The parameters are read with ``torch.load(..., weights_only=True)``: a lens file is
        untrusted input and must not run code.
        """
        folder = Path(folder)
        if not (folder / CONFIG_FILE).is_file() or not (folder / PARAMS_FILE).is_file():
            raise HooklabError(
                f"lens folder {str(folder)!r} must hold {CONFIG_FILE} and {PARAMS_FILE}; train "
                "one with `hooklab.lens.train_tuned_lens` or pass a tuned-lens package folder."
            )
        config = TunedLensConfig.from_dict(json.loads((folder / CONFIG_FILE).read_text()))
        expected = {"d_model": int(model.cfg.d_model), "num_hidden_layers": int(model.cfg.n_layers)}
        for key, value in expected.items():
            if getattr(config, key) != value:
                raise HooklabError(
                    f"the tuned lens in {str(folder)!r} was trained for "
                    f"{key}={getattr(config, key)}"
                    f" but the model has {key}={value}; train a lens for this model."
                )
        model_hash = unembed_hash(model)
        if config.unembed_hash and config.unembed_hash != model_hash:
            raise HooklabError(
                f"the tuned lens in {str(folder)!r} was trained on another model (unembedding "
                f"hash {config.unembed_hash[:12]}… vs this model's {model_hash[:12]}…, base "
                f"{config.base_model_name_or_path!r}); train a lens for this model, e.g. one "
                "lens for PT and one for IT."
            )
        from hooklab.loading import read_state_file

        state = read_state_file(folder / PARAMS_FILE, argument=f"lens folder {str(folder)!r}")
        lens = cls(config)
        lens.translators.load_state_dict(state)
        return lens.to(model.unembed.original_component.weight.device)
