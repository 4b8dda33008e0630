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


# -- held-out split ------------------------------------------------------------------------

SITE = "double.1.img.out"


def test_holdout_rule_is_deterministic_exact_and_recorded(tmp_path):
    from difflens.store.split import choose_holdout, holdout_count

    # pinned: the rule must not drift between versions or machines (sha256 of seed and image id)
    assert choose_holdout(20, 0.25, 0)["image_ids"] == [2, 8, 10, 15, 17]
    assert choose_holdout(20, 0.25, 1)["image_ids"] == [3, 4, 9, 10, 14]
    assert [holdout_count(f, n) for f, n in [(0.1, 256), (0.1, 3), (0.1, 2), (0.5, 5), (0.99, 10), (0.3, 1), (0.0, 9)]] == \
        [26, 1, 1, 2, 9, 0, 0]  # round(f * n), at least 1 and at most n - 1 (with >= 2 images)
    for bad in (1.0, -0.1, float("nan"), True, "0.1"):
        with pytest.raises(ValueError, match="holdout fraction must be in \\[0, 1\\)"):
            choose_holdout(10, bad)

    make_store(tmp_path)  # 15 images in 5 chunks of 3
    store = ActivationStore.open(tmp_path)
    assert store.holdout is None and "split      none" in store.describe()
    split = store.set_holdout(0.2)
    assert split == {"fraction": 0.2, "seed": 0, "image_ids": [2, 8, 10]} == choose_holdout(15, 0.2, 0)
    again = ActivationStore.open(tmp_path)  # recorded in store.json
    assert again.holdout == split
    assert "split      train 12 images / held-out 3 images (fraction 0.2, seed 0)" in again.describe()
    assert again.set_holdout(0.2, seed=0) == split  # same inputs, same images
    other = again.set_holdout(0.2, seed=7)
    assert len(other["image_ids"]) == 3 and other["image_ids"] != split["image_ids"]
    assert ActivationStore.open(tmp_path).holdout["seed"] == 7
    assert again.set_holdout(0.0)["image_ids"] == [] and ActivationStore.open(tmp_path).holdout is None
    assert "holdout" not in json.loads((tmp_path / "store.json").read_text())
    with pytest.raises(ValueError, match="in \\[0, 1\\)"):
        again.set_holdout(1.0)
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]


def _ids(batches) -> list[int]:
    return torch.cat([i for _, i in batches]).tolist()


def test_split_readers_partition_rows_by_image(tmp_path):
    make_store(tmp_path)
    store = ActivationStore.open(tmp_path)
    for split in ("train", "held-out"):
        with pytest.raises(ValueError, match=f"no held-out split.*difflens capture split {tmp_path} --holdout 0.1"):
            store.reader(SITE, 0, split=split)
    with pytest.raises(ValueError, match="split must be one of 'all', 'train', 'held-out'; got 'test'"):
        store.reader(SITE, 0, split="test")
    held = store.set_holdout(0.2)["image_ids"]  # [2, 8, 10]: chunks 1 and 4 are all train, 0, 2, 3 mixed
    r_all, r_train, r_held = (store.reader(SITE, 2, split=s) for s in ("all", "train", "held-out"))
    assert (r_all.split, r_train.split, r_held.split) == ("all", "train", "held-out")
    assert (r_all.num_rows, r_train.num_rows, r_held.num_rows) == (240, 12 * 16, 3 * 16)
    assert r_held.image_ids().tolist() == held
    assert r_train.image_ids().tolist() == sorted(set(range(15)) - set(held))
    assert r_all.image_ids().tolist() == list(range(15))

    everything = np.arange(r_all.num_rows)
    image_of = r_all.trace(everything)["image_id"]
    for r in (r_train, r_held):
        want = np.flatnonzero(np.isin(image_of, held) == (r.split == "held-out")).tolist()
        in_order = list(r.iter_batches(20, shuffle=False))
        assert _ids(in_order) == want  # global ids, ascending
        torch.testing.assert_close(torch.cat([a for a, _ in in_order]), r_all.read_rows(torch.tensor(want)))
        for buffer_bytes in (1, 40 * DIM * 2, 1 << 20):
            shuffled = list(r.iter_batches(16, seed=5, buffer_bytes=buffer_bytes))
            assert sorted(_ids(shuffled)) == want and _ids(shuffled) != want
            acts, ids = shuffled[1]
            torch.testing.assert_close(acts, r.read_rows(ids))  # ids are global: any reader reads them alike
            torch.testing.assert_close(acts, r_all.read_rows(ids))
        parts = [_ids(r.iter_batches(8, seed=2, epoch=1, rank=k, world_size=2)) for k in (0, 1)]
        assert sorted(parts[0] + parts[1]) == want and not set(parts[0]) & set(parts[1])
        kept = _ids(r.iter_batches(10, seed=1, drop_last=True))
        assert len(kept) == len(want) // 10 * 10 and set(kept) <= set(want)
    # no image has rows in both splits, checked through the trace of what the readers yield
    train_images = set(r_train.trace(_ids(r_train.iter_batches(64)))["image_id"].tolist())
    held_images = set(r_held.trace(_ids(r_held.iter_batches(64)))["image_id"].tolist())
    assert held_images == set(held) and not train_images & held_images
    assert train_images | held_images == set(range(15))
    # re-splitting changes new readers only
    store.set_holdout(0.4, seed=1)
    assert r_held.num_rows == 48 and store.reader(SITE, 2, split="held-out").num_rows == 6 * 16


