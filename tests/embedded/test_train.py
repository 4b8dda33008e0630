import json
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch

from difflens.cli import main as cli_main
from difflens.embedded import ShapesModelConfig, ShapesPipeline
from difflens.embedded.pipeline import WEIGHTS_DIR, patchify, unpatchify
from difflens.embedded.train import CHECKPOINT, TrainConfig, train


def saved_step(path) -> int:
    """The step a checkpoint pointer (JSON) publishes."""
    return json.loads(Path(path).read_text())["step"]

PROMPTS = ["a small red circle on the left on a white background",
           "black background with a large blue square in the top right"]


@pytest.fixture(scope="module")
def tiny():
    return ShapesPipeline.random(ShapesModelConfig.tiny(), seed=0)


def test_patchify_round_trip_is_row_major():
    x = torch.randn(2, 3, 32, 32)
    tokens = patchify(x, 4)
    assert tokens.shape == (2, 64, 48)
    assert torch.equal(unpatchify(tokens, 4, 8), x)
    # token 9 = row 1, col 1 of the 8x8 grid
    assert torch.equal(tokens[:, 9], x[:, :, 4:8, 4:8].reshape(2, -1))


def test_forward_and_generation_shapes(tiny):
    cfg = tiny.config
    embeds, pooled = tiny.encode_prompt(PROMPTS)
    assert embeds.shape == (2, cfg.max_text_len, cfg.text_encoder_width) and pooled.shape == (2, cfg.text_encoder_width)
    x = torch.randn(2, cfg.grid_size**2, cfg.patch_channels)
    v = tiny.velocity(x, torch.tensor([0.5, 0.9]), embeds, pooled)
    assert v.shape == x.shape
    images = tiny.generate(PROMPTS, num_steps=2, seeds=[5, 6])
    assert images.shape == (2, 32, 32, 3) and images.dtype == np.uint8


def test_image_depends_only_on_its_own_seed_and_prompt(tiny):
    pair = tiny.generate(PROMPTS, num_steps=2, seeds=[5, 6])
    alone = tiny.generate(PROMPTS[1:], num_steps=2, seeds=[6])
    assert np.abs(pair[1].astype(int) - alone[0].astype(int)).max() <= 1
    assert not np.array_equal(tiny.generate(PROMPTS[:1], 2, [5]), tiny.generate(PROMPTS[:1], 2, [7]))


def test_unknown_word_is_a_clear_error(tiny, capsys, tmp_path):
    with pytest.raises(ValueError, match="unknown word.*'blob'"):
        tiny.generate(["a red blob"], num_steps=1)
    tiny.save_pretrained(tmp_path)
    assert cli_main(["generate", "a purple unicorn", "--weights", str(tmp_path), "-o", str(tmp_path / "x.png")]) == 2
    assert "unknown word" in capsys.readouterr().err


def test_training_checkpoints_and_resumes_exactly(tmp_path):
    def cfg(out):
        return TrainConfig(out=str(out), steps=3, batch_size=4, checkpoint_every=1, warmup_steps=1,
                           model=ShapesModelConfig.tiny())

    straight = train(cfg(tmp_path / "a"), progress=False)
    train(cfg(tmp_path / "b"), progress=False, until=2)  # "killed" after two steps
    assert saved_step(tmp_path / "b" / CHECKPOINT) == 2
    resumed = train(cfg(tmp_path / "b"), progress=False)
    assert saved_step(tmp_path / "b" / CHECKPOINT) == 3
    files = sorted(p.name for p in (tmp_path / "b").glob("checkpoint*"))
    assert files == ["checkpoint-000000003.safetensors", CHECKPOINT]  # older tensor files are deleted
    for key, value in straight.state_dict().items():
        torch.testing.assert_close(resumed.state_dict()[key], value, rtol=0, atol=1e-6, msg=key)


