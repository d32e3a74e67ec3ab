"""Image grids a person reads: eval's grids and report thumbnails, training's validation grids.

Each image sits on a neutral frame (mid-grey, with a dark 1-pixel line around the image), so that its
edges show whatever its content: a white image on a white page, or a grey one on the grey frame.
Columns carry their names in a header.
"""

from __future__ import annotations

from PIL import Image, ImageDraw

from .images import fit_for_display

FRAME = (128, 128, 128)  # mid-grey behind every image
LINE = (32, 32, 32)  # the 1-pixel line around it
EMPTY = (224, 224, 224)  # a cell without an image: light grey, no line
MARGIN = 3  # pixels between the cell's edge and the image: 2 of frame, 1 of line
HEADER = 22  # pixels of the column-name strip


def framed(image: Image.Image | None, side: int) -> Image.Image:
    """A ``side`` x ``side`` RGB cell: ``image`` fitted (:func:`~relation_cli.images.fit_for_display`) and
    centred on the frame, with the line around it; ``None`` gives an empty cell."""
    if image is None:
        return Image.new("RGB", (side, side), EMPTY)
    cell = Image.new("RGB", (side, side), FRAME)
    image = fit_for_display(image.convert("RGB"), side - 2 * MARGIN)
    x, y = (side - image.width) // 2, (side - image.height) // 2
    ImageDraw.Draw(cell).rectangle((x - 1, y - 1, x + image.width, y + image.height), outline=LINE)
    cell.paste(image, (x, y))
    return cell


def label_cell(cell: Image.Image, text: str) -> None:
    """Write ``text`` in the cell's top-left corner, black on a white box (the row's task name), in place."""
    draw = ImageDraw.Draw(cell)
    box = draw.textbbox((4, 4), text)
    draw.rectangle((box[0] - 2, box[1] - 2, box[2] + 2, box[3] + 2), fill=(255, 255, 255))
    draw.text((4, 4), text, fill=(0, 0, 0))


def grid_image(columns: list[str], rows: list[list[Image.Image]], side: int) -> Image.Image:
    """One RGB image on white: a ``HEADER``-pixel strip of column names, then each row's ``side``-pixel cells
    (:func:`framed`) left to right. Width ``side * len(columns)``, height ``HEADER + side * len(rows)``."""
    canvas = Image.new("RGB", (side * len(columns), HEADER + side * len(rows)), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    for c, name in enumerate(columns):
        draw.text((c * side + 4, 5), name, fill=(0, 0, 0))
    for r, line in enumerate(rows):
        for c, cell in enumerate(line):
            canvas.paste(cell, (c * side, HEADER + r * side))
    return canvas
