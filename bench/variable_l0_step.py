"""Step time of the variable-L0 SAE families vs TopK at the demo site's shape, on whitened-like data with a few
loud tokens (so BatchTopK's widest token keeps K ≫ k latents and padded codes would cost B·K·D).

    OMP_NUM_THREADS=1 python bench/variable_l0_step.py [--loud 8 --scale 10 --arch batchtopk,matryoshka,jumprelu]

Prints each family's median ``SAEState.train_step`` seconds, its ratio to TopK's, and the padded width K of its
codes (BatchTopK / Matryoshka: the widest token's kept latents); last line: JSON.
"""

from __future__ import annotations

import argparse
import json
from types import SimpleNamespace

import torch

from sae_throughput import family_step, timeit


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=96, help="input width")
    ap.add_argument("--d", type=int, default=768, help="latents")
    ap.add_argument("--k", type=int, default=16)
    ap.add_argument("--batch", type=int, default=4096)
    ap.add_argument("--loud", type=int, default=8, help="tokens scaled by --scale")
    ap.add_argument("--scale", type=float, default=10.0)
    ap.add_argument("--arch", default="batchtopk,matryoshka,jumprelu")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--iters", type=int, default=5)
    args = ap.parse_args()
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(args.batch, args.n, generator=g)  # whitened: unit covariance
    x[torch.randperm(args.batch, generator=g)[: args.loud]] *= args.scale
    tv = (x - x.mean(0)).pow(2).sum()
    ns = SimpleNamespace(n=args.n, d=args.d, k=args.k, bf16=False)
    archs = ["topk", *[a for a in args.arch.split(",") if a]]
    steps = {a: family_step(a, ns, x, tv, torch.device("cpu")) for a in archs}
    times = timeit(steps, args.rounds, args.iters, lambda: None)
    widths = {}
    for a in archs:  # the padded width of one more step's codes
        from difflens.dictionaries import make_sae
        from difflens.dictionaries.train import sae_train_config
        sae = make_sae(args.n, sae_train_config(a)(num_latents=args.d, k=args.k, normalization="none")
                       .architecture(args.n))
        sae.initialise(x)
        with torch.no_grad():
            widths[a] = int(sae.forward_train(x).values_BK.shape[1])
    result = {a: {"step_s": round(times[a], 4), "vs_topk": round(times[a] / times["topk"], 2), "K": widths[a]}
              for a in archs}
    for a, r in result.items():
        print(f"{a:11s} {r['step_s'] * 1e3:8.1f} ms/step  {r['vs_topk']:5.2f}x TopK  K={r['K']}")
    print(json.dumps({"shape": vars(args), "results": result}))


if __name__ == "__main__":
    main()
