"""Can a reader see a colour latent's colour on its feature card? Blue paint against the spotlight style.

For every image-site dictionary with a `truth.json` and an `index/`, the latents whose best ground-truth concept is
one colour (`color:<c>`: object colour; `bg:<c>`: background colour) at held-out F1 >= `min_f1` are the colour
latents. Each of their top card images is drawn as the card draws it (`heatmap.draw_activation`, at the image's
own resolution) in each style, and also left plain (the ceiling: what the raw image shows). Two readings per drawn
image (`difflens features readability --run RUN`):

  colour   the pixels of the latent's hottest token, each named by its nearest colour of the world's palette
           (object colours and their pattern shades, background base and second tones, the paint's blue); the
           token reads as its most common name, and the image "shows the colour" when that is the concept's.
           Blue paint is 85 % opaque at the max, so it is near 0 by construction: the point is how far below
           the plain image's share it is, and that the spotlight keeps that share.
  marked   whether the style visibly marks what it marks (mean RGB distance from the plain image >= 40 over a
           token's pixels): blue paints firing tokens, so its share is over tokens at >= half the latent's max;
           the spotlight fades silent tokens, so its share is over tokens where the latent is silent. Light
           pixels sit close to the spotlight's grey, so this is where the spotlight can fail.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np

from difflens.reading import read_json
from difflens.store.run_layout import index_folder, truth_path

from .heatmap import BLUE, STYLES, draw_activation, upsample_map
from .labels import block_mean

VISIBLE = 40.0  # mean RGB distance over a token's pixels that a reader sees as marked


def palette() -> tuple[list[str], np.ndarray]:
    """(names, (P, 3) RGB): every colour a reader could name on a card, shades under their colour's name."""
    from difflens.world.palette import palette_tones

    entries = [(name, rgb) for name, _kind, rgb in palette_tones()] + [("paint-blue", tuple(BLUE))]
    return [n for n, _ in entries], np.asarray([rgb for _, rgb in entries], dtype=np.float32)


def hottest_token_colour(drawn_HWC: np.ndarray, amap_hw: np.ndarray, names: list[str], rgb_P3: np.ndarray) -> str:
    """The most common palette name among the pixels of the map's hottest token in the drawn image."""
    amap = np.asarray(amap_hw, dtype=np.float32)
    pixels = upsample_map(amap, *drawn_HWC.shape[:2])
    block = drawn_HWC[pixels == amap.max()].astype(np.float32)
    nearest = ((block[:, None, :] - rgb_P3[None]) ** 2).sum(-1).argmin(1)
    return Counter(names[i] for i in nearest).most_common(1)[0][0]


def marked_share(drawn_HWC: np.ndarray, image_HWC: np.ndarray, amap_hw: np.ndarray, top: float,
                 style: str) -> tuple[int, int]:
    """(tokens the style visibly marks, tokens it should mark): firing at >= top / 2 for blue, silent for the
    spotlight."""
    amap = np.asarray(amap_hw, dtype=np.float32)
    gh, gw = amap.shape
    h, w = image_HWC.shape[:2]
    dist_HW = np.linalg.norm(drawn_HWC.astype(np.float32) - image_HWC.astype(np.float32), axis=-1)
    dist_hw = block_mean(dist_HW, (gh, gw))
    target = amap >= top / 2 if style == "blue" else amap <= 0
    return int((dist_hw[target] >= VISIBLE).sum()), int(target.sum())


def colour_latents(truth: dict, min_f1: float) -> list[tuple[int, str]]:
    """(latent, colour) for latents whose best concept is color:<c> or bg:<c> (one value) at F1 >= min_f1."""
    out = []
    for row in truth["latents"]:
        family, _, value = row["concept"].partition(":")
        if family in ("color", "bg") and "&" not in value and row["f1"] >= min_f1:
            out.append((row["latent"], value))
    return out


def card_readability(folder: str | Path, n_images: int = 6, min_f1: float = 0.5) -> dict:
    """The readings of one dictionary folder (with truth.json and index/): {"dictionary", "colour_latents",
    "card_images", "shows_colour_<plain|style>": share, "marked_<style>": share}, or {"dictionary", "skipped"} for a
    text-stream site."""
    from .cards import site_grid
    from .index import FeatureIndex

    folder = Path(folder)
    truth = read_json(truth_path(folder), "ground-truth report", hint="rerun `difflens features truth`", expect=dict)
    index = FeatureIndex.load(index_folder(folder))
    if site_grid(index) is None:
        return {"dictionary": folder.name, "skipped": f"{index.site} is a text-stream site"}
    names, rgb = palette()
    shown = dict.fromkeys(("plain", *STYLES), 0)
    marked = {style: [0, 0] for style in STYLES}
    total = 0
    latents = colour_latents(truth, min_f1)
    for latent, colour in latents:
        top = float(index.max_activation[latent])
        examples = index.top_images(latent)[:n_images]
        for example, amap in zip(examples, index.activation_maps(latent, examples)):
            image, amap = index.store.load_image(example["image_id"]), amap.numpy()
            total += 1
            shown["plain"] += hottest_token_colour(image, amap, names, rgb) == colour
            for style in STYLES:
                drawn = draw_activation(image, amap, top, style)
                shown[style] += hottest_token_colour(drawn, amap, names, rgb) == colour
                hit, of = marked_share(drawn, image, amap, top, style)
                marked[style][0] += hit
                marked[style][1] += of
    return {"dictionary": folder.name, "colour_latents": len(latents), "card_images": total,
            **{f"shows_colour_{s}": shown[s] / total if total else None for s in shown},
            **{f"marked_{s}": hit / of if of else None for s, (hit, of) in marked.items()}}


def format_readability(row: dict) -> str:
    """One line per dictionary: colour latents, card images, the shares per style."""
    if "skipped" in row:
        return f"{row['dictionary']:<24} skipped: {row['skipped']}"

    def pct(v):
        return "-" if v is None else f"{v:.0%}"

    colour = "  ".join(f"{s} {pct(row[f'shows_colour_{s}'])}" for s in ("plain", *STYLES))
    marks = "  ".join(f"{s} {pct(row[f'marked_{s}'])}" for s in STYLES)
    return (f"{row['dictionary']:<14} colour latents {row['colour_latents']:>3}  card images {row['card_images']:>4}  "
            f"show the colour: {colour}  |  visibly marked: {marks}")