def test_checkpoint_survives_a_kill_between_its_two_files_and_never_unpickles(tmp_path, monkeypatch):
    """Killed after the new tensor file but before the JSON pointer: the previous checkpoint is still whole,
    and resuming from it (with pickle and torch.load booby-trapped) matches an uninterrupted run."""
    import pickle

    from difflens import checkpoint as ckpt_mod

    def cfg(out):
        return TrainConfig(out=str(out), steps=3, batch_size=2, warmup_steps=1, model=ShapesModelConfig.tiny())

    straight = train(cfg(tmp_path / "a"), progress=False)
    train(cfg(tmp_path / "b"), progress=False, until=1)
    real_write_json = ckpt_mod.atomic_write_json

    def killed(*args, **kwargs):
        raise KeyboardInterrupt("kill -9 before the pointer swap")

    monkeypatch.setattr(ckpt_mod, "atomic_write_json", killed)
    with pytest.raises(KeyboardInterrupt):
        train(cfg(tmp_path / "b"), progress=False, until=2)
    monkeypatch.setattr(ckpt_mod, "atomic_write_json", real_write_json)
    assert saved_step(tmp_path / "b" / CHECKPOINT) == 1
    assert (tmp_path / "b" / "checkpoint-000000001.safetensors").exists()

    def boom(*args, **kwargs):
        raise AssertionError("checkpoint loading unpickled something")

    for module, name in ((pickle, "load"), (pickle, "loads"), (pickle, "Unpickler"), (torch, "load")):
        monkeypatch.setattr(module, name, boom)
    resumed = train(cfg(tmp_path / "b"), progress=False)
    for key, value in straight.state_dict().items():
        torch.testing.assert_close(resumed.state_dict()[key], value, rtol=0, atol=1e-6, msg=key)
    assert [p.name for p in (tmp_path / "b").glob("*.safetensors*")] == ["checkpoint-000000003.safetensors"]
    from difflens.embedded.train import load_checkpoint_ema

    for key, value in load_checkpoint_ema(tmp_path / "b").state_dict().items():
        torch.testing.assert_close(value, straight.state_dict()[key], rtol=0, atol=1e-6, msg=key)


def test_pickled_checkpoint_of_an_older_version_is_refused_by_name(tmp_path):
    (tmp_path / "checkpoint.pt").write_bytes(b"old pickle")
    with pytest.raises(ValueError, match="checkpoint.pt.*pickled"):
        train(TrainConfig(out=str(tmp_path), steps=1, batch_size=2, model=ShapesModelConfig.tiny()), progress=False)


def test_corrupt_checkpoint_is_named(tmp_path):
    (tmp_path / CHECKPOINT).write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match=str(tmp_path / CHECKPOINT)):
        train(TrainConfig(out=str(tmp_path), steps=1, batch_size=2, model=ShapesModelConfig.tiny()), progress=False)


def test_save_and_load_round_trip(tiny, tmp_path):
    tiny.save_pretrained(tmp_path, dtype=torch.float32)
    loaded = ShapesPipeline.from_pretrained(tmp_path)
    assert np.array_equal(loaded.generate(PROMPTS, 2, 0), tiny.generate(PROMPTS, 2, 0))
    with pytest.raises(FileNotFoundError, match="embedded model file missing"):
        ShapesPipeline.from_pretrained(tmp_path / "missing")


def test_shipped_weights_generate_what_the_prompt_says(tmp_path):
    from difflens.embedded import load_embedded
    from difflens.world import read_image

    weights = WEIGHTS_DIR / "model.safetensors"
    assert weights.stat().st_size <= 25 * 2**20
    card = json.loads((WEIGHTS_DIR / "config.json").read_text())
    assert card["image_size"] == 64
    pipe = load_embedded()
    assert pipe.config.grid_size >= 16
    out = tmp_path / "out.png"
    assert cli_main(["generate", "a large red circle in the center on a white background", "--seed", "0",
                     "-o", str(out)]) == 0
    from PIL import Image

    image = np.asarray(Image.open(out))
    reading = read_image(image)
    assert reading.background == "white"
    assert [o.color for o in reading.objects] == ["red"]


