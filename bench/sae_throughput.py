"""Throughput of one full TopK-SAE training step (forward, backward, optimiser) — difflens vs sparsify.

    python bench/sae_throughput.py --n 1024 --d 16384 --k 32 --batch 4096 [--device cuda --bf16]
        [--arch batchtopk,matryoshka,jumprelu]

Reports tokens/s of
  * difflens: ``SAEState.train_step`` (sparse encoder backward, sparse decode, decoder-gradient
    projection, gradient clipping, fused Adam, decoder renormalisation, dead-latent bookkeeping),
  * the dense bound: time of the encoder matmul forward + its weight-gradient matmul
    (B×N·N×D and D×B·B×N) at the same shapes — what any SAE step with a dense encoder pays,
  * sparsify: ``SparseCoder`` forward, backward, ``remove_gradient_parallel_to_decoder_directions``,
    Adam step, ``set_decoder_norm_to_unit_norm`` — its own training step, same shapes, same run,
    timed in alternating blocks of steps so that machine noise hits both alike.
  * with ``--arch``: each SAE family's ``SAEState.train_step`` at the same shapes (Matryoshka with its default
    prefixes on BatchTopK, JumpReLU with thresholds started at L0 = k), reported as ``<arch>_vs_topk`` =
    its step time ÷ TopK's (the issue asks for ≤ 1.3).
``bound_ratio`` = difflens tokens/s ÷ bound tokens/s (> 1 means faster than the bound, possible
because difflens never forms the dense weight gradient). Last line: JSON.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import platform
import time

import torch


def timeit(fns: dict, rounds: int, iters: int, sync) -> dict[str, float]:
    """Median seconds per call of each function.

    Each round runs every function in a block (one untimed warm-up call, then `iters` timed calls),
    so each is measured in the steady state of its own training loop (its allocations reused, as in
    a real run), while the rounds spread machine noise over all of them alike.
    """
    times = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            fn()
            sync()
            for _ in range(iters):
                t0 = time.perf_counter()
                fn()
                sync()
                times[name].append(time.perf_counter() - t0)
    return {name: sorted(ts)[len(ts) // 2] for name, ts in times.items()}


def family_step(arch: str, args, x: torch.Tensor, tv: torch.Tensor, dev: torch.device):
    """One training step of an SAE family at the bench shape (settings as TopK's: no AuxK, warm-up 1)."""
    from difflens.dictionaries import make_sae
    from difflens.dictionaries.train import SAEState, sae_train_config

    cfg = sae_train_config(arch)(num_latents=args.d, k=args.k, normalization="none", k_aux=0, autocast=args.bf16,
                                 warmup_steps=1)
    sae = make_sae(args.n, cfg.architecture(args.n)).to(dev)
    sae.initialise(x)
    state = SAEState.create(sae, cfg)
    return lambda: state.train_step(x, tv)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1024, help="input width")
    ap.add_argument("--d", type=int, default=16384, help="latents")
    ap.add_argument("--k", type=int, default=32)
    ap.add_argument("--batch", type=int, default=4096)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--bf16", action="store_true", help="bf16 autocast (GPU)")
    ap.add_argument("--rounds", type=int, default=3, help="blocks per function, alternating between them")
    ap.add_argument("--iters", type=int, default=3, help="timed steps per block")
    ap.add_argument("--no-sparsify", action="store_true")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    ap.add_argument("--arch", default="topk",
                    help="comma-separated SAE families to time beside TopK: batchtopk, matryoshka, jumprelu (or all)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from difflens.dictionaries import SAEConfig, TopKSAE
    from difflens.dictionaries.train import SAEState, SAETrainConfig

    dev = torch.device(args.device)
    sync = (lambda: torch.cuda.synchronize()) if dev.type == "cuda" else (lambda: None)
    amp_dtype = torch.bfloat16 if args.bf16 else torch.float32
    g = torch.Generator().manual_seed(0)
    x = torch.randn(args.batch, args.n, generator=g).to(dev)
    tv = (x - x.mean(0)).pow(2).sum()

    # ---- difflens ----
    sae = TopKSAE(args.n, SAEConfig(num_latents=args.d, k=args.k, normalization="none")).to(dev)
    state = SAEState.create(sae, SAETrainConfig(k_aux=0, autocast=args.bf16, warmup_steps=1))
    steps = {"difflens": lambda: state.train_step(x, tv)}
    archs = ["batchtopk", "matryoshka", "jumprelu"] if args.arch == "all" else \
        [a for a in args.arch.split(",") if a and a != "topk"]
    for arch in archs:
        steps[arch] = family_step(arch, args, x, tv, dev)

    # ---- dense bound: encoder matmul forward + its weight-gradient matmul ----
    W = sae.W_enc.detach().clone()
    gpre = torch.randn(args.batch, args.d, generator=g).to(dev)

    def bound():
        with torch.autocast(dev.type, dtype=amp_dtype, enabled=args.bf16):
            x @ W.t()
            gpre.t() @ x

    steps["bound"] = bound

    # ---- sparsify's own training step ----
    if not args.no_sparsify:
        with contextlib.redirect_stdout(io.StringIO()):
            from sparsify import SparseCoder, SparseCoderConfig
        sp = SparseCoder(args.n, SparseCoderConfig(num_latents=args.d, k=args.k), device=dev)
        opt = torch.optim.Adam(sp.parameters(), lr=2e-4, betas=(0.0, 0.99))

        def sp_step():
            with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=args.bf16):
                out = sp(x)
            out.fvu.backward()
            sp.remove_gradient_parallel_to_decoder_directions()
            opt.step()
            opt.zero_grad(set_to_none=True)
            sp.set_decoder_norm_to_unit_norm()

        steps["sparsify"] = sp_step

    t = timeit(steps, args.rounds, args.iters, sync)
    t_ours, t_bound = t["difflens"], t["bound"]
    result = {
        "device": str(dev) if dev.type == "cpu" else torch.cuda.get_device_name(dev),
        "cpu": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        "n": args.n, "d": args.d, "k": args.k, "batch": args.batch, "bf16": args.bf16, "rounds": args.rounds, "iters": args.iters,
        "step_s": t_ours, "bound_s": t_bound,
        "tokens_per_s": args.batch / t_ours,
        "bound_tokens_per_s": args.batch / t_bound,
        "bound_ratio": t_bound / t_ours,
    }
    for arch in archs:
        result[f"{arch}_step_s"] = t[arch]
        result[f"{arch}_vs_topk"] = t[arch] / t_ours
    if "sparsify" in t:
        t_sp = t["sparsify"]
        result.update({"sparsify_step_s": t_sp, "sparsify_tokens_per_s": args.batch / t_sp,
                       "speedup_vs_sparsify": t_sp / t_ours, "sparsify_bound_ratio": t_bound / t_sp})

    for key in ("tokens_per_s", "bound_tokens_per_s", "sparsify_tokens_per_s"):
        if key in result:
            print(f"{key:>24}: {result[key]:,.0f}")
    print(f"{'bound_ratio':>24}: {result['bound_ratio']:.2f}")
    for arch in archs:
        print(f"{arch + '_vs_topk':>24}: {result[arch + '_vs_topk']:.2f}x")
    if "speedup_vs_sparsify" in result:
        print(f"{'speedup_vs_sparsify':>24}: {result['speedup_vs_sparsify']:.2f}x")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
