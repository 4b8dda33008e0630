"""PNG plots (matplotlib, Agg backend) for the paper's figures 3–6 and 8."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def heatmap(matrix: np.ndarray, row_labels: list[str], col_labels: list[str], title: str, path: Path, cbar: str) -> Path:
    fig, ax = plt.subplots(figsize=(max(4, 0.5 * len(col_labels) + 2), max(3, 0.3 * len(row_labels) + 1.5)))
    im = ax.imshow(matrix, aspect="auto", cmap="viridis")
    ax.set_xticks(range(len(col_labels)), col_labels)
    ax.set_yticks(range(len(row_labels)), row_labels, fontsize=7)
    ax.set_xlabel("denoising step")
    ax.set_title(title)
    fig.colorbar(im, ax=ax, label=cbar)
    return _save(fig, path)


def spectrum(variances: np.ndarray, title: str, path: Path) -> Path:
    frac = variances / max(variances.sum(), 1e-30)
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.5))
    a.semilogy(np.arange(1, len(frac) + 1), np.maximum(frac, 1e-12))
    a.set_xlabel("principal component")
    a.set_ylabel("fraction of variance")
    b.plot(np.arange(1, len(frac) + 1), np.cumsum(frac))
    b.set_xlabel("number of components")
    b.set_ylabel("cumulative fraction")
    fig.suptitle(title)
    return _save(fig, path)


def lines(series: dict[str, tuple[list, list]], xlabel: str, ylabel: str, title: str, path: Path, logx: bool = False,
          hline: tuple[float, str] | None = None) -> Path:
    return panels([(series, xlabel, ylabel, title)], path, logx, hline)


def panels(specs: list[tuple[dict, str, str, str]], path: Path, logx: bool = False,
           hline: tuple[float, str] | None = None) -> Path:
    """Side-by-side line plots, one per (series, xlabel, ylabel, title); each series maps label -> (xs, ys).
    ``hline`` = (y, label) draws a dashed reference line (e.g. FVU 1: no better than the mean)."""
    fig, axes = plt.subplots(1, len(specs), figsize=(5.2 * len(specs), 3.9), squeeze=False)
    for ax, (series, xlabel, ylabel, title) in zip(axes[0], specs):
        for label, (xs, ys) in series.items():
            ax.plot(xs, ys, marker="o", label=label)
        if logx:
            ax.set_xscale("log", base=2)
            ticks = sorted({x for xs, _ in series.values() for x in xs})
            ax.set_xticks(ticks, [str(t) for t in ticks])
            ax.minorticks_off()
        if hline is not None:
            ax.axhline(hline[0], color="gray", linestyle="--", linewidth=1, label=hline[1])
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.set_title(title, fontsize=9)
        if len(series) > 1 or hline is not None:
            ax.legend(fontsize=8)
    return _save(fig, path)


def histograms(series: dict[str, list[float]], xlabel: str, ylabel: str, title: str, path: Path,
               bins: np.ndarray | None = None) -> Path:
    """Overlaid step histograms, one per named series (e.g. autointerp scores of SAE, ITDA, neurons)."""
    bins = np.linspace(0, 1, 21) if bins is None else bins
    fig, ax = plt.subplots(figsize=(6, 3.8))
    for label, values in series.items():
        ax.hist(values, bins=bins, histtype="step", linewidth=1.8, label=f"{label} (n={len(values)})")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_image_grid(images_RC: list[list[np.ndarray]], col_titles: list[str], row_titles: list[str], title: str,
               path: Path, outlines_RC: list[list[np.ndarray | None]] | None = None) -> Path:
    """Images uint8 (H, W, 3) in rows x columns, titled; ``outlines_RC`` optional (h, w) weights per image whose
    > 0 region is outlined (e.g. an edit's token region), at any resolution (stretched over the image)."""
    rows, cols = len(images_RC), len(images_RC[0])
    fig, axes = plt.subplots(rows, cols, figsize=(1.9 * cols + 0.4, 2.0 * rows + 0.5), squeeze=False)
    for r in range(rows):
        for c in range(cols):
            ax = axes[r][c]
            image = images_RC[r][c]
            ax.imshow(image, interpolation="nearest")
            outline = outlines_RC[r][c] if outlines_RC else None
            if outline is not None and (outline > 0).any() and not (outline > 0).all():
                h, w = outline.shape
                H, W = image.shape[:2]
                ax.contour(np.linspace(0, W, w, endpoint=False) + W / w / 2 - 0.5,
                           np.linspace(0, H, h, endpoint=False) + H / h / 2 - 0.5,
                           (outline > 0).astype(float), levels=[0.5], colors="#00e5ff", linewidths=0.9,
                           linestyles="dashed")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(col_titles[c], fontsize=8)
            if c == 0:
                ax.set_ylabel(row_titles[r], fontsize=7, wrap=True)
    fig.suptitle(title, fontsize=9)
    return _save(fig, Path(path))


image_grid = plot_image_grid  # the old name (interpret.labels.image_grid is a token grid's shape, not a plot)