def test_guidance_mixes_prompt_and_empty_prompt(tiny):
    """guidance <= 1 is plain sampling; > 1 changes the image, deterministically and per image."""
    plain = tiny.generate(PROMPTS, num_steps=2, seeds=[5, 6])
    assert np.array_equal(tiny.generate(PROMPTS, num_steps=2, seeds=[5, 6], guidance_scale=1.0), plain)
    guided = tiny.generate(PROMPTS, num_steps=2, seeds=[5, 6], guidance_scale=4.0)
    assert not np.array_equal(guided, plain)
    alone = tiny.generate(PROMPTS[1:], num_steps=2, seeds=[6], guidance_scale=4.0)
    assert np.abs(guided[1].astype(int) - alone[0].astype(int)).max() <= 1
    # the empty prompt is a valid, finite text input
    states, pooled = tiny.encode_ids(tiny.tokenizer.unconditional(2))
    assert torch.isfinite(states).all() and torch.isfinite(pooled).all()
    with pytest.raises(ValueError, match="guidance_scale"):
        tiny.generate(PROMPTS, num_steps=1, guidance_scale=float("nan"))
    saved = tiny.config.guidance_scale
    try:  # use_guidance sets the default that generate falls back to
        assert tiny.use_guidance(4.0) is tiny
        assert np.array_equal(tiny.generate(PROMPTS, num_steps=2, seeds=[5, 6]), guided)
        assert tiny.use_guidance(None).config.guidance_scale == 4.0  # None keeps the current default
        with pytest.raises(ValueError, match="guidance_scale"):
            tiny.use_guidance(float("nan"))
    finally:
        tiny.config.guidance_scale = saved


def test_caption_dropout_empties_some_prompts_deterministically(tiny):
    from difflens.embedded.train import caption_ids

    ids = tiny.tokenizer(PROMPTS * 8)
    assert torch.equal(caption_ids(tiny, PROMPTS * 8, 0.0, torch.Generator().manual_seed(0)), ids)
    a = caption_ids(tiny, PROMPTS * 8, 0.5, torch.Generator().manual_seed(0))
    b = caption_ids(tiny, PROMPTS * 8, 0.5, torch.Generator().manual_seed(0))
    assert torch.equal(a, b)
    empty = (a == 0).all(1)
    assert 0 < int(empty.sum()) < 16 and torch.equal(a[~empty], ids[~empty])


def test_resume_ignores_a_changed_guidance_default(tmp_path):
    model = ShapesModelConfig.tiny()
    train(TrainConfig(out=str(tmp_path), steps=2, batch_size=2, model=model), progress=False, until=1)
    model.guidance_scale = 3.0  # a sampling default, not part of the weights
    train(TrainConfig(out=str(tmp_path), steps=2, batch_size=2, model=model), progress=False)
    assert saved_step(tmp_path / CHECKPOINT) == 2
    model.head_dim, model.axes_dims_rope = 8, (2, 2, 4)
    with pytest.raises(ValueError, match="different job.*model.head_dim: checkpoint 16, now 8"):
        train(TrainConfig(out=str(tmp_path), steps=3, batch_size=2, model=model), progress=False)


def test_latent_model_trains_its_autoencoder_first_and_round_trips(tmp_path):
    from difflens.embedded.train import AUTOENCODER_CHECKPOINT

    model = ShapesModelConfig.tiny()
    model.latent_channels = 4
    cfg = TrainConfig(out=str(tmp_path), steps=2, batch_size=2, warmup_steps=1, autoencoder_steps=2, model=model)
    pipe = train(cfg, progress=False)
    assert saved_step(tmp_path / AUTOENCODER_CHECKPOINT) == 2
    assert pipe.transformer.config.in_channels == 4
    images = pipe.generate(PROMPTS, num_steps=2, seeds=[1, 2])
    assert images.shape == (2, 32, 32, 3) and images.dtype == np.uint8
    tokens = pipe.images_to_tokens(images)
    assert tokens.shape == (2, model.grid_size**2, 4) and tokens.abs().max() <= 1
    pipe.save_pretrained(tmp_path / "w", dtype=torch.float32)
    loaded = ShapesPipeline.from_pretrained(tmp_path / "w")
    assert np.array_equal(loaded.generate(PROMPTS, num_steps=2, seeds=[1, 2]), images)
    with pytest.raises(ValueError, match="latent_channels"):
        ShapesModelConfig(latent_channels=4, patch_size=2)


