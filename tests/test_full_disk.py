"""Full disks (issue 25, item 3): a write that runs out of space names the path and what was being written, leaves
the previous state intact, and a rerun after space is freed completes — for the activation store (shards,
store.json), checkpoints, the feature index and the autointerp cache. Each writer is tried on a real full
filesystem: a 4 MiB tmpfs mounted for the test (skipped where mounting is not permitted), filled to the last page."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

import difflens as dl
from difflens.atomic import TMP_MARKER, DiskFullError, atomic_write_bytes, atomic_write_json
from difflens.checkpoint import load_checkpoint, save_checkpoint
from stores import SITE, make_site_store, synthetic_acts


class SmallDisk:
    """A mounted tmpfs at `root`; `fill(leave)` takes every free byte but `leave`, `free()` gives them back."""

    def __init__(self, root: Path):
        self.root = root
        self.filler = root / "filler.bin"

    def fill(self, leave: int = 0) -> None:
        reserve = self.root / "reserve.bin"
        reserve.write_bytes(b"\0" * leave)
        block = b"\0" * (1 << 16)
        with open(self.filler, "ab", buffering=0) as f:  # unbuffered: each write reaches the disk or fails now
            try:
                while f.write(block):
                    pass
            except OSError:
                pass
            try:
                while f.write(b"\0"):  # the last partial page
                    pass
            except OSError:
                pass
        reserve.unlink()

    def free(self) -> None:
        self.filler.unlink(missing_ok=True)


@pytest.fixture
def disk(tmp_path):
    root = tmp_path / "disk"
    root.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(root)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here ({done.stderr.strip() or 'mount failed'}): needs root")
    try:
        yield SmallDisk(root)
    finally:
        subprocess.run(["umount", "-l", str(root)], check=False)


def temporaries(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if TMP_MARKER in p.name]


def test_a_full_disk_names_what_and_where_and_keeps_the_old_file(disk):
    path = disk.root / "results" / "summary.json"
    atomic_write_json(path, {"v": 1})
    disk.fill()
    with pytest.raises(DiskFullError) as caught:
        atomic_write_bytes(path, b"x" * 200_000, what="the summary")
    assert str(caught.value).startswith(f"no space left on device while writing the summary to {path}")
    assert isinstance(caught.value, OSError) and caught.value.path == path
    assert json.loads(path.read_text()) == {"v": 1} and not temporaries(disk.root)
    disk.free()
    atomic_write_bytes(path, b"x" * 200_000, what="the summary")
    assert path.stat().st_size == 200_000


def test_a_file_size_limit_gives_the_same_error(tmp_path):
    """RLIMIT_FSIZE (Python ignores SIGXFSZ, so the write fails with EFBIG): the same error, in a subprocess."""
    script = textwrap.dedent(f"""
        import resource
        from difflens.atomic import DiskFullError, atomic_write_bytes
        resource.setrlimit(resource.RLIMIT_FSIZE, (10_000, 10_000))
        try:
            atomic_write_bytes({str(tmp_path / "big.bin")!r}, b"x" * 50_000, what="a big file")
        except DiskFullError as err:
            print(err)
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60,
                         env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert f"no space left on device (file size limit) while writing a big file to {tmp_path / 'big.bin'}" in out.stdout, out
    assert not list(tmp_path.iterdir())


def test_a_capture_that_runs_out_of_space_resumes_once_space_is_freed(disk):
    acts = {SITE: synthetic_acts(64, 64, 0)}  # a 128 KiB shard
    root = disk.root / "store"
    disk.fill()
    with pytest.raises(DiskFullError, match=f"while writing (capture config|prompts file) to {root}"):
        make_site_store(root, acts)
    disk.free()
    make_site_store(root, acts)  # the rerun: the store is made
    root_full = disk.root / "store2"
    from difflens.store import StoreWriter

    StoreWriter(root_full).prepare({"model": "synthetic"}, [{"image_id": i, "prompt": f"p{i}", "seed": i} for i in range(64)])
    disk.fill()
    with pytest.raises(DiskFullError, match=f"while writing activation shard to {root_full}/sites/.*chunk-000000.acts.npy"):
        make_site_store(root_full, acts)
    assert not (root_full / "store.json").exists() and not temporaries(root_full)
    disk.free()
    (disk.root / "store").rename(disk.root / "spare")  # space for the rerun
    make_site_store(root_full, acts)
    rows = dl.open_store(root_full).reader(SITE, 0)
    rows.verify()
    assert rows.num_rows == 64 * 16


