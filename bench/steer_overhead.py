"""Cost of a steered generation versus an unsteered one of the same prompts and seeds (embedded model).

Edits timed, each over every denoising step and every image token (the worst case):
  add    adds a decoder direction (no encoding),
  clamp  encodes the site with the dictionary at every step and adds the change of one latent,
  active adds only where the latent fires (encodes too).
Uses the demo's whitened SAE (runs/demo/dictionaries/sae_pca, `make demo`) when present, else a random
SAE of the same size. Target: steered / unsteered <= 1.2. Paired ratios (each steered run over the unsteered
run just before it) are reported besides medians, since a shared 2-core machine's speed drifts.

    python bench/steer_overhead.py [--batch 8] [--steps 8] [--repeats 7]
Last line of output is JSON.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

import difflens as dl
from difflens.dictionaries.topk_sae import SAEConfig, TopKSAE
from difflens.steering.hooks import LatentEdit
from difflens.world import world_prompts

DEMO_SAE = Path("runs/demo/dictionaries/sae_pca")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model = dl.load_model("embedded")
    if DEMO_SAE.exists():
        sae, source = dl.load_dictionary(DEMO_SAE), str(DEMO_SAE)
    else:
        site = "double.1.img.out"
        sae, source = TopKSAE(model.site(site).dim, SAEConfig(num_latents=768, k=16)), "random SAE"
        sae.meta = {"site": site}
    site = sae.site
    prompts, seeds = world_prompts(args.batch, seed=1), list(range(args.batch))
    direction = sae.residual_directions([5])[0]
    edits = {
        "add": lambda: LatentEdit(site=site, vector_D=direction, dictionary=sae, latent=5, mode="add", amount=3.0),
        "clamp": lambda: LatentEdit(site=site, vector_D=direction, dictionary=sae, latent=5, mode="clamp", amount=3.0),
        "active": lambda: LatentEdit(site=site, vector_D=direction, dictionary=sae, latent=5, mode="add", amount=3.0,
                                     active_only=True),
    }

    def run(interventions=()) -> float:
        t = time.perf_counter()
        model.generate(prompts, seeds, num_steps=args.steps, interventions=list(interventions))
        return time.perf_counter() - t

    run()  # warm up
    plain, steered = [], {name: [] for name in edits}
    paired = {name: [] for name in edits}
    for _ in range(args.repeats):
        for name, make in edits.items():
            base = run()
            plain.append(base)
            took = run([make()])
            steered[name].append(took)
            paired[name].append(took / base)
    result = {"dictionary": source, "batch": args.batch, "steps": args.steps, "threads": args.threads,
              "unsteered_median_s": statistics.median(plain)}
    print(f"unsteered: median {statistics.median(plain) * 1000:.1f} ms for {args.batch} images x {args.steps} steps "
          f"({source})")
    for name in edits:
        med, ratio = statistics.median(steered[name]), statistics.median(paired[name])
        print(f"{name:>7}: median {med * 1000:.1f} ms, paired ratio {ratio:.3f} (target <= 1.2)")
        result[name] = {"median_s": med, "paired_ratio": ratio}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
