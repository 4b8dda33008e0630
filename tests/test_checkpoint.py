"""One checkpoint format for every trainer: pointer + tensors, optimizer and RNG state, older layouts still read."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from difflens.checkpoint import (checkpoint_info, load_checkpoint, load_latest, load_optimizer_tensors,
                                 optimizer_tensors, restore_rng, rng_tensors, save_checkpoint, strip, with_prefix)


def _adam():
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    return model, opt


def test_round_trip_restores_weights_optimizer_and_rng(tmp_path):
    model, opt = _adam()
    pointer = tmp_path / "ckpt" / "latest.json"
    state = {**with_prefix(model.state_dict(), "model."), **optimizer_tensors(opt)}
    save_checkpoint(pointer, 5, state, {"a": 1})
    save_checkpoint(pointer, 6, state, {"a": 2})
    expected = torch.rand(3)  # the first draw after the step-6 checkpoint
    torch.rand(5)
    assert sorted(p.name for p in pointer.parent.iterdir()) == ["latest-000000006.safetensors", "latest.json"]
    tensors, info = load_checkpoint(pointer)
    assert info["step"] == 6 and info["a"] == 2 and checkpoint_info(pointer)["step"] == 6
    restore_rng(tensors)
    assert torch.equal(torch.rand(3), expected)
    fresh, fresh_opt = _adam()
    fresh.load_state_dict(strip(tensors, "model."))
    load_optimizer_tensors(fresh_opt, tensors)
    assert torch.equal(fresh.weight, model.weight)
    for key, value in opt.state_dict()["state"][0].items():
        assert torch.equal(fresh_opt.state_dict()["state"][0][key], value), key
    assert set(load_checkpoint(pointer, prefixes=("model.",))[0]) == {"model.weight", "model.bias"}
    assert load_latest(tmp_path / "none.json") is None


def test_the_dictionaries_earlier_layout_still_loads_with_renamed_optimizer_tensors(tmp_path):
    folder = tmp_path / "checkpoint-000000010"
    folder.mkdir()
    save_file({"model.w": torch.ones(2), "opt.0.exp_avg": torch.zeros(2), **rng_tensors()},
              str(folder / "state.safetensors"))
    (folder / "state.json").write_text(json.dumps({"step": 10, "settings": {"k": 4}}))
    (tmp_path / "latest.json").write_text(json.dumps({"checkpoint": folder.name}))
    tensors, info = load_checkpoint(tmp_path / "latest.json")
    assert info == {"step": 10, "settings": {"k": 4}}
    assert set(tensors) >= {"model.w", "optim.0.exp_avg", "rng.cpu"} and "opt.0.exp_avg" not in tensors


def test_an_unreadable_checkpoint_is_named(tmp_path):
    pointer = tmp_path / "latest.json"
    pointer.write_text("{not json")
    with pytest.raises(ValueError, match=f"corrupt checkpoint {pointer}: not valid JSON"):
        load_checkpoint(pointer)
    pointer.write_text(json.dumps({"format": 99, "tensors": "x"}))
    with pytest.raises(ValueError, match="unknown checkpoint format 99"):
        checkpoint_info(pointer)


def test_trim_log_keeps_the_steps_up_to_the_checkpoint_and_drops_a_torn_line(tmp_path):
    from difflens.checkpoint import trim_log

    log = tmp_path / "train_log.jsonl"
    log.write_text("".join(json.dumps({"step": s, "fvu": 0.5}) + "\n" for s in (5, 10, 15, 20)) + '{"step": 2')
    trim_log(log, 10)
    assert [json.loads(line)["step"] for line in log.read_text().splitlines()] == [5, 10]
    trim_log(tmp_path / "missing.jsonl", 3)  # no log yet: nothing to do
    assert not (tmp_path / "missing.jsonl").exists()
