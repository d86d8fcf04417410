"""Offline checkpoints for tests, notebooks and benchmarks.

* tiny random-init checkpoints of every family (``tiny_shapes.json``), written to a folder
  with :func:`~hooklab.synthetic.tokenizer.build_tokenizer`'s tokenizer, so that they load
  through exactly the code path real checkpoints use;
* PT/IT pairs of them, IT being PT with every weight perturbed (norm weights included) so
  that tests can tell donor from host;
* random-weight models at the *real* shapes of the six paper checkpoints, for GPU benchmarks.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import torch
import transformers

from hooklab.catalog import paper_pair
from hooklab.errors import HooklabError
from hooklab.synthetic.tokenizer import build_tokenizer, saved_tokenizer_folder

__all__ = [
    "TINY_SHAPES",
    "TinyPair",
    "tiny_config",
    "real_shape_config",
    "write_tiny_checkpoint",
    "write_perturbed_checkpoint",
    "write_mlp_swapped_checkpoint",
    "write_tiny_pair",
    "build_random_model",
    "build_model_from_config",
]


@cache
def _tiny_shapes() -> dict[str, Any]:
    text = resources.files("hooklab.synthetic").joinpath("tiny_shapes.json").read_text()
    return json.loads(text)


TINY_SHAPES: tuple[str, ...] = tuple(k for k in _tiny_shapes() if not k.startswith("_"))


def _merge_common(fields: dict[str, Any], common: dict[str, Any]) -> dict[str, Any]:
    if "text_config" in fields:  # image-text layout: the language fields go in text_config
        return {**fields, "text_config": {**common, **fields["text_config"]}}
    return {**common, **fields}


def tiny_config(shape: str, **overrides: Any) -> transformers.PretrainedConfig:
    """The Hugging Face config of a tiny shape (one of :data:`TINY_SHAPES`), with overrides."""
    shapes = _tiny_shapes()
    if shape not in TINY_SHAPES:
        raise HooklabError(f"shape={shape!r} is not a tiny shape; choose one of {TINY_SHAPES}")
    fields = _merge_common(dict(shapes[shape]), shapes["_common"])
    if "text_config" in fields:
        fields["text_config"].update(overrides)
    else:
        fields.update(overrides)
    model_type = fields.pop("model_type")
    return transformers.AutoConfig.for_model(model_type, **fields)


def real_shape_config(pair: str) -> transformers.PretrainedConfig:
    """The config of a paper pair's language model at its real shape (no download)."""
    fields = dict(paper_pair(pair).shape)
    model_type = fields.pop("model_type")
    return transformers.AutoConfig.for_model(model_type, **fields)


def _model_class(config: transformers.PretrainedConfig) -> Any:
    if config.model_type == "gemma3":  # image-text layout, as released
        return transformers.Gemma3ForConditionalGeneration
    return transformers.AutoModelForCausalLM


def _instantiate(config: transformers.PretrainedConfig) -> torch.nn.Module:
    model_class = _model_class(config)
    if model_class is transformers.AutoModelForCausalLM:
        return model_class.from_config(config)
    return model_class(config)


def _spread(param: torch.Tensor) -> float:
    # Norm weights start constant (std 0); give them a non-trivial scale too.
    return max(float(param.float().std()) if param.numel() > 1 else 0.0, 0.05)


def _perturb_(model: torch.nn.Module, scale: float, seed: int, *, norms_only: bool = False) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in sorted(model.named_parameters()):
            if norms_only and "norm" not in name:
                continue
            noise = torch.randn(param.shape, generator=generator, dtype=torch.float32)
            param.add_((noise * scale * _spread(param)).to(param.dtype))


def write_tiny_checkpoint(
    shape: str, folder: str | Path, *, seed: int = 0, **overrides: Any
) -> Path:
    """Write a tiny random-init checkpoint of ``shape`` with its tokenizer to ``folder``.

    Norm weights are randomised as well (``initializer`` leaves them constant), so that a
    readout or graft that skipped a norm would show. Returns the folder.
    """
    folder = Path(folder)
    config = tiny_config(shape, **overrides)
    torch.manual_seed(seed)
    model: Any = _instantiate(config)
    _perturb_(model, scale=1.0, seed=seed, norms_only=True)
    model.save_pretrained(folder)
    build_tokenizer(config.get_text_config().vocab_size).save_pretrained(folder)
    return folder


