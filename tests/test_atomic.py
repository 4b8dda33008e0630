"""The one atomic writer API: path first, folders created, never a half-written file."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from difflens import atomic
from difflens.atomic import (TMP_MARKER, atomic_save_npy, atomic_save_tensors, atomic_write_bytes, atomic_write_json,
                             remove_temporaries)


def test_writers_take_the_path_first_and_create_its_folder(tmp_path):
    atomic_write_json(tmp_path / "a" / "b.json", {"x": [1, 2]})
    assert json.loads((tmp_path / "a" / "b.json").read_text()) == {"x": [1, 2]}
    atomic_save_tensors(tmp_path / "t" / "w.safetensors", {"w": torch.arange(3.0).requires_grad_()}, {"kind": "k"})
    assert torch.equal(load_file(tmp_path / "t" / "w.safetensors")["w"], torch.arange(3.0))
    atomic_save_npy(tmp_path / "n" / "a.npy", np.eye(2))
    assert np.array_equal(np.load(tmp_path / "n" / "a.npy"), np.eye(2))


def test_a_failed_write_keeps_the_old_file_and_leaves_a_temporary_to_clean(tmp_path, monkeypatch):
    path = tmp_path / "f.json"
    atomic_write_json(path, {"v": 1})

    def killed(*args):
        raise KeyboardInterrupt("killed before the rename")

    monkeypatch.setattr(atomic.os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        atomic_write_bytes(path, b"half")
    monkeypatch.undo()
    assert json.loads(path.read_text()) == {"v": 1}
    assert any(TMP_MARKER in p.name for p in tmp_path.iterdir())
    assert remove_temporaries(tmp_path) == 1 and [p.name for p in tmp_path.iterdir()] == ["f.json"]


def test_there_is_one_atomic_json_writer():
    import difflens.dictionaries.io as io

    assert not hasattr(io, "atomic_save_file")
    assert io.atomic_write_json is atomic_write_json


def test_safetensors_metadata_is_written_in_key_order(tmp_path):
    """The same tensors and metadata give the same bytes in every process (safetensors keeps metadata in a hash map
    of random order; a resumed run must write the uninterrupted run's very file)."""
    from safetensors import safe_open

    path = tmp_path / "x.safetensors"
    atomic_save_tensors(path, {"b": torch.ones(3), "a": torch.zeros(2, 2)}, metadata={"z": "1", "a": "é", "m": "3"})
    data = path.read_bytes()
    assert data[8:].startswith('{"__metadata__":{"a":"é","m":"3","z":"1"}'.encode())
    with safe_open(str(path), framework="pt") as f:
        assert f.metadata() == {"z": "1", "a": "é", "m": "3"} and torch.equal(f.get_tensor("b"), torch.ones(3))
