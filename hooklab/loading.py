"""Loading one checkpoint as a raw-mode TransformerBridge, with errors that say what to do.

Hub ids and local folders go through the same code. Failures deep inside transformers or
huggingface_hub (missing folder, no network, gated model, unknown revision, remote code) are
translated into :class:`~hooklab.errors.CheckpointUnavailableError` naming the argument.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import transformers

from hooklab.errors import CheckpointUnavailableError, HooklabError

__all__ = [
    "CheckpointSource",
    "resolve_source",
    "load_config",
    "load_tokenizer",
    "boot_bridge",
    "no_runtime_installs",
    "parse_dtype",
    "resolve_device",
    "read_state_file",
]

_DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
}


def parse_dtype(dtype: str | torch.dtype) -> torch.dtype:
    """``"bfloat16"``, ``"bf16"``, ``torch.bfloat16`` … -> ``torch.bfloat16``."""
    if isinstance(dtype, torch.dtype):
        return dtype
    key = str(dtype).lower().removeprefix("torch.")
    if key not in _DTYPES:
        raise HooklabError(
            f"dtype={dtype!r} is not a model dtype hooklab knows; use one of "
            "'float32', 'bfloat16', 'float16' (or a torch.dtype)."
        )
    return _DTYPES[key]


_DEVICE_HINT = "use 'cpu', 'cuda', 'cuda:N' (N a GPU index), 'mps' or 'auto'"


def resolve_device(device: str | torch.device | None, *, argument: str = "device") -> str:
    """``None`` or ``"auto"`` -> ``"cuda"`` when a GPU is visible, else ``"cpu"``.

    Any other value must name a device torch can use here: ``"cpu"``, ``"cuda"``,
    ``"cuda:N"`` with a visible GPU ``N``, ``"mps"``, ``"xpu"``; anything else (``"tpu"``,
    ``"cuda:x"``, a GPU that is not there) is refused before a model loads.
    """
    if device is None or str(device) == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    name = str(device)
    try:
        parsed = torch.device(name)
    except (RuntimeError, ValueError, TypeError):
        raise HooklabError(f"{argument}={name!r} is not a device name; {_DEVICE_HINT}.") from None
    if parsed.type == "cpu":
        return name
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            raise HooklabError(
                f"{argument}={name!r} but torch sees no CUDA device (torch {torch.__version__}); "
                "use device='cpu', or install a CUDA build of torch on a GPU machine."
            )
        count = torch.cuda.device_count()
        if parsed.index is not None and parsed.index >= count:
            raise HooklabError(
                f"{argument}={name!r} but torch sees {count} CUDA device(s), numbered from 0; "
                f"use 'cuda:0'..'cuda:{count - 1}' (or check CUDA_VISIBLE_DEVICES)."
            )
        return name
    backend = getattr(torch.backends, parsed.type, None) or getattr(torch, parsed.type, None)
    available = getattr(backend, "is_available", None)
    if parsed.type in ("mps", "xpu") and available is not None and available():
        return name
    raise HooklabError(
        f"{argument}={name!r}: hooklab cannot load models on a {parsed.type!r} device here; "
        f"{_DEVICE_HINT}."
    )


@dataclass(frozen=True)
class CheckpointSource:
    """Where one side of a pair comes from.

    Attributes:
        name_or_path: hub id (``"google/gemma-3-4b-it"``) or local folder, as given.
        revision: the revision asked for (branch, tag or commit), if any.
        is_local: whether ``name_or_path`` is a local folder.
        commit: the commit the hub resolved, when known (recorded in manifests).
        gguf: the GGUF file this folder was converted from (:mod:`hooklab.gguf`), if any.
    """

    name_or_path: str
    revision: str | None = None
    is_local: bool = False
    commit: str | None = None
    gguf: str | None = None


_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*(/[A-Za-z0-9][\w.\-]*)?$")


def _looks_like_hub_id(name: str) -> bool:
    return bool(_HUB_ID.match(name)) and ".." not in name


def resolve_source(
    name_or_path: str | Path, revision: str | None, *, argument: str
) -> CheckpointSource:
    """Decide whether ``name_or_path`` is a local folder or a hub id; check folders exist."""
    name = str(name_or_path)
    if not name.strip():
        raise CheckpointUnavailableError(f"{argument} is empty; pass a hub id or a local folder.")
    path = Path(name).expanduser()
    if path.exists():
        from hooklab.gguf import convert_gguf, find_gguf

        gguf_file = find_gguf(path, argument=argument)
        if gguf_file is not None:
            folder = convert_gguf(gguf_file, argument=argument)
            return CheckpointSource(str(folder), None, is_local=True, gguf=str(gguf_file.resolve()))
        if not path.is_dir() or not (path / "config.json").is_file():
            raise CheckpointUnavailableError(
                f"{argument}={name!r} exists but is not a checkpoint folder (no config.json in "
                "it). Pass the folder that holds config.json, the weights and the tokenizer, or a "
                "GGUF file."
            )
        return CheckpointSource(str(path.resolve()), revision, is_local=True)
    if isinstance(name_or_path, Path) or not _looks_like_hub_id(name):
        raise CheckpointUnavailableError(
            f"{argument}={name!r}: no such folder. Pass an existing checkpoint folder, or a hub "
            "id of the form 'org/name' (e.g. 'google/gemma-3-4b-it')."
        )
    return CheckpointSource(name, revision, is_local=False)


def _causes(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def _translate(exc: Exception, source: CheckpointSource, argument: str) -> Exception:
    """A CheckpointUnavailableError explaining ``exc``, or ``exc`` itself if none applies."""
    from huggingface_hub import errors as hub_errors

    where = f"{argument}={source.name_or_path!r}"
    url = f"https://huggingface.co/{source.name_or_path}"
    for cause in _causes(exc):
        if isinstance(cause, hub_errors.GatedRepoError):
            return CheckpointUnavailableError(
                f"{where} is a gated model: accept its licence at {url} with your account, then "
                "log in with `hf auth login` (or set HF_TOKEN) on this machine and run again."
            )
        if isinstance(cause, hub_errors.RevisionNotFoundError):
            return CheckpointUnavailableError(
                f"{where}: revision {source.revision!r} does not exist. Use a branch, tag or "
                f"commit listed at {url}/commits/main, or leave the revision out."
            )
        if isinstance(cause, hub_errors.RepositoryNotFoundError):
            return CheckpointUnavailableError(
                f"{where} is not a model on the Hugging Face hub (or it is private and you are "
                "not logged in). Check the spelling, log in with `hf auth login`, or pass a local "
                "folder."
            )
        if isinstance(cause, (hub_errors.LocalEntryNotFoundError, hub_errors.OfflineModeIsEnabled)):
            cache = os.environ.get("HF_HOME", "~/.cache/huggingface")
            return CheckpointUnavailableError(
                f"{where}: the Hugging Face hub cannot be reached from here and the model is not "
                f"in the local cache ({cache}). On a machine with network run "
                f"`hf download {source.name_or_path}` and copy the cache or the folder here, then "
                "pass the folder (or set HF_HUB_OFFLINE=1 to read the cache)."
            )
    message = str(exc)
    damaged = _damaged_weights(exc)
    if damaged is not None:
        return CheckpointUnavailableError(
            f"{where}: its weights cannot be read ({damaged}): the file is truncated or damaged. "
            "Download or copy the checkpoint again (compare the files' sizes and SHA-256 with "
            "the source), or re-save it with save_pretrained."
        )
    if "no file named" in message and ("safetensors" in message or ".bin" in message):
        return CheckpointUnavailableError(
            f"{where}: the folder holds no weights ({message.splitlines()[0]}). Copy the "
            "model's weight files (model.safetensors or its shards and index) into it, or "
            "download the checkpoint again."
        )
    if "trust_remote_code" in message:
        return CheckpointUnavailableError(
            f"{where} ships its own modelling code, which hooklab does not run unless you pass "
            "trust_remote_code=True (read the code first: it runs with your permissions)."
        )
    if "couldn't connect" in message.lower() or "connection" in message.lower():
        return CheckpointUnavailableError(
            f"{where}: the Hugging Face hub cannot be reached ({message.splitlines()[0]}). "
            "Download "
            "the model on a machine with network and pass its folder."
        )
    return exc


def _damaged_weights(exc: BaseException) -> str | None:
    """A one-line description if ``exc`` comes from reading a truncated or damaged weight file."""
    import pickle

    from safetensors import SafetensorError

    for cause in _causes(exc):
        text = str(cause).splitlines()[0] if str(cause) else type(cause).__name__
        if isinstance(cause, (SafetensorError, pickle.UnpicklingError, EOFError)):
            return text
        if "PytorchStreamReader failed" in text or "safetensors" in type(cause).__module__:
            return text
        if isinstance(cause, OSError) and "unable to load weights" in text.lower():
            return text
    return None


@contextlib.contextmanager
def _translated(source: CheckpointSource, argument: str) -> Iterator[None]:
    try:
        yield
    except HooklabError:
        raise
    except Exception as exc:  # noqa: BLE001 - every load failure is looked at, then re-raised
        translated = _translate(exc, source, argument)
        if translated is exc:
            raise
        raise translated from exc


def load_config(
    source: CheckpointSource, *, trust_remote_code: bool = False, argument: str = "model"
) -> transformers.PretrainedConfig:
    """The Hugging Face config of a checkpoint (cheap: no weights)."""
    with _translated(source, argument):
        config = transformers.AutoConfig.from_pretrained(
            source.name_or_path, revision=source.revision, trust_remote_code=trust_remote_code
        )
    return config


def load_tokenizer(
    source: CheckpointSource, *, trust_remote_code: bool = False, argument: str = "model"
) -> Any:
    """The tokenizer of a checkpoint."""
    with _translated(source, argument):
        return transformers.AutoTokenizer.from_pretrained(
            source.name_or_path, revision=source.revision, trust_remote_code=trust_remote_code
        )


def read_state_file(path: str | Path, *, argument: str) -> dict[str, torch.Tensor]:
    """The tensors of a ``.safetensors`` file or a ``torch.save`` file, read on the CPU
    without running code (``weights_only=True``).

    Raises:
        HooklabError: the file is missing, truncated or damaged; the message names
            ``argument`` and the file.
    """
    path = Path(path)
    if not path.is_file():
        raise HooklabError(
            f"{argument}: {str(path)!r} does not exist; pass the folder that holds it, or write "
            "it again (e.g. train and save the lens again)."
        )
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path), device="cpu")
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - every way a damaged file fails is reported
        first = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise HooklabError(
            f"{argument}: {str(path)!r} cannot be read ({type(error).__name__}: {first}); it "
            "is truncated, damaged or not a tensor file. Write or copy it again."
        ) from error
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise HooklabError(
            f"{argument}: {str(path)!r} holds {type(state).__name__}, not a mapping of names to "
            "tensors; write it again with torch.save(module.state_dict(), path)."
        )
    return state


@contextlib.contextmanager
def no_runtime_installs() -> Iterator[None]:
    """Stop TransformerLens from ``pip install``-ing torchvision while booting a model.

    Booting an image-text checkpoint (the released Gemma 3 models) makes TransformerLens 4.3
    try to load an image processor and, failing that, run ``pip install torchvision``, which
    pulls a CUDA build of torch over the user's own. hooklab reads only the language model,
    so it declines the install; the boot itself is unaffected.
    """
    from transformer_lens.model_bridge.sources.transformers import helpers

    original = helpers._ensure_torchvision
    helpers._ensure_torchvision = lambda: False
    try:
        yield
    finally:
        helpers._ensure_torchvision = original


def boot_bridge(
    source: CheckpointSource,
    *,
    tokenizer: Any,
    dtype: torch.dtype,
    device: str,
    trust_remote_code: bool = False,
    argument: str = "model",
) -> Any:
    """Load a checkpoint as a TransformerBridge in raw (Hugging Face-faithful) mode, eval mode."""
    from transformer_lens.model_bridge import TransformerBridge

    with _translated(source, argument), no_runtime_installs():
        bridge = TransformerBridge.boot_transformers(
            source.name_or_path,
            device=device,
            dtype=dtype,
            tokenizer=tokenizer,
            revision=source.revision,
            trust_remote_code=trust_remote_code,
        )
    from hooklab.kv_cache import route_kv_cache

    route_kv_cache(bridge)
    return bridge.eval()
