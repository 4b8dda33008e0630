"""Corrupt and truncated files of every format difflens reads (issue 25, item 4): each is truncated, garbled or
emptied in a tiny run folder; reading it gives a named error (a ValueError whose message names the file, what is
wrong and what to do), never a raw traceback or a silently wrong result, and a cache found corrupt is rebuilt,
saying so on stderr."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import difflens as dl
from difflens.checkpoint import load_checkpoint, save_checkpoint
from difflens.interpret.autointerp import AutointerpConfig, run_autointerp
from difflens.interpret.labels import token_labels
from difflens.interpret.truth import write_truth
from difflens.reading import CorruptFileError
from difflens.store import StoreWriter
from runs import IMG, build_run

SITE_DIR = f"store/sites/{IMG}/step-001"
CHECKPOINT = "train/checkpoint.json"
ORACLE = AutointerpConfig(backend="oracle", features="4")


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def garble(path: Path) -> None:
    """Overwrite the first 64 bytes (the JSON's opening, the safetensors / .npy header) with junk."""
    data = bytearray(path.read_bytes())
    junk = bytes((7 * i + 0x80) % 256 for i in range(64))
    data[: len(junk)] = junk[: len(data)]
    path.write_bytes(bytes(data))


def empty(path: Path) -> None:
    path.write_bytes(b"")


DAMAGES = {"truncated": truncate, "garbled": garble, "empty": empty}


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> Path:
    """A tiny demo-like run with a labels cache, a training checkpoint and real oracle autointerp results (build_run
    writes them by hand, without the settings a rerun compares); never damaged itself."""
    run = build_run(tmp_path_factory.mktemp("corrupt") / "run")
    run_autointerp(_index(run), ORACLE, overwrite=True)
    token_labels(run / "store")
    save_checkpoint(run / CHECKPOINT, 3, {"model.w": torch.arange(4.0)}, {"settings": {"k": 4}})
    return run


@pytest.fixture
def run(pristine, tmp_path) -> Path:
    return Path(shutil.copytree(pristine, tmp_path / "run", symlinks=True))


def _sae(run, pristine):
    return dl.load_dictionary(run / "dictionaries" / "sae")


def _checkpoint(run, pristine):
    return load_checkpoint(run / CHECKPOINT)


def _index(run, pristine=None):
    return dl.load_index(run / "dictionaries" / "sae" / "index")


def _store_reader(run, pristine):
    dl.open_store(run / "store").reader(IMG, 1).verify()


# format -> (the file inside the run, the reader that must name it)
NAMED = {
    "cfg.json": ("dictionaries/sae/cfg.json", _sae),
    "SAE weights": ("dictionaries/sae/sae.safetensors", _sae),
    "ITDA weights": ("dictionaries/itda/itda.safetensors", lambda run, _: dl.load_dictionary(run / "dictionaries" / "itda")),
    "normaliser": ("dictionaries/sae/normalizer.safetensors", _sae),
    "index.safetensors": ("dictionaries/sae/index/index.safetensors", _index),
    "checkpoint pointer": (CHECKPOINT, _checkpoint),
    "checkpoint tensors": ("train/checkpoint-000000003.safetensors", _checkpoint),
    "store.json": ("store/store.json", lambda run, _: dl.open_store(run / "store")),
    "prompts.json": ("store/prompts.json", lambda run, _: dl.open_store(run / "store").prompts()),
    "capture.json": ("store/capture.json", lambda run, pristine: StoreWriter(run / "store").check_config(
        json.loads((pristine / "store" / "capture.json").read_text()))),
    "site manifest": (f"{SITE_DIR}/manifest.json", _store_reader),
    "activation shard": (f"{SITE_DIR}/chunk-000000.acts.npy", _store_reader),
    "trace shard": (f"{SITE_DIR}/chunk-000000.trace.npy", _store_reader),
    "truth.json": ("dictionaries/sae/truth.json",
                   lambda run, pristine: write_truth(json.loads((pristine / "dictionaries" / "sae" / "truth.json").read_text()),
                                                     run / "dictionaries" / "sae" / "truth.json")),
    "autointerp results": ("dictionaries/sae/index/autointerp/oracle/results.json",
                           lambda run, _: run_autointerp(_index(run), ORACLE)),
}


@pytest.mark.parametrize("damage", DAMAGES)
@pytest.mark.parametrize("fmt", NAMED)
def test_a_damaged_file_gets_a_named_error(pristine, run, fmt, damage):
    relative, read = NAMED[fmt]
    path = run / relative
    assert path.is_file(), f"the tiny run has no {relative}"
    read(run, pristine)  # the intact file reads
    DAMAGES[damage](path)
    with pytest.raises(ValueError) as caught:
        read(run, pristine)
    message = str(caught.value)
    assert str(path) in message or str(path.resolve()) in message, message
    assert message.startswith(("corrupt", "checkpoint")) or "corrupt" in message, message


@pytest.mark.parametrize("damage", DAMAGES)
def test_a_damaged_previous_result_is_replaced_under_overwrite(run, damage, capsys):
    path = run / "dictionaries" / "sae" / "truth.json"
    report = json.loads(path.read_text())
    DAMAGES[damage](path)
    write_truth(report, path, overwrite=True)
    assert json.loads(path.read_text())["latents"] == report["latents"]
    assert f"replacing corrupt ground-truth report {path}" in capsys.readouterr().err


@pytest.mark.parametrize("damage", DAMAGES)
def test_a_damaged_labels_cache_is_rebuilt_saying_so(pristine, run, damage, capsys):
    (cache,) = (run / "store" / "labels").glob("*.safetensors")
    want = token_labels(pristine / "store")
    DAMAGES[damage](cache)
    capsys.readouterr()
    got = token_labels(run / "store")
    assert f"rebuilding the corrupt labels cache {cache}" in capsys.readouterr().err
    assert np.array_equal(got.packed, want.packed) and got.concepts == want.concepts
    token_labels(run / "store")  # the rebuilt cache reads without a word
    assert "corrupt" not in capsys.readouterr().err


@pytest.mark.parametrize("damage", DAMAGES)
def test_a_damaged_autointerp_cache_entry_is_asked_again_saying_so(tmp_path, damage, capsys, monkeypatch):
    from chat_stub import ChatServer

    from difflens.interpret.vlm import VLMClient, VLMConfig, VLMRequest

    monkeypatch.setenv("DIFFLENS_TEST_VLM_KEY", "sk-test")
    server = ChatServer()
    try:
        config = VLMConfig(base_url=server.url, model="test-vlm", api_key_env="DIFFLENS_TEST_VLM_KEY", max_retries=0)
        request = [VLMRequest("explain/1", "You explain features.", "what is shared?")]
        client = VLMClient(config, tmp_path / "cache")
        (first,) = client.run(request)
        entry = client.cache_path(request[0])
        DAMAGES[damage](entry)
        capsys.readouterr()
        (again,) = VLMClient(config, tmp_path / "cache").run(request)
    finally:
        server.close()
    assert f"ignoring a corrupt autointerp cache entry {entry}" in capsys.readouterr().err
    assert again.ok and again.content == first.content and not again.cached and len(server.calls) == 2
    assert json.loads(entry.read_text())["content"] == first.content  # rewritten whole


def test_one_error_type_names_file_problem_and_remedy(tmp_path):
    from difflens.reading import read_json, read_safetensors

    path = tmp_path / "x.json"
    path.write_text('{"a": ')
    with pytest.raises(CorruptFileError, match=r"corrupt thing .*x\.json: not valid JSON.*; do this") as caught:
        read_json(path, "thing", hint="do this")
    assert caught.value.path == path and caught.value.what == "thing"
    path.write_text("[1]")
    with pytest.raises(CorruptFileError, match="holds a JSON list, not a dict"):
        read_json(path, "thing", expect=dict)
    with pytest.raises(FileNotFoundError, match="thing not found"):
        read_safetensors(tmp_path / "none.safetensors", "thing")


# files the browser reads when they are there (a run browses without them): a damaged one is named on stderr and the
# rest of the run is shown; (the file inside the run, what the browser shows without it)
BROWSER_OPTIONAL = {
    "truth.json": ("dictionaries/sae/truth.json", lambda run: run.dictionary("sae").truth),
    "autointerp results": ("dictionaries/sae/index/autointerp/oracle/results.json",
                           lambda run: run.dictionary("sae").autointerp.get("oracle")),
    "summary.json": ("summary.json", lambda run: run.summary or None),
}


@pytest.mark.parametrize("damage", DAMAGES)
@pytest.mark.parametrize("fmt", BROWSER_OPTIONAL)
def test_the_browser_names_a_damaged_optional_file_and_shows_the_rest(run, fmt, damage, capsys):
    from difflens.browser.run import Run

    relative, shown = BROWSER_OPTIONAL[fmt]
    assert shown(Run(run)) is not None  # the intact file is shown
    DAMAGES[damage](run / relative)
    capsys.readouterr()
    browsed = Run(run)
    assert shown(browsed) is None
    err = capsys.readouterr().err
    assert "difflens: not showing the corrupt" in err, err
    assert str(run / relative) in err or str((run / relative).resolve()) in err, err
    assert browsed.dictionary("sae").table is not None  # the feature table is still there


@pytest.mark.parametrize("damage", DAMAGES)
def test_a_damaged_embedded_model_config_or_training_config_gets_a_named_error(tmp_path, damage, capsys):
    from difflens.cli import main
    from difflens.embedded.config import ShapesModelConfig
    from difflens.embedded.pipeline import CONFIG_FILE, ShapesPipeline

    weights = tmp_path / "weights"
    ShapesPipeline.random(ShapesModelConfig.tiny()).save_pretrained(weights)
    ShapesPipeline.from_pretrained(weights)  # the intact folder loads
    DAMAGES[damage](weights / CONFIG_FILE)
    with pytest.raises(CorruptFileError, match="corrupt embedded model config .*config.json"):
        ShapesPipeline.from_pretrained(weights)
    train = tmp_path / "train"
    train.mkdir()
    (train / "train_config.json").write_text('{"steps": 1')
    assert main(["world", "ship", str(train)]) == 2
    assert f"corrupt world training config {train / 'train_config.json'}" in capsys.readouterr().err
