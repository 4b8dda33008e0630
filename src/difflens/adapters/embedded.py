"""The embedded shapes-world model (difflens.embedded): same FLUX sites, fixed 64 px resolution."""

from __future__ import annotations

import numpy as np

from difflens.adapters.flux import FluxTransformerAdapter


class EmbeddedAdapter(FluxTransformerAdapter):
    """Adapter over a `difflens.embedded.ShapesPipeline` (trained or random)."""

    default_store_dtype = "float16"

    def __init__(self, pipe, name: str = "embedded"):
        from difflens.embedded import DEFAULT_STEPS

        self.pipe = pipe
        self.transformer = pipe.transformer
        self.name = name
        self.default_num_steps = DEFAULT_STEPS
        self.default_resolution = pipe.config.image_size
        self.default_guidance = pipe.config.guidance_scale
        self.main_site_block = len(pipe.transformer.transformer_blocks) - 1

    @property
    def world(self) -> str:
        """The shapes world the model was trained on (its captions are the default prompts)."""
        return getattr(self.pipe.config, "world", "classic")

    def weight_modules(self) -> dict:
        return self.pipe.modules()

    def grid_for(self, resolution: int) -> tuple[int, int]:
        if resolution != self.pipe.config.image_size:
            raise ValueError(f"{self.name} generates {self.pipe.config.image_size} px images only (got resolution {resolution})")
        g = self.pipe.config.grid_size
        return g, g

    def text_len(self) -> int:
        return self.pipe.config.max_text_len

    def _generate(self, prompts, seeds, num_steps, resolution, guidance, plan) -> np.ndarray:
        self.grid_for(resolution)
        scale = self.pipe.resolve_guidance(guidance)
        plan.cfg_batch = scale > 1
        return self.pipe.generate(prompts, num_steps=num_steps, seeds=list(seeds), guidance_scale=scale)
