"""Hostile direction files and α grids (issue 21, items 10 and 11): every damaged or
meaningless file is refused by name before a model loads, never a raw traceback."""

# ruff: noqa: ARG001 - each damage function takes both files of a direction

from __future__ import annotations

import json
import struct

import pytest
import torch

from hooklab.cli import main
from hooklab.errors import HooklabError
from hooklab.steering import Directions, load_directions, save_directions

D_MODEL = 8


def _directions(vectors: torch.Tensor) -> Directions:
    return Directions(
        vectors=vectors,
        layers=tuple(range(vectors.shape[0])),
        hook="mlp_out",
        source="mean",
        models={},
        fingerprints={},
        n_prompts=1,
        n_tokens=1,
    )


def _unit(n: int = 2) -> torch.Tensor:
    return torch.nn.functional.normalize(torch.randn(n, D_MODEL), dim=-1)


def test_a_unit_direction_file_loads(tmp_path):
    vectors = _unit()
    vectors[1] = 0  # a layer without a direction
    save_directions(_directions(vectors), tmp_path / "d")
    assert torch.equal(load_directions(tmp_path / "d").vectors, vectors)


@pytest.mark.parametrize(
    "vectors, match",
    [
        (torch.full((2, D_MODEL), float("nan")), "NaN or inf"),
        (torch.full((2, D_MODEL), float("inf")), "NaN or inf"),
        (torch.zeros(2, D_MODEL), "at least one direction"),
        (_unit() * 1000, "unit rows"),
    ],
    ids=["nan", "inf", "zeros", "x1000"],
)
def test_meaningless_directions_are_refused(tmp_path, vectors, match):
    save_directions(_directions(vectors), tmp_path / "d")
    with pytest.raises(HooklabError, match=match):
        load_directions(tmp_path / "d")


def _saved(tmp_path):
    save_directions(_directions(_unit()), tmp_path / "d")
    return tmp_path / "d.safetensors", tmp_path / "d.json"


def _truncated(tensors, sidecar):
    tensors.write_bytes(tensors.read_bytes()[:-20])


def _huge_header(tensors, sidecar):
    tensors.write_bytes(struct.pack("<Q", 2**62) + b"{}")


def _garbage_header(tensors, sidecar):
    body = b"not json at all!"
    tensors.write_bytes(struct.pack("<Q", len(body)) + body)


def _sidecar_list(tensors, sidecar):
    sidecar.write_text("[1, 2]")


def _sidecar_without_hook(tensors, sidecar):
    meta = json.loads(sidecar.read_text())
    del meta["hook"]
    sidecar.write_text(json.dumps(meta))


def _save_raw(tensors, **values):
    from safetensors.torch import save_file

    save_file(values, str(tensors))


def _one_dimensional(tensors, sidecar):
    _save_raw(tensors, directions=torch.ones(D_MODEL), layers=torch.tensor([0, 1]))


def _int32(tensors, sidecar):
    _save_raw(
        tensors,
        directions=torch.ones(2, D_MODEL, dtype=torch.int32),
        layers=torch.tensor([0, 1]),
    )


def _no_layers(tensors, sidecar):
    _save_raw(tensors, directions=_unit())


@pytest.mark.parametrize(
    "damage",
    [
        _truncated,
        _huge_header,
        _garbage_header,
        _sidecar_list,
        _sidecar_without_hook,
        _one_dimensional,
        _int32,
        _no_layers,
    ],
)
def test_damaged_direction_files_raise_a_hooklab_error(tmp_path, damage):
    tensors, sidecar = _saved(tmp_path)
    damage(tensors, sidecar)
    with pytest.raises(HooklabError, match=r"path=.*d"):
        load_directions(tmp_path / "d")


def _steer(tmp_path, *options):
    args = ["steer", "--pair", "tiny", "--device", "cpu", "--out", str(tmp_path / "run")]
    return main([*args, *options, "--dry-run"])


def test_steer_refuses_a_damaged_direction_file_before_models_load(tmp_path, capsys, monkeypatch):
    import hooklab.runs.spec

    tensors, sidecar = _saved(tmp_path)
    _truncated(tensors, sidecar)

    def no_loading(*args, **kwargs):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(hooklab.runs.spec.PairSpec, "load", no_loading)
    assert _steer(tmp_path, "--directions", str(tmp_path / "d")) == 2
    err = capsys.readouterr().err
    assert "d.safetensors" in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("alphas", ["nan,1", "0,inf", "-inf"])
def test_non_finite_alphas_are_refused(tmp_path, capsys, alphas):
    assert _steer(tmp_path, "--alphas", alphas) == 2
    assert "finite" in capsys.readouterr().err
