"""`difflens demo`'s pieces, without the 9-minute run (that is `make demo`): its settings and their checks, the
guard against another model's run folder, the tables it prints and its interpretation stage on a tiny run."""

from __future__ import annotations

import json

import pytest
import torch

import difflens as dl
from difflens.cli import build_parser, main
from difflens.configs import config_from_args
from difflens.demo import DemoConfig, _with_interval, interpret, run_demo


def test_demo_refuses_a_run_folder_holding_another_models_demo_and_says_what_to_do(tmp_path):
    (tmp_path / "store").mkdir()
    (tmp_path / "store" / "capture.json").write_text(json.dumps({"model": "embedded", "n_images": 240}))
    with pytest.raises(ValueError, match=r"holds a demo of model 'embedded', not of 'embedded-rich'.*remove .* or "
                                         r"pass --out DIR"):
        run_demo(DemoConfig(out=str(tmp_path), quiet=True))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["store"]  # nothing written beside it


def test_the_command_line_defaults_are_the_configs():
    cfg = DemoConfig()
    assert config_from_args(DemoConfig, build_parser().parse_args(["demo"])) == cfg
    assert cfg.site_step in cfg.steps_to_record and cfg.early_step in cfg.steps_to_record
    given = config_from_args(DemoConfig, build_parser().parse_args(
        ["demo", "--out", "x", "--steps-to-record", "0,7", "--early-step", "0", "--k", "8", "--quiet"]))
    assert given == DemoConfig(out="x", steps_to_record=[0, 7], early_step=0, k=8, quiet=True)


@pytest.mark.parametrize("settings, message", [
    (dict(site_step=5), r"site_step 5 is not among steps_to_record \[0, 3, 7\]"),
    (dict(early_step=1), "early_step 1 is not among steps_to_record"),
    (dict(holdout=0.0), r"holdout must be in \(0, 1\)"),
    (dict(steer_dictionary="sae_pca_residual_loss"), "not one the demo interprets"),
    (dict(early_step=None, steer_dictionary="sae_pca_step3"), "not one the demo interprets"),
])
def test_settings_the_demo_would_trip_over_are_refused_at_once(settings, message):
    with pytest.raises(ValueError, match=message):
        DemoConfig(**settings)


def test_a_bad_setting_stops_the_command_before_anything_is_written(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path / "run"), "--site-step", "4", "--quiet"]) == 2
    assert "difflens demo: error: site_step 4 is not among steps_to_record" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
    assert DemoConfig(early_step=None, steer_dictionary="itda").steer_dictionary == "itda"


def test_with_interval_writes_percentages():
    assert _with_interval(0.18, [0.151, 0.21]) == "18.0 % [15.1, 21.0]"
    assert _with_interval(0.5, None) == "50.0 %"
    assert _with_interval(None, [0.1, 0.2]) is None


def test_the_metrics_table_has_every_column_evaluate_reports():
    """The demo prints format_table(rows, ["dictionary", *TABLE]); an evaluate() row fills every column."""
    from difflens.dictionaries import NeuronBasis
    from difflens.evaluation.metrics import TABLE
    from difflens.evaluation.metrics import format_table
    from difflens.store.sources import TensorReader

    row = {"dictionary": "neurons", **dl.evaluate(NeuronBasis(4, k=2), TensorReader(torch.rand(64, 4) + 0.1))}
    assert set(TABLE) <= set(row)
    header, line = format_table([row], ["dictionary", *TABLE]).splitlines()
    assert header.split() == ["dictionary", *TABLE] and len(line.split()) == len(TABLE) + 1  # no empty cell
    assert line.split()[TABLE.index("l0") + 1] == "2"


def test_interpretation_stage_on_a_tiny_run(tmp_path, capsys):
    """The demo's interpret(): feature index, oracle autointerp, truth.json and the card grids of sae_pca, then its
    table beside the random-direction floor."""
    torch.manual_seed(0)
    site = "double.0.img.out"
    prompts = [f"a {c} {s} on a white background" for c in ("red", "green", "blue", "yellow")
               for s in ("circle", "square", "triangle", "diamond")]
    store = dl.capture(dl.load_model("embedded-tiny"), prompts, sites=[site], steps=[1], out=tmp_path / "store",
                       num_steps=2, holdout=0.25, progress=False)
    sae = dl.train_sae(store, site, 1, out=tmp_path / "dictionaries" / "sae_pca", k=4, num_latents=48, batch_size=128,
                       num_tokens=128 * 20, normalization="pca", checkpoint_every=0)
    cfg = DemoConfig(out=str(tmp_path), autointerp_latents=4, card_latents=2, quiet=True)
    result = interpret({"sae_pca": sae}, tmp_path, cfg)
    ours, floor = result["rows"]
    assert ours["dictionary"] == "sae_pca" and floor["dictionary"] == "random directions"
    assert ours["latents"] == floor["latents"] == 48 and 0 <= ours["autointerp_mean"] <= 1
    assert ours["precise_share"].endswith("]") and " % [" in ours["precise_share"]  # value [95 % interval]
    assert result["table"].splitlines()[0].split()[:4] == ["dictionary", "latents", "alive", "precise_share"]
    assert result["table"] in capsys.readouterr().out
    folder = tmp_path / "dictionaries" / "sae_pca"
    assert json.loads((folder / "truth.json").read_text())["headline"]["name"] == "precise_share"
    scored = json.loads((folder / "index" / "autointerp" / "oracle" / "results.json").read_text())["features"]
    assert len(scored) == 4
    for png in ("cards_sae_pca.png", "cards_sae_pca_spotlight.png", "autointerp_oracle.png"):
        assert (tmp_path / "plots" / png).stat().st_size > 1000
