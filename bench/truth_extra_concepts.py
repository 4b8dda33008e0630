"""Would SAE latents count as explained if the ground truth named other kinds of concepts? A hypothesis test.

    nice -n 10 .venv/bin/python bench/truth_extra_concepts.py [--store runs/rich_id/store]
        [--site double.3.img.out] [--step 7] [--families tone edge bgpos] [--num-latents 384] [--k 8]

Most latents of an SAE on the embedded models reach no concept of `difflens.interpret.labels` at held-out F1
>= 0.5. One explanation is that they follow something real that the labels do not name. This bench appends
candidate concept families, computed from each stored generated image, to the store's labels, and reruns
`truth_report` on one plain TopK SAE (trained as `bench/truth_scan.py` trains it) with each family and with all
of them:

    tone   what the token's pixels look like: the palette colour (object colours, their pattern shades,
           background base and second tones) nearest to the mean of its 4x4 pixel block, within 45 RGB units;
           motif:bg / motif:object = the token is on a background's or an object's second tone (a dot, stripe
           or check)
    edge   which side of its object a token sits on: edge:<above|below|left|right> = object token whose
           neighbour on that side is not the object; corner:<a>-<b> = two adjacent such sides; edge:tip =
           three or four; and each of those with the object's shape (edge:above&triangle, ...)
    bgpos  where a background token sits: bgpos:<top|middle|bottom>-row, bgpos:<left|center|right>-col (thirds
           of the grid), and each with the background colour (bgpos:top-row&bg:cyan, ...)

Printed first: how the SAE's rare latents (firing on < 0.2 % of train tokens) spread: median firings, distinct
images and distinct grid positions (a latent that memorised a few images would sit in one or two). Then per
family: the explained share (random floor), families reaching 0.7 x the probe ceiling, and how many explained
latents the new family names. The last printed line is JSON with the rows.
"""

import os

for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ.setdefault(_var, "2")

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

import difflens as dl  # noqa: E402
from difflens.interpret.labels import SIDES, TokenLabels, neighbour_owner, token_labels, token_owner  # noqa: E402
from difflens.interpret.truth import truth_report  # noqa: E402
from difflens.world.oracle import read_image  # noqa: E402
from difflens.world.palette import RICH_SHAPES, palette_tones  # noqa: E402

TONE_RADIUS = 45.0  # RGB distance within which a token's mean colour counts as a palette tone


def tone_family(store, base: TokenLabels) -> tuple[list[str], np.ndarray]:
    """(names, bool (n_images, T, C')) of the pixel-tone concepts."""
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


def rare_latent_spread(sae, store, site: str, step: int, rare_rate: float = 0.002) -> dict:
    """Median firings, distinct images and distinct token positions of the latents firing on fewer than
    `rare_rate` of the train tokens (and at least once)."""
    reader = store.reader(site, step, "train")
    images, tokens, n = [[] for _ in range(sae.num_latents)], [[] for _ in range(sae.num_latents)], 0
    for acts, ids in reader.iter_batches(4096, shuffle=False):
        trace = reader.trace(ids)
        codes = sae.encode(acts.float())
        b, k = (codes.values > 0).nonzero(as_tuple=True)
        for row, latent in zip(b.tolist(), codes.indices[b, k].tolist()):
            images[latent].append(trace["image_id"][row])
            tokens[latent].append(trace["token_index"][row])
        n += len(ids)
    rare = [f for f in range(sae.num_latents) if 0 < len(images[f]) < rare_rate * n]
    med = lambda xs: float(np.median(xs)) if xs else None
    return {"train_tokens": n, "rare_latents": len(rare), "alive_latents": sum(bool(x) for x in images),
            "median_firings": med([len(images[f]) for f in rare]),
            "median_distinct_images": med([len(set(images[f])) for f in rare]),
            "median_distinct_positions": med([len(set(tokens[f])) for f in rare])}


