"""Small activation stores the tests share: synthetic sparse activations, and a shapes-world store whose
activations plant known concepts (shapes: letters as in the package docstring)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from difflens.interpret.labels import all_concepts, label_image
from difflens.store import ActivationStore, ChunkRows, EntrySpec, StoreWriter
from difflens.world import ObjectSpec, Scene, render
from difflens.world.scene import caption_for

SITE = "double.1.img.out"
GRID = (4, 4)          # token grid of the synthetic store
WORLD_GRID = (16, 16)  # token grid of the world store
CONCEPTS = all_concepts()


def synthetic_acts(n_images: int, dim: int, site_seed: int, n_tok: int = 16) -> torch.Tensor:
    """Anisotropic sparse-ish activations: a few huge directions plus sparse features."""
    g = torch.Generator().manual_seed(site_seed)
    feats = torch.randn(4 * dim, dim, generator=g)
    feats /= feats.norm(dim=1, keepdim=True)
    n = n_images * n_tok
    codes = torch.zeros(n, 4 * dim)
    idx = torch.randint(0, 4 * dim, (n, 3), generator=g)
    codes.scatter_(1, idx, torch.rand(n, 3, generator=g) * 3)
    big = torch.randn(n, 2, generator=g) * torch.tensor([40.0, 15.0])
    return codes @ feats + big @ torch.randn(2, dim, generator=g) + 5.0


def make_site_store(root: Path, sites: dict[str, torch.Tensor], steps=(0,), n_tok: int = 16,
                    prompts_hash: str = "x") -> Path:
    """Write ``sites`` (name -> (n_images·n_tok, dim) activations) into a real store (``prompts_hash``: its identity)."""
    n_rows = next(iter(sites.values())).shape[0]
    n_images = n_rows // n_tok
    w = StoreWriter(root, dtype="float16")
    w.prepare({"model": "synthetic"}, [{"image_id": i, "prompt": f"p{i}", "seed": i} for i in range(n_images)])
    ids = list(range(n_images))
    rows = {}
    for site, acts in sites.items():
        for st in steps:
            rows[(site, st)] = ChunkRows(acts * (1 + st), np.repeat(ids, n_tok), np.tile(np.arange(n_tok), n_images))
    w.write_chunk(0, ids, None, rows)
    entries = [EntrySpec(site, st, acts.shape[1], "image" if ".img." in site else "text", n_tok, GRID if ".img." in site else None)
               for site, acts in sites.items() for st in steps]
    w.finalize(entries, 1, {"model": "synthetic", "n_images": n_images, "prompts_hash": prompts_hash})
    return root



# a shapes-world store whose activations encode "red" in dimension 0

WORLD_DIM = DIM = 64
OTHER = ("green", "blue", "yellow", "purple", "orange")


def _scenes(n: int) -> list[Scene]:
    from difflens.world import POSITIONS, SHAPES

    out = []
    for i in range(n):
        color = "red" if i % 2 == 0 else OTHER[i % len(OTHER)]
        obj = ObjectSpec(SHAPES[i % 4], color, "small" if i % 4 == 3 else "large", POSITIONS[(3 * i) % 9])
        out.append(Scene(("white", "black", "gray")[i % 3], (obj,)))
    return out


def make_world_store(root, n_images=24, per_chunk=6, images=True, text_site=False, split=False, steps=(0,)):
    """Rendered scenes as 'generated' images; image-token activations: dim 0 = 4 on red tokens, noise elsewhere.
    `split`: also dims 1-3 = 8 on the red tokens whose index is 0, 1, 2 mod 3 (red split three ways), dim 4 = 8 on
    a random 5 % of tokens (noise), dim 5 = 8 on every object token (a coarse concept). `steps`: denoising steps
    of the image site, step t holding the activations x (1 + t) (the text site: step 0)."""
    scenes = _scenes(n_images)
    w = StoreWriter(root, dtype="float16")
    w.prepare({"model": "synthetic"}, [{"image_id": i, "prompt": caption_for(s.background, s.objects), "seed": i}
                                       for i, s in enumerate(scenes)])
    rng = np.random.default_rng(0)
    red = CONCEPTS.index("color:red")
    n_chunks = n_images // per_chunk
    for c in range(n_chunks):
        ids = list(range(c * per_chunk, (c + 1) * per_chunk))
        imgs = np.stack([render(scenes[i])[0] for i in ids])
        acts = []
        for img in imgs:
            is_red = label_image(img, WORLD_GRID)[0][:, red]
            a = rng.normal(size=(256, DIM)).astype(np.float32)
            a[:, 0] = 4.0 * is_red + 0.1 * rng.normal(size=256)
            if split:
                third = np.arange(256) % 3
                for j in range(3):
                    a[:, 1 + j] = 8.0 * (is_red & (third == j))
                a[:, 4] = 8.0 * (rng.random(256) < 0.05)
                a[:, 5] = 8.0 * label_image(img, WORLD_GRID)[0][:, CONCEPTS.index("part:object")]
            acts.append(a)
        rows = {(SITE, t): ChunkRows(torch.tensor(np.concatenate(acts)) * (1 + t), np.repeat(ids, 256),
                                     np.tile(np.arange(256), len(ids))) for t in steps}
        if text_site:
            rows[("double.1.txt.out", 0)] = ChunkRows(torch.randn(4 * len(ids), DIM), np.repeat(ids, 4),
                                                      np.tile(np.arange(4), len(ids)))
        w.write_chunk(c, ids, imgs if images else None, rows)
    entries = [EntrySpec(SITE, t, DIM, "image", 256, WORLD_GRID) for t in steps]
    if text_site:
        entries.append(EntrySpec("double.1.txt.out", 0, DIM, "text", 4, None))
    w.finalize(entries, n_chunks, {"model": "synthetic", "n_images": n_images, "prompts_hash": "h"}, holdout=0.25)
    return ActivationStore.open(root)


# the evaluation tests' run: two image sites of one store, a tiny SAE on each
SHALLOW_SITE = "double.0.img.out"  # SITE is the deeper one
TINY_SAE = dict(num_latents=32, k=4, batch_size=128, num_tokens=1024, lr=3e-3, k_aux=8, dead_window_tokens=512,
                warmup_steps=2, normalization="standardise", checkpoint_every=0, progress=False)
