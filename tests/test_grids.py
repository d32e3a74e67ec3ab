"""Grids a person reads: every image on a neutral frame, columns named (eval grids, training validation)."""

from __future__ import annotations

import numpy as np
from PIL import Image

from relation_cli.grids import EMPTY, FRAME, HEADER, LINE, MARGIN, framed, grid_image
from relation_cli.train.validate import COLUMNS, VAE_COLUMNS, grid


def test_a_white_image_shows_its_edges_on_the_frame():
    cell = np.asarray(framed(Image.new("RGB", (40, 20), "white"), 100))
    # 40x20 is enlarged 2x to 80x40 (fit_for_display), centred: x 10..89, y 30..69
    assert tuple(cell[0, 0]) == FRAME and tuple(cell[50, 5]) == FRAME
    assert tuple(cell[29, 50]) == LINE and tuple(cell[70, 50]) == LINE and tuple(cell[50, 9]) == LINE
    assert tuple(cell[30, 10]) == (255, 255, 255) and tuple(cell[69, 89]) == (255, 255, 255)
    grey = np.asarray(framed(Image.new("RGB", (94, 94), FRAME), 100))  # the colour of the frame, filling it
    assert tuple(grey[MARGIN - 1, 50]) == LINE and tuple(grey[50, 50]) == FRAME
    assert np.all(np.asarray(framed(None, 10)) == EMPTY)


def test_grid_has_a_header_of_column_names_over_the_cells():
    cells = [[framed(Image.new("RGB", (8, 8), "white"), 32) for _ in range(3)] for _ in range(2)]
    image = np.asarray(grid_image(["A", "B", "C"], cells, 32))
    assert image.shape == (HEADER + 2 * 32, 3 * 32, 3)
    for c in range(3):  # each column's name is drawn (dark pixels) in its own part of the header
        assert (image[:HEADER, c * 32 : (c + 1) * 32].min(axis=2) < 100).any()
    assert tuple(image[HEADER, 0]) == FRAME


def test_validation_grids_carry_column_labels():
    white = np.ones((16, 16, 3), np.float32)
    image = grid([[white] * 5, [white] * 5], COLUMNS, cell=64)
    assert image.size == (5 * 64, HEADER + 2 * 64)
    assert tuple(image.getpixel((1, HEADER + 1))) == FRAME  # the white image sits on the frame, not on white
    header = np.asarray(image)[:HEADER]
    assert all((header[:, c * 64 : (c + 1) * 64].min(axis=2) < 100).any() for c in range(5))
    unlabelled = np.asarray(grid([[white] * 5], [""] * 5, cell=64))[:HEADER]
    assert (unlabelled == 255).all() and not (header == 255).all()
    assert grid([[white, white]], VAE_COLUMNS, cell=128).size == (256, HEADER + 128)