def test_ship_writes_weights_quality_and_a_card_that_keeps_the_notes(tiny, tmp_path):
    from difflens.embedded.card import CARD_FILE, QUALITY_FILE, ship

    quality = ship(tiny, {"steps": 2, "model": {}}, dest=tmp_path, n=2, num_steps=1, step=1,
                   notes="## Training history\nTrained twice; the first run diverged.")
    card = (tmp_path / CARD_FILE).read_text()
    assert card.startswith("# Embedded shapes-world model")
    assert "EMA of the training weights at step 1 of a 2-step schedule (`world train --until 1`)" in card
    assert f"| shape_acc | {quality['shape_acc']:.3f} |" in card
    assert card.rstrip().endswith("Trained twice; the first run diverged.")
    assert json.loads((tmp_path / QUALITY_FILE).read_text()) == quality
    assert ShapesPipeline.from_pretrained(tmp_path).config.architecture() == tiny.config.architecture()


def test_ship_of_a_rich_model_measures_one_to_three_objects(tmp_path):
    from difflens.embedded.card import CARD_FILE, QUALITY_FILE, ship

    rich = ShapesPipeline.random(ShapesModelConfig(**{**asdict(ShapesModelConfig.tiny()), "world": "rich", "vocab": [],
                                                      "max_text_len": 36}), seed=0)
    quality = ship(rich, {"steps": 2, "model": {}, "text_encoder_init": "enc.safetensors", "freeze_text_encoder": True},
                   dest=tmp_path, n=2, num_steps=1)
    assert set(quality) == {"1", "2", "3"} and quality["3"]["objects"] == 3
    card = (tmp_path / CARD_FILE).read_text()
    assert card.startswith("# Embedded shapes-world model (rich world)") and "embedded-rich" in card
    assert "text encoder pretrained on its own and then frozen" in card
    assert f"| 2 | {quality['2']['color_acc']:.3f} |" in card and "bound" in card
    assert (tmp_path / QUALITY_FILE).read_text() == json.dumps(quality, indent=2)  # part IoU may be NaN


