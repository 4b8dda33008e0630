"""Interpretation: what do a dictionary's latents mean?

    index/         feature index: one streaming pass per (site, steps) -> per-latent frequency, max/mean activation,
                   histogram, top images, activation-quantile samples (safetensors + JSON, resumable)
    heatmap.py     token activation maps painted over images (blue, alpha ∝ √ normalised activation)
    cards.py       feature cards: top images with heatmaps, prompts, histogram, per-step frequency
    vlm.py         OpenAI-compatible vision-language client: cache, retries, bounded concurrency, ledger, dry run
    labels.py      token-level ground truth of the embedded world, read by the oracle from stored images
    truth.py       per-latent concept matching against the labels, with a random floor and a probe ceiling
    autointerp.py  explainer and held-out scorer (oracle or VLM backend), SAE vs ITDA vs neurons
    latent_spec.py which latents a spec names (all | N at random | 1,5,9): autointerp, browse --export, demo
    cli.py         `difflens features index|show|truth`, `difflens autointerp`
"""
