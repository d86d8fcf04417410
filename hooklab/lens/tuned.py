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
import pickle
import warnings
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hooklab.architectures import model_device, unembedding_weight
from hooklab.errors import HooklabError
from hooklab.lens.base import Lens
from hooklab.types import Bridge

__all__ = ["TunedLensConfig", "TunedLens", "unembed_hash", "unembed_sha256"]

CONFIG_FILE, PARAMS_FILE = "config.json", "params.pt"


#: numpy's default print options: the tuned-lens hash is a printed summary, so it is computed
#: under these whatever the caller has set (``np.set_printoptions(threshold=sys.maxsize)``
#: would otherwise print every entry and change the hash).
_NUMPY_DEFAULT_PRINT_OPTIONS: dict[str, Any] = {
    "precision": 8,
    "threshold": 1000,
    "edgeitems": 3,
    "linewidth": 75,
    "suppress": False,
    "nanstr": "nan",
    "infstr": "inf",
    "sign": "-",
    "formatter": None,
    "floatmode": "maxprec",
    "legacy": False,
}


def _unembedding(model: Bridge) -> torch.Tensor:
    return unembedding_weight(model).detach()


def unembed_hash(model: Bridge) -> str:
    """The tuned-lens package's fingerprint of a model's unembedding matrix.

    SHA-256 of numpy's one-decimal summary of ``W_U`` (as ``tuned_lens.utils.tensor_hash``),
    computed under numpy's default print options so that it does not depend on the caller's.
    The summary shows only the corner entries at one decimal: it tells most different models
    apart and is robust to dtype, but it is a weak fingerprint (see :func:`unembed_sha256`).
    """
    weight = _unembedding(model).float().cpu().numpy()
    with np.printoptions(**_NUMPY_DEFAULT_PRINT_OPTIONS):
        summary = np.array_str(weight, precision=1)
    return hashlib.sha256(str.encode(summary)).hexdigest()


def unembed_sha256(model: Bridge) -> str:
    """hooklab's strong fingerprint of a model's unembedding: SHA-256 of its shape and every
    entry.

    The entries are hashed rounded to bfloat16 (their little-endian bytes), so one checkpoint
    read in float32 or bfloat16 gives the same fingerprint; any change of an entry at bfloat16
    precision changes it. (A float16 read can round some tiny entries differently.)
    """
    weight = _unembedding(model).to(torch.bfloat16).cpu().contiguous()
    digest = hashlib.sha256(f"bfloat16{tuple(weight.shape)}".encode())
    digest.update(weight.view(torch.int16).numpy().astype("<i2", copy=False).tobytes())
    return digest.hexdigest()


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
    #: hooklab's strong fingerprint (:func:`unembed_sha256`); the tuned-lens package ignores it.
    hooklab_unembed_sha256: str | None = None

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
            assert isinstance(translator, torch.nn.Linear)
            torch.nn.init.zeros_(translator.weight)
            if translator.bias is not None:
                torch.nn.init.zeros_(translator.bias)

    @classmethod
    def from_model(
        cls,
        model: Bridge,
        *,
        name_or_path: str = "",
        revision: str | None = None,
        bias: bool = True,
    ) -> TunedLens:
        """A zero-initialised tuned lens for ``model`` (equal to the logit lens until trained)."""
        config = TunedLensConfig(
            base_model_name_or_path=name_or_path or str(getattr(model.cfg, "model_name", "")),
            d_model=int(model.cfg.d_model),
            num_hidden_layers=int(model.cfg.n_layers),
            bias=bias,
            base_model_revision=revision,
            unembed_hash=unembed_hash(model),
            hooklab_unembed_sha256=unembed_sha256(model),
        )
        device = model_device(model)
        return cls(config).to(device)

    def translator_for(self, layer: int) -> torch.nn.Linear:
        """The translator applied to the output of block ``layer``."""
        translator = self.translators[layer + 1]
        assert isinstance(translator, torch.nn.Linear)
        return translator

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
    def load(cls, folder: str | Path, model: Bridge) -> TunedLens:
        """Load a lens saved by hooklab or the tuned-lens package, refusing one for another model.

        Checks, in order: the sizes (``d_model``, ``num_hidden_layers`` and every parameter's
        shape) always; then the strongest fingerprint the config holds:
        ``hooklab_unembed_sha256`` (written by hooklab: the unembedding is the same at bfloat16
        precision), else ``unembed_hash`` (written by the tuned-lens package: the same corner
        entries at one decimal), else none, with a warning that only the sizes were checked.
        No fingerprint tells apart two models that share their unembedding.

        The parameters are read with ``torch.load(..., weights_only=True)``: a lens file is
        untrusted input and must not run code; a file that is not plain tensors, or is
        truncated, is refused with a :class:`HooklabError`.
        """
        folder = Path(folder)
        if not (folder / CONFIG_FILE).is_file() or not (folder / PARAMS_FILE).is_file():
            raise HooklabError(
                f"lens folder {str(folder)!r} must hold {CONFIG_FILE} and {PARAMS_FILE}; train "
                "one with `hooklab.lens.train_tuned_lens` or pass a tuned-lens package folder."
            )
        config = _read_config(folder / CONFIG_FILE)
        expected = {"d_model": int(model.cfg.d_model), "num_hidden_layers": int(model.cfg.n_layers)}
        for key, value in expected.items():
            if getattr(config, key) != value:
                raise HooklabError(
                    f"the tuned lens in {str(folder)!r} was trained for "
                    f"{key}={getattr(config, key)}"
                    f" but the model has {key}={value}; train a lens for this model."
                )
        if config.hooklab_unembed_sha256:
            _check_fingerprint(
                folder, config, "fingerprint", config.hooklab_unembed_sha256, unembed_sha256(model)
            )
        elif config.unembed_hash:
            _check_fingerprint(folder, config, "hash", config.unembed_hash, unembed_hash(model))
        else:
            warnings.warn(
                f"the tuned lens in {str(folder)!r} records no unembedding hash, so only its "
                "sizes were checked against the model; make sure it was trained on this model.",
                stacklevel=2,
            )
        state = _read_params(folder / PARAMS_FILE)
        lens = cls(config)
        try:
            lens.translators.load_state_dict(state)
        except (RuntimeError, TypeError, AttributeError) as error:
            reason = str(error).splitlines()[0] if str(error) else type(error).__name__
            raise HooklabError(
                f"{str(folder / PARAMS_FILE)!r} does not hold this lens's translators "
                f"({reason[:300]}); it must map '{{i}}.weight' / '{{i}}.bias' to tensors of "
                f"{config.num_hidden_layers} [d_model, d_model] translators. Re-save the lens "
                "with TunedLens.save or retrain it."
            ) from None
        return lens.to(model_device(model))


