"""A tiny run folder like `difflens demo` writes, built on the fly from the embedded-tiny model (browser tests)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

import difflens as dl

IMG, TXT = "double.0.img.out", "double.0.txt.out"
EVIL = 'red <script>alert("x")</script> <img src=x onerror=alert(1)>'
EVIL_PROMPT = "a red circle <script>bad()</script>"
SMALL = dict(k=4, num_latents=48, batch_size=128, k_aux=8, dead_window_tokens=512, lr=3e-3, warmup_steps=5,
             num_tokens=128 * 20, progress=False, checkpoint_every=0, normalization="none")


PROMPTS = [f"a {c} {s} on a white background" for c in ("red", "green", "blue", "yellow")
           for s in ("circle", "square", "triangle", "diamond")]


def tiny_store(root: Path, sites=(IMG, TXT), steps=(0, 1)):
    """(model, store folder): embedded-tiny run over 16 prompts at ``steps`` of as many denoising steps, a quarter
    of the images held out."""
    model = dl.load_model("embedded-tiny")
    dl.capture(model, PROMPTS, sites=list(sites), steps=list(steps), out=root, num_steps=max(steps) + 1, holdout=0.25,
               progress=False)
    return model, root


def build_run(root: Path) -> Path:
    """A run folder like `difflens demo` writes, tiny: store (embedded-tiny, 16 images, steps 0 and 1), an SAE and
    an ITDA on the image site, an SAE on the text site, feature indexes, autointerp results with hostile text,
    truth.json, summary.json and a plot; and a Matryoshka SAE on the image site (prefixes 12, 48), indexed only."""
    torch.manual_seed(0)
    tiny_store(root / "store")
    # a prompt file may hold any text: image 0's prompt carries markup (the model itself knows only its words)
    listed = json.loads((root / "store" / "prompts.json").read_text())
    listed[0]["prompt"] = EVIL_PROMPT
    (root / "store" / "prompts.json").write_text(json.dumps(listed))
    store = dl.open_store(root / "store")
    dicts = root / "dictionaries"
    dl.train_sae(store, IMG, 1, out=dicts / "sae", **SMALL)
    dl.train_itda(store, IMG, 1, out=dicts / "itda", k=4, batch_size=128, num_tokens=128 * 8, progress=False,
                  normalization="none",
                  checkpoint_every=0)
    dl.train_sae(store, TXT, 1, out=dicts / "text_sae", **SMALL)
    for name in ("sae", "itda", "text_sae"):
        d = dl.load_dictionary(dicts / name)
        index = dl.feature_index(d, store, steps="all", out=dicts / name / "index", top_n=6, samples=12,
                                 quantile_bins=3, batch_images=8)
        alive = torch.nonzero(index.alive()).squeeze(1).tolist()
        features = {str(i): {"latent": i, "status": "ok", "score": 0.5 + 0.01 * (j % 40), "auroc": 0.7,
                             "balanced_accuracy": 0.6,
                             "explanation": {"explanation": EVIL if j == 0 else f"explanation {i} shapes",
                                             "concept": "color:red" if j == 0 else "shape:circle"}}
                    for j, i in enumerate(alive[:6])}
        out = dicts / name / "index" / "autointerp" / "oracle"
        out.mkdir(parents=True)
        (out / "results.json").write_text(json.dumps({"backend": "oracle", "features": features, "note": "test"}))
        truth = {"dictionary": name, "concepts": ["color:red", "<b>bold</b>"], "rules": {"auroc": "token level"},
                 "explained_share": 0.25, "explained_share_random": 0.0,
                 "latents": [{"latent": i, "concept": "<b>bold</b>" if j == 1 else "color:red", "f1": 0.5,
                              "precision": 0.6, "recall": 0.4, "auroc": 0.6 + 0.05 * j, "image_auroc": 0.9,
                              "iou": 0.3} for j, i in enumerate(alive[:5])]}
        if name != "text_sae":  # the text dictionary keeps a report written before the precise share
            precise_truth(truth, init=name == "sae")
        (dicts / name / "truth.json").write_text(json.dumps(truth))
    dl.train_sae(store, IMG, 1, out=dicts / "matryoshka", arch="matryoshka", prefixes=(0.25, 1.0), **SMALL)
    dl.feature_index(dl.load_dictionary(dicts / "matryoshka"), store, steps="all", out=dicts / "matryoshka" / "index",
                     top_n=6, samples=12, quantile_bins=3, batch_images=8)
    (root / "plots").mkdir()
    from PIL import Image

    Image.fromarray(np.zeros((8, 8, 3), dtype=np.uint8)).save(root / "plots" / "ok.png")
    secret = root.parent / "secret.png"
    secret.write_bytes(b"secret outside the run")
    os.symlink(secret, root / "plots" / "escape.png")
    os.symlink(root.parent, root / "plots" / "up")
    summary = {"site": IMG, "step": 1, "plots": [str(root / "plots" / "ok.png")],
               "metrics": [{"dictionary": "sae", "fvu_residual": 0.25, "variance_explained": 0.75, "l0": 4.0,
                            "dead_fraction": 0.0},
                           {"dictionary": "itda", "fvu_residual": 0.5, "variance_explained": 0.5, "l0": 4.0,
                            "dead_fraction": 0.0}]}
    (root / "summary.json").write_text(json.dumps(summary))
    return root


HEADLINE_DEFINITION = ("precise share: alive latents whose activations above 0.5 x their train max are >= 90% precise "
                       "for one specific concept on held-out images")
# per latent row j of the first five alive: precise concept, counts?, upper precision, band precision and fires
PRECISE_ROWS = [
    ("color:blue", True, 0.95, [None, 0.1, 0.2, None, 0.4, 0.8, 0.9, 1.0, 1.0, 0.875], [0, 30, 12, 0, 9, 5, 10, 4, 2, 8]),
    ("shape:square", False, 0.4, [0.05, 0.1, 0.2, 0.3, 0.3, 0.4, 0.4, None, None, None], [50, 40, 20, 10, 6, 3, 2, 0, 0, 0]),
    ("shape:triangle", True, 0.92, None, None),
    ("<b>bold</b>", False, 0.3, [0.3] * 10, [1] * 10),
    ("color:green", False, None, [None] * 10, [0] * 10),
]


def precise_truth(truth: dict, init: bool) -> dict:
    """Add what truth.json holds since the precise share became its headline (interpret.truth): headline, summary,
    levels and each latent's precise match with its specificity by activation level."""
    truth["headline"] = {"name": "precise_share", "definition": HEADLINE_DEFINITION, "value": 0.182,
                         "interval": [0.151, 0.21], "random": 0.025, "random_interval": [0.01, 0.04]}
    if init:
        truth["headline"].update(init=0.03, init_interval=[0.02, 0.045])
    S = lambda share: {"alive": 40, "precise_share": share, "precise_share_coarse": share + 0.05, "ap_share": 0.1,  # noqa: E731
                       "f1_share": 0.25, "mean_union_f1": 0.3, "intervals": {"precise_share": [0.151, 0.21],
                                                                              "f1_share": [0.2, 0.3]}}
    truth["summary"] = {"dictionary": S(0.182), "random": S(0.025), **({"init": S(0.03)} if init else {})}
    truth["levels"] = {"unit": "fraction of the latent's max activation on train tokens",
                       "bands": [round(j / 10, 3) for j in range(11)], "upper": 0.5}
    for row, (concept, precise, upper, bands, fires) in zip(truth["latents"], PRECISE_ROWS):
        row.update(precise_concept=concept, precise=precise, upper_precision=upper,
                   upper_lift=None if upper is None else round(upper / 0.1, 4), upper_fires=29 if upper else 0,
                   upper_recall=0.5, any_precision=0.41, band_precision=bands, band_fires=fires,
                   coarse_concept="part:fill", precise_coarse=True, ap_concept=concept, ap=0.66)
    truth["latents"][2].update(detection_token=0.875, detection_image=0.75)
    return truth


class SteeringStubRun:
    """What the browser's steering checks ask of a run: dictionaries by name ("sae" only), each with an index of 16
    latents; no store."""

    store = None

    def dictionary(self, name):
        from difflens.browser.run import NotFound

        if name != "sae":
            raise NotFound(f"no dictionary named {name!r} in this run")
        return SimpleNamespace(index=SimpleNamespace(num_latents=16))
