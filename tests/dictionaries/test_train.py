"""Training from a real activation store: CLI end to end, kill -9 and resume, 2-process DDP."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from difflens.dictionaries import load_dictionary
from difflens.cli import main as dict_main

from stores import SITE, make_site_store, synthetic_acts

REPO = Path(__file__).resolve().parents[2]


SAE_ARGS = ["--site", SITE, "--method", "sae", "--num-latents", "64", "--k", "4", "--batch-size", "128",
            "--k-aux", "8", "--dead-window-tokens", "512", "--lr", "3e-3", "--warmup-steps", "5", "--quiet"]


def test_train_eval_sae_itda_neurons_cli(site_store, tmp_path, capsys):
    run = tmp_path / "run"
    assert dict_main(["train", "--store", str(site_store), "--out", str(run), "--tokens", "20000", *SAE_ARGS]) == 0
    sae = load_dictionary(run / SITE)
    assert sae.normalizer.kind == "pca" and sae.num_latents == 64
    cfg = json.loads((run / SITE / "cfg.json").read_text())
    assert cfg["difflens_meta"]["final"]["fvu"] < 0.5
    assert cfg["difflens_meta"]["site"] == SITE and cfg["difflens_meta"]["store"]["path"] == str(site_store.resolve())
    log = [json.loads(line) for line in (run / SITE / "train_log.jsonl").read_text().splitlines()]
    assert log[-1]["step"] == 20000 // 128 + 1 and log[-1]["fvu"] == cfg["difflens_meta"]["final"]["fvu"]
    # ITDA and neurons on the same site, in sibling run folders, evaluated through one code path
    assert dict_main(["train", "--store", str(site_store), "--site", SITE, "--method", "itda", "--out", str(tmp_path / "itda"),
                      "--k", "8", "--threshold", "0.3", "--tokens", "2048", "--batch-size", "256", "--quiet"]) == 0
    assert dict_main(["train", "--store", str(site_store), "--site", SITE, "--method", "neurons", "--out", str(tmp_path / "nrn")]) == 0
    for folder in (run, tmp_path / "itda", tmp_path / "nrn"):
        assert dict_main(["eval", "--store", str(site_store), "--run", str(folder), "--tokens", "1024"]) == 0
    res = json.loads((run / "metrics.json").read_text())["results"][0]
    assert res["fvu_residual"] < 0.5 and res["l0"] <= 4 and res["tokens"] == 1024
    assert res["split"] == "all" and res["in_sample"] is True  # this store is not split by image
    itda = load_dictionary(tmp_path / "itda" / SITE)
    assert itda.num_latents > 1 and set(itda.provenance["image_id"].tolist()) <= set(range(128))
    assert (itda.provenance["step"] == 0).all() and (itda.provenance["token_row"] < 4).all()
    nrn = json.loads((tmp_path / "nrn" / "metrics.json").read_text())["results"][0]
    assert nrn["fvu_residual"] < 1e-6 and nrn["kind"] == "neurons"
    out = capsys.readouterr().out
    assert "fvu_residual" in out and "fvu_input_space" in out and "in-sample" in out


def test_clear_errors(site_store, tmp_path, capsys):
    assert dict_main(["train", "--store", str(site_store), "--site", "nope", "--out", str(tmp_path)]) == 2
    assert "site 'nope' is not in store" in capsys.readouterr().err
    assert dict_main(["train", "--store", str(tmp_path / "missing"), "--site", SITE, "--out", str(tmp_path)]) == 2
    assert "does not exist" in capsys.readouterr().err
    other = make_site_store(tmp_path / "wide", {SITE: synthetic_acts(8, 24, 1)})
    assert dict_main(["train", "--store", str(site_store), "--out", str(tmp_path / "r"), "--tokens", "256", *SAE_ARGS]) == 0
    assert dict_main(["eval", "--store", str(other), "--run", str(tmp_path / "r")]) == 2
    assert "width 24" in capsys.readouterr().err


def _cli(args, env_extra=None, nproc=None):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO / "src")}
    env.update(env_extra or {})
    if nproc:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
               "-m", "difflens.dictionaries.cli", *args]
    else:
        cmd = [sys.executable, "-m", "difflens.dictionaries.cli", *args]
    return cmd, env


def _logged_past_checkpoint(pointer, log, at_least: int) -> bool:
    """Whether a running job has a checkpoint of step >= `at_least` and has logged a later step."""
    try:
        checkpoint = json.loads(pointer.read_text())["step"]
        logged = json.loads(log.read_text().splitlines()[-1])["step"]
    except (OSError, ValueError, IndexError, KeyError):  # not written yet, or a line being written
        return False
    return checkpoint >= at_least and logged > checkpoint


def test_kill_and_resume_is_exact(site_store, tmp_path):
    args = ["train", "--store", str(site_store), "--tokens", str(128 * 40), "--checkpoint-every", "5", "--log-every", "1",
            "--seed", "3", *SAE_ARGS]
    cmd, env = _cli([*args, "--out", str(tmp_path / "ref")])
    subprocess.run(cmd, env=env, check=True, capture_output=True)
    cmd, env = _cli([*args, "--out", str(tmp_path / "crash")], {"DIFFLENS_TRAIN_THROTTLE_S": "0.15"})
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    latest = tmp_path / "crash" / SITE / "checkpoint" / "latest.json"
    deadline = time.time() + 300  # generous: a loaded CI machine starts subprocesses slowly
    log = tmp_path / "crash" / SITE / "train_log.jsonl"
    while time.time() < deadline and not _logged_past_checkpoint(latest, log, at_least=10):
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert latest.exists() and not (tmp_path / "crash" / SITE / "sae.safetensors").exists()
    cmd, env = _cli([*args, "--out", str(tmp_path / "crash")])
    subprocess.run(cmd, env=env, check=True, capture_output=True)
    ref = load_file(str(tmp_path / "ref" / SITE / "sae.safetensors"))
    got = load_file(str(tmp_path / "crash" / SITE / "sae.safetensors"))
    for key in ref:
        assert torch.equal(ref[key], got[key]), key
    steps = [[json.loads(line)["step"] for line in (tmp_path / run / SITE / "train_log.jsonl").read_text().splitlines()]
             for run in ("ref", "crash")]
    assert steps[1] == steps[0]  # the steps logged after the checkpoint and trained again are logged once


def test_two_process_ddp_matches_one_process(site_store, tmp_path):
    args = ["train", "--store", str(site_store), "--tokens", str(128 * 12), "--checkpoint-every", "0", *SAE_ARGS]
    for name, nproc in (("one", None), ("two", 2)):
        cmd, env = _cli([*args, "--out", str(tmp_path / name)], nproc=nproc)
        res = subprocess.run(cmd, env=env, capture_output=True, text=True)
        assert res.returncode == 0, res.stderr[-3000:]
    one = load_file(str(tmp_path / "one" / SITE / "sae.safetensors"))
    two = load_file(str(tmp_path / "two" / SITE / "sae.safetensors"))
    for key in one:
        torch.testing.assert_close(two[key], one[key], rtol=1e-4, atol=1e-5)
    n1 = load_file(str(tmp_path / "one" / SITE / "normalizer.safetensors"))
    n2 = load_file(str(tmp_path / "two" / SITE / "normalizer.safetensors"))
    torch.testing.assert_close(n2["scale"], n1["scale"], rtol=1e-4, atol=1e-5)


_BATCHTOPK_RANK = """
import sys, torch, torch.distributed as dist
from difflens.dictionaries import make_sae
from difflens.dictionaries.train import SAEState, sae_train_config
dist.init_process_group("gloo")
rank, world = dist.get_rank(), dist.get_world_size()
x = torch.randn(12 * 256, 16, generator=torch.Generator().manual_seed(0))
x[::97] *= 6  # a few loud tokens: the ranks' slices keep very different numbers of latents
cfg = sae_train_config("batchtopk")(num_latents=64, k=4, normalization="none", k_aux=8, dead_window_tokens=512,
                                    lr=3e-3, warmup_steps=2)