def _check_fingerprint(
    folder: Path, config: TunedLensConfig, kind: str, recorded: str, model_value: str
) -> None:
    if recorded != model_value:
        raise HooklabError(
            f"the tuned lens in {str(folder)!r} was trained on another model (unembedding "
            f"{kind} {recorded[:12]}… vs this model's {model_value[:12]}…, base "
            f"{config.base_model_name_or_path!r}); train a lens for this model, e.g. one "
            "lens for PT and one for IT."
        )


def _read_config(path: Path) -> TunedLensConfig:
    """``config.json`` as a :class:`TunedLensConfig`, or a HooklabError naming the file."""
    advice = "Re-save the lens with TunedLens.save or retrain it (`hooklab train-lens`)."
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise HooklabError(f"{str(path)!r} is not a valid JSON file ({error}). {advice}") from None
    if not isinstance(raw, dict):
        raise HooklabError(
            f"{str(path)!r} must hold a JSON object, not {type(raw).__name__}. {advice}"
        )
    try:
        config = TunedLensConfig.from_dict(raw)
    except TypeError as error:
        raise HooklabError(
            f"{str(path)!r} is not a tuned-lens config ({error}). {advice}"
        ) from None
    for key in ("d_model", "num_hidden_layers"):
        value = getattr(config, key)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise HooklabError(
                f"{str(path)!r}: {key}={value!r} must be a positive integer. {advice}"
            )
    return config


def _read_params(path: Path) -> dict[str, torch.Tensor]:
    """``params.pt`` read as plain tensors, or a HooklabError naming the file.

    torch's own error is not passed on: for a file holding other objects it suggests loading it
    with code execution enabled, which is wrong advice for an untrusted lens file.
    """
    advice = "Re-save the lens with TunedLens.save or retrain it (`hooklab train-lens`)."
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        if "global" not in str(error).lower():  # not a class or function reference: damage
            raise HooklabError(
                f"{str(path)!r} cannot be read: it is truncated or not a torch file "
                f"(unpickling failed). {advice}"
            ) from None
        raise HooklabError(
            f"{str(path)!r} holds objects other than tensors (a pickle that could run code), so "
            f"hooklab does not load it. A lens file must hold only tensors; {advice}"
        ) from None
    except Exception as error:  # noqa: BLE001 - truncated or corrupt archives raise many types
        raise HooklabError(
            f"{str(path)!r} cannot be read: it is truncated or not a torch file "
            f"({type(error).__name__}). {advice}"
        ) from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise HooklabError(
            f"{str(path)!r} must hold a dict of tensors ('{{i}}.weight', '{{i}}.bias'), not "
            f"{type(state).__name__}. {advice}"
        )
    return state
