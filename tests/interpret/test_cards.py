"""Heatmap geometry and feature cards."""

from __future__ import annotations

import numpy as np
import pytest

from difflens.interpret.heatmap import FADE_GREY, draw_activation, paint, spotlight, upsample_map


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


def test_spotlight_keeps_true_colours_where_active_and_fades_silent_tokens_to_grey():
    image = np.zeros((4, 4, 3), dtype=np.uint8)
    image[...] = (0, 160, 0)  # a green object everywhere
    grid = np.array([[0.0, 0.25], [1.0, 4.0]], dtype=np.float32)
    out = spotlight(image, grid, max_activation=1.0, strength=1.0).astype(int)
    assert (out[2:, :] == (0, 160, 0)).all()  # at or above the max: the object's own colour
    assert (out[:2, :2] == FADE_GREY).all()  # silent: faded all the way
    half = out[0, 2]  # a = 0.25 -> level 0.5 -> halfway to grey
    assert tuple(half) == tuple(np.round((np.array([0, 160, 0]) + FADE_GREY) / 2).astype(int))
    assert (draw_activation(image, grid, 1.0, "blue") == paint(image, grid, 1.0)).all()
    with pytest.raises(ValueError, match="style must be one of blue, spotlight"):
        draw_activation(image, grid, 1.0, "red")


def test_the_cli_offers_every_drawing_style():
    import typing

    from difflens.interpret.cli import ShowCommand
    from difflens.interpret.heatmap import STYLES

    assert typing.get_args(typing.get_type_hints(ShowCommand)["style"]) == STYLES