FAMILIES = {"tone": tone_family, "edge": edge_family, "bgpos": bgpos_family}


def with_extra(base: TokenLabels, names: list[str], extra_ITC: np.ndarray, min_tokens: int = 8) -> TokenLabels:
    """`base` with the extra concepts that have at least `min_tokens` positive tokens appended."""
    keep = [j for j in range(len(names)) if extra_ITC[..., j].sum() >= min_tokens]
    dense = np.concatenate([base.dense(), extra_ITC[..., keep]], axis=2)
    return TokenLabels(concepts=base.concepts + [names[j] for j in keep], grid=base.grid,
                       packed=np.packbits(dense, axis=-1, bitorder="little"), readings=base.readings, world=base.world)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--store", default="runs/rich_id/store", help="activation store with its generated images")
    ap.add_argument("--site", default="double.3.img.out")
    ap.add_argument("--step", type=int, default=7)
    ap.add_argument("--families", nargs="*", default=list(FAMILIES), choices=list(FAMILIES),
                    help="families to add (none: the shipped labels and the rare-latent spread only)")
    ap.add_argument("--num-latents", type=int, default=384)
    ap.add_argument("--k", type=int, default=8)
    ap.add_argument("--tokens", type=int, default=1_000_000)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    if not (Path(args.store) / "store.json").exists():
        sys.exit(f"truth_extra_concepts: no activation store at {args.store} (store.json missing)")
    torch.set_num_threads(2)
    store = dl.open_store(args.store)
    grid = tuple(store.reader(args.site, args.step, "train").grid)
    base = token_labels(store, grid=grid)
    extras = {f: FAMILIES[f](store, base) for f in args.families}
    sae = dl.train_sae(store, args.site, args.step, k=args.k, num_latents=args.num_latents, num_tokens=args.tokens,
                       batch_size=4096, lr=1e-3, k_aux=2 * args.k, dead_window_tokens=min(args.tokens // 4, 500_000),
                       normalization="none", seed=args.seed, device="cpu", norm_fit_tokens=10**9)
    spread = rare_latent_spread(sae, store, args.site, args.step)
    print(f"[truth_extra_concepts] rare latents (< 0.2 % of train tokens): {spread}", flush=True)
    runs = {"labels as shipped": base, **{f"+ {f}": with_extra(base, *extras[f]) for f in args.families}}
    if len(args.families) > 1:
        names = [n for f in args.families for n in extras[f][0]]
        runs["+ all"] = with_extra(base, names, np.concatenate([extras[f][1] for f in args.families], axis=2))
    prefixes = {"tone": ("tone:", "motif:"), "edge": ("edge:", "corner:"), "bgpos": ("bgpos:",)}
    new_prefixes = tuple(p for f in args.families for p in prefixes[f])
    rows = []
    for name, labels in runs.items():
        r = truth_report(sae, store, site=args.site, step=args.step, labels=labels, sparse_sizes=(),
                         random_seed=args.seed)
        named_new = sum(n for c, n in r["explained_by_concept"].items() if c.startswith(new_prefixes))
        covered = sorted(f for f, v in r["family_coverage"].items() if v["covered"])
        rows.append({"labels": name, "concepts": len(r["concepts"]), "explained": round(r["explained_share"], 4),
                     "random": round(r["explained_share_random"], 4), "named_by_new_family": named_new,
                     "families_covered": ",".join(covered)})
        print(f"[truth_extra_concepts] {name}: {len(r['concepts'])} concepts, explained {r['explained_share']:.3f} "
              f"(random {r['explained_share_random']:.3f}), {named_new} explained latents named by a new family; "
              f"families at 0.7 x ceiling: {', '.join(covered)}", flush=True)
    print(json.dumps({"store": args.store, "site": args.site, "step": args.step, "num_latents": args.num_latents,
                      "k": args.k, "rare_latent_spread": spread, "rows": rows}))


if __name__ == "__main__":
    main()
