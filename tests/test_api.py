"""The researcher's API: sources, dictionaries that remember their data, (..., D) codes, resume that refuses
another job, the loss-space option, configs shared by CLI and API."""

from __future__ import annotations

import argparse
import json

import pytest
import torch

import difflens as dl
from difflens.cli import main as cli_main
from stores import SITE, make_site_store, synthetic_acts

SMALL = dict(k=4, num_latents=64, batch_size=128, k_aux=8, dead_window_tokens=512, lr=3e-3, warmup_steps=5)


@pytest.fixture(scope="module")
def split_store(tmp_path_factory):
    root = make_site_store(tmp_path_factory.mktemp("split"), {SITE: synthetic_acts(64, 16, 0)}, steps=(0, 1))
    dl.open_store(root).set_holdout(0.25, seed=0)
    return root


def test_dictionary_remembers_its_data_and_evaluates_held_out_by_default(split_store, tmp_path):
    store = dl.open_store(split_store)
    sae = dl.train_sae(store, SITE, 0, num_tokens=128 * 30, out=tmp_path / "sae", **SMALL)
    assert sae.site == SITE and sae.step == 0 and sae.meta["split"] == "train"
    assert sae.store["path"] == str(split_store.resolve()) and sae.store["prompts_hash"] == "x"
    loaded = dl.load_dictionary(tmp_path / "sae")
    assert loaded.site == SITE and loaded.store == sae.store
    res = dl.evaluate(loaded)  # no store, site or step repeated
    held_out = store.reader(SITE, 0, split="held-out").num_rows
    assert res["split"] == "held-out" and res["in_sample"] is False and res["tokens"] == held_out
    train_rows = dl.evaluate(loaded, split="train")
    assert train_rows["in_sample"] is True and train_rows["tokens"] == store.reader(SITE, 0, split="train").num_rows
    # the same dictionary on another recorded step: FVU by step
    steps = dl.evaluate_steps(loaded)
    assert [r["step"] for r in steps] == [0, 1] and all(r["split"] == "held-out" for r in steps)


def test_encode_decode_keep_leading_dims_and_carry_no_autograd(split_store):
    x = synthetic_acts(16, 16, 3)[:96]
    sae = dl.train_sae(synthetic_acts(16, 16, 3), num_tokens=128 * 5, **SMALL)
    acts_BTD = x.reshape(6, 16, 16).clone().requires_grad_(True)
    codes = sae.encode(acts_BTD)
    assert codes.values.shape == (6, 16, 4) and codes.indices.shape == (6, 16, 4)
    assert not codes.values.requires_grad
    recon = sae.decode(codes)
    assert recon.shape == (6, 16, 16) and not recon.requires_grad
    flat_recon, flat_codes = sae.reconstruct(x)
    torch.testing.assert_close(recon.reshape(-1, 16), flat_recon)
    assert codes.to_dense(64).shape == (6, 16, 64) and codes.l0().shape == (6, 16)
    with pytest.raises(ValueError, match="width 15"):
        sae.encode(torch.zeros(2, 3, 15))


def test_resume_refuses_a_different_job_and_no_resume_starts_fresh(split_store, tmp_path):
    out = tmp_path / "run"
    settings = dict(num_tokens=128 * 40, checkpoint_every=5, **SMALL)
    dl.train_sae(split_store, SITE, 0, out=out, on_step=lambda step, *_: step >= 12, **settings)
    assert (out / "checkpoint" / "latest.json").exists()
    for change, name in ((dict(k=3), "k"), (dict(lr=1e-3), "lr"), (dict(normalization="none"), "normalization"),
                         (dict(loss_space="residual"), "loss_space")):
        with pytest.raises(ValueError, match=f"different job.*{name}: checkpoint"):
            dl.train_sae(split_store, SITE, 0, out=out, **{**settings, **change})
    with pytest.raises(ValueError, match="step: checkpoint 0, now 1"):
        dl.train_sae(split_store, SITE, 1, out=out, **settings)
    other = make_site_store(tmp_path / "other", {SITE: synthetic_acts(64, 16, 0)})
    with pytest.raises(ValueError, match="split: checkpoint 'train', now 'all'"):
        dl.train_sae(other, SITE, 0, out=out, **settings)
    # the same job resumes and finishes; a rerun of the finished job just loads it
    done = dl.train_sae(split_store, SITE, 0, out=out, **settings)
    assert done.meta["steps"] == 40
    log = (out / "train_log.jsonl").read_text().splitlines()
    again = dl.train_sae(split_store, SITE, 0, out=out, **settings)
    assert (out / "train_log.jsonl").read_text().splitlines() == log
    torch.testing.assert_close(again.W_dec, done.W_dec)
    # --no-resume wipes the checkpoint and the log: a different job may now use the folder
    fresh = dl.train_sae(split_store, SITE, 0, out=out, resume=False, **{**settings, "k": 3})
    assert fresh.k == 3 and json.loads((out / "train_log.jsonl").read_text().splitlines()[0])["step"] == 10


