"""Would SAE latents count as explained if the ground truth named other kinds of concepts? A hypothesis test.

Most latents of an SAE on the embedded models reach no concept of `labels` at held-out F1 >= 0.5. One
explanation is that they follow something real that the labels do not name. This appends candidate concept
families, computed from each stored generated image, to the store's labels, and reruns `truth_report` on one plain
TopK SAE (the `sae_recipe`, no normalisation) with each family and with all of them
(`difflens study extra-concepts`):

    tone   what the token's pixels look like: the palette colour (object colours, their pattern shades,
           background base and second tones) nearest to the mean of its pixel block, within 45 RGB units;
           motif:bg / motif:object = the token is on a background's second tone or an object's pattern shade
    edge   which side of its object a token sits on: edge:<above|below|left|right> = object token whose
           neighbour on that side is not the object; corner:<a>-<b> = two adjacent such sides; edge:tip =
           three or four; and each of those with the object's shape (edge:above&triangle, ...)
    bgpos  where a background token sits: bgpos:<top|middle|bottom>-row, bgpos:<left|center|right>-col (thirds
           of the grid), and each with the background colour (bgpos:top-row&bg:cyan, ...)

Also measured: how the SAE's rare latents (firing on < 0.2 % of train tokens) spread: median firings, distinct
images and distinct grid positions (a latent that memorised a few images would sit in one or two).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from difflens.interpret.labels import SIDES, TokenLabels, neighbour_owner, token_owner

TONE_RADIUS = 45.0  # RGB distance within which a token's mean colour counts as a palette tone
MIN_TOKENS = 8  # positive tokens an extra concept needs to be kept
RARE_RATE = 0.002  # a latent firing on fewer train tokens than this share (and at least once) is rare


def tone_family(store, base: TokenLabels) -> tuple[list[str], np.ndarray]:
    """(names, bool (n_images, T, C')) of the pixel-tone concepts."""
    from difflens.world.palette import palette_tones

    name_of = {"object": "tone:{}", "shade": "tone:{}-shade", "background": "tone:bg-{}", "second": "tone:bg-{}-second"}
    tones = palette_tones()
    names = [name_of[kind].format(name) for name, kind, _ in tones]
    palette = np.array([rgb for _, _, rgb in tones], np.float32)
    second = np.array([kind == "second" for _, kind, _ in tones])
    shade = np.array([kind == "shade" for _, kind, _ in tones])
    gh, gw = base.grid
    out = np.zeros((base.num_images, gh * gw, len(names) + 2), bool)
    for i in range(base.num_images):
        image = store.load_image(i).astype(np.float32)
        H, W, _ = image.shape
        mean_T3 = image.reshape(gh, H // gh, gw, W // gw, 3).mean((1, 3)).reshape(-1, 3)
        dist = ((mean_T3[:, None] - palette[None]) ** 2).sum(-1)
        nearest, close = dist.argmin(1), dist.min(1) < TONE_RADIUS ** 2
        out[i, np.flatnonzero(close), nearest[close]] = True
        out[i, :, -2] = close & second[nearest]
        out[i, :, -1] = close & shade[nearest]
    return names + ["motif:bg", "motif:object"], out


def edge_family(store, base: TokenLabels) -> tuple[list[str], np.ndarray]:
    """(names, bool (n_images, T, C')) of the object-geometry concepts, from the oracle's masks."""
    from difflens.world.oracle import read_image
    from difflens.world.palette import RICH_SHAPES

    sides = list(SIDES)
    corners = [("above", "left"), ("above", "right"), ("below", "left"), ("below", "right")]
    names = ([f"edge:{s}" for s in sides] + [f"corner:{a}-{b}" for a, b in corners] + ["edge:tip"]
             + [f"edge:{s}&{sh}" for s in sides for sh in RICH_SHAPES] + [f"edge:tip&{sh}" for sh in RICH_SHAPES])
    col = {n: j for j, n in enumerate(names)}
    gh, gw = base.grid
    out = np.zeros((base.num_images, gh, gw, len(names)), bool)
    for i in range(base.num_images):
        reading = read_image(store.load_image(i), world=base.world)
        owner = token_owner(reading, base.grid)
        for j, obj in enumerate(reading.objects):
            mine = owner == j
            # SIDES gives, for a background token on side s of an object, the offset to the object: an object
            # token's own neighbour on side s is at the opposite offset
            outside = {s: mine & (neighbour_owner(owner, -dr, -dc) != j) for s, (dr, dc) in SIDES.items()}
            tip = mine & (sum(o.astype(int) for o in outside.values()) >= 3)
            for s in sides:
                out[i][outside[s], col[f"edge:{s}"]] = True
                out[i][outside[s], col[f"edge:{s}&{obj.shape}"]] = True
            for a, b in corners:
                out[i][outside[a] & outside[b], col[f"corner:{a}-{b}"]] = True
            out[i][tip, col["edge:tip"]] = True
            out[i][tip, col[f"edge:tip&{obj.shape}"]] = True
    return names, out.reshape(base.num_images, gh * gw, len(names))


def bgpos_family(store, base: TokenLabels) -> tuple[list[str], np.ndarray]:
    """(names, bool (n_images, T, C')) of background-position concepts (grid thirds, with the background colour)."""
    gh, gw = base.grid
    dense = base.dense()
    background = dense[..., base.index("part:background")]
    colours = [c for c in base.concepts if c.startswith("bg:") and "&" not in c]
    r, c = np.repeat(np.arange(gh), gw), np.tile(np.arange(gw), gh)

    def thirds(x: np.ndarray, n: int, words: tuple[str, str, str], axis: str) -> dict[str, np.ndarray]:
        masks = (x < n // 3, (x >= n // 3) & (x < 2 * n // 3), x >= 2 * n // 3)
        return {f"bgpos:{w}-{axis}": m for w, m in zip(words, masks)}

    bands = {**thirds(r, gh, ("top", "middle", "bottom"), "row"), **thirds(c, gw, ("left", "center", "right"), "col")}
    names, cols = [], []
    for name, band_T in bands.items():
        names.append(name)
        cols.append(background & band_T[None])
        for colour in colours:
            names.append(f"{name}&{colour}")
            cols.append(dense[..., base.index(colour)] & band_T[None])
    return names, np.stack(cols, -1)


FAMILIES = {"tone": tone_family, "edge": edge_family, "bgpos": bgpos_family}
PREFIXES = {"tone": ("tone:", "motif:"), "edge": ("edge:", "corner:"), "bgpos": ("bgpos:",)}


def with_extra(base: TokenLabels, names: list[str], extra_ITC: np.ndarray, min_tokens: int = MIN_TOKENS) -> TokenLabels:
    """`base` with the extra concepts that have at least `min_tokens` positive tokens appended."""
    keep = [j for j in range(len(names)) if extra_ITC[..., j].sum() >= min_tokens]
    dense = np.concatenate([base.dense(), extra_ITC[..., keep]], axis=2)
    return TokenLabels(concepts=base.concepts + [names[j] for j in keep], grid=base.grid,
                       packed=np.packbits(dense, axis=-1, bitorder="little"), readings=base.readings, world=base.world)


def rare_latent_spread(sae, store, site: str, step: int, rare_rate: float = RARE_RATE) -> dict:
    """Median firings, distinct images and distinct token positions of the latents firing on fewer than
    `rare_rate` of the train tokens (and at least once)."""
    reader = store.reader(site, step, "train")
    images: list[list[int]] = [[] for _ in range(sae.num_latents)]
    tokens: list[list[int]] = [[] for _ in range(sae.num_latents)]
    n = 0
    for acts, ids in reader.iter_batches(4096, shuffle=False):
        trace = reader.trace(ids)
        codes = sae.encode(acts.float())
        b, k = (codes.values > 0).nonzero(as_tuple=True)
        for row, latent in zip(b.tolist(), codes.indices[b, k].tolist()):
            images[latent].append(trace["image_id"][row])
            tokens[latent].append(trace["token_index"][row])
        n += len(ids)
    rare = [f for f in range(sae.num_latents) if 0 < len(images[f]) < rare_rate * n]

    def median(xs):
        return float(np.median(xs)) if xs else None

    return {"train_tokens": n, "rare_latents": len(rare), "alive_latents": sum(bool(x) for x in images),
            "median_firings": median([len(images[f]) for f in rare]),
            "median_distinct_images": median([len(set(images[f])) for f in rare]),
            "median_distinct_positions": median([len(set(tokens[f])) for f in rare])}


@dataclass
class ExtraConceptsConfig:
    """`difflens study extra-concepts`: one plain SAE scored with the shipped labels and with extra families."""

    store: str = "runs/rich_id/store"
    """activation store with its generated images and a held-out split"""
    site: str = "double.3.img.out"
    """image-stream site"""
    step: int = 7
    """denoising step"""
    families: list[str] = field(default_factory=lambda: list(FAMILIES))
    """families to add: tone, edge, bgpos ('': the shipped labels and the rare-latent spread only)"""
    num_latents: int = 384
    """SAE latents"""
    k: int = 8
    """active latents per token"""
    tokens: int = 1_000_000
    """SAE training tokens"""
    seed: int = 0
    """SAE and random-direction seed"""


def extra_concepts(cfg: ExtraConceptsConfig = ExtraConceptsConfig(), log=print) -> dict:
    """Train the SAE, measure its rare latents' spread, and report it against the labels as shipped, with each
    family and (several families) with all; returns {settings..., "rare_latent_spread", "rows": [per labelling:
    concepts, explained, random, named_by_new_family, families_covered]}."""
    import difflens as dl

    from difflens.interpret.labels import token_labels
    from difflens.dictionaries.train.config import sae_recipe
    from difflens.interpret.truth import truth_report

    unknown = set(cfg.families) - set(FAMILIES)
    if unknown:
        raise ValueError(f"unknown concept families {sorted(unknown)}: choose from {', '.join(FAMILIES)}")
    store = dl.open_store(cfg.store)
    base = token_labels(store, grid=tuple(store.reader(cfg.site, cfg.step, "train").grid))
    extras = {f: FAMILIES[f](store, base) for f in cfg.families}
    sae = dl.train_sae(store, cfg.site, cfg.step, **sae_recipe(cfg.k, cfg.num_latents, cfg.tokens),
                       normalization="none", seed=cfg.seed, device="cpu", progress=False)
    spread = rare_latent_spread(sae, store, cfg.site, cfg.step)
    log(f"rare latents (< {RARE_RATE:.1%} of train tokens): {spread}")
    labellings = {"labels as shipped": base, **{f"+ {f}": with_extra(base, *extras[f]) for f in cfg.families}}
    if len(cfg.families) > 1:
        names = [n for f in cfg.families for n in extras[f][0]]
        labellings["+ all"] = with_extra(base, names, np.concatenate([extras[f][1] for f in cfg.families], axis=2))
    new_prefixes = tuple(p for f in cfg.families for p in PREFIXES[f])
    rows = []
    for name, labels in labellings.items():
        r = truth_report(sae, store, site=cfg.site, step=cfg.step, labels=labels, sparse_sizes=(),
                         random_seed=cfg.seed)
        named_new = sum(n for c, n in r["explained_by_concept"].items() if c.startswith(new_prefixes))
        covered = sorted(f for f, v in r["family_coverage"].items() if v["covered"])
        rows.append({"labels": name, "concepts": len(r["concepts"]), "explained": round(r["explained_share"], 4),
                     "random": round(r["explained_share_random"], 4), "named_by_new_family": named_new,
                     "families_covered": ",".join(covered)})
        log(f"{name}: {len(r['concepts'])} concepts, explained {r['explained_share']:.3f} (random "
            f"{r['explained_share_random']:.3f}), {named_new} explained latents named by a new family; families at "
            f"0.7 x ceiling: {', '.join(covered)}")
    return {"store": cfg.store, "site": cfg.site, "step": cfg.step, "num_latents": cfg.num_latents, "k": cfg.k,
            "tokens": cfg.tokens, "rare_latent_spread": spread, "rows": rows}
