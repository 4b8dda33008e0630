"""Capture: traceability, images kept, CLI (flags built from CaptureConfig), kill -9 and resume,
2-rank torchrun == 1 process."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from tiny_models import adapter, difflens_cmd, subprocess_env

from difflens.adapters import Capture, LoadOptions
from difflens.adapters.registry import DEFAULT_MODEL, MODEL_NAMES
from difflens.capture import CaptureConfig, run_capture
from difflens.capture.cli import SitesCommand, StoreCommand, capture_config, store_command
from difflens.cli import build_parser
from difflens.cli import main as cli_main
from difflens.configs import config_from_args, field_docs
from difflens.store import ActivationStore
from difflens.store.split import choose_holdout

SITES = ["double.1.img.out", "single.0.txt.update", "double.0.img.mlp"]


def assert_same_store(a_dir, b_dir):
    a, b = ActivationStore.open(a_dir), ActivationStore.open(b_dir)
    assert a.entries() == b.entries()
    for site, step in a.entries():
        ra, rb = a.reader(site, step), b.reader(site, step)
        assert ra.num_rows == rb.num_rows and ra.manifest["shards"] == rb.manifest["shards"]
        ids = torch.arange(ra.num_rows)
        assert torch.equal(ra.read_rows(ids), rb.read_rows(ids))
        ta, tb = ra.trace(ids), rb.trace(ids)
        for k in ta:
            assert np.array_equal(ta[k], tb[k])
        pairs = set(zip(ta["image_id"].tolist(), ta["token_index"].tolist()))
        assert len(pairs) == ra.num_rows  # no duplicated rows
    assert a.prompts() == b.prompts()
    for i in range(len(a.prompts())):
        assert np.array_equal(a.load_image(i), b.load_image(i))


def test_every_row_traces_back_to_its_image_step_and_token(tmp_path):
    a = adapter("flux-tiny")
    out = tmp_path / "store"
    run_capture(CaptureConfig(out=str(out), model="flux-tiny", sites=SITES, steps_to_record=[0, 1], n_images=5,
                              batch_size=2, progress=False), adapter=a)
    store = ActivationStore.open(out)
    assert store.entries() == [(s, t) for s in SITES for t in (0, 1)]
    r = store.reader("double.1.img.out", 1)
    assert r.num_rows == 5 * 64 and r.dtype == torch.bfloat16 and r.manifest["model"] == "flux-tiny"
    assert store.reader("single.0.txt.update", 0).num_rows == 5 * 8
    assert store.reader("double.0.img.mlp", 0).dim == 128

    # regenerate chunk 2 (image 4, alone) and chunk 1 (images 2, 3) and compare row by row
    for ids in ([4], [2, 3]):
        info = [store.image_info(i) for i in ids]
        got = {}
        images = a.generate([p["prompt"] for p in info], [p["seed"] for p in info],
                            capture=Capture(SITES, lambda n, st, x: got.__setitem__((n, st), x.clone())))
        for j, i in enumerate(ids):
            assert np.array_equal(store.load_image(i), images[j])  # saved image == the generated one
        for site, step in store.entries():
            rd = store.reader(site, step)
            rows = torch.arange(rd.num_rows)
            tr = rd.trace(rows)
            for j, i in enumerate(ids):
                sel = np.nonzero(tr["image_id"] == i)[0]
                assert (tr["step"][sel] == step).all()
                tokens = tr["token_index"][sel]
                assert tokens.tolist() == list(range(len(sel)))
                want = got[(site, step)][j, tokens].to(torch.bfloat16).float()
                assert torch.equal(rd.read_rows(sel), want), (site, step, i)
                if rd.stream == "image":
                    assert (tr["token_row"][sel] * 8 + tr["token_col"][sel] == tokens).all()
                else:
                    assert (tr["token_row"][sel] == -1).all()
    assert store.image_info(3)["seed"] == 3
    store.verify()


def test_prompt_file_cycles_and_cli(tmp_path, capsys):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red circle\n\na blue square on the left\n")
    out = tmp_path / "s"
    args = ["capture", "--model", "embedded-tiny", "--sites", "double.0.*.out", "--steps-to-record", "all",
            "--num-steps", "2", "--prompts", str(prompts), "--n-images", "3", "--seed", "10", "--out", str(out), "--quiet"]
    assert cli_main(args) == 0
    store = ActivationStore.open(out)
    assert store.entries() == [(s, t) for s in ("double.0.img.out", "double.0.txt.out") for t in (0, 1)]
    assert [(p["prompt"], p["seed"]) for p in store.prompts()] == [
        ("a red circle", 10), ("a blue square on the left", 11), ("a red circle", 12)]
    assert cli_main(args) == 0  # rerun of a finished capture: nothing to do, same store
    capsys.readouterr()
    assert cli_main(["cache", "info", str(out)]) == 0
    info = capsys.readouterr().out
    assert "double.0.txt.out" in info
    assert "split      train 2 images / held-out 1 images (fraction 0.1, seed 0)" in info  # --holdout 0.1 by default
    # re-split the finished store: a new fraction and seed, recorded in store.json
    assert cli_main(["capture", "split", str(out), "--holdout", "0.5", "--seed", "3"]) == 0
    assert "held out 2 of 3 images" in capsys.readouterr().out
    assert ActivationStore.open(out).holdout == choose_holdout(3, 0.5, 3)
    assert ActivationStore.open(out).reader("double.0.img.out", 1, split="held-out").image_ids().tolist() == [1, 2]
    assert cli_main(["cache", "split", str(out), "--holdout", "0"]) == 0
    assert "held out 0 of 3 images: none" in capsys.readouterr().out
    assert ActivationStore.open(out).holdout is None
    assert cli_main(["sites", "--model", "flux-tiny", "--json"]) == 0
    assert '"single.1.img.mlp"' in capsys.readouterr().out

    bad = {
        ("cache", "--model", "embedded-tiny"): "--out DIR is required",
        ("cache", "--model", "embedded-tiny", "--num-steps", "2", "--steps-to-record", "5", "--out", str(tmp_path / "x")): "outside 0..1",
        ("cache", "--model", "embedded-tiny", "--prompts", str(tmp_path / "none.txt"), "--out", str(tmp_path / "y")): "prompts file not found",
        ("cache", "--model", "embedded-tiny", "--sites", "double.9.*", "--out", str(tmp_path / "z")): "matches no site",
        ("cache", "info", str(tmp_path / "missing")): "not a directory",
        ("cache", "--model", "embedded-tiny", "--n-images", "4", "--out", str(out)): "different settings",
        ("cache", "split", str(out), "--holdout", "1"): "holdout fraction must be in [0, 1)",
        ("cache", "split"): "usage: difflens capture split DIR --holdout F",
        ("cache", "split", str(tmp_path / "missing")): "not a directory",
        ("cache", "--model", "embedded-tiny", "--holdout", "-0.5", "--out", str(tmp_path / "w")): "in [0, 1)",
    }
    for argv, message in bad.items():
        assert cli_main(list(argv)) == 2
        assert message in capsys.readouterr().err, argv


def _parse(*argv):
    return build_parser().parse_args(list(argv))


def test_cache_flags_default_to_capture_config():
    # flags not given keep CaptureConfig's (and LoadOptions') defaults: one source of defaults for CLI and API
    assert capture_config(_parse("cache", "--out", "X")) == CaptureConfig(out="X")
    # the README's capture, every flag spelling it documents
    readme = _parse("cache", "--model", "embedded", "--sites", "double.*.img.out", "--steps-to-record", "0,3",
                    "--prompts", "world", "--n-images", "256", "--out", "runs/store", "--holdout", "0.1")
    assert capture_config(readme) == CaptureConfig(out="runs/store", model="embedded", sites=["double.*.img.out"],
                                                   steps_to_record=[0, 3], prompts="world", n_images=256, holdout=0.1)
    # zeros stay zeros, lists and words parse, old spellings (--torch-dtype, --no-images, --quiet) still map
    cfg = capture_config(_parse("cache", "--out", "Y", "--steps-to-record", "all", "--sites", "a.out,b.*",
                                "--n-images", "0", "--guidance", "0", "--seed", "0", "--holdout", "0",
                                "--resolution", "0", "--num-steps", "5", "--batch-size", "2",
                                "--store-dtype", "float16", "--torch-dtype", "bfloat16", "--device", "cpu",
                                "--no-images", "--quiet"))
    assert cfg == CaptureConfig(out="Y", steps_to_record="all", sites=["a.out", "b.*"], n_images=0, guidance=0.0,
                                seed=0, holdout=0.0, resolution=0, num_steps=5, batch_size=2, store_dtype="float16",
                                load=LoadOptions(dtype="bfloat16", device="cpu"), save_images=False, progress=False)
    assert capture_config(_parse("cache", "--out", "Z", "--dtype", "float16", "--cpu-offload", "--quantization",
                                 "nf4")).load == LoadOptions(dtype="float16", cpu_offload=True, quantization="nf4")
    # info / split keep their positional interface; split's defaults are a capture's (fraction 0.1, seed 0)
    assert store_command(_parse("cache", "info", "runs/store")) == StoreCommand("info", "runs/store")
    assert store_command(_parse("cache", "info", "runs/store", "--verify")).verify
    assert store_command(_parse("cache", "split", "runs/store", "--holdout", "0.2", "--seed", "1")) == \
        StoreCommand("split", "runs/store", holdout=0.2, seed=1)
    assert (StoreCommand.holdout, StoreCommand.seed) == (CaptureConfig.holdout, CaptureConfig.seed)
    # sites
    assert config_from_args(SitesCommand, _parse("sites")) == SitesCommand()
    assert SitesCommand.model == CaptureConfig.model == DEFAULT_MODEL
    assert config_from_args(SitesCommand, _parse("sites", "--model", "embedded", "--json", "--resolution", "0")) == \
        SitesCommand(model="embedded", json=True, resolution=0)
    assert config_from_args(LoadOptions, _parse("sites", "--torch-dtype", "float16")) == LoadOptions(dtype="float16")


def test_cache_help_is_the_field_docstrings(capsys):
    for argv, docs in {("cache",): [field_docs(CaptureConfig)["batch_size"], field_docs(CaptureConfig)["seed"],
                                    field_docs(LoadOptions)["dtype"]],
                       ("sites",): [field_docs(SitesCommand)["json"], field_docs(LoadOptions)["quantization"]]}.items():
        with pytest.raises(SystemExit):
            build_parser().parse_args([*argv, "--help"])
        text = " ".join(capsys.readouterr().out.split())
        for doc in docs:
            assert doc in text, (argv, doc)
        assert "--torch-dtype" in text and "{float32,float16,bfloat16}" in text
        assert all(name in text for name in MODEL_NAMES)  # the --model help names every model
    with pytest.raises(SystemExit):
        build_parser().parse_args(["cache", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--no-images" in text and "--quiet" in text and "(default: 8)" in text


def test_cache_refuses_flags_of_another_action(capsys):
    bad = {
        ("cache", "info", "runs/store", "--n-images", "3"): "--n-images do(es) not apply to `difflens capture info`",
        ("capture", "split", "runs/store", "--verify"): "--verify do(es) not apply to `difflens capture split`",
        ("cache", "info", "runs/store", "--out", "x"): "--out do(es) not apply",
        ("capture", "--out", "x", "--verify"): "--verify applies to `difflens capture info DIR`",
        ("cache", "--out", "x", "--steps-to-record", "al"): "comma-separated step numbers or 'all', got 'al'",
        ("cache", "info"): "usage: difflens capture info DIR",
    }
    for argv, message in bad.items():
        assert cli_main(list(argv)) == 2
        assert message in capsys.readouterr().err, argv
    with pytest.raises(SystemExit):
        cli_main(["cache", "--out", "x", "--store-dtype", "float32"])  # Literal types become choices
    assert "invalid choice: 'float32'" in capsys.readouterr().err


CACHE_SITES = ["double.0.img.out", "single.0.txt.out"]


def _cache_args(out, n_images, batch_size=1):
    return ["cache", "--model", "embedded-tiny", "--sites", ",".join(CACHE_SITES), "--steps-to-record", "0,2",
            "--num-steps", "3", "--prompts", "world", "--n-images", str(n_images), "--batch-size", str(batch_size),
            "--out", str(out), "--quiet"]


def _reference(out, n_images, batch_size):
    run_capture(CaptureConfig(out=str(out), model="embedded-tiny", sites=CACHE_SITES, steps_to_record=[0, 2],
                              num_steps=3, n_images=n_images, batch_size=batch_size, progress=False),
                adapter=adapter("embedded-tiny"))


def test_kill_minus_9_then_rerun_completes_without_duplicates(tmp_path):
    n = 16
    out = tmp_path / "killed"
    proc = subprocess.Popen(difflens_cmd(*_cache_args(out, n)), env=subprocess_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    done = out / "done"
    deadline = time.time() + 600
    while time.time() < deadline and proc.poll() is None:
        if done.exists() and len(os.listdir(done)) >= 1:
            break
        time.sleep(0.002)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    n_done = len(os.listdir(done))
    assert 1 <= n_done < n, f"kill landed after {n_done} of {n} chunks"
    with pytest.raises(FileNotFoundError, match="rerun the same"):
        ActivationStore.open(out)
    # rerun the same command: it resumes and completes, identical to an uninterrupted run
    assert cli_main(_cache_args(out, n)) == 0
    ref = tmp_path / "ref"
    _reference(ref, n, 1)
    assert_same_store(ref, out)
    assert not [p for p in out.rglob("*") if ".tmp-" in p.name]


def test_torchrun_two_ranks_equals_one_process(tmp_path):
    n = 7  # 4 chunks of 2 (the last one short), split 2/2 over the ranks
    ref = tmp_path / "ref"
    _reference(ref, n, 2)
    out = tmp_path / "ddp"
    with socket.socket() as sock:  # a free port for the rendezvous
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port),
           "-m", "difflens.cli", *_cache_args(out, n, batch_size=2)]
    res = subprocess.run(cmd, env=subprocess_env(), capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    assert len(list((out / "done").iterdir())) == 4
    assert_same_store(ref, out)
    shards = sorted((ref / "sites").rglob("*.npy"))
    for p in shards:
        assert p.read_bytes() == (out / p.relative_to(ref)).read_bytes(), p


def test_store_records_weights_and_refuses_to_resume_under_other_weights(tmp_path):
    a = adapter("embedded-tiny")
    cfg = CaptureConfig(out=str(tmp_path / "s"), model="embedded-tiny", sites=["double.0.img.out"], num_steps=2,
                        n_images=2, batch_size=1, progress=False)
    run_capture(cfg, adapter=a)
    fingerprint = a.weights_fingerprint()
    assert ActivationStore.open(cfg.out).meta["weights"] == fingerprint
    assert adapter("embedded-tiny").weights_fingerprint() == fingerprint  # same seed, same weights
    run_capture(cfg, adapter=adapter("embedded-tiny"))  # a rerun with equal weights is accepted
    with torch.no_grad():
        a.pipe.text_encoder.token_embedding.weight[3, 0] += 0.5  # one value of the (jointly trained) text encoder
    assert a.weights_fingerprint() != fingerprint
    with pytest.raises(ValueError, match=r"different settings \(weights\)"):
        run_capture(cfg, adapter=a)


def test_holdout_is_written_at_finalize_and_a_rerun_may_change_it(tmp_path):
    cfg = CaptureConfig(out=str(tmp_path / "s"), model="embedded-tiny", sites=["double.0.img.out"], num_steps=2,
                        n_images=6, batch_size=2, progress=False)
    run_capture(cfg, adapter=adapter("embedded-tiny"))
    store = ActivationStore.open(cfg.out)
    assert store.holdout == choose_holdout(6, 0.1, 0) and len(store.holdout["image_ids"]) == 1
    assert "holdout" not in (tmp_path / "s" / "capture.json").read_text()  # not a capture setting
    shards = store.reader("double.0.img.out", 0).manifest["shards"]
    assert all(isinstance(s["trace_crc32"], int) for s in shards)
    # a rerun with only another holdout is accepted: nothing to regenerate, the new split is recorded
    cfg.holdout = 0.5
    run_capture(cfg, adapter=adapter("embedded-tiny"))
    store = ActivationStore.open(cfg.out)
    assert store.holdout == choose_holdout(6, 0.5, 0) and len(store.holdout["image_ids"]) == 3
    train, held = (store.reader("double.0.img.out", 0, split=s) for s in ("train", "held-out"))
    assert train.num_rows == held.num_rows == store.reader("double.0.img.out", 0).num_rows // 2
    assert store.reader("double.0.img.out", 0).manifest["shards"] == shards
    cfg.holdout = 1.0  # refused before any work
    with pytest.raises(ValueError, match="holdout fraction must be in"):
        run_capture(cfg, adapter=adapter("embedded-tiny"))


def test_world_prompts_follow_the_named_world():
    from difflens.capture.runner import resolve_prompts
    from difflens.world import caption_world

    classic = resolve_prompts("world", 6, seed=2)
    rich = resolve_prompts("world:rich", 6, seed=2)
    assert [caption_world(p["prompt"]) for p in classic] == ["classic"] * 6
    assert [caption_world(p["prompt"]) for p in rich] == ["rich"] * 6
    assert resolve_prompts("world", 6, seed=2, world="rich") == rich
    with pytest.raises(ValueError, match="unknown shapes world"):
        resolve_prompts("world:fancy", 6, seed=2)


# -- random-init control (teacher forced) -------------------------------------------------------------------------

CONTROL_SITES = ["double.0.img.out", "single.0.txt.update"]


def _denoiser_calls(a, prompts, seeds, **kw):
    """(images, [(args, kwargs)] of every call of the trained denoiser) of a plain generation."""
    calls = []
    h = a._denoiser().register_forward_pre_hook(lambda m, args, kwargs: calls.append((args, dict(kwargs))),
                                                with_kwargs=True)
    try:
        images = a.generate(prompts, seeds, **kw)
    finally:
        h.remove()
    return images, calls


def test_random_init_control_records_a_teacher_forced_copy(tmp_path):
    from difflens.adapters.base import weights_fingerprint
    from difflens.api import capture, open_store

    a = adapter("embedded-tiny")
    common = dict(sites=CONTROL_SITES, steps=[0, 1], num_steps=2, guidance=2.0, batch_size=2, progress=False)
    normal = capture(a, n_images=3, out=tmp_path / "normal", **common)
    control = capture(a, n_images=3, out=tmp_path / "control", control="random-init", **common)
    # the trained model drew the images: identical pictures and prompts, so identical ground-truth labels
    assert normal.prompts() == control.prompts()
    for i in range(3):
        assert np.array_equal(normal.load_image(i), control.load_image(i))
    assert normal.meta["control"] == "none" and "control_weights" not in normal.meta
    copy = a.control_denoiser(0)
    assert control.meta["control"] == "random-init" and control.meta["control_seed"] == 0
    assert control.meta["weights"] == normal.meta["weights"] == a.weights_fingerprint()  # the trained model's
    assert control.meta["control_weights"] == weights_fingerprint({"denoiser": copy}) != normal.meta["weights"]
    assert control.identity()["control"] == "random-init" and "control" not in normal.identity()
    assert "control    random-init (seed 0" in control.describe()
    capture_json = (tmp_path / "control" / "capture.json").read_text()
    assert '"control": "random-init"' in capture_json
    assert '"control"' not in (tmp_path / "normal" / "capture.json").read_text()  # old stores still resume
    for site, step in normal.entries():
        rn, rc = normal.reader(site, step), control.reader(site, step)
        ids = torch.arange(rn.num_rows)
        assert rn.num_rows == rc.num_rows
        acts = rc.read_rows(ids).float()
        assert torch.isfinite(acts).all() and acts.std() > 0 and acts.std(0).min() > 0  # not degenerate
        assert not torch.equal(rn.read_rows(ids), rc.read_rows(ids)), (site, step)

    # the control's rows are what the copy computes from the trained model's own inputs (conditional half)
    images, calls = _denoiser_calls(a, [p["prompt"] for p in control.prompts()[:2]], [0, 1], num_steps=2, guidance=2.0)
    assert len(calls) == 2 and np.array_equal(images[0], control.load_image(0))
    block = copy.transformer_blocks[0]
    for step, (args, kwargs) in enumerate(calls):
        out = []
        h = block.register_forward_hook(lambda m, args, kwargs, o: out.append(o[1]), with_kwargs=True)
        copy(*args, **kwargs)
        h.remove()
        want = out[0][2:].to(torch.float16)  # [empty prompts; prompts]: the conditional half
        rd = control.reader("double.0.img.out", step)
        sel = np.nonzero(rd.trace(torch.arange(rd.num_rows))["image_id"] < 2)[0]
        assert torch.equal(rd.read_rows(sel).reshape(want.shape), want), step

    # in memory: the same rows; same control seed -> same acts, another seed -> other acts, images unchanged
    mem = capture(a, n_images=3, control="random-init", **{k: v for k, v in common.items() if k != "progress"})
    assert mem.identity()["control_weights"] == control.meta["control_weights"]
    rd = control.reader("double.0.img.out", 1)
    assert torch.equal(mem["double.0.img.out", 1].reshape(rd.num_rows, -1).half(), rd.read_rows(torch.arange(rd.num_rows)))
    other = capture(a, n_images=3, control="random-init", control_seed=1,
                    **{k: v for k, v in common.items() if k != "progress"})
    assert np.array_equal(mem.images, other.images)
    assert not torch.equal(mem["double.0.img.out", 1], other["double.0.img.out", 1])
    assert torch.equal(a.control_denoiser(1).state_dict()["x_embedder.weight"],
                       a.control_denoiser(1).state_dict()["x_embedder.weight"])  # drawn from the seed alone

    # a store of old (no control key) reads as a normal capture
    meta_path = tmp_path / "normal" / "store.json"
    old = json.loads(meta_path.read_text())
    del old["control"]
    meta_path.write_text(json.dumps(old))
    assert open_store(tmp_path / "normal").meta["control"] == "none"


def test_random_init_copy_of_a_plain_module():
    from difflens.adapters.base import random_init_copy

    trained = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.LayerNorm(8))
    with torch.no_grad():
        trained[1].weight.fill_(3.0)
    rng = torch.random.get_rng_state()
    a, b = random_init_copy(trained, 0), random_init_copy(trained, 0)
    assert torch.equal(torch.random.get_rng_state(), rng)  # the global RNG is left alone
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    assert not torch.equal(a[0].weight, trained[0].weight) and torch.equal(a[1].weight, torch.ones(8))
    assert not torch.equal(random_init_copy(trained, 1)[0].weight, a[0].weight)

    class Scaled(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.scale = torch.nn.Parameter(torch.ones(3))

    with pytest.raises(ValueError, match="no reset_parameters\\(\\) for scale"):
        random_init_copy(Scaled(), 0)


def test_control_resume_and_bad_values_are_refused(tmp_path):
    a = adapter("embedded-tiny")
    base = dict(model="embedded-tiny", sites=["double.0.img.out"], num_steps=2, n_images=2, batch_size=2,
                progress=False)
    normal = CaptureConfig(out=str(tmp_path / "n"), **base)
    run_capture(normal, adapter=a)
    with pytest.raises(ValueError, match=r"different settings \(control, control_seed, control_weights\)"):
        run_capture(CaptureConfig(out=normal.out, control="random-init", **base), adapter=a)
    ctl = CaptureConfig(out=str(tmp_path / "c"), control="random-init", **base)
    run_capture(ctl, adapter=a)
    run_capture(ctl, adapter=a)  # the same control resumes (nothing left to do)
    with pytest.raises(ValueError, match=r"different settings \(control, control_seed, control_weights\)"):
        run_capture(CaptureConfig(out=ctl.out, **base), adapter=a)
    with pytest.raises(ValueError, match=r"different settings \(control_seed, control_weights\)"):
        run_capture(CaptureConfig(out=ctl.out, control="random-init", control_seed=5, **base), adapter=a)
    for bad, message in [({"control": "random"}, "--control must be one of none, random-init, got 'random'"),
                         ({"control": "random-init", "control_seed": -1}, "--control-seed must be an integer >= 0")]:
        with pytest.raises(ValueError, match=message):
            run_capture(CaptureConfig(out=str(tmp_path / "bad"), **base, **bad), adapter=a)
    assert not (tmp_path / "bad").exists()  # refused before any work
    assert capture_config(_parse("cache", "--out", "X", "--control", "random-init", "--control-seed", "3")) == \
        CaptureConfig(out="X", control="random-init", control_seed=3)
    with pytest.raises(SystemExit):
        cli_main(["cache", "--out", "x", "--control", "random"])
    with a.teacher_forced_control(0):
        from difflens.adapters import Intervention

        with pytest.raises(ValueError, match="interventions under a teacher-forced control"):
            a.generate(["a red circle"], 0, num_steps=1, capture=Capture(["double.0.img.out"], lambda *x: None),
                       interventions=[Intervention("double.0.img.out", torch.zeros(32))])
        with pytest.raises(RuntimeError, match="already active"):
            with a.teacher_forced_control(1):
                pass
    assert a._control is None


@pytest.mark.parametrize("name, site, guidance", [("flux-tiny", "double.1.img.out", None),
                                                  ("sdxl-tiny", "unet.mid_block.attentions.0.out", 3.0)])
def test_control_capture_of_diffusers_models(name, site, guidance, tmp_path):
    """FLUX and SDXL (the UNet; with CFG: the conditional half) through the same adapter mechanism."""
    from difflens.api import capture

    a = adapter(name)
    kw = dict(sites=[site], steps="all", num_steps=2, guidance=guidance, batch_size=2, save_images=True)
    plain = capture(a, n_images=2, **kw)
    ctl = capture(a, n_images=2, control="random-init", control_seed=1, **kw)
    assert np.array_equal(plain.images, ctl.images) and ctl.weights == plain.weights
    copy = a.control_denoiser(1)
    images, calls = _denoiser_calls(a, [p["prompt"] for p in ctl.prompts], [p["seed"] for p in ctl.prompts],
                                    num_steps=2, guidance=guidance)
    assert np.array_equal(images, ctl.images) and len(calls) == 2
    if name == "flux-tiny":
        module, pick = copy.transformer_blocks[1], lambda o: o[1]
    else:
        module, pick = dict(copy.named_modules())["mid_block.attentions.0"], lambda o: o[0].flatten(2).transpose(1, 2)
    for step, (args, kwargs) in enumerate(calls):
        out = []
        h = module.register_forward_hook(lambda m, args, o: out.append(pick(o)))
        copy(*args, **kwargs)
        h.remove()
        want = out[0][out[0].shape[0] - 2:]  # under CFG the batch is [uncond; cond]
        got = ctl[site, step]
        assert torch.equal(got, want.float()) and torch.isfinite(got).all() and got.std() > 0, step
        assert not torch.equal(got, plain[site, step])
