"""The loader's guard against TransformerLens installing packages at boot."""

from __future__ import annotations

import subprocess

import pytest
from transformer_lens.model_bridge.sources.transformers import helpers

import hooklab
from hooklab.loading import no_runtime_installs


def test_image_text_gemma3_loads_without_running_pip(tiny_pair, monkeypatch):
    def forbidden(*args, **kwargs):
        raise AssertionError(f"a subprocess was started while loading: {args}")

    monkeypatch.setattr(subprocess, "check_call", forbidden)
    monkeypatch.setattr(subprocess, "run", forbidden)
    tiny = tiny_pair("gemma3-multimodal")
    pair = hooklab.load_pair(pt=tiny.pt, it=tiny.it, device="cpu")
    assert pair.family == "gemma3"


def test_transformer_lens_would_try_to_install_without_the_guard(tiny_pair, monkeypatch):
    # Shows the hazard is real (so the test above can fail): unguarded, the boot asks for it.
    from transformer_lens.model_bridge import TransformerBridge

    asked = []
    monkeypatch.setattr(helpers, "_ensure_torchvision", lambda: asked.append(True) or False)
    try:
        import torchvision  # noqa: F401

        pytest.skip("torchvision is installed here, so TransformerLens does not ask for it")
    except ImportError:
        pass
    TransformerBridge.boot_transformers(str(tiny_pair("gemma3-multimodal").pt), device="cpu")
    assert asked


def test_guard_restores_the_original_function():
    original = helpers._ensure_torchvision
    with no_runtime_installs():
        assert helpers._ensure_torchvision() is False
    assert helpers._ensure_torchvision is original