def test_cli_flags_come_from_the_configs(monkeypatch, capsys):
    """world train/render/quality/ship and generate: defaults and --help text are the dataclasses'; a given
    0 stays 0; old flag spellings still work."""
    from difflens.cli import build_parser
    from difflens.configs import config_from_args, field_docs
    from difflens.embedded.cli import (GenerateCommand, QualityCommand, RenderCommand, ShipCommand,
                                       WorldTrainCommand, train_config_from_args)

    parser = build_parser()
    args = parser.parse_args(["world", "train"])
    assert train_config_from_args(args) == TrainConfig()
    assert config_from_args(WorldTrainCommand, args) == WorldTrainCommand()
    assert config_from_args(WorldTrainCommand, parser.parse_args(["world", "train", "--until", "3"])).until == 3
    args = parser.parse_args(["world", "train", "--out", "checkpoints/x", "--steps", "7", "--autoencoder-noise", "0",
                              "--latent-channels", "0", "--caption-dropout", "0", "--threads", "2"])
    cfg = train_config_from_args(args)
    assert (cfg.out, cfg.steps, cfg.autoencoder_latent_noise, cfg.caption_dropout, cfg.threads) == \
        ("checkpoints/x", 7, 0.0, 0.0, 2)
    assert cfg.model == ShapesModelConfig(latent_channels=0) and cfg.batch_size == TrainConfig().batch_size
    wide = train_config_from_args(parser.parse_args(["world", "train", "--num-heads", "8", "--text-width", "96"]))
    assert (wide.model.width, wide.model.text_encoder_width) == (192, 96)
    args = parser.parse_args(["world", "train", "--autoencoder-latent-noise", "0.2"])
    assert train_config_from_args(args).autoencoder_latent_noise == 0.2

    assert config_from_args(RenderCommand, parser.parse_args(["world", "render"])) == RenderCommand()
    render = config_from_args(RenderCommand, parser.parse_args(["world", "render", "--n", "0", "--out", "runs/w",
                                                                "--split", "heldout"]))
    assert (render.n, render.out, render.split) == (0, "runs/w", "heldout")
    assert config_from_args(QualityCommand, parser.parse_args(["world", "quality"])) == QualityCommand()
    quality = config_from_args(QualityCommand, parser.parse_args(["world", "quality", "--n", "3", "--guidance", "0"]))
    assert (quality.n, quality.guidance, quality.steps) == (3, 0.0, QualityCommand().steps)
    ship = config_from_args(ShipCommand, parser.parse_args(["world", "ship", "runs/t", "--notes", "history.md"]))
    assert ship == ShipCommand(train_dir="runs/t", notes="history.md")

    prompt = "a large red circle on the left on a white background"
    assert config_from_args(GenerateCommand, parser.parse_args(["generate", prompt])) == GenerateCommand(prompt)
    gen = config_from_args(GenerateCommand, parser.parse_args(["generate", prompt, "--steps", "2", "--seed", "0",
                                                               "-o", "x.png", "--guidance", "0"]))
    assert gen == GenerateCommand(prompt, steps=2, seed=0, output="x.png", guidance=0.0)

    monkeypatch.setenv("COLUMNS", "2000")  # no line wrapping in --help
    for argv, cls, name in [(["world", "train"], TrainConfig, "loss_t_floor"),
                            (["world", "train"], ShapesModelConfig, "latent_channels"),
                            (["world", "render"], RenderCommand, "split"),
                            (["world", "ship"], ShipCommand, "notes"),
                            (["generate"], GenerateCommand, "guidance")]:
        with pytest.raises(SystemExit):
            build_parser().parse_args([*argv, "--help"])
        text = " ".join(capsys.readouterr().out.split())
        assert field_docs(cls)[name] in text, (argv, name)
        assert "--" + name.replace("_", "-") in text
    with pytest.raises(SystemExit):
        build_parser().parse_args(["world", "train", "--help"])
    assert "--autoencoder-noise" in capsys.readouterr().out


def test_a_rich_world_model_reads_rich_captions_and_trains_on_rich_scenes(tmp_path):
    from dataclasses import replace

    from difflens.embedded.train import training_batch
    from difflens.world import caption_world, vocabulary

    model = replace(ShapesModelConfig.tiny(), world="rich", vocab=[], max_text_len=36)
    model.__post_init__()
    assert model.vocab == vocabulary("rich") and "snowman" in model.vocab
    cfg = TrainConfig(out=str(tmp_path), steps=1, batch_size=3, warmup_steps=1, model=model)
    captions, images, _ = training_batch(0, cfg)
    assert {caption_world(c) for c in captions} == {"rich"} and images.shape == (3, 32, 32, 3)
    pipe = train(cfg, progress=False)
    assert pipe.generate(captions[:1], num_steps=2, seeds=[0]).shape == (1, 32, 32, 3)
    with pytest.raises(ValueError, match="world must be one of"):
        ShapesModelConfig(world="fancy")


