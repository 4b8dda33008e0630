"""Can a reader see a colour latent's colour on its feature card? Blue paint against the spotlight style.

    .venv/bin/python bench/card_readability.py [--run runs/demo] [--images 6] [--min-f1 0.5]

For every dictionary of a demo-style run (folders with `truth.json` and `index/`), the latents whose best
ground-truth concept is one colour (`color:<c>`: object colour; `bg:<c>`: background colour) at held-out F1 >=
--min-f1 are the colour latents. Each of their top card images is drawn as the card draws it
(`interpret.heatmap.draw_activation`, at the image's own resolution) in both styles, and the pixels of the
latent's hottest token are read back: each pixel is named by its nearest colour of the world's palette (object
colours and their pattern shades, background base and second tones, and the paint's blue), and the token reads
as its most common name. A card image "shows" the concept when that name is the concept's colour. Printed per
dictionary and style: colour latents, card images, and the share that shows the colour; the last line is JSON.
"""

import argparse
import json
from collections import Counter
from pathlib import Path

import numpy as np

from difflens.interpret.heatmap import BLUE, STYLES, draw_activation, upsample_map
from difflens.interpret.index import FeatureIndex
from difflens.world.palette import BACKGROUND_TONES, SHADES
from difflens.world.scene import COLORS


def palette() -> tuple[list[str], np.ndarray]:
    """(names, (P, 3) RGB): every colour a reader could name on a card, shades under their colour's name."""
    entries = [(name, rgb) for name, rgb in COLORS.items()] + [(name, rgb) for name, rgb in SHADES.items()]
    entries += [(name, rgb) for name, tones in BACKGROUND_TONES.items() for rgb in tones]
    entries.append(("paint-blue", tuple(BLUE)))
    return [n for n, _ in entries], np.asarray([rgb for _, rgb in entries], dtype=np.float32)


def hottest_token_colour(drawn_HWC: np.ndarray, amap_hw: np.ndarray, names, rgb_P3) -> str:
    """The most common palette name among the pixels of the map's hottest token in the drawn image."""
    amap = np.asarray(amap_hw, dtype=np.float32)
    pixels = upsample_map(amap, *drawn_HWC.shape[:2])
    block = drawn_HWC[pixels == amap.max()].astype(np.float32)
    nearest = ((block[:, None, :] - rgb_P3[None]) ** 2).sum(-1).argmin(1)
    return Counter(names[i] for i in nearest).most_common(1)[0][0]


def colour_latents(truth: dict, min_f1: float) -> list[tuple[int, str]]:
    """(latent, colour) for latents whose best concept is color:<c> or bg:<c> (one value) at F1 >= min_f1."""
    out = []
    for row in truth["latents"]:
        family, _, value = row["concept"].partition(":")
        if family in ("color", "bg") and "&" not in value and row["f1"] >= min_f1:
            out.append((row["latent"], value))
    return out


def measure(folder: Path, n_images: int, min_f1: float) -> dict:
    truth = json.loads((folder / "truth.json").read_text())
    index = FeatureIndex.load(folder / "index")
    names, rgb = palette()
    shown = {style: 0 for style in STYLES}
    total = 0
    latents = colour_latents(truth, min_f1)
    for latent, colour in latents:
        examples = index.top_images(latent)[:n_images]
        maps = index.activation_maps(latent, examples)
        for example, amap in zip(examples, maps):
            image = index.store.load_image(example["image_id"])
            top = float(index.max_activation[latent])
            total += 1
            for style in STYLES:
                drawn = draw_activation(image, amap, top, style)
                shown[style] += hottest_token_colour(drawn, amap.numpy(), names, rgb) == colour
    return {"dictionary": folder.name, "colour_latents": len(latents), "card_images": total,
            **{f"shows_colour_{s}": shown[s] / total if total else None for s in STYLES}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", default="runs/demo")
    ap.add_argument("--images", type=int, default=6, help="top images per latent (the demo grid's 6)")
    ap.add_argument("--min-f1", type=float, default=0.5)
    args = ap.parse_args()
    rows = []
    for folder in sorted(Path(args.run, "dictionaries").iterdir()):
        if (folder / "truth.json").exists() and (folder / "index").exists():
            row = measure(folder, args.images, args.min_f1)
            rows.append(row)
            shares = "  ".join(f"{s} {row[f'shows_colour_{s}']:.0%}" if row["card_images"] else f"{s} -"
                               for s in STYLES)
            print(f"{row['dictionary']:<24} colour latents {row['colour_latents']:>3}  card images "
                  f"{row['card_images']:>4}  show the colour: {shares}")
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
