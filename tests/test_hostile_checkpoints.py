"""Damaged and cluttered checkpoint folders for weight-change (issue 21, item 12): exactly
the files a model loads are read, and every damage is a HooklabError naming the file."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from hooklab.errors import HooklabError
from hooklab.mechanism.weight_change import checkpoint_tensors, weight_change


@pytest.fixture()
def folders(tiny_pair, tmp_path):
    """A tiny PT checkpoint and a copy of it (IT), both writable."""
    tiny = tiny_pair("llama")
    pt, it = tmp_path / "pt", tmp_path / "it"
    shutil.copytree(tiny.pt, pt)
    shutil.copytree(tiny.pt, it)
    return pt, it


def _shard(folder) -> None:
    """Rewrite ``folder``'s weights as two shards with an index."""
    state = load_file(folder / "model.safetensors")
    (folder / "model.safetensors").unlink()
    names = sorted(state)
    halves = {"model-00001-of-00002.safetensors": names[::2]}
    halves["model-00002-of-00002.safetensors"] = names[1::2]
    weight_map = {}
    for file, part in halves.items():
        save_file({n: state[n] for n in part}, folder / file, metadata={"format": "pt"})
        weight_map.update({n: file for n in part})
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))


def test_a_stray_override_file_is_not_measured(folders):
    pt, it = folders
    state = load_file(it / "model.safetensors")
    save_file({k: v * 70 for k, v in state.items()}, it / "zz-override.safetensors")
    frame = weight_change(pt, it)
    assert (frame["rel_change"] == 0).all()  # the weights the model loads did not change
    _shard(it)
    assert (weight_change(pt, it)["rel_change"] == 0).all()


def test_a_stray_truncated_file_is_ignored_and_a_truncated_weights_file_named(folders):
    pt, it = folders
    data = (it / "model.safetensors").read_bytes()
    (it / "stray.safetensors").write_bytes(data[: len(data) // 2])
    assert (weight_change(pt, it)["rel_change"] == 0).all()
    (it / "model.safetensors").write_bytes(data[:-50])
    with pytest.raises(HooklabError, match=r"model.safetensors: not a readable safetensors"):
        weight_change(pt, it)


@pytest.mark.parametrize(
    "index",
    ["{not json", "[]", '{"metadata": {}}', '{"weight_map": [1]}', '{"weight_map": {"a": 3}}'],
)
def test_a_malformed_index_is_named(folders, index):
    pt, it = folders
    _shard(it)
    (it / "model.safetensors.index.json").write_text(index)
    with pytest.raises(HooklabError, match=r"model.safetensors.index.json"):
        checkpoint_tensors(it)


def test_an_index_naming_a_missing_shard_or_tensor_is_named(folders):
    pt, it = folders
    _shard(it)
    (it / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(HooklabError, match=r"names the shard model-00002-of-00002"):
        weight_change(pt, it)
    _shard(pt)
    index = json.loads((pt / "model.safetensors.index.json").read_text())
    index["weight_map"]["model.made_up.weight"] = "model-00001-of-00002.safetensors"
    (pt / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(HooklabError, match=r"model.made_up.weight"):
        checkpoint_tensors(pt)


def test_an_index_cannot_point_outside_its_folder(folders, tmp_path):
    pt, it = folders
    _shard(it)
    index = json.loads((it / "model.safetensors.index.json").read_text())
    save_file({"x": torch.ones(1)}, tmp_path / "outside.safetensors")
    index["weight_map"] = {k: "../outside.safetensors" for k in index["weight_map"]}
    (it / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(HooklabError, match="same folder"):
        checkpoint_tensors(it)


def test_a_folder_with_only_other_safetensors_is_refused(folders):
    pt, it = folders
    (it / "model.safetensors").rename(it / "weights.safetensors")
    with pytest.raises(HooklabError, match=r"no model.safetensors.*only weights.safetensors"):
        weight_change(pt, it)
