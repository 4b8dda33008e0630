"""How a feature index is built: `IndexConfig`, the settings the CLI's `features index` flags come from."""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass
class IndexConfig:
    """How a feature index is built (the CLI's flags come from these fields)."""

    top_n: int = 32
    """top images per latent (image score = max activation over its tokens)"""
    samples: int = 64
    """reservoir of firing (image, step) examples per latent, for activation-quantile sets"""
    quantile_bins: int = 10
    """activation-quantile bins the samples are cut into (delphi's scheme)"""
    histogram_bins: int = 64
    """fixed log-spaced histogram bins over [histogram_min, histogram_max) of the activation, so one pass suffices"""
    histogram_min: float = 1e-4
    """lowest histogram edge (smaller positive activations count as underflow)"""
    histogram_max: float = 1e4
    """highest histogram edge (larger activations count as overflow)"""
    split: str = "all"
    """store split to index: all | train | held-out"""
    batch_images: int = 32
    """images per encode batch"""
    seed: int = 0
    """seed of the reservoir's sample"""
    checkpoint_every: int = 0
    """batches between checkpoints of an index folder (0: every minute)"""

    def validate(self) -> "IndexConfig":
        from difflens.store.split import check_split

        check_split(self.split)
        for name in ("top_n", "samples", "quantile_bins", "histogram_bins", "batch_images"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.checkpoint_every < 0:
            raise ValueError(f"checkpoint_every must be >= 0, got {self.checkpoint_every}")
        if not 0 < self.histogram_min < self.histogram_max:
            raise ValueError(f"need 0 < histogram_min < histogram_max, got {self.histogram_min}, {self.histogram_max}")
        return self

    def identity(self) -> dict:
        """The fields that change what the pass records (a resume must match them)."""
        return {k: v for k, v in asdict(self).items() if k not in ("checkpoint_every", "quantile_bins")}