def write_perturbed_checkpoint(
    source: str | Path, folder: str | Path, *, scale: float = 0.2, seed: int = 1
) -> Path:
    """Copy a checkpoint with every weight moved by ``scale`` times its spread of Gaussian noise."""
    source, folder = Path(source), Path(folder)
    config = transformers.AutoConfig.from_pretrained(source)
    model = _model_class(config).from_pretrained(source)
    _perturb_(model, scale=scale, seed=seed)
    model.save_pretrained(folder)
    transformers.AutoTokenizer.from_pretrained(source).save_pretrained(folder)
    return folder


def write_mlp_swapped_checkpoint(host: str | Path, donor: str | Path, folder: str | Path) -> Path:
    """Write ``host`` with every block's MLP-path weights (norms included) taken from ``donor``.

    The result shares all non-MLP weights with ``host``: grafting every MLP of it into
    ``host`` must reproduce it exactly (docs/families.md).
    """
    from hooklab.architectures import mlp_path_parameter_names
    from hooklab.loading import CheckpointSource, boot_bridge

    host, donor, folder = Path(host), Path(donor), Path(folder)
    tokenizer = transformers.AutoTokenizer.from_pretrained(host)
    bridge = boot_bridge(
        CheckpointSource(str(host), is_local=True),
        tokenizer=tokenizer,
        dtype=torch.float32,
        device="cpu",
    )
    names = mlp_path_parameter_names(bridge)
    config = transformers.AutoConfig.from_pretrained(host)
    host_model = _model_class(config).from_pretrained(host)
    donor_model = _model_class(config).from_pretrained(donor)
    with torch.no_grad():
        for name in names:
            host_model.get_parameter(name).copy_(donor_model.get_parameter(name))
    host_model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@dataclass(frozen=True)
class TinyPair:
    """Folders of a tiny PT/IT pair."""

    shape: str
    pt: Path
    it: Path


def write_tiny_pair(
    shape: str, root: str | Path, *, seed: int = 0, it_scale: float = 0.2, **overrides: Any
) -> TinyPair:
    """Write a tiny PT checkpoint and its perturbed IT twin under ``root/shape/{pt,it}``."""
    root = Path(root) / shape
    pt = write_tiny_checkpoint(shape, root / "pt", seed=seed, **overrides)
    it = write_perturbed_checkpoint(pt, root / "it", scale=it_scale, seed=seed + 1)
    return TinyPair(shape=shape, pt=pt, it=it)


def build_random_model(
    pair: str,
    *,
    dtype: torch.dtype = torch.bfloat16,
    device: str | torch.device = "cuda",
    n_layers: int | None = None,
) -> Any:
    """A TransformerBridge with random weights at the real shape of a paper pair's model.

    For benchmarks on a GPU: nothing is downloaded; the weights are the architecture's own
    random initialisation, made directly on ``device``. ``n_layers`` truncates the stack.
    """
    config = real_shape_config(pair)
    if n_layers is not None:
        config.num_hidden_layers = n_layers
        if getattr(config, "layer_types", None):
            config.layer_types = config.layer_types[:n_layers]
    return build_model_from_config(config, dtype=dtype, device=device)


def build_model_from_config(
    config: transformers.PretrainedConfig,
    *,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
) -> Any:
    """A TransformerBridge with random weights for any supported causal-LM config."""
    from transformer_lens.model_bridge import TransformerBridge

    from hooklab.kv_cache import route_kv_cache
    from hooklab.loading import no_runtime_installs

    model_class: Any = transformers.AutoModelForCausalLM._model_mapping[type(config)]
    config.architectures = [model_class.__name__]
    with torch.device(device):
        model = transformers.AutoModelForCausalLM.from_config(config, dtype=dtype)
    model.eval()
    # TransformerLens re-reads a tokenizer from its folder while booting: give it one.
    tokenizer = transformers.AutoTokenizer.from_pretrained(saved_tokenizer_folder(512))
    with no_runtime_installs():
        bridge = TransformerBridge.boot_transformers(
            f"random-{config.model_type}",
            hf_model=model,
            tokenizer=tokenizer,
            device=device,
            dtype=dtype,
        )
    route_kv_cache(bridge)
    return bridge.eval()
