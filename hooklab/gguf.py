"""A GGUF file as one side of a pair: dequantised once into an ordinary checkpoint folder.

``load_pair(pt=..., it="SmolLM2-135M-Instruct.Q4_1.gguf")`` (or a folder holding one ``.gguf``
file, or the CLI's ``--pt/--it``, or a spec's ``pt``/``it``) reads the file through
transformers' GGUF support, which dequantises every tensor to float32. transformers refuses to
``save_pretrained`` such a model ("quantized with gguf"), so hooklab copies its state dict
into a model built from the same config without the ``quantization_config`` (measured: the
same logits bit for bit), and writes that with the tokenizer and generation config into a
cache folder. From there on the folder is an ordinary float32 checkpoint and goes through the
same loading code as any other (cast to the requested dtype at load).

The cache folder is ``$HOOKLAB_CACHE/gguf/<sha256 of the file, 16 hex>-<transformers>-<gguf>``
(``HOOKLAB_CACHE`` defaults to ``~/.cache/hooklab``): a changed file, or another
transformers or gguf release (their dequantisation), converts anew. Written to a temporary
folder and renamed, so an interrupted conversion leaves nothing half-made behind.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from hooklab.atomic import file_sha256
from hooklab.errors import CheckpointUnavailableError, HooklabError
from hooklab.versions import NOT_INSTALLED, library_versions

__all__ = ["GGUF_SUFFIX", "CONVERSION_RECORD", "find_gguf", "cache_root", "convert_gguf"]

GGUF_SUFFIX = ".gguf"
#: The file in a converted folder that records where it came from.
CONVERSION_RECORD = "hooklab-gguf.json"


def find_gguf(path: Path, *, argument: str) -> Path | None:
    """The GGUF file ``path`` names (the file itself, or the one ``.gguf`` file of a folder
    without a ``config.json``), or ``None`` when ``path`` is no GGUF source."""
    if path.is_file():
        return path if path.suffix.lower() == GGUF_SUFFIX else None
    if not path.is_dir() or (path / "config.json").exists():
        return None
    files = sorted(p for p in path.iterdir() if p.suffix.lower() == GGUF_SUFFIX and p.is_file())
    if len(files) > 1:
        names = ", ".join(p.name for p in files[:5])
        raise CheckpointUnavailableError(
            f"{argument}={str(path)!r} holds {len(files)} GGUF files ({names}); pass the one to "
            "load as the path of the file itself."
        )
    return files[0] if files else None


def cache_root() -> Path:
    """``$HOOKLAB_CACHE`` or ``~/.cache/hooklab``."""
    return Path(os.environ.get("HOOKLAB_CACHE") or Path.home() / ".cache" / "hooklab")


def _versions() -> tuple[str, str]:
    """transformers' and gguf's versions (their dequantisation is what a cache folder holds)."""
    versions = library_versions(("transformers", "gguf"))
    if versions["gguf"] == NOT_INSTALLED:
        raise HooklabError(
            "reading a GGUF file needs the 'gguf' package, which hooklab's install brings; "
            "reinstall hooklab (pip install -e .) or pip install gguf."
        )
    return versions["transformers"], versions["gguf"]


def convert_gguf(file: Path, *, argument: str = "model") -> Path:
    """The cached checkpoint folder of GGUF ``file``, converting it on first use.

    Raises:
        CheckpointUnavailableError: the file is not a GGUF file transformers can read.
    """
    transformers_version, gguf_version = _versions()
    sha = file_sha256(file)
    folder = cache_root() / "gguf" / f"{sha[:16]}-{transformers_version}-{gguf_version}"
    if (folder / CONVERSION_RECORD).is_file():
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    try:
        _write_checkpoint(file, staging, argument=argument)
        record = {
            "gguf_file": str(file.resolve()),
            "gguf_sha256": sha,
            "transformers": transformers_version,
            "gguf": gguf_version,
        }
        (staging / CONVERSION_RECORD).write_text(json.dumps(record, indent=2) + "\n")
        for path in staging.iterdir():  # readable like any checkpoint folder (mkdtemp: 0700)
            path.chmod(0o644)
        staging.chmod(0o755)
        try:
            staging.rename(folder)
        except OSError:  # another process converted it first
            if not (folder / CONVERSION_RECORD).is_file():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return folder


def _write_checkpoint(file: Path, out: Path, *, argument: str) -> None:
    import torch
    import transformers

    folder, name = str(file.parent), file.name
    try:
        quantised = transformers.AutoModelForCausalLM.from_pretrained(
            folder, gguf_file=name, dtype=torch.float32
        )
        tokenizer = transformers.AutoTokenizer.from_pretrained(folder, gguf_file=name)
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        raise CheckpointUnavailableError(
            f"{argument}={str(file)!r} could not be read as a GGUF checkpoint ({exc}). Pass a "
            "GGUF file of a causal language model whose architecture transformers reads "
            "(llama, qwen2/3, gemma3, mistral...), or a checkpoint folder."
        ) from exc
    config = quantised.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.architectures = [type(quantised).__name__]
    with torch.device("cpu"):
        plain = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(quantised.state_dict())
    plain.generation_config = quantised.generation_config
    plain.save_pretrained(out)
    tokenizer.save_pretrained(out)
