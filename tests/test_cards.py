"""Heatmap geometry and feature cards."""

from __future__ import annotations

import numpy as np
import pytest

from difflens.interpret.heatmap import paint, upsample_map


def test_token_lands_on_its_pixel_block_for_a_non_square_grid():
    grid = np.zeros((2, 4), dtype=np.float32)
    grid[1, 2] = 1.0  # row 1, column 2
    pixels = upsample_map(grid, 8, 16)  # blocks of 4 x 4
    assert pixels.shape == (8, 16)
    hot = np.argwhere(pixels > 0)
    assert hot[:, 0].min() == 4 and hot[:, 0].max() == 7 and hot[:, 1].min() == 8 and hot[:, 1].max() == 11
    with pytest.raises(ValueError, match="whole number"):
        upsample_map(grid, 9, 16)


def test_paint_is_blue_with_sqrt_opacity_and_leaves_silent_tokens_alone():
    image = np.full((4, 4, 3), 200, dtype=np.uint8)
    grid = np.array([[0.0, 0.25], [1.0, 4.0]], dtype=np.float32)
    out = paint(image, grid, max_activation=1.0, strength=1.0).astype(int)
    assert (out[:2, :2] == 200).all()  # zero activation: untouched
    assert tuple(out[2, 0]) == (30, 90, 255) and tuple(out[2, 2]) == (30, 90, 255)  # at or above the max: pure blue
    quarter = out[0, 2]  # a = 0.25 -> alpha = 0.5
    assert tuple(quarter) == (115, 145, 228)
