from __future__ import annotations

import doctest

import pytest

from hooklab import hooks


def test_doctests():
    assert doctest.testmod(hooks).failed == 0


def test_names():
    assert hooks.resid_post(3) == "blocks.3.hook_resid_post"
    assert hooks.mlp_out(0) == "blocks.0.hook_mlp_out"
    with pytest.raises(ValueError, match="not a per-block hook"):
        hooks.layer_of("hook_embed")
