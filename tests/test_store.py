"""Activation store: round trip, traceability, exactly-once shuffled reading, corruption errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from difflens.store import ActivationStore, ChunkRows, EntrySpec, StoreWriter

GRID = (4, 4)
DIM = 8


def _acts(image_id: int, n_tok: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(image_id)
    return torch.randn(n_tok, DIM, generator=g) * 3


def make_store(root, n_chunks=5, images_per_chunk=3, dtype="float16", finalize=True):
    """A synthetic store: one image-stream site at steps 0 and 2, 16 tokens per image."""
    w = StoreWriter(root, dtype=dtype)
    w.prepare({"model": "synthetic", "n": n_chunks}, [{"image_id": i, "prompt": f"p{i}", "seed": i} for i in range(n_chunks * images_per_chunk)])
    n_tok = GRID[0] * GRID[1]
    for c in range(n_chunks):
        ids = list(range(c * images_per_chunk, (c + 1) * images_per_chunk))
        rows = {}
        for step in (0, 2):
            acts = torch.cat([_acts(i + 100 * step, n_tok) for i in ids])
            rows[("double.1.img.out", step)] = ChunkRows(acts, np.repeat(ids, n_tok), np.tile(np.arange(n_tok), len(ids)))
        imgs = np.stack([np.full((8, 8, 3), i, np.uint8) for i in ids])
        w.write_chunk(c, ids, imgs, rows)
    entries = [EntrySpec("double.1.img.out", s, DIM, "image", n_tok, GRID) for s in (0, 2)]
    if finalize:
        w.finalize(entries, n_chunks, {"model": "synthetic", "n_images": n_chunks * images_per_chunk, "prompts_hash": "x"})
    return w


def test_round_trip_and_trace(tmp_path):
    make_store(tmp_path)
    store = ActivationStore.open(tmp_path)
    assert store.entries() == [("double.1.img.out", 0), ("double.1.img.out", 2)]
    r = store.reader("double.1.img.out", 2)
    assert (r.dim, r.num_rows, r.dtype) == (DIM, 15 * 16, torch.float16)
    rows = torch.tensor([0, 17, 239, 100])
    tr = r.trace(rows)
    assert tr["image_id"].tolist() == [0, 1, 14, 6]
    assert tr["token_index"].tolist() == [0, 1, 15, 4]
    assert tr["token_row"].tolist() == [0, 0, 3, 1] and tr["token_col"].tolist() == [0, 1, 3, 0]
    assert (tr["step"] == 2).all() and (tr["stream"] == "image").all()
    # values: row -> the activation written for (image, token), at fp16 precision
    got = r.read_rows(rows)
    want = torch.stack([_acts(int(i) + 200, 16)[int(t)] for i, t in zip(tr["image_id"], tr["token_index"])])
    torch.testing.assert_close(got, want.half().float())
    assert store.image_info(6)["prompt"] == "p6"
    assert (store.load_image(6) == 6).all()
    store.verify()
    assert "double.1.img.out" in store.describe()


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_in_order_reading_matches_read_rows(tmp_path, dtype):
    make_store(tmp_path, dtype=dtype)
    r = ActivationStore.open(tmp_path).reader("double.1.img.out", 0)
    batches = list(r.iter_batches(50, shuffle=False))
    ids = torch.cat([b[1] for b in batches])
    assert ids.tolist() == list(range(r.num_rows))
    assert [len(b[1]) for b in batches] == [50] * 4 + [40]
    acts = torch.cat([b[0] for b in batches])
    assert acts.dtype == torch.float32
    torch.testing.assert_close(acts, r.read_rows(torch.arange(r.num_rows)))


@pytest.mark.parametrize("buffer_bytes", [1, 64 * DIM * 2, 1 << 20])
def test_shuffled_reader_every_row_once_per_epoch(tmp_path, buffer_bytes):
    make_store(tmp_path)
    r = ActivationStore.open(tmp_path).reader("double.1.img.out", 0)
    seen = []
    for epoch in (0, 1):
        ids = torch.cat([i for _, i in r.iter_batches(32, seed=3, epoch=epoch, buffer_bytes=buffer_bytes)])
        assert sorted(ids.tolist()) == list(range(r.num_rows))
        seen.append(ids)
        # batches carry the right rows for their ids
        acts, bid = next(iter(r.iter_batches(32, seed=3, epoch=epoch, buffer_bytes=buffer_bytes)))
        torch.testing.assert_close(acts, r.read_rows(bid))
    assert not torch.equal(seen[0], seen[1])  # different epochs, different order
    again = torch.cat([i for _, i in r.iter_batches(32, seed=3, epoch=0, buffer_bytes=buffer_bytes)])
    assert torch.equal(again, seen[0])  # deterministic
    assert not torch.equal(seen[0], torch.arange(r.num_rows))  # actually shuffled


def test_drop_last_and_ranks(tmp_path):
    make_store(tmp_path)
    r = ActivationStore.open(tmp_path).reader("double.1.img.out", 0)
    sizes = [len(i) for _, i in r.iter_batches(64, drop_last=True)]
    assert sizes == [64, 64, 64]
    parts = [torch.cat([i for _, i in r.iter_batches(16, seed=1, rank=k, world_size=2)]) for k in (0, 1)]
    allids = torch.cat(parts)
    assert sorted(allids.tolist()) == list(range(r.num_rows))


def test_truncated_shard_error_names_file(tmp_path):
    make_store(tmp_path)
    shard = tmp_path / "sites/double.1.img.out/step-000/chunk-000002.acts.npy"
    data = shard.read_bytes()
    shard.write_bytes(data[:-10])
    store = ActivationStore.open(tmp_path)
    with pytest.raises(ValueError, match="chunk-000002.acts.npy.*truncated"):
        store.reader("double.1.img.out", 0)
    store.reader("double.1.img.out", 2)  # the other entry is fine


def test_corrupt_header_and_flipped_bytes(tmp_path):
    make_store(tmp_path)
    d = tmp_path / "sites/double.1.img.out/step-000"
    (d / "chunk-000001.trace.npy").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="chunk-000001.trace.npy"):
        ActivationStore.open(tmp_path).reader("double.1.img.out", 0)
    shard = tmp_path / "sites/double.1.img.out/step-002/chunk-000003.acts.npy"
    data = bytearray(shard.read_bytes())
    data[-3] ^= 0xFF
    shard.write_bytes(bytes(data))
    r = ActivationStore.open(tmp_path).reader("double.1.img.out", 2)
    with pytest.raises(ValueError, match="chunk-000003.acts.npy.*checksum"):
        r.verify()


def test_missing_and_mismatched_manifests(tmp_path):
    with pytest.raises(FileNotFoundError, match="store.json"):
        ActivationStore.open(tmp_path)
    make_store(tmp_path, finalize=False)
    with pytest.raises(FileNotFoundError, match="rerun the same"):
        ActivationStore.open(tmp_path)

    other = tmp_path / "b"
    make_store(other)
    m = other / "sites/double.1.img.out/step-000/manifest.json"
    meta = json.loads(m.read_text())
    meta["model"] = "something-else"
    m.write_text(json.dumps(meta))
    store = ActivationStore.open(other)
    with pytest.raises(ValueError, match="manifest.json does not match.*model"):
        store.reader("double.1.img.out", 0)
    meta["model"], meta["dim"] = "synthetic", DIM + 1
    m.write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="chunk-000000.acts.npy has 8 columns but the manifest says 9"):
        store.reader("double.1.img.out", 0)
    m.write_text("{not json")
    with pytest.raises(ValueError, match="corrupt site manifest .*manifest.json"):
        store.reader("double.1.img.out", 0)
    with pytest.raises(ValueError, match="no activations for site 'nope'"):
        store.reader("nope", 0)


def test_resume_cleans_orphans_and_refuses_other_settings(tmp_path):
    w = make_store(tmp_path, finalize=False)
    # a killed run: an orphan shard without ledger marker and a temporary file
    (tmp_path / "done/chunk-000004.json").unlink()
    (tmp_path / "sites/double.1.img.out/step-000/chunk-000005.acts.npy.tmp-123").write_bytes(b"x")
    w2 = StoreWriter(tmp_path)
    w2.prepare({"model": "synthetic", "n": 5}, [])
    assert w2.completed_chunks() == {0, 1, 2, 3}
    left = sorted(p.name for p in (tmp_path / "sites/double.1.img.out/step-000").iterdir())
    assert left == [f"chunk-00000{c}.{k}.npy" for c in range(4) for k in ("acts", "trace")]
    with pytest.raises(ValueError, match="capture.json was written by a capture with different settings \\(n\\)"):
        StoreWriter(tmp_path).prepare({"model": "synthetic", "n": 6}, [])
    with pytest.raises(ValueError, match="chunk 4 is not done"):
        w.finalize([EntrySpec("double.1.img.out", 0, DIM, "image", 16, GRID)], 5, {"model": "synthetic"})


def test_fp16_overflow_is_a_clear_error(tmp_path):
    w = StoreWriter(tmp_path, dtype="float16")
    w.prepare({"model": "m"}, [])
    big = torch.full((2, DIM), 1e6)
    with pytest.raises(ValueError, match="overflow float16.*bfloat16"):
        w.write_chunk(0, [0], None, {("s", 0): ChunkRows(big, np.zeros(2), np.arange(2))})
    with pytest.raises(ValueError, match="unsupported store dtype"):
        StoreWriter(tmp_path, dtype="int8")