def test_resume_refuses_a_swapped_normaliser(split_store, tmp_path):
    out = tmp_path / "run"
    settings = dict(num_tokens=128 * 20, checkpoint_every=5, **SMALL)
    dl.train_sae(split_store, SITE, 0, out=out, on_step=lambda step, *_: step >= 7, **settings)
    other = dl.train_sae(synthetic_acts(16, 16, 5) * 3, num_tokens=128, **SMALL)
    from difflens.dictionaries.io import save_normalizer

    save_normalizer(other.normalizer, out / "checkpoint")
    with pytest.raises(ValueError, match="does not match its checkpoint"):
        dl.train_sae(split_store, SITE, 0, out=out, **settings)


def test_residual_loss_space_lowers_residual_fvu(split_store):
    """Whitened inputs with the loss in residual space trade whitened-space FVU for residual-space FVU."""
    common = dict(num_tokens=128 * 150, **{**SMALL, "k": 2, "num_latents": 32})
    whitened = dl.train_sae(split_store, SITE, 0, **common)
    residual = dl.train_sae(split_store, SITE, 0, loss_space="residual", **common)
    a, b = dl.evaluate(whitened), dl.evaluate(residual)
    assert a["loss_space"] == "pca-whitened" and b["loss_space"] == "residual"
    assert b["fvu_residual"] < a["fvu_residual"] and b["fvu_input_space"] > a["fvu_input_space"]


def test_api_and_cli_share_config_defaults_and_reject_bad_values(split_store, tmp_path, capsys):
    from difflens.configs import add_config_arguments, config_from_args
    from difflens.dictionaries.train import ITDATrainConfig, SAETrainConfig

    parser = argparse.ArgumentParser()
    add_config_arguments(parser, SAETrainConfig, ITDATrainConfig)
    args = parser.parse_args(["--lr", "0.01"])
    assert config_from_args(SAETrainConfig, args) == SAETrainConfig(lr=0.01)
    assert config_from_args(ITDATrainConfig, args).k == ITDATrainConfig().k == 32  # each keeps its own default
    assert "active latents per token (default: SAE 64; ITDA 32)" in parser.format_help()
    # --k 0 is 0 (and refused), not silently 64
    rc = cli_main(["train", "--store", str(split_store), "--site", SITE, "--step", "0", "--k", "0",
                   "--out", str(tmp_path), "--quiet"])
    assert rc == 2 and "k must be in 1..num_latents (256), got 0" in capsys.readouterr().err
    rc = cli_main(["train", "--store", str(split_store), "--site", SITE, "--step", "0", "--threshold", "0.2",
                   "--out", str(tmp_path), "--quiet"])
    assert rc == 2 and "--threshold do(es) not apply to --method sae" in capsys.readouterr().err
    with pytest.raises(TypeError, match="unknown setting 'kk'"):
        dl.train_sae(split_store, SITE, 0, kk=3)


def test_export_cli_writes_a_saelens_folder_that_reconstructs_like_difflens(split_store, tmp_path):
    sae = dl.train_sae(split_store, SITE, 0, num_tokens=128 * 10, out=tmp_path / "sae", **SMALL)
    assert cli_main(["export", "--run", str(tmp_path / "sae"), "--out", str(tmp_path / "lens")]) == 0
    cfg = json.loads((tmp_path / "lens" / "cfg.json").read_text())
    assert cfg["architecture"] == "topk" and cfg["d_sae"] == 64 and cfg["metadata"]["hook_name"] == SITE
    from safetensors.torch import load_file

    w = load_file(str(tmp_path / "lens" / "sae_weights.safetensors"))
    x = synthetic_acts(4, 16, 9)
    pre = (x - w["b_dec"]) @ w["W_enc"] + w["b_enc"]
    top = pre.topk(4, dim=-1)
    codes = torch.zeros_like(pre).scatter(-1, top.indices, top.values.relu())
    torch.testing.assert_close(codes @ w["W_dec"] + w["b_dec"], sae.reconstruct(x)[0], rtol=1e-3, atol=1e-3)


def test_cli_trains_on_train_split_and_evaluates_held_out_and_across_steps(split_store, tmp_path, capsys):
    run = tmp_path / "run"
    assert cli_main(["train", "--store", str(split_store), "--site", SITE, "--step", "0", "--out", str(run),
                     "--num-latents", "64", "--k", "4", "--num-tokens", "1280", "--batch-size", "128", "--quiet"]) == 0
    assert cli_main(["eval", "--run", str(run)]) == 0  # no --store: the dictionary's own, held-out split
    out = capsys.readouterr().out
    assert "split: held-out" in out and "in-sample" not in out
    assert cli_main(["eval", "--run", str(run), "--steps", "all", "--out", str(tmp_path / "m.json")]) == 0
    rows = json.loads((tmp_path / "m.json").read_text())["results"]
    assert [(r["step"], r["split"]) for r in rows] == [(0, "held-out"), (1, "held-out")]
    assert rows[1]["fvu_residual"] > rows[0]["fvu_residual"]  # step 1's rows are scaled: the SAE does not transfer
    assert (tmp_path / f"steps_{SITE}" / "steps_fvu_residual.png").stat().st_size > 1000


def test_a_saved_dictionary_knows_its_folder(split_store, tmp_path):
    sae = dl.train_sae(split_store, SITE, 0, num_tokens=128 * 2, out=tmp_path / "sae", **SMALL)
    assert sae.path == (tmp_path / "sae").resolve()
    assert dl.train_sae(split_store, SITE, 0, num_tokens=128 * 2, **SMALL).path is None  # in memory
