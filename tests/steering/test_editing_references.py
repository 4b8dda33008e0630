"""The editing benchmark without an oracle: scores against the reference generations (PSNR / SSIM inside and
outside the mask, LPIPS, CLIP on a tiny random model), RIEBench's masks and categories, on flux-tiny and sdxl-tiny."""

from __future__ import annotations

import json
import sys
import types

import numpy as np
import pytest
import torch
from tiny_models import adapter

from difflens.steering.editing import pairs as P
from difflens.steering.editing.image_scores import (MASKED, PIXEL_SCORES, PSNR_CAP, WHOLE_IMAGE, pixel_scores,
                                                    prepare_mask, psnr, ssim)
from difflens.steering.editing.learned_scores import CLIP_MISSING, LPIPS_MISSING, load_learned_scorers


def _image(seed: int, shape=(24, 24, 3)) -> np.ndarray:
    """A smooth 8-bit test image (a blurred random field, so SSIM's windows see structure)."""
    rng = np.random.default_rng(seed)
    x = torch.from_numpy(rng.random((1, shape[2], shape[0] // 4, shape[1] // 4)))
    x = torch.nn.functional.interpolate(x, size=shape[:2], mode="bilinear", align_corners=False)
    return (x[0].permute(1, 2, 0).numpy() * 255).astype(np.uint8)


def _noisy(x: np.ndarray, sd: float, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.clip(x + rng.normal(0, sd, x.shape), 0, 255).astype(np.uint8)


# ------------------------------------------------------------------ weight-free scores
def test_ssim_is_one_on_itself_and_falls_with_noise():
    x = _image(0)
    assert ssim(x, x) == pytest.approx(1.0)
    scores = [ssim(x, _noisy(x, sd)) for sd in (2, 8, 32, 96)]
    assert all(a > b for a, b in zip(scores, scores[1:])) and scores[0] > 0.9 and scores[-1] < 0.5
    assert ssim(x, _image(5)) < 0.5  # unrelated images
    region = np.zeros(x.shape[:2], bool)
    region[:, :12] = True
    y = x.copy()
    y[:, 12:] = 255 - y[:, 12:]  # the right half changed only
    assert ssim(y, x, region) > ssim(y, x, ~region) and np.isnan(ssim(x, x, np.zeros_like(region)))
    assert psnr(x, x) == PSNR_CAP and psnr(x, _noisy(x, 8)) > psnr(x, _noisy(x, 32))


def test_ssim_agrees_with_skimage_when_installed():
    metrics = pytest.importorskip("skimage.metrics")
    x, y = _image(0), _noisy(_image(0), 20)
    ref = metrics.structural_similarity(x, y, channel_axis=2, gaussian_weights=True, sigma=1.5,
                                        use_sample_covariance=False, data_range=255)
    assert ssim(x, y) == pytest.approx(ref, abs=0.03)  # skimage crops the borders, we replicate them


def test_pixel_scores_compare_outside_with_the_source_and_inside_with_the_target():
    source, target = _image(0), _image(1)
    mask = np.zeros(source.shape[:2], bool)
    mask[6:18, 6:18] = True
    edited = np.where(mask[..., None], target, source)  # a perfect local edit
    got = pixel_scores(edited, source, target, mask)
    assert got["region"] == MASKED
    assert got["psnr_outside"] == got["psnr_inside"] == PSNR_CAP
    unedited, replaced = pixel_scores(source, source, target, mask), pixel_scores(target, source, target, mask)
    assert got["ssim_inside"] > unedited["ssim_inside"] + 0.2 and got["ssim_outside"] > replaced["ssim_outside"] + 0.2
    assert unedited["ssim_outside"] == replaced["ssim_inside"] == pytest.approx(1.0)
    whole = pixel_scores(edited, source, target, None)  # no mask: every pixel against both references
    assert whole["region"] == WHOLE_IMAGE and all(whole[k] is not None for k in PIXEL_SCORES)
    assert whole["psnr_outside"] < PSNR_CAP and whole["psnr_inside"] < PSNR_CAP
    assert pixel_scores(edited, source, target, np.ones_like(mask))["psnr_outside"] is None  # nothing outside


def test_masks_are_blurred_resized_to_the_grid_and_thresholded():
    big = np.zeros((512, 512))
    big[128:384, 64:320] = 255  # 0..255 paintings read as 0..1
    tokens = prepare_mask(big, (8, 8)).reshape(8, 8)
    want = np.zeros((8, 8))
    want[2:6, 1:5] = 1
    assert torch.equal(tokens, torch.from_numpy(want).float())
    small = np.zeros((4, 4))  # a mask coarser than the grid is resized up
    small[:2, :2] = 1
    assert prepare_mask(small, (8, 8)).reshape(8, 8)[:3, :3].all() and prepare_mask(small, (8, 8)).sum() < 30
    speck = np.zeros((64, 64))
    speck[40, 10] = 1  # thresholds to nothing: its strongest token is kept
    kept = prepare_mask(speck, (8, 8)).reshape(8, 8)
    assert kept.sum() == 1 and kept[5, 1] == 1
    one = np.zeros((64, 64))
    one[24:32, 24:32] = 1  # exactly token (3, 3): a wide blur and a low threshold dilate it, no blur does not
    assert prepare_mask(one, (8, 8), blur=0, threshold=0.05).sum() == 1
    dilated = prepare_mask(one, (8, 8), blur=0.1, threshold=0.05).reshape(8, 8)
    assert dilated[2:5, 2:5].all() and dilated.sum() == 9


def test_riebench_editing_types_are_the_categories(tmp_path):
    rows = [{"original_prompt": "a [red] car", "editing_prompt": "a [blue] car", "editing_type": "color"},
            {"original_prompt": "a cat", "editing_prompt": "a dog", "editing_type_id": "1"},
            {"original_prompt": "a cat", "editing_prompt": "a cat with a hat", "editing_type": "add",
             "category": "mine"},
            {"original_prompt": "a house", "editing_prompt": "a red house"}]
    path = tmp_path / "rie.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert [p.category for p in P.read_pairs(path)] == ["color", "change_object", "mine", "edit"]


# ------------------------------------------------------------------ LPIPS and CLIP
def _tiny_clip(folder) -> str:
    """A randomly initialised CLIPModel with its processor (a byte-level vocabulary, no merges) saved to folder."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer

    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars = [chr(b) for b in printable] + [chr(256 + i) for i in range(256 - len(printable))]  # GPT-2's byte map
    vocab = {t: i for i, t in enumerate([*chars, *(c + "</w>" for c in chars), "<|startoftext|>", "<|endoftext|>"])}
    tokenizer = CLIPTokenizer(vocab=vocab, merges=[])
    images = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    CLIPProcessor(image_processor=images, tokenizer=tokenizer).save_pretrained(folder)
    small = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2)
    config = CLIPConfig(text_config=dict(vocab_size=len(vocab), max_position_embeddings=32,
                                         bos_token_id=vocab["<|startoftext|>"], eos_token_id=vocab["<|endoftext|>"],
                                         **small),
                        vision_config=dict(image_size=32, patch_size=8, **small), projection_dim=8)
    torch.manual_seed(0)
    model = CLIPModel(config)
    with torch.no_grad():  # CLIP's initial weights are too small for prompts to differ: widen them
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0, 0.5)
    model.save_pretrained(folder)
    return str(folder)


class _FakeLpipsNet(torch.nn.Module):
    """Stands in for lpips.LPIPS (whose AlexNet weights need a download): mean absolute difference per image."""

    def __init__(self, net="alex", verbose=True):
        super().__init__()

    def forward(self, a, b):
        return (a - b).abs().mean((1, 2, 3), keepdim=True)


def test_learned_scorers_say_what_is_missing(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "lpips", None)  # not installed
    found = load_learned_scorers(clip_model=None)
    assert found.scorers == [] and found.lines == [LPIPS_MISSING, CLIP_MISSING]
    assert found.scores(np.zeros((2, 8, 8, 3)), None, None, [], []) == [{}, {}]
    with pytest.raises(ValueError, match="no CLIP model and processor could be loaded"):
        load_learned_scorers(clip_model=str(tmp_path / "nothing"), lpips_net=None)


def test_clip_embeds_the_references_once_for_every_method_scored_against_them(tmp_path):
    from difflens.steering.editing.learned_scores import ClipScorer

    clip = ClipScorer(_tiny_clip(tmp_path / "clip"))
    rng = np.random.default_rng(0)
    source, target, a, b = (rng.integers(0, 256, (2, 32, 32, 3), dtype=np.uint8) for _ in range(4))
    texts = (["a red circle", "a blue square"], ["a green circle", "a blue triangle"])
    first = clip.scores(a, source, target, *texts)
    embedded = []
    clip.image_embeddings = lambda x, f=clip.image_embeddings: embedded.append(len(x)) or f(x)
    again, other = clip.scores(a, source, target, *texts), clip.scores(b, source, target, *texts)
    assert again == first  # the remembered references give the very same scores
    assert embedded == [2, 2]  # only the edited images were embedded again
    assert other != first
    changed = clip.scores(a, target, source, *texts)  # other references (by content): embedded anew
    assert changed[0]["clip_image_source"] == pytest.approx(first[0]["clip_image_target"])


# ------------------------------------------------------------------ the benchmark on real-model adapters
REAL = {"flux-tiny": "double.0.img.out", "sdxl-tiny": "unet.down_blocks.1.attentions.0.out"}


@pytest.mark.parametrize("model", list(REAL))
def test_real_model_edits_are_scored_against_the_references(model, tmp_path, monkeypatch, capsys):
    """A RIEBench file (one pair masked, one not) on a tiny real-model adapter: every weight-free column has numbers,
    categories are the editing types, nothing speaks of an oracle; on flux-tiny CLIP (tiny random model) and LPIPS
    (a stand-in network) fill their columns too, on sdxl-tiny their lines say what is missing."""
    from difflens.steering.editing.run import BenchConfig, format_bench_table, run_edit_bench

    a = adapter(model)
    mask = np.zeros((64, 64), int)
    mask[16:40, 16:40] = 1
    path = tmp_path / "rie.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in [
        {"original_prompt": "a [cat]", "editing_prompt": "a [dog]", "editing_type": "object", "mask": mask.tolist()},
        {"original_prompt": "a [red] car", "editing_prompt": "a [blue] car", "editing_type": "color"}]))
    learned = {}
    if model == "flux-tiny":
        monkeypatch.setitem(sys.modules, "lpips", types.SimpleNamespace(LPIPS=_FakeLpipsNet))
        learned = {"clip_model": _tiny_clip(tmp_path / "clip")}
    else:
        monkeypatch.setitem(sys.modules, "lpips", None)
    res = run_edit_bench(BenchConfig(pairs=str(path), methods=["dense", "swap"], sites=[REAL[model]], n=2,
                                     num_steps=1, dense_strengths=[1.0], n_boot=10, out=str(tmp_path / "r.json"),
                                     **learned), model=a)
    log = capsys.readouterr().err
    assert "oracle pairs" not in log and "no oracle" in log
    assert {(r["category"], r["method"]) for r in res["rows"]} == {(c, m) for c in ("object", "color")
                                                                  for m in ("dense", "swap")}
    assert res["oracle"] is False and "success" not in res["definitions"]
    for rec in res["pairs"]:
        assert rec["success"] is None and all(isinstance(rec[k], float) for k in PIXEL_SCORES), rec
        assert rec["region"] == (MASKED if rec["category"] == "object" else WHOLE_IMAGE)
        if rec["method"] == "swap":  # the swap's image is the target reference
            assert rec["psnr_inside"] == PSNR_CAP and rec["ssim_inside"] == pytest.approx(1.0)
    for r in res["rows"]:
        assert all(r[k] is not None and r[f"{k}_lo"] <= r[k] <= r[f"{k}_hi"] for k in PIXEL_SCORES)
    table = format_bench_table(res["rows"], res["random_reference"], res["scorers"])
    assert "oracle pairs" not in table and "no oracle" in table and "clean %" not in table
    assert WHOLE_IMAGE in table and "ssim out" in table and "psnr in" in table
    if model == "flux-tiny":
        clip_keys = ("clip_image_source", "clip_image_target", "clip_text_target", "clip_text_source")
        for rec in res["pairs"]:
            assert all(abs(rec[k]) <= 1 + 1e-5 for k in clip_keys) and rec["lpips_source"] >= 0
            if rec["method"] == "swap":
                assert rec["clip_image_target"] == pytest.approx(1, abs=1e-4) and rec["lpips_target"] == 0
        assert len({round(rec["clip_text_target"], 5) for rec in res["pairs"]}) > 1  # prompts read differently
        assert "clipI tgt" in table and "lpips src" in table and "CLIP: " + learned["clip_model"] in table
    else:
        assert LPIPS_MISSING in table and CLIP_MISSING in table and res["rows"][0]["lpips_source"] is None
