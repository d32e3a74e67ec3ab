"""A procedurally generated relation dataset, written in the Relation252K layout.

Each scene is a plain background with 1-3 flat shapes (square, circle, triangle, bar) in distinct
saturated colours; each task is one visual relation (mirror, blur, recolour, ...) applied to it.
The output is ``ROOT/<task>/Group1/labels.json`` plus side-by-side before|after PNGs (lossless, so
every relation is exact), so it goes through exactly the same reading, validation and pairing as the
real dataset. Same arguments -> byte-identical files.

The shapes are drawn without anti-aliasing: colour relations (recolour, swap) then stay exact, and a
small model trained on it sees sharp, unambiguous edits.
"""

from __future__ import annotations

import json
import math
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageOps

from ..errors import RelationError

RGB = tuple[int, int, int]

SHAPE_COLOURS: dict[str, RGB] = {
    "green": (0, 190, 0),
    "blue": (0, 90, 255),
    "yellow": (255, 215, 0),
    "magenta": (230, 0, 230),
    "cyan": (0, 220, 220),
    "purple": (140, 50, 230),
}
BACKGROUNDS: dict[str, RGB] = {
    "charcoal": (40, 40, 40),
    "navy": (25, 35, 80),
    "brown": (95, 60, 35),
    "dark green": (35, 80, 50),
    "grey": (120, 120, 120),
    "sand": (205, 190, 150),
}
# Colours the relations introduce; absent from both palettes so every such edit is visible.
RECOLOUR: tuple[str, RGB] = ("red", (230, 20, 20))
FRAME: RGB = (255, 255, 255)
SHAPES = ("square", "circle", "triangle", "bar")

# Mean absolute pixel change (0-255) a pair must show; scenes that a relation barely changes
# (a centred circle under "mirror") are drawn again.
MIN_VISIBLE_CHANGE = 2.0

SUGGESTED_UNSEEN = ("flip_vertical", "frame")
"""Tasks to hold out as unseen (``--unseen-task flip_vertical --unseen-task frame``): one that is a
cousin of seen tasks (mirror, rotate90) and one that is new."""


@dataclass(frozen=True)
class Shape:
    kind: str
    colour: str
    cx: int
    cy: int
    r: int  # half the extent, pixels
    vertical: bool  # bars only


@dataclass(frozen=True)
class Scene:
    background: str
    shapes: tuple[Shape, ...]
    colours: tuple[tuple[str, RGB], ...] = ()  # overrides: shape colour name -> RGB (recolour, swap)
    background_rgb: RGB | None = None
    outline: bool = False

    def rgb(self, colour: str) -> RGB:
        return dict(self.colours).get(colour, SHAPE_COLOURS.get(colour, (0, 0, 0)))

    def bg(self) -> RGB:
        return self.background_rgb or BACKGROUNDS[self.background]

    def describe(self) -> str:
        names = [f"a {s.colour} {s.kind}" for s in self.shapes]
        listed = names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]
        return f"{listed} on a {self.background} background"