def test_identity_and_reader_protocol(tmp_path):
    from difflens.store import ActivationReader, TensorReader, open_reader

    make_store(tmp_path)
    store = ActivationStore.open(tmp_path / ".")
    assert store.identity() == {"path": str(tmp_path.resolve()), "model": "synthetic", "weights": None,
                                "prompts_hash": "x", "n_images": 15}
    store.set_holdout(0.2)
    r = open_reader(tmp_path, SITE, 0, split="held-out")
    assert r.split == "held-out" and r.num_rows == 48 and isinstance(r, ActivationReader)
    t = TensorReader(torch.randn(10, DIM))
    assert isinstance(t, ActivationReader) and t.split == "all"
    parts = [_ids(t.iter_batches(3, seed=1, rank=k, world_size=2)) for k in (0, 1)]
    assert sorted(parts[0] + parts[1]) == list(range(10))
    with pytest.raises(ValueError, match="tensor reader has no held-out split"):
        TensorReader(torch.randn(10, DIM), split="train")
    with pytest.raises(ValueError, match="split must be one of"):
        open_reader(tmp_path, SITE, 0, split="eval")


# -- checksums on first read ---------------------------------------------------------------

def _flip_to_other_finite(path, n_values=3):
    """Change the last `n_values` float16 values of a shard to other finite values (1.0 <-> 2.0 bit patterns)."""
    data = bytearray(path.read_bytes())
    for k in range(1, n_values + 1):
        old = int.from_bytes(data[-2 * k : len(data) - 2 * (k - 1)], "little")
        data[-2 * k : len(data) - 2 * (k - 1)] = (0x4000 if old != 0x4000 else 0x3C00).to_bytes(2, "little")
    path.write_bytes(bytes(data))


def test_corrupt_but_finite_shard_is_caught_on_first_read(tmp_path, monkeypatch):
    from difflens.store import layout

    make_store(tmp_path)
    shard = tmp_path / f"sites/{SITE}/step-000/chunk-000003.acts.npy"  # rows 144..191
    _flip_to_other_finite(shard)
    store = ActivationStore.open(tmp_path)
    r = store.reader(SITE, 0)  # opening checks headers only
    assert torch.isfinite(torch.from_numpy(np.load(shard).astype(np.float32))).all()
    with pytest.raises(ValueError, match="corrupt shard .*chunk-000003.acts.npy: checksum 0x[0-9a-f]{8} != manifest"):
        list(r.iter_batches(32, seed=0))
    with pytest.raises(ValueError, match="chunk-000003.acts.npy: checksum"):
        list(store.reader(SITE, 0).iter_batches(32, shuffle=False))
    r = store.reader(SITE, 0)
    r.read_rows([0, 50, 143])  # other shards read fine
    with pytest.raises(ValueError, match="chunk-000003.acts.npy: checksum"):
        r.read_rows([0, 150])
    r.trace([150])  # the trace shard is intact
    with pytest.raises(ValueError, match="chunk-000003.acts.npy: checksum"):
        r.verify()
    # a split without rows in the bad shard never reads it (held-out images 2, 8, 10 live in chunks 0, 2, 3)
    store.set_holdout(0.2, seed=0)
    with pytest.raises(ValueError, match="chunk-000003.acts.npy"):
        list(store.reader(SITE, 0, split="held-out").iter_batches(8))
    assert store.set_holdout(0.2, seed=3)["image_ids"] == [2, 4, 6]  # chunks 0, 1, 2
    bad_rows = set(range(144, 192))
    ids = _ids(store.reader(SITE, 0, split="held-out").iter_batches(8))
    assert ids and not bad_rows & set(ids)

    # a trace shard is checked too: a changed image id would move rows between splits
    tr = tmp_path / f"sites/{SITE}/step-002/chunk-000001.trace.npy"
    data = bytearray(tr.read_bytes())
    data[-8] ^= 0x01  # the last row's image id: 5 -> 4
    tr.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="chunk-000001.trace.npy: checksum"):
        store.reader(SITE, 2).trace([60])
    with pytest.raises(ValueError, match="chunk-000001.trace.npy: checksum"):
        store.reader(SITE, 2, split="train")
    # older stores record no trace checksum: that check is skipped, the acts one still runs
    m = tmp_path / f"sites/{SITE}/step-002/manifest.json"
    meta = json.loads(m.read_text())
    for s in meta["shards"]:
        del s["trace_crc32"]
    m.write_text(json.dumps(meta))
    assert store.reader(SITE, 2).trace([95])["image_id"].tolist() == [4]

    # each shard is checksummed once per reader, however often it is read
    calls = []
    real = layout.crc32
    monkeypatch.setattr(layout, "crc32", lambda a: calls.append(a.shape) or real(a))
    r = store.reader(SITE, 2)
    for epoch in range(3):
        list(r.iter_batches(32, seed=0, epoch=epoch))
        r.read_rows(np.arange(r.num_rows))
    assert len(calls) == 5  # five acts shards; traces were not read
    r.trace(np.arange(r.num_rows))
    assert len(calls) == 5  # (no trace checksums recorded any more)
