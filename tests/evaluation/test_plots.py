"""PNG plots: each writes a readable image of the size its layout asks for, creating folders; NaN cells and
outlines are drawn, not fatal."""

from __future__ import annotations

import numpy as np
from PIL import Image

from difflens.evaluation import plots


def _png(path) -> np.ndarray:
    with Image.open(path) as im:
        assert im.format == "PNG"
        return np.asarray(im.convert("RGB"))


def test_every_plot_writes_a_png_of_its_layout(tmp_path):
    series = {"a": ([1, 2, 4], [0.5, 0.3, 0.2]), "b": ([1, 2, 4], [0.6, 0.4, 0.1])}
    written = {
        "heatmap": plots.heatmap(np.array([[1.0, np.nan], [2.0, 3.0]]), ["r0", "r1"], ["0", "7"], "t",
                                 tmp_path / "new" / "dir" / "heat.png", "norm"),
        "spectrum": plots.spectrum(np.array([16.0, 1.0, 0.0]), "t", tmp_path / "spec.png"),
        "lines": plots.lines(series, "x", "y", "t", tmp_path / "lines.png", hline=(1.0, "FVU 1")),
        "panels": plots.panels([(series, "k", "y", "t"), (series, "k", "y2", "t2")], tmp_path / "panels.png",
                               logx=True),
        "histograms": plots.histograms({"sae": [0.1, 0.9, 0.5], "itda": []}, "score", "n", "t", tmp_path / "h.png"),
    }
    sizes = {name: _png(path).shape[:2] for name, path in written.items()}
    assert all(path.exists() and path.stat().st_size > 2000 for path in written.values())
    assert sizes["panels"][1] == 2 * sizes["lines"][1]  # two panels side by side, each as wide as one plot
    assert sizes["spectrum"] == (420, 1080)  # 9 x 3.5 inches at 120 dpi


def test_image_grid_lays_out_rows_and_columns_and_outlines_regions(tmp_path):
    gray = np.full((32, 32, 3), 128, np.uint8)
    region = np.zeros((4, 4))
    region[1:3, 1:3] = 1  # a token region of a 4 x 4 grid, stretched over the 32 px image
    plain = plots.plot_image_grid([[gray, gray, gray]] * 2, ["a", "b", "c"], ["r0", "r1"], "t", tmp_path / "g.png")
    outlined = plots.plot_image_grid([[gray, gray, gray]] * 2, ["a", "b", "c"], ["r0", "r1"], "t", tmp_path / "o.png",
                                     [[region, None, np.ones((4, 4))]] * 2)
    a, b = _png(plain), _png(outlined)
    assert a.shape == b.shape and a.shape[1] > a.shape[0]  # 3 columns x 2 rows: wider than tall
    cyan = lambda img: int(((img[..., 0] < 80) & (img[..., 1] > 180) & (img[..., 2] > 200)).sum())  # noqa: E731
    assert cyan(a) == 0 and cyan(b) > 20  # the region's dashed outline
    whole = plots.plot_image_grid([[gray]], ["a"], ["r"], "t", tmp_path / "w.png", [[np.ones((4, 4))]])
    assert cyan(_png(whole)) == 0  # a region covering the whole image has no edge to draw
    assert plots.image_grid is plots.plot_image_grid  # the old name
