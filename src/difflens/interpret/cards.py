"""Feature cards: what one latent responds to, from the stored images (never regenerated).

A card shows the latent's top images with its activation painted in blue, or as a spotlight that keeps the
colours where it fires (``style``, see :mod:`.heatmap`), each with
its prompt, denoising step and max activation; the activation histogram; and the firing frequency per
step. For text-stream sites the prompts' words are shaded by activation instead. A grid shows many
latents, one row each.
"""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import numpy as np

from .heatmap import DRAWINGS, check_style, draw_activation, enlarge


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _image(store, image_id: int) -> np.ndarray:
    try:
        return store.load_image(image_id)
    except FileNotFoundError as err:
        raise FileNotFoundError(f"{err}: feature cards show the store's own images; capture with images kept "
                                f"(not --no-images)") from None


def prompt_words(prompt: str, tokens: int) -> list[str]:
    """The words a word-level text encoder sees at each of ``tokens`` positions (padding shown as '·')."""
    words = re.findall(r"[a-z]+", prompt.lower())[:tokens]
    return words + ["·"] * (tokens - len(words))


def card_image(index, latent: int, example: dict, style: str = "blue") -> np.ndarray:
    """One top image as a card shows it: the latent's map drawn in `style`, enlarged to about 192 px."""
    image = _image(index.store, example["image_id"])
    amap = index.activation_map(latent, example["image_id"], example["step"])
    scale = max(1, 192 // image.shape[0])
    return enlarge(draw_activation(image, amap, float(index.max_activation[latent]), style), scale)


def _caption(index, example: dict, width: int = 28) -> str:
    prompt = index.store.image_info(example["image_id"])["prompt"]
    return "\n".join(textwrap.wrap(prompt, width)[:3]) + f"\nstep {example['step']}  max {example['score']:.3g}"


def _text_row(ax, index, latent: int, example: dict) -> None:
    """One prompt's words shaded by the latent's activation on each text token."""
    values = np.asarray(index.activation_map(latent, example["image_id"], example["step"]), dtype=np.float32)
    words = prompt_words(index.store.image_info(example["image_id"])["prompt"], len(values))
    top = float(index.max_activation[latent]) or 1.0
    x = 0.0
    for word, value in zip(words, values):
        if word == "·" and value <= 0:
            continue
        alpha = float(np.sqrt(np.clip(value / top, 0, 1)))
        ax.text(x, 0.5, word, fontsize=9, va="center",
                bbox={"facecolor": (0.12, 0.35, 1.0, alpha), "edgecolor": "none", "pad": 1.5})
        x += 0.012 * (len(word) + 2)
    ax.text(1.0, 0.5, f"max {example['score']:.3g}", fontsize=8, ha="right", va="center")
    ax.set_xlim(0, 1)
    ax.axis("off")


def feature_card(index, latent: int, out: str | Path | None = None, n_images: int = 8, style: str = "blue"):
    """One latent's card; written to ``out`` (PNG) when given, else the matplotlib figure is returned."""
    plt = _plt()
    _check_latent(index, latent)
    check_style(style)
    examples = index.top_images(latent)[:n_images]
    text_site = site_grid(index) is None
    cols = 4
    image_rows = 0 if not examples else (len(examples) if text_site else -(-len(examples) // cols))
    fig = plt.figure(figsize=(11, 2.9 * (image_rows if not text_site else 0.35 * image_rows) + 3.2))
    grid = fig.add_gridspec(image_rows + 1, cols, height_ratios=[1] * image_rows + [0.9 if not text_site else 3])
    for i, example in enumerate(examples):
        if text_site:
            _text_row(fig.add_subplot(grid[i, :]), index, latent, example)
            continue
        ax = fig.add_subplot(grid[i // cols, i % cols])
        ax.imshow(card_image(index, latent, example, style))
        ax.set_title(_caption(index, example), fontsize=7)
        ax.axis("off")
    edges, counts = index.histogram(latent)
    hist = fig.add_subplot(grid[image_rows, : cols // 2])
    hist.stairs(np.asarray(counts), np.asarray(edges).clip(min=float(edges[1]) / 10))
    hist.set_xscale("log")
    nonzero = np.flatnonzero(np.asarray(counts) > 0)
    if nonzero.size:  # the bins are fixed over 1e-4..1e4: show where this latent's activations are
        e = np.asarray(edges)
        hist.set_xlim(max(e[nonzero[0]], e[1] / 10) / 2, e[nonzero[-1] + 1] * 2)
    hist.set_xlabel("activation (when active)")
    hist.set_ylabel("tokens")
    freq = index.frequency(latent)
    bars = fig.add_subplot(grid[image_rows, cols // 2 :])
    bars.bar([str(s) for s in freq], list(freq.values()), color="tab:blue")
    bars.set_xlabel("denoising step")
    bars.set_ylabel("firing frequency")
    kind = getattr(index, "dictionary_kind", "latent")
    fig.suptitle(f"{kind} latent {latent} — {index.site}, split {index.split}; max activation "
                 f"{float(index.max_activation[latent]):.3g}" + ("" if examples else "; never active"), fontsize=10)
    fig.tight_layout()
    return _finish(fig, out)


def feature_grid(index, latents: list[int], out: str | Path | None = None, n_images: int = 6, style: str = "blue"):
    """Many latents, one row each: top images with their heatmaps (image sites only)."""
    plt = _plt()
    if site_grid(index) is None:
        raise ValueError(f"{index.site} is a text-stream site: use feature_card for each latent")
    for latent in latents:
        _check_latent(index, latent)
    check_style(style)
    fig, axes = plt.subplots(len(latents), n_images, figsize=(1.6 * n_images + 1.2, 1.75 * len(latents)),
                             squeeze=False)
    for row, latent in zip(axes, latents):
        examples = index.top_images(latent)[:n_images]
        for j, ax in enumerate(row):
            ax.axis("off")
            if j < len(examples):
                ax.imshow(card_image(index, latent, examples[j], style))
        freq = sum(index.frequency(latent).values()) / max(len(index.steps), 1)
        row[0].text(-0.08, 0.5, f"{latent}\nmax {float(index.max_activation[latent]):.2g}\nfreq {freq:.2%}",
                    transform=row[0].transAxes, ha="right", va="center", fontsize=7)
    fig.suptitle(f"{index.site}: top images per latent ({DRAWINGS[style][1]})", fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.35 / max(len(latents), 1) / 1.75))
    return _finish(fig, out)


def site_grid(index) -> tuple[int, int] | None:
    """(grid_h, grid_w) of the index's image-stream site, None for a text-stream site."""
    grid = getattr(index, "grid", None)
    if grid is None:
        grid = index.store.reader(index.site, index.steps[0]).grid
    return tuple(grid) if grid else None


def _check_latent(index, latent: int) -> None:
    if not 0 <= int(latent) < index.num_latents:
        raise ValueError(f"latent {latent} does not exist: this dictionary has latents 0..{index.num_latents - 1}")


def _finish(fig, out):
    if out is None:
        return fig
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    _plt().close(fig)
    return out