sae = make_sae(16, cfg.architecture(16))
sae.initialise(x[:256])
state = SAEState.create(sae, cfg)
for batch in x.split(256):
    state.train_step(batch.chunk(world)[rank], (batch - batch.mean(0)).pow(2).sum(), global_tokens=len(batch))
torch.save(sae.state_dict(), f"{sys.argv[1]}/rank{rank}.pt")
"""


def test_two_process_batchtopk_ranks_agree_on_the_threshold(tmp_path):
    """BatchTopK under DDP: each rank selects the top B·k of its own slice (by design, so no equality with one
    process), but every rank folds the same smallest kept activation (the ranks' minimum) into its threshold
    and applies the same all-reduced gradients: both ranks end with the same threshold and weights."""
    script = tmp_path / "rank.py"
    script.write_text(_BATCHTOPK_RANK)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO / "src")}
    res = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                          str(script), str(tmp_path)], env=env, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-3000:]
    one, two = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    assert int(one["threshold_batches"]) == 12 and float(one["threshold"]) > 0
    for key in one:
        torch.testing.assert_close(two[key], one[key], rtol=0, atol=0, msg=key)


def test_a_finished_dictionary_is_never_replaced_silently(site_store, tmp_path, capsys):
    """Other settings are refused by name; the same job is reported done; --overwrite replaces, saying so; a
    folder locked by a live writer is refused naming it."""
    import socket

    from difflens.locks import lock_path

    base = ["train", "--store", str(site_store), "--out", str(tmp_path), "--tokens", "512",
            *[a for a in SAE_ARGS if a not in ("--k", "4")]]
    assert dict_main([*base, "--k", "4"]) == 0
    assert dict_main([*base, "--k", "8"]) == 2
    err = capsys.readouterr().err
    assert "holds a finished dictionary of a different job (settings.k: finished 4, now 8)" in err
    assert load_dictionary(tmp_path / SITE).k == 4
    assert dict_main([*base, "--k", "4"]) == 0
    assert "already holds this job's finished dictionary" in capsys.readouterr().err
    assert dict_main([*base, "--k", "8", "--overwrite"]) == 0
    assert "replacing a finished dictionary" in capsys.readouterr().err and load_dictionary(tmp_path / SITE).k == 8
    lock_path(tmp_path / SITE).write_text(json.dumps({"host": socket.gethostname(), "pid": os.getppid(),
                                                      "command": "difflens train --k 16", "started": 0}))
    assert dict_main([*base, "--k", "16", "--no-resume"]) == 2
    assert f"being written by another process (pid {os.getppid()}" in capsys.readouterr().err
    assert load_dictionary(tmp_path / SITE).k == 8


def test_default_lr_scales_with_the_dictionary_and_trains_as_well_as_a_tuned_one(capsys):
    """2e-4 (the FLUX paper's, for 65k latents) under-trains a small dictionary; the size-scaled default does not."""
    import difflens as dl
    from difflens.dictionaries.train.config import default_lr
    from difflens.evaluation.metrics import evaluate

    assert abs(default_lr(768) - 9.24e-4) < 1e-6 and default_lr(2**14) == 2e-4
    g = torch.Generator().manual_seed(0)
    feats = torch.nn.functional.normalize(torch.randn(64, 16, generator=g), dim=1)
    codes = torch.zeros(4096, 64).scatter_(1, torch.randint(0, 64, (4096, 2), generator=g),
                                           1 + 3 * torch.rand(4096, 2, generator=g))
    acts = codes @ feats + 0.3 * torch.randn(4096, 16, generator=g) + 2.0  # noise: an FVU floor near 0.17
    small = dict(num_latents=64, k=2, batch_size=128, num_tokens=128 * 150, k_aux=8, dead_window_tokens=1024,
                 warmup_steps=5, normalization="standardise", progress=False)
    fvu = {}
    for name, lr in (("default", {}), ("tuned", {"lr": 4e-3}), ("paper", {"lr": 2e-4})):
        sae = dl.train_sae(acts[:3072], **small, **lr)
        fvu[name] = evaluate(sae, acts[3072:])["fvu_residual"]
        if name == "default":
            assert sae.meta["train"]["lr"] == default_lr(64) and sae.meta["job"]["settings"]["lr"] == default_lr(64)
    assert fvu["default"] <= 1.1 * fvu["tuned"], fvu
    assert fvu["paper"] > 1.25 * fvu["default"], fvu
    with pytest.raises(SystemExit):
        dict_main(["train", "--help"])
    assert "sqrt(num_latents / 16384)" in " ".join(capsys.readouterr().out.split())
