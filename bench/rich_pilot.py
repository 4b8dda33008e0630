"""Pilot of issue 12: do dictionaries find the world's concepts once the world has concepts to find?

Takes an embedded model trained on the rich world (`difflens world train --world rich ...`, time-boxed), and
  1. scores its generations against their prompts with the rich oracle (held-out prompts);
  2. captures rich-world images at one site and step, trains one TopK SAE (plain inputs, like the demo's
     `sae_none`) and measures the ground truth of every latent beside random directions (`truth_report`);
  3. prints those figures beside the same measures of the demo's dictionary on the shipped (classic) model.

    python bench/rich_pilot.py --model runs/pilot/model [--out runs/pilot] [--images 240] [--tokens 1000000]
Last line of output is JSON.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

import difflens as dl
from difflens.interpret.truth import truth_report, write_truth
from difflens.world import render_parts, sample_scenes
from difflens.world.scoring import score_rich_images

KEYS = ("explained_share", "explained_share_random", "mean_coverage", "mean_coverage_random", "mean_probe_ceiling",
        "mean_coverage_ratio")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True, help="embedded model folder trained on the rich world")
    ap.add_argument("--out", default="runs/pilot")
    ap.add_argument("--images", type=int, default=240)
    ap.add_argument("--quality-images", type=int, default=96)
    ap.add_argument("--site", default="double.1.img.out")
    ap.add_argument("--step", type=int, default=3)
    ap.add_argument("--tokens", type=int, default=1_000_000)
    ap.add_argument("--classic-truth", default="runs/demo/dictionaries/sae_none/truth.json")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model = dl.load_model(f"embedded:{args.model}")
    result: dict = {"model": args.model, "site": args.site, "step": args.step}

    t = time.time()
    scenes = sample_scenes(args.quality_images, seed=11, split="heldout", world="rich")
    images = model.generate([s.caption for s in scenes], seeds=0)
    quality = score_rich_images(scenes, images, [render_parts(s) for s in scenes])
    result["quality"] = quality
    print(f"generation quality on {len(scenes)} held-out rich prompts ({time.time() - t:.0f} s): "
          + ", ".join(f"{k} {v:.2f}" for k, v in quality.items()))
    from PIL import Image

    rows = max(1, min(4, len(images) // 8))
    grid = np.concatenate([np.concatenate(list(images[r * 8:(r + 1) * 8]), 1) for r in range(rows)], 0)
    Image.fromarray(grid).resize((grid.shape[1] * 2, grid.shape[0] * 2), Image.NEAREST).save(out / "samples.png")

    t = time.time()
    store = dl.capture(model, dl_prompts(args.images), sites=[args.site], steps=[args.step], out=out / "store",
                       holdout=0.2, progress=False)
    sae = dl.train_sae(store, args.site, args.step, k=16, num_latents=8 * model.site(args.site).dim,
                       num_tokens=args.tokens, batch_size=4096, k_aux=32, normalization="none",
                       out=out / "sae_none", progress=False)
    metrics = dl.evaluate(sae)
    truth = truth_report(sae)
    write_truth(truth, out / "sae_none" / "truth.json")
    result["fvu_residual"] = metrics["fvu_residual"]
    result["rich"] = {k: truth.get(k) for k in KEYS}
    result["rich_explained_by_concept"] = truth.get("explained_by_concept")
    print(f"capture + SAE + ground truth: {time.time() - t:.0f} s; held-out FVU {metrics['fvu_residual']:.3f}")
    classic = json.loads(Path(args.classic_truth).read_text()) if Path(args.classic_truth).exists() else {}
    result["classic"] = {k: classic.get(k) for k in KEYS}
    print(f"{'measure':<26}{'rich pilot':>12}{'classic demo':>14}")
    for k in KEYS:
        a, b = result["rich"].get(k), result["classic"].get(k)
        print(f"{k:<26}{'' if a is None else f'{a:.3f}':>12}{'' if b is None else f'{b:.3f}':>14}")
    print("latents explained (F1 >= 0.5) by concept:", truth.get("explained_by_concept"))
    print(json.dumps(result))


def dl_prompts(n: int) -> list[str]:
    from difflens.world import world_prompts

    return world_prompts(n, seed=0, world="rich")


if __name__ == "__main__":
    main()