def test_store_json_stays_intact_when_rewriting_it_runs_out_of_space(disk):
    root = make_site_store(disk.root / "store", {SITE: synthetic_acts(8, 16, 0)})
    store = dl.open_store(root)
    before = (root / "store.json").read_bytes()
    disk.fill()
    with pytest.raises(DiskFullError, match=f"while writing store manifest to {root / 'store.json'}"):
        store.set_holdout(0.25)
    assert (root / "store.json").read_bytes() == before and not temporaries(root)
    disk.free()
    assert dl.open_store(root).set_holdout(0.25)["image_ids"]
    assert dl.open_store(root).holdout["fraction"] == 0.25


def test_a_checkpoint_that_runs_out_of_space_keeps_the_previous_one(disk):
    pointer = disk.root / "train" / "checkpoint.json"
    save_checkpoint(pointer, 1, {"model.w": torch.ones(1000)}, {"settings": {"k": 4}})
    disk.fill()
    with pytest.raises(DiskFullError, match=f"while writing checkpoint tensors of step 2 to {pointer.parent}"):
        save_checkpoint(pointer, 2, {"model.w": torch.full((1000,), 2.0)}, {"settings": {"k": 4}})
    tensors, info = load_checkpoint(pointer)
    assert info["step"] == 1 and torch.equal(tensors["model.w"], torch.ones(1000))
    disk.free()
    save_checkpoint(pointer, 2, {"model.w": torch.full((1000,), 2.0)}, {"settings": {"k": 4}})
    tensors, info = load_checkpoint(pointer)
    assert info["step"] == 2 and torch.equal(tensors["model.w"], torch.full((1000,), 2.0))
    assert sorted(p.name for p in pointer.parent.iterdir()) == ["checkpoint-000000002.safetensors", "checkpoint.json"]


def test_a_feature_index_that_runs_out_of_space_is_rebuilt_by_a_rerun(disk, site_store):
    from difflens.dictionaries import SAEConfig, TopKSAE

    sae = TopKSAE(16, SAEConfig(num_latents=512, k=4, normalization="none"), seed=0)
    sae.meta = {"site": SITE, "step": 0}
    out = disk.root / "index"
    settings = dict(steps=[0], top_n=4, samples=4, quantile_bins=2, batch_images=32)
    disk.fill()
    with pytest.raises(DiskFullError, match=f"while writing output lock to {disk.root / '.index.lock'}"):
        dl.feature_index(sae, site_store, out=out, **settings)
    assert not (disk.root / ".index.lock").exists()  # no empty lock left to block the rerun
    disk.free()
    disk.fill(leave=8192)  # room for the lock, not for the index
    with pytest.raises(DiskFullError, match=f"while writing feature index to {out / 'index.safetensors'}"):
        dl.feature_index(sae, site_store, out=out, **settings)
    assert not temporaries(disk.root)
    disk.free()
    index = dl.feature_index(sae, site_store, out=out, **settings)
    assert dl.load_index(out).header["complete"] and index.header["complete"]


def test_an_autointerp_cache_write_that_runs_out_of_space_is_named_and_redone(disk, monkeypatch):
    from chat_stub import ChatServer

    from difflens.interpret.vlm import VLMClient, VLMConfig, VLMRequest

    monkeypatch.setenv("DIFFLENS_TEST_VLM_KEY", "sk-test")
    server = ChatServer()
    try:
        config = VLMConfig(base_url=server.url, model="test-vlm", api_key_env="DIFFLENS_TEST_VLM_KEY", max_retries=0)
        request = [VLMRequest("explain/1", "You explain features.", "what is shared?", [np.zeros((8, 8, 3), np.uint8)])]
        client = VLMClient(config, disk.root / "cache")
        (disk.root / "cache").mkdir()
        disk.fill()
        with pytest.raises(DiskFullError, match=f"while writing autointerp cache entry to {client.cache_path(request[0])}"):
            client.run(request)
        assert not list((disk.root / "cache").iterdir())
        disk.free()
        (answer,) = VLMClient(config, disk.root / "cache").run(request)
        (cached,) = VLMClient(config, disk.root / "cache").run(request)
    finally:
        server.close()
    assert answer.ok and not answer.cached and cached.cached and cached.content == answer.content


def test_the_command_line_prints_a_full_disk_as_one_line(tmp_path, capsys):
    import argparse
    import errno

    from difflens.configs import run_parser

    def full(args):
        raise DiskFullError(tmp_path / "store.json", "store manifest", OSError(errno.ENOSPC, "No space left on device"))

    parser = argparse.ArgumentParser()
    parser.add_subparsers(dest="command").add_parser("capture").set_defaults(func=full)
    assert run_parser(parser, ["capture"]) == 2
    err = capsys.readouterr().err
    assert err == (f"difflens capture: error: no space left on device while writing store manifest to "
                   f"{tmp_path / 'store.json'}; free some space and rerun: finished work is kept\n")