def test_shipped_rich_model_draws_each_new_attribute_the_oracle_reads_back():
    """The shipped rich-world model (`embedded-rich`) fits the size budget and draws striped, dotted and checked
    objects, a house, a snowman and a tree, and dotted and gradient backgrounds that the rich oracle reads back.
    (Striped and checked backgrounds it draws as noisy gradients: its card says so.) In scenes of 2 and 3 objects
    each object comes out in its cell with the attributes its own phrase names (binding)."""
    from difflens.embedded import load_embedded
    from difflens.embedded.pipeline import SHIPPED_WEIGHTS
    from difflens.world import read_image
    from difflens.world.caption import parse_caption
    from difflens.world.scoring import score_scene_images

    assert (SHIPPED_WEIGHTS["rich"] / "model.safetensors").stat().st_size <= 25 * 2**20
    pipe = load_embedded(world="rich")
    assert pipe.config.world == "rich"
    # prompt -> (pattern, colour, shape) of its object, and (background, texture) or None where only the colour
    prompts = {
        "a huge striped red house in the center on a white dotted background": (("striped", "red", "house"),
                                                                                ("white", "dotted")),
        "a large dotted blue snowman in the center on a gray checked background": (("dotted", "blue", "snowman"),
                                                                                   ("gray", None)),
        "a large checked green tree in the center on a pink striped background": (("checked", "green", "tree"),
                                                                                  ("pink", None)),
        "a huge yellow diamond in the center on a cyan gradient background": (("solid", "yellow", "diamond"),
                                                                             ("cyan", "gradient")),
    }
    images = pipe.generate(list(prompts), seeds=0)
    for image, (prompt, (obj_want, (bg, texture))) in zip(images, prompts.items()):
        reading = read_image(image, world="rich")
        assert len(reading.objects) == 1, prompt
        obj = reading.objects[0]
        assert (obj.pattern, obj.color, obj.shape) == obj_want, prompt
        assert reading.background == bg and (texture is None or reading.texture == texture), prompt
    scenes = [parse_caption(text) for text in (
        "a large striped red circle on the left and a large dotted blue square on the right on a white background",
        "gray background with a huge green house in the bottom left, a large orange tree on the right and a huge "
        "dotted yellow triangle in the top left")]
    for scene, image in zip(scenes, pipe.generate([s.caption for s in scenes], seeds=0)):
        score = score_scene_images([scene], image[None])
        assert score["count_acc"] == 1 and score["bound_acc"] == 1, (scene.caption, score)


def test_training_can_start_from_a_pretrained_text_encoder(tmp_path):
    """text_encoder_init loads the given weights before the first step (with lr 0 they come out unchanged);
    a file of other shapes is refused by name."""
    from safetensors.torch import save_file

    donor = ShapesPipeline.random(ShapesModelConfig.tiny(), seed=7).text_encoder.state_dict()
    save_file({k: v.contiguous() for k, v in donor.items()}, tmp_path / "enc.safetensors")
    cfg = TrainConfig(out=str(tmp_path / "run"), steps=1, batch_size=2, lr=0.0, warmup_steps=1,
                      text_encoder_init=str(tmp_path / "enc.safetensors"), model=ShapesModelConfig.tiny())
    trained = train(cfg, progress=False).text_encoder.state_dict()
    assert all(torch.equal(trained[k], donor[k]) for k in donor)
    wide = ShapesModelConfig(**{**asdict(ShapesModelConfig.tiny()), "num_heads": 4, "axes_dims_rope": (4, 6, 6)})
    save_file({k: v.contiguous() for k, v in ShapesPipeline.random(wide, seed=0).text_encoder.state_dict().items()},
              tmp_path / "wide.safetensors")
    with pytest.raises(ValueError, match="does not fit"):
        train(TrainConfig(out=str(tmp_path / "run2"), steps=1, batch_size=2, model=ShapesModelConfig.tiny(),
                          text_encoder_init=str(tmp_path / "wide.safetensors")), progress=False)
    with pytest.raises(FileNotFoundError, match="no weights file"):
        train(TrainConfig(out=str(tmp_path / "run3"), steps=1, batch_size=2, model=ShapesModelConfig.tiny(),
                          text_encoder_init=str(tmp_path / "missing.safetensors")), progress=False)
    # a wider transformer keeps the narrow encoder with text_width: context_embedder maps 32 -> 64, as FLUX maps T5
    wider = ShapesModelConfig(**{**asdict(wide), "text_width": ShapesModelConfig.tiny().width})
    assert (wider.width, wider.text_encoder_width) == (64, 32)
    pipe = train(TrainConfig(out=str(tmp_path / "run4"), steps=1, batch_size=2, lr=0.0, warmup_steps=1, model=wider,
                             text_encoder_init=str(tmp_path / "enc.safetensors")), progress=False)
    assert all(torch.equal(pipe.text_encoder.state_dict()[k], donor[k]) for k in donor)
    assert pipe.transformer.context_embedder.weight.shape == (64, 32)
    assert pipe.generate(["a large red circle on the left on a white background"], num_steps=1).shape == (1, 32, 32, 3)
    with pytest.raises(ValueError, match="text_width must be 0"):
        ShapesModelConfig(text_width=30)  # not a multiple of the 4 text heads