def render(scene: Scene, size: int) -> Image.Image:
    image = Image.new("RGB", (size, size), scene.bg())
    draw = ImageDraw.Draw(image)
    width = max(1, size // 32)
    for s in scene.shapes:
        fill, line = (None, scene.rgb(s.colour)) if scene.outline else (scene.rgb(s.colour), None)
        box = [s.cx - s.r, s.cy - s.r, s.cx + s.r, s.cy + s.r]
        if s.kind == "circle":
            draw.ellipse(box, fill=fill, outline=line, width=width)
        elif s.kind == "triangle":  # pointing up, so flips and rotations show
            draw.polygon([(s.cx, s.cy - s.r), (s.cx - s.r, s.cy + s.r), (s.cx + s.r, s.cy + s.r)], fill=fill,
                         outline=line, width=width)  # fmt: skip
        else:
            if s.kind == "bar":  # a third as thick as it is long
                t = max(2, s.r // 3)
                w, h = (t, s.r) if s.vertical else (s.r, t)
                box = [s.cx - w, s.cy - h, s.cx + w, s.cy + h]
            draw.rectangle(box, fill=fill, outline=line, width=width)
    return image


# ------------------------------------------------------------------------------------------- relations

Edit = Callable[[Scene, Image.Image, int], Image.Image]


@dataclass(frozen=True)
class Relation:
    instruction: str
    effect: str  # appended to the scene's description
    edit: Edit


def _shift(scene: Scene, im: Image.Image, size: int) -> Image.Image:
    d = size // 4
    out = Image.new("RGB", im.size, scene.bg())
    out.paste(im.crop((0, 0, size - d, size)), (d, 0))
    return out


def _zoom(scene: Scene, im: Image.Image, size: int) -> Image.Image:
    q = size // 4
    return im.crop((q, q, size - q, size - q)).resize((size, size), Image.NEAREST)


def _frame(scene: Scene, im: Image.Image, size: int) -> Image.Image:
    out = im.copy()
    ImageDraw.Draw(out).rectangle([0, 0, size - 1, size - 1], outline=FRAME, width=max(2, size // 16))
    return out


# swap_colours: the largest shape must cover at least this many times the area of the next one.
CLEAR_LARGEST = 1.5


def _swap(scene: Scene, im: Image.Image, size: int) -> Image.Image:
    """The background takes the colour of the shape covering most pixels, every shape the background's.

    Which colour the background takes must be visible in the image: scenes without a clearly largest
    shape are returned unedited, so that :func:`make_pair` draws another scene.
    """
    pixels = np.asarray(im).reshape(-1, 3)
    area = sorted(((int(np.all(pixels == scene.rgb(s.colour), axis=1).sum()), s.colour) for s in scene.shapes), reverse=True)
    if len(area) > 1 and area[0][0] < CLEAR_LARGEST * area[1][0]:
        return im
    swapped = tuple((s.colour, scene.bg()) for s in scene.shapes)
    return render(replace(scene, colours=swapped, background_rgb=scene.rgb(area[0][1])), size)


def _recolour(scene: Scene, im: Image.Image, size: int) -> Image.Image:
    return render(replace(scene, colours=tuple((s.colour, RECOLOUR[1]) for s in scene.shapes)), size)


def _channels(scene: Scene, im: Image.Image, size: int) -> Image.Image:
    r, g, b = im.split()
    return Image.merge("RGB", (b, r, g))  # red -> green, green -> blue, blue -> red


TASKS: dict[str, Relation] = {
    "mirror": Relation("Mirror the image from left to right.", "mirrored left to right",
                       lambda s, im, n: ImageOps.mirror(im)),
    "flip_vertical": Relation("Flip the image upside down.", "flipped upside down",
                              lambda s, im, n: ImageOps.flip(im)),
    "rotate90": Relation("Rotate the image 90 degrees clockwise.", "rotated 90 degrees clockwise",
                         lambda s, im, n: im.transpose(Image.Transpose.ROTATE_270)),
    "invert": Relation("Invert all the colours.", "with inverted colours", lambda s, im, n: ImageOps.invert(im)),
    "grayscale": Relation("Turn the image black and white.", "in black and white",
                          lambda s, im, n: ImageOps.grayscale(im).convert("RGB")),
    "recolour": Relation(f"Paint every shape {RECOLOUR[0]}.", f"with every shape painted {RECOLOUR[0]}", _recolour),
    "swap_colours": Relation("Paint the background in the largest shape's colour and the shapes in the background's.",
                             "with the background in the largest shape's colour and the shapes in the background's",
                             _swap),
    "frame": Relation("Add a white frame around the image.", "inside a white frame", _frame),
    "blur": Relation("Blur the image.", "blurred", lambda s, im, n: im.filter(ImageFilter.GaussianBlur(n / 16))),
    "shift": Relation("Move everything right by a quarter of the width.", "moved right by a quarter", _shift),
    "zoom": Relation("Zoom in two times on the centre.", "zoomed in two times on the centre", _zoom),
    "channel_cycle": Relation("Cycle the colours: red becomes green, green becomes blue, blue becomes red.",
                              "with its colour channels cycled", _channels),
    "outline": Relation("Draw the shapes as outlines only.", "with the shapes drawn as outlines",
                        lambda s, im, n: render(replace(s, outline=True), n)),
    "darken": Relation("Make the image twice as dark.", "twice as dark", lambda s, im, n: im.point(lambda v: v // 2)),
}  # fmt: skip


# -------------------------------------------------------------------------------------------- scenes


def random_scene(rng: np.random.Generator, size: int) -> Scene:
    background = str(rng.choice(list(BACKGROUNDS)))
    count = int(rng.integers(1, 4))
    colours = rng.choice(list(SHAPE_COLOURS), size=count, replace=False)
    shapes = []
    for colour in colours:
        r = int(rng.uniform(0.12, 0.22) * size)
        cx, cy = (int(v) for v in rng.uniform(0.2, 0.8, size=2) * size)
        shapes.append(Shape(str(rng.choice(SHAPES)), str(colour), cx, cy, max(r, 3), bool(rng.integers(0, 2))))
    return Scene(background, tuple(shapes))


def make_pair(relation: Relation, rng: np.random.Generator, size: int) -> tuple[Image.Image, Scene]:
    """One side-by-side before|after image (2*size x size) whose edit is clearly visible."""
    while True:  # terminates: the change is visible for almost every scene
        scene = random_scene(rng, size)
        before = render(scene, size)
        after = relation.edit(scene, before, size)
        change = np.abs(np.asarray(before, np.int16) - np.asarray(after, np.int16)).mean()
        if change >= MIN_VISIBLE_CHANGE:
            break
    pair = Image.new("RGB", (2 * size, size))
    pair.paste(before, (0, 0))
    pair.paste(after, (size, 0))
    return pair, scene


def check_synthetic_size(size: int, max_pixels: int) -> None:
    """Refuse ``data.synthetic_size`` when a pair image (``2*size x size``) would be over ``max_pixels``:
    prepare would refuse every image it generated, after drawing them all (and a huge side runs out of memory)."""
    pixels = 2 * size * size
    if pixels <= max_pixels:
        return
    largest = math.isqrt(max_pixels // 2)  # the largest side with 2 * side**2 <= max_pixels
    fix = (f"use data.synthetic_size={largest} or less, or raise data.max_image_pixels" if largest >= 16
           else "raise data.max_image_pixels")  # fmt: skip
    raise RelationError(f"data.synthetic_size={size}: a synthetic pair image is {2 * size}x{size} = {pixels:,} pixels, "
                        f"over data.max_image_pixels ({max_pixels:,}); {fix}")  # fmt: skip


def make_synthetic(
    root: str | Path,
    pairs_per_task: int,
    seed: int = 0,
    size: int = 64,
    tasks: Sequence[str] | None = None,
    advance: Callable[[int], None] | None = None,
    relations: Mapping[str, Relation] = TASKS,
) -> Path:
    """Write ``pairs_per_task`` pairs of every task (default: all of ``relations``) under ``root``.

    Each image is ``2*size x size`` (before | after). Returns ``root``; it must not exist or be empty.
    ``relations`` maps task names to relations (default: the 14 of ``TASKS``; benchmarks/compositions.py
    passes compositions of them).
    """
    root = Path(root)
    names = list(relations) if tasks is None else list(tasks)
    unknown = [t for t in names if t not in relations]
    if unknown:
        raise RelationError(f"synthetic task '{unknown[0]}': unknown; choose from {', '.join(relations)}")
    if pairs_per_task < 2:
        raise RelationError(f"synthetic: {pairs_per_task} pairs per task; an analogy needs at least 2")
    if size < 16:
        raise RelationError(f"synthetic: image side {size} is below the 16-pixel minimum")
    if root.exists() and any(root.iterdir()):
        raise RelationError(f"synthetic output '{root}': already exists and is not empty")
    for task in names:
        relation = relations[task]
        # One generator per task, keyed by its name: a task's images do not depend on the others.
        rng = np.random.default_rng([seed, zlib.crc32(task.encode())])
        folder = root / task / "Group1"
        folder.mkdir(parents=True)
        labels, seen = [], set()
        for i in range(pairs_per_task):
            image, scene = make_pair(relation, rng, size)
            while image.tobytes() in seen:  # small images can repeat a scene: prepare refuses duplicates
                image, scene = make_pair(relation, rng, size)
            seen.add(image.tobytes())
            name = f"{i:05d}.png"
            image.save(folder / name, format="PNG")
            description = scene.describe()
            labels.append({
                "left_image_description": description,
                "right_image_description": f"{description}, {relation.effect}",
                "edit_instruction": relation.instruction,
                "img_name": name,
            })  # fmt: skip
            if advance:
                advance(1)
        (folder / "labels.json").write_text(json.dumps(labels, indent=2) + "\n", encoding="utf-8")
    return root
