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


def resolve_device(device: str | torch.device | None) -> str:
    """``None`` or ``"auto"`` -> ``"cuda"`` when a GPU is visible, else ``"cpu"``."""
    if device is None or str(device) == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    device = str(device)
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise HooklabError(
            f"device={device!r} but torch sees no CUDA device (torch {torch.__version__}); "
            "use device='cpu', or install a CUDA build of torch on a GPU machine."
        )
    return device


@dataclass(frozen=True)
class CheckpointSource:
    """Where one side of a pair comes from.

    Attributes:
        name_or_path: hub id (``"google/gemma-3-4b-it"``) or local folder, as given.
        revision: the revision asked for (branch, tag or commit), if any.
        is_local: whether ``name_or_path`` is a local folder.
        commit: the commit the hub resolved, when known (recorded in manifests).
    """

    name_or_path: str
    revision: str | None = None
    is_local: bool = False
    commit: str | None = None


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
        if not path.is_dir() or not (path / "config.json").is_file():
            raise CheckpointUnavailableError(
                f"{argument}={name!r} exists but is not a checkpoint folder (no config.json in "
                "it). Pass the folder that holds config.json, the weights and the tokenizer."
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
    return bridge.eval()