def test_autoencoder_init_reuses_a_saved_models_autoencoder_and_skips_its_training(tmp_path):
    """autoencoder_init loads a saved model's autoencoder (fp16 on disk, float32 in training), keeps it exact, and
    trains none; a missing file or a pixel-space model is an error naming the setting."""
    from difflens.embedded.train import AUTOENCODER_CHECKPOINT, checkpoint_step, load_trained

    model = ShapesModelConfig.tiny()
    model.latent_channels = 4
    base = dict(steps=1, batch_size=2, warmup_steps=1, autoencoder_steps=2, model=model)
    donor = train(TrainConfig(out=str(tmp_path / "donor"), **base), progress=False)
    donor.save_pretrained(tmp_path / "shipped")
    pipe = train(TrainConfig(out=str(tmp_path / "run"), autoencoder_init=str(tmp_path / "shipped"), seed=1, **base),
                 progress=False)
    assert not (tmp_path / "run" / AUTOENCODER_CHECKPOINT).exists() and checkpoint_step(tmp_path / "run") == 1
    reused, original = pipe.autoencoder.state_dict(), donor.autoencoder.state_dict()
    assert all(v.dtype == torch.float32 and torch.equal(v, original[k].half().float()) for k, v in reused.items())
    for folder in ("run", "shipped"):  # a training folder (its EMA checkpoint) or a model folder
        loaded = load_trained(tmp_path / folder).autoencoder.state_dict()
        assert all(torch.equal(loaded[k].float(), reused[k]) for k in reused)
    with pytest.raises(FileNotFoundError, match="autoencoder_init"):
        train(TrainConfig(out=str(tmp_path / "r2"), autoencoder_init=str(tmp_path / "nowhere"), **base), progress=False)
    with pytest.raises(ValueError, match="pixel space"):
        train(TrainConfig(out=str(tmp_path / "r3"), autoencoder_init=str(tmp_path / "shipped"),
                          **{**base, "model": ShapesModelConfig.tiny()}), progress=False)


def test_a_frozen_text_encoder_stays_put_while_the_transformer_learns(tmp_path):
    """freeze_text_encoder keeps the encoder's weights (live and EMA) exactly while the transformer moves; a run
    resumed with the other setting is refused by name."""
    from difflens.checkpoint import load_checkpoint
    from difflens.embedded.train import CHECKPOINT

    base = dict(steps=2, batch_size=2, warmup_steps=1, checkpoint_every=1, model=ShapesModelConfig.tiny())
    init = ShapesPipeline.random(ShapesModelConfig.tiny(), seed=0)
    pipe = train(TrainConfig(out=str(tmp_path / "run"), freeze_text_encoder=True, **base), progress=False)
    before, after = init.text_encoder.state_dict(), pipe.text_encoder.state_dict()
    assert all(torch.equal(after[k], before[k]) for k in before)
    live, _ = load_checkpoint(tmp_path / "run" / CHECKPOINT, prefixes=("model.text_encoder.",))
    assert live and all(torch.equal(v, before[k.removeprefix("model.text_encoder.")]) for k, v in live.items())
    moved = pipe.transformer.state_dict()
    assert any(not torch.equal(moved[k], v) for k, v in init.transformer.state_dict().items())
    with pytest.raises(ValueError, match="freeze_text_encoder: checkpoint True, now False"):
        train(TrainConfig(out=str(tmp_path / "run"), **{**base, "steps": 3}), progress=False)
