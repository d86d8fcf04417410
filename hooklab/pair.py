"""A PT/IT pair: two raw-mode TransformerBridge models, one tokenizer, checked compatible."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from hooklab.architectures import (
    ArchitectureSpec,
    hf_text_config,
    model_device,
    spec_for_architecture,
    spec_for_config,
)
from hooklab.catalog import paper_pair
from hooklab.compatibility import CompatibilityReport, check_compatibility
from hooklab.errors import HooklabError
from hooklab.loading import (
    CheckpointSource,
    boot_bridge,
    load_config,
    load_tokenizer,
    parse_dtype,
    resolve_device,
    resolve_source,
)
from hooklab.types import Bridge

__all__ = [
    "ModelPair",
    "PairCheck",
    "check_adapter_on",
    "check_pair",
    "load_pair",
    "embedded_pair_folder",
    "TINY_PAIR",
]

#: Name of the embedded demo pair (``data/tiny-pair``), a small Llama-family model genuinely
#: pretrained and instruction-tuned by ``python -m hooklab.synthetic.demo_pair``.
TINY_PAIR = "tiny"


def embedded_pair_folder() -> Path:
    """The folder of the embedded demo pair (``pt/`` and ``it/`` inside)."""
    from importlib import resources

    return Path(str(resources.files("hooklab.data").joinpath("tiny-pair")))


@dataclass(eq=False)
class ModelPair:
    """A pretrained (``pt``) and instruction-tuned (``it``) model of one family.

    Attributes:
        pt: the pretrained model, a TransformerBridge in raw mode and eval mode.
        it: the instruction-tuned model, likewise.
        tokenizer: the one tokenizer both models use (the IT side's, with its chat template).
        family: the adapter family (see :mod:`hooklab.architectures`).
        pt_source: where ``pt`` came from (id or folder, revision, resolved commit).
        it_source: where ``it`` came from.
        dtype: the models' dtype.
        device: the models' device.
        compatibility: the checks the pair passed.
    """

    pt: Any
    it: Any
    tokenizer: Any
    family: str
    pt_source: CheckpointSource
    it_source: CheckpointSource
    dtype: torch.dtype
    device: str
    compatibility: CompatibilityReport = field(repr=False)

    @property
    def spec(self) -> ArchitectureSpec:
        return spec_for_architecture(str(self.pt.cfg.architecture))

    @property
    def n_layers(self) -> int:
        return int(self.pt.cfg.n_layers)

    @property
    def d_model(self) -> int:
        return int(self.pt.cfg.d_model)

    @property
    def d_vocab(self) -> int:
        return int(self.pt.cfg.d_vocab)

    def models(self) -> dict[str, Any]:
        """``{"pt": pt, "it": it}``, in that order."""
        return {"pt": self.pt, "it": self.it}

    def describe(self) -> dict[str, Any]:
        """What a manifest records about the pair."""
        return {
            "family": self.family,
            "pt": _describe_source(self.pt_source),
            "it": _describe_source(self.it_source),
            "n_layers": self.n_layers,
            "d_model": self.d_model,
            "d_vocab": self.d_vocab,
            "dtype": str(self.dtype).removeprefix("torch."),
            "device": self.device,
            "devices": {side: str(model_device(m)) for side, m in self.models().items()},
        }

    def __repr__(self) -> str:
        return (
            f"ModelPair(family={self.family!r}, pt={self.pt_source.name_or_path!r}, "
            f"it={self.it_source.name_or_path!r}, n_layers={self.n_layers}, "
            f"d_model={self.d_model}, dtype={self.dtype}, device={self.device!r})"
        )


def _describe_source(source: CheckpointSource) -> dict[str, Any]:
    described: dict[str, Any] = {
        "id": source.name_or_path,
        "revision": source.revision,
        "commit": source.commit,
    }
    if source.gguf is not None:  # the converted folder is a cache: the file is the identity
        described.update(id=source.gguf, converted=source.name_or_path)
    return described


def _with_commit(source: CheckpointSource, config: Any) -> CheckpointSource:
    commit = getattr(config, "_commit_hash", None)
    if source.is_local or not commit:
        return source
    return CheckpointSource(source.name_or_path, source.revision, False, commit, source.gguf)


@dataclass(frozen=True)
class PairCheck:
    """What :func:`check_pair` found before any weights load (configs, tokenizers, checks)."""

    pt_source: CheckpointSource
    it_source: CheckpointSource
    pt_config: Any
    it_config: Any
    tokenizer: Any
    spec: ArchitectureSpec
    dtype: torch.dtype
    devices: dict[str, str]
    device: str
    report: CompatibilityReport

    @property
    def n_layers(self) -> int:
        return int(hf_text_config(self.pt_config).num_hidden_layers)

    @property
    def d_vocab(self) -> int:
        return int(hf_text_config(self.pt_config).vocab_size)


def check_pair(
    name: str | None = None,
    *,
    pt: str | Path | None = None,
    it: str | Path | None = None,
    pt_revision: str | None = None,
    it_revision: str | None = None,
    dtype: str | torch.dtype = "float32",
    device: str | torch.device | None = None,
    trust_remote_code: bool = False,
    offload: str | None = None,
    argument_prefix: str = "",
) -> PairCheck:
    """Every check :func:`load_pair` makes before loading weights (arguments as there):
    dtype, device, offload, both sources, configs, families, tokenizers, compatibility.
    ``argument_prefix`` (e.g. ``"pair."``) is put before argument names in error messages.

    Raises:
        HooklabError: as :func:`load_pair`.
    """
    if name is not None:
        if pt is not None or it is not None:
            raise HooklabError(
                f"load_pair got name={name!r} and pt/it as well; pass a pair name or pt=... and "
                "it=..., not both."
            )
        if name.strip().lower() == TINY_PAIR:
            pt, it = (str(embedded_pair_folder() / side) for side in ("pt", "it"))
        else:
            entry = paper_pair(name)
            pt, it = entry.pt, entry.it
    if pt is None or it is None:
        missing = " and ".join(arg for arg, value in (("pt", pt), ("it", it)) if value is None)
        raise HooklabError(
            f"load_pair needs {missing}: pass a pair name (e.g. load_pair('gemma3-4b')) or both "
            "pt=... and it=... (hub ids or local folders)."
        )
    torch_dtype = parse_dtype(dtype)
    device_name = resolve_device(device)
    if offload not in (None, "pt", "it"):
        raise HooklabError(
            f"offload={offload!r}: use 'pt' or 'it' (the side kept on the CPU), or leave it out."
        )
    devices = {"pt": device_name, "it": device_name}
    if offload is not None:
        devices[offload] = "cpu"
    pt_source = resolve_source(pt, pt_revision, argument=f"{argument_prefix}pt")
    it_source = resolve_source(it, it_revision, argument=f"{argument_prefix}it")
    pt_config = load_config(
        pt_source, trust_remote_code=trust_remote_code, argument=f"{argument_prefix}pt"
    )
    it_config = load_config(
        it_source, trust_remote_code=trust_remote_code, argument=f"{argument_prefix}it"
    )
    spec = spec_for_config(pt_config)
    spec_for_config(it_config)
    pt_tokenizer = load_tokenizer(
        pt_source, trust_remote_code=trust_remote_code, argument=f"{argument_prefix}pt"
    )
    it_tokenizer = load_tokenizer(
        it_source, trust_remote_code=trust_remote_code, argument=f"{argument_prefix}it"
    )
    report = check_compatibility(pt_config, it_config, pt_tokenizer, it_tokenizer)
    report.raise_if_incompatible(str(pt), str(it))
    return PairCheck(
        pt_source=pt_source,
        it_source=it_source,
        pt_config=pt_config,
        it_config=it_config,
        tokenizer=it_tokenizer,
        spec=spec,
        dtype=torch_dtype,
        devices=devices,
        device=device_name,
        report=report,
    )


def load_pair(
    name: str | None = None,
    *,
    pt: str | Path | None = None,
    it: str | Path | None = None,
    pt_revision: str | None = None,
    it_revision: str | None = None,
    dtype: str | torch.dtype = "float32",
    device: str | torch.device | None = None,
    trust_remote_code: bool = False,
    offload: str | None = None,
    check_adapter: bool = True,
    check_generation: bool = True,
) -> ModelPair:
    """Load a PT/IT pair, refusing it before any weights load if the two cannot be compared.

    Args:
        name: a paper pair's short name (``"gemma3-4b"``, ``"llama3.1-8b"``, ``"qwen3-4b"``,
            ``"mistral-7b-v0.3"``, ``"olmo2-7b"``, ``"deepseek-v2-lite"``), or ``"tiny"`` for
            the embedded demo pair; or leave it out and pass ``pt`` and ``it``.
        pt: hub id or local folder of the pretrained checkpoint.
        it: hub id or local folder of the instruction-tuned checkpoint.
        pt_revision: branch, tag or commit of ``pt`` on the hub.
        it_revision: branch, tag or commit of ``it`` on the hub.
        dtype: model dtype (``"float32"``, ``"bfloat16"``, ``"float16"``).
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"``…; default: CUDA when available.
        trust_remote_code: run modelling code shipped with a checkpoint (off by default).
        offload: ``"pt"`` or ``"it"`` keeps that side in CPU memory while the other uses
            ``device`` (for a pair that does not fit one GPU twice, e.g. DeepSeek-V2-Lite on a
            48 GB card); grafts and readouts move activations between the two as needed.
        check_adapter: after loading, check on a short probe that the architecture adapter's
            MLP path reproduces every ``hook_mlp_out`` and its readout the logits
            (:func:`check_adapter_on`; one forward pass of 8 tokens per side).
        check_generation: after loading, check that cached decoding equals uncached decoding
            on a short probe, through the bridge and through the Hugging Face forward
            (:func:`check_generation_on`; 3 teacher-forced steps, about 10 small forward
            passes per side).

    Raises:
        CheckpointUnavailableError: a folder is missing, the hub is unreachable, a model is
            gated, a revision does not exist.
        UnsupportedArchitectureError: a checkpoint is of a family hooklab has no adapter for.
        PairMismatchError: architecture, layer count, d_model, vocabulary size or tokenization
            differ; the message names each difference and both values.
        GenerationCheckError: cached decoding differs from uncached (an untested library
            version); the message names the family, the versions and the difference.

    Example:
        >>> pair = load_pair(pt="ckpt/pt", it="ckpt/it")  # doctest: +SKIP
        >>> pair = load_pair("gemma3-4b", dtype="bfloat16")  # doctest: +SKIP
    """
    checked = check_pair(
        name,
        pt=pt,
        it=it,
        pt_revision=pt_revision,
        it_revision=it_revision,
        dtype=dtype,
        device=device,
        trust_remote_code=trust_remote_code,
        offload=offload,
    )
    models = {
        side: boot_bridge(
            source,
            tokenizer=checked.tokenizer,
            dtype=checked.dtype,
            device=checked.devices[side],
            trust_remote_code=trust_remote_code,
            argument=side,
        )
        for side, source in (("pt", checked.pt_source), ("it", checked.it_source))
    }
    if check_adapter:
        for side, model in models.items():
            check_adapter_on(model, checked.tokenizer, side=side)
    if check_generation:
        for side, model in models.items():
            check_generation_on(model, checked.tokenizer, side=side)
    return ModelPair(
        pt=models["pt"],
        it=models["it"],
        tokenizer=checked.tokenizer,
        family=checked.spec.family,
        pt_source=_with_commit(checked.pt_source, checked.pt_config),
        it_source=_with_commit(checked.it_source, checked.it_config),
        dtype=checked.dtype,
        device=checked.device,
        compatibility=checked.report,
    )


#: Tokens of the load-time adapter probe (one row): enough to exercise attention and the MLPs.
ADAPTER_PROBE_TOKENS = 8


def check_adapter_on(model: Bridge, tokenizer: Any, *, side: str = "model") -> None:
    """Refuse a model the architecture adapter does not reproduce.

    On a short probe, :func:`~hooklab.architectures.mlp_output` must give every layer's
    ``hook_mlp_out`` and :func:`~hooklab.architectures.read_logits` the model's logits, within
    the parity tolerance of its dtype; a checkpoint whose config turns on something the adapter
    does not model (a new norm, a logit scale) fails here instead of giving wrong grafts.

    Raises:
        UnsupportedArchitectureError: naming the family, the check and the difference.
    """
    from hooklab.architectures import model_device
    from hooklab.errors import UnsupportedArchitectureError
    from hooklab.parity import check_parity, probe_tokens

    tokens = probe_tokens(tokenizer, model_device(model))[:1, :ADAPTER_PROBE_TOKENS]
    report = check_parity(model, tokens)
    limits = report.limits()
    for check, name in (
        ("MLP path vs hook_mlp_out", "mlp_path"),
        ("readout vs logits", "readout"),
    ):
        value, tolerance = getattr(report, name), limits[name]
        if not value <= tolerance:
            raise UnsupportedArchitectureError(
                f"{side}: hooklab's {report.family} adapter does not reproduce this checkpoint "
                f"({check}: max difference {value:.3g} > {tolerance:.3g} in {report.dtype}); its "
                "config may use a feature the adapter does not model. Report it with the "
                "checkpoint's config.json, or load with check_adapter=False at your own risk."
            )


#: Teacher-forced decoding steps of the load-time generation check.
GENERATION_PROBE_STEPS = 3


def check_generation_on(model: Bridge, tokenizer: Any, *, side: str = "model") -> None:
    """Refuse a model whose cached decoding is not its uncached decoding.

    Every history, the native condition and every behave / steer arm decode with the KV cache;
    a cache that does not reach the attention (transformers 5.24 with TransformerLens 4.3
    before :mod:`hooklab.kv_cache`) makes them silently wrong. On a short probe (two rows, one
    left-padded), :func:`~hooklab.kv_cache.check_cached_decoding` decodes the last
    :data:`GENERATION_PROBE_STEPS` tokens with the cache and compares their logits with one
    uncached pass, within :func:`~hooklab.parity.tolerance_for` of the dtype.

    Raises:
        GenerationCheckError: naming the side, the family, the versions and the difference.
    """
    from hooklab.architectures import model_device
    from hooklab.errors import GenerationCheckError
    from hooklab.kv_cache import check_cached_decoding
    from hooklab.parity import probe_tokens
    from hooklab.versions import stack_versions

    tokens = probe_tokens(tokenizer, model_device(model))[:2, : ADAPTER_PROBE_TOKENS + 2]
    report = check_cached_decoding(model, tokens, steps=GENERATION_PROBE_STEPS)
    if not report.ok:
        raise GenerationCheckError(
            f"{side}: cached decoding differs from uncached decoding on this stack "
            f"({report.family}, {report.dtype}; {stack_versions()}): max |logit difference| "
            f"{report.bridge:.3g} through the bridge and {report.hugging_face:.3g} through "
            f"Hugging Face's forward over {report.steps} steps, limit {report.limit:.3g} "
            f"(logits up to {report.scale:.3g}). Every generated history and response would be "
            "wrong. Install the tested versions (pip install -c requirements-lock.txt ...; "
            "see docs/dependencies.md), or load with check_generation=False to inspect it."
        )
