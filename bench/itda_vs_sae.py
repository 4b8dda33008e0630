"""ITDA's promise, measured: wall time for ITDA and for a TopK SAE to reach the same held-out FVU.

    python bench/itda_vs_sae.py [--n-images 240] [--site double.1.img.out] [--step 3] [--k 16]
                                [--target FVU] [--fvu-space residual|input] [--sae-tokens 2000000]

What is measured
  * Data: one capture of the embedded model (``--n-images`` shapes-world images, one site at one denoising
    step) into an activation store under ``--cache`` (reused when it already holds that capture; the
    capture is not timed). The store is split by image: both methods train on the ``train`` images and are
    scored on the same held-out images (``dl.evaluate`` on the held-out split, the same first
    ``--eval-tokens`` of its fixed shuffle for every evaluation).
  * Both methods: same site, same k (active atoms / latents per token), same batch size, same input
    normalisation (PCA whitening, fitted on the train split inside each run), in memory, on the CPU (or
    ``--device``). ITDA: ``dl.train_itda`` (threshold ``--threshold``; atoms grow with the data, one pass over
    the train split by default). SAE: ``dl.train_sae`` with ``--latents`` latents and Adam lr ``--lr``
    (its other settings are difflens' defaults: 50 warm-up steps, AuxK, loss in the whitened input space).
  * Time to target = wall seconds from calling ``train_*`` (so the normalisation fit, which both do, is
    included) until the end of the first training step after which the held-out FVU is <= the target.
    The held-out FVU is evaluated inside ``on_step`` every ``--itda-eval-every`` / ``--sae-eval-every``
    steps (and at the last step); the time spent in these evaluations is measured with perf_counter and
    subtracted, so it does not count. Because FVU is only known at evaluated steps, a time to target is an
    upper bound, coarse by at most one evaluation interval. ITDA only appends atoms, so a batch that adds
    none leaves its held-out FVU exactly unchanged: that evaluation is skipped and the last value reused
    (marked "same atoms").
  * FVU is reported in residual space (``fvu_residual``: the captured activations' space, what users
    see) by default; ``--fvu-space input`` races on the whitened space the dictionaries see instead. Both
    are printed at every checkpoint.
  * Target: ``--target`` when given; otherwise ITDA runs to the end first and its final held-out FVU is
    the target. The SAE then trains until it reaches the target (its run stops there) or until
    ``--sae-tokens`` are spent. If one method never reaches the target, the target is raised to the
    best FVU both reached (the larger of their best values), times are read off the recorded
    checkpoints for that target, and the output says so (``target_source``).
  * speedup = sae_s / itda_s.

The ITDA paper (Leask et al. 2025) reports minutes for ITDA versus hours for SAEs on LLM residual streams
with large dictionaries on GPUs; here it is a width-96 site of a small diffusion model, about a thousand
atoms (at threshold 0.3) against a 768-latent SAE, on whatever this machine is, so only the ratio is
comparable in spirit. With the default target (ITDA's final FVU) ITDA's time is its time to its own
plateau: the threshold sets that plateau (lower threshold: more atoms, lower FVU, a harder target for the
SAE). The SAE sees the small train split many times (epochs), which is what it takes here; timings on a
shared machine swing with its load, and both runs are exposed to it alike only on average.
Last line of output: JSON {"target_fvu", "itda_s", "sae_s", "speedup", ...}.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import time

import torch


class Race:
    """An ``on_step`` callback that evaluates held-out FVU every few steps and keeps the training clock.

    ``train_s`` at a checkpoint = wall seconds since :meth:`start` minus the seconds spent evaluating.
    Stops training (returns True) once the FVU is <= ``stop_at`` (when given). ``same_if_same_size``: an
    ITDA only ever appends atoms, so when its size has not changed since the last evaluation its codes and
    held-out FVU are exactly the last ones, which are reused instead of recomputed.
    """

    def __init__(self, evaluate, every: int, total_steps: int, space_key: str, stop_at: float | None = None,
                 same_if_same_size: bool = False):
        self.evaluate, self.every, self.total_steps = evaluate, max(1, every), total_steps
        self.key, self.stop_at, self.same_if_same_size = space_key, stop_at, same_if_same_size
        self.checkpoints: list[dict] = []
        self.eval_s = 0.0
        self.t0 = 0.0

    def start(self) -> None:
        self.t0, self.eval_s = time.perf_counter(), 0.0

    def __call__(self, step: int, dictionary, stats: dict) -> bool:
        now = time.perf_counter()
        if step % self.every and step != self.total_steps:
            return False
        train_s = now - self.t0 - self.eval_s
        last = self.checkpoints[-1] if self.checkpoints else None
        reused = bool(self.same_if_same_size and last and last["latents"] == dictionary.num_latents)
        if reused:
            fvu_residual, fvu_input, l0 = last["fvu_residual"], last["fvu_input"], last["l0"]
        else:
            result = self.evaluate(dictionary)
            fvu_residual, fvu_input, l0 = result["fvu_residual"], result["fvu_input_space"], result["l0"]
        self.eval_s += time.perf_counter() - now
        self.checkpoints.append({"step": step, "train_s": train_s, "fvu_residual": fvu_residual,
                                 "fvu_input": fvu_input, "l0": l0, "latents": dictionary.num_latents,
                                 "reused": reused})
        return self.stop_at is not None and self.checkpoints[-1][self.key] <= self.stop_at

    def best(self) -> float:
        return min(c[self.key] for c in self.checkpoints)

    def time_to(self, target: float) -> tuple[float, dict] | None:
        """(training seconds, checkpoint) of the first checkpoint at or below ``target``; None if never."""
        for c in self.checkpoints:
            if c[self.key] <= target:
                return c["train_s"], c
        return None


def table(name: str, race: Race, batch: int, target: float) -> str:
    from difflens.evaluation.metrics import format_table

    rows = [{"step": c["step"], "tokens": c["step"] * batch, "seconds": c["train_s"],
             "fvu_residual": c["fvu_residual"], "fvu_input": c["fvu_input"], "l0": c["l0"],
             "latents": c["latents"], "<=target": "yes" if c[race.key] <= target else "",
             "eval": "same atoms" if c["reused"] else ""}
            for c in race.checkpoints]
    cols = ["step", "tokens", "seconds", "fvu_residual", "fvu_input", "l0", "latents", "<=target", "eval"]
    return f"{name} (held-out FVU at evaluated steps; seconds exclude evaluation)\n" + format_table(rows, cols)


def monotone(values: list[float]) -> bool:
    return all(b <= a for a, b in zip(values, values[1:]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-images", type=int, default=240, help="images captured (20 %% held out)")
    ap.add_argument("--site", default="double.1.img.out")
    ap.add_argument("--step", type=int, default=3, help="denoising step recorded")
    ap.add_argument("--holdout", type=float, default=0.2, help="fraction of images held out")
    ap.add_argument("--cache", default="runs/bench_itda_vs_sae/store", help="activation store folder (reused)")
    ap.add_argument("--k", type=int, default=16, help="active atoms / latents per token (both)")
    ap.add_argument("--batch", type=int, default=4096, help="tokens per step / batch (both)")
    ap.add_argument("--threshold", type=float, default=0.3, help="ITDA relative-loss threshold for new atoms")
    ap.add_argument("--itda-tokens", type=int, default=0, help="ITDA tokens (0: one pass over the train split)")
    ap.add_argument("--latents", type=int, default=768, help="SAE latents")
    ap.add_argument("--lr", type=float, default=1e-3, help="SAE Adam learning rate")
    ap.add_argument("--sae-tokens", type=int, default=2_000_000, help="SAE token budget (stops at the target)")
    ap.add_argument("--target", type=float, default=None, help="target held-out FVU (default: ITDA's final)")
    ap.add_argument("--fvu-space", choices=["residual", "input"], default="residual",
                    help="race on residual-space FVU or on the dictionaries' (whitened) input space")
    ap.add_argument("--eval-tokens", type=int, default=12288, help="held-out tokens per evaluation")
    ap.add_argument("--itda-eval-every", type=int, default=1, help="ITDA steps between evaluations")
    ap.add_argument("--sae-eval-every", type=int, default=5, help="SAE steps between evaluations")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    import difflens as dl

    key = "fvu_residual" if args.fvu_space == "residual" else "fvu_input"
    t = time.perf_counter()
    model = dl.load_model("embedded")
    store = dl.capture(model, n_images=args.n_images, sites=[args.site], steps=[args.step], out=args.cache,
                       holdout=args.holdout, progress=False)
    capture_s = time.perf_counter() - t
    train_reader = store.reader(args.site, args.step, split="train")
    held_reader = store.reader(args.site, args.step, split="held-out")
    print(f"capture: embedded model, {args.n_images} shapes-world images, site {args.site} step {args.step}, "
          f"width {train_reader.dim}; {store.holdout['fraction']:.0%} of images held out -> "
          f"{train_reader.num_rows} train / {held_reader.num_rows} held-out tokens; store {args.cache} "
          f"({capture_s:.1f} s to capture or reuse, not timed below)")
    # Warm the page cache and the readers so neither method pays cold reads the other does not.
    for reader in (train_reader, held_reader):
        for _ in reader.iter_batches(8192, shuffle=True, seed=0, epoch=0):
            pass

    eval_tokens = min(args.eval_tokens, held_reader.num_rows)

    def evaluate(dictionary):
        # A dictionary being trained does not record its store yet (its meta is set when training ends), so
        # the store, site, step and split are named here; the held-out images are never in the train split.
        result = dl.evaluate(dictionary, store, site=args.site, step=args.step, split="held-out",
                             max_tokens=eval_tokens, batch_size=4096, device=args.device)
        assert result["split"] == "held-out", result
        return result

    itda_tokens = args.itda_tokens or (train_reader.num_rows // args.batch) * args.batch
    itda_steps = max(1, math.ceil(itda_tokens / args.batch))
    sae_steps = max(1, math.ceil(args.sae_tokens / args.batch))
    common = {"k": args.k, "batch_size": args.batch, "device": args.device, "progress": False}
    print(f"both: k={args.k}, batch {args.batch} tokens, PCA whitening fitted on the train split inside each run, "
          f"device {args.device}, {torch.get_num_threads()} torch threads; held-out FVU on {eval_tokens} tokens, "
          f"racing on {key}")
    print(f"ITDA: threshold {args.threshold}, {itda_tokens} tokens ({itda_steps} batches), evaluated every "
          f"{args.itda_eval_every} batch(es)")
    print(f"SAE:  {args.latents} latents, lr {args.lr}, up to {args.sae_tokens} tokens ({sae_steps} steps), "
          f"evaluated every {args.sae_eval_every} steps")

    # ---- ITDA: to the end (or the given target) ----
    itda_race = Race(evaluate, args.itda_eval_every, itda_steps, key, stop_at=args.target, same_if_same_size=True)
    itda_race.start()
    dl.train_itda(store, args.site, args.step, threshold=args.threshold, num_tokens=itda_tokens,
                         on_step=itda_race, **common)
    itda_wall = time.perf_counter() - itda_race.t0
    target = args.target if args.target is not None else itda_race.checkpoints[-1][key]
    target_source = "flag --target" if args.target is not None else "ITDA's final held-out FVU"

    # ---- SAE: until it reaches the target or spends its budget ----
    sae_race = Race(evaluate, args.sae_eval_every, sae_steps, key, stop_at=target)
    sae_race.start()
    dl.train_sae(store, args.site, args.step, num_latents=args.latents, lr=args.lr, num_tokens=args.sae_tokens,
                 on_step=sae_race, **common)
    sae_wall = time.perf_counter() - sae_race.t0

    # ---- a target both reach ----
    notes = []
    if itda_race.time_to(target) is None or sae_race.time_to(target) is None:
        missed = [n for n, r in (("ITDA", itda_race), ("SAE", sae_race)) if r.time_to(target) is None]
        new_target = max(itda_race.best(), sae_race.best())
        notes.append(f"{' and '.join(missed)} never reached {target:.4g}; target raised to {new_target:.4g}, "
                     f"the best held-out FVU both reached")
        target, target_source = new_target, f"raised from {target:.4g}: best FVU both reached"
    itda_s, itda_at = itda_race.time_to(target)
    sae_s, sae_at = sae_race.time_to(target)

    print()
    print(table("ITDA", itda_race, args.batch, target))
    print()
    print(table("SAE", sae_race, args.batch, target))
    print()
    itda_curve = [c[key] for c in itda_race.checkpoints]
    shape = "monotone" if monotone(itda_curve) else "NOT monotone"
    print(f"target {key} {target:.4g} ({target_source})")
    print(f"ITDA reaches it after {itda_at['step']} batches ({itda_at['step'] * args.batch} tokens), "
          f"{itda_at['latents']} atoms: {itda_s:.2f} s  (whole run {itda_wall:.1f} s wall incl. "
          f"{itda_race.eval_s:.1f} s of evaluation; held-out FVU {shape} over batches)")
    print(f"SAE  reaches it after {sae_at['step']} steps ({sae_at['step'] * args.batch} tokens, "
          f"{sae_at['step'] * args.batch / max(train_reader.num_rows, 1):.1f} epochs): {sae_s:.2f} s  "
          f"(whole run {sae_wall:.1f} s wall incl. {sae_race.eval_s:.1f} s of evaluation)")
    print(f"speedup (SAE s / ITDA s): {sae_s / itda_s:.2f}x")
    for note in notes:
        print(f"note: {note}")

    result = {
        "target_fvu": target, "itda_s": itda_s, "sae_s": sae_s, "speedup": sae_s / itda_s,
        "fvu_space": args.fvu_space, "target_source": target_source,
        "itda_steps": itda_at["step"], "itda_tokens": itda_at["step"] * args.batch, "atoms": itda_at["latents"],
        "itda_final_fvu": itda_race.checkpoints[-1][key], "itda_monotone": monotone(itda_curve),
        "sae_steps": sae_at["step"], "sae_tokens": sae_at["step"] * args.batch, "sae_latents": args.latents,
        "sae_best_fvu": sae_race.best(), "sae_eval_every": args.sae_eval_every,
        "k": args.k, "batch": args.batch, "threshold": args.threshold, "lr": args.lr,
        "site": args.site, "step": args.step, "n_images": args.n_images, "train_tokens": train_reader.num_rows,
        "eval_tokens": eval_tokens, "device": args.device, "threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
