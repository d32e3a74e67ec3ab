"""Relation families with continuous parameters: thousands of distinct relations instead of 14 fixed ones.

A *task instance* is one (family, parameters): e.g. ``rotate`` by 137.2 degrees, ``recolour`` to one
hue. Its pairs (``synthetic_pairs`` of them, new scenes of :mod:`.synthetic`) all share the parameters,
so an exemplar pair and a query of the instance show the same relation.

Every family reads its main parameter from one number ``u`` in [0, 1) (the mapping is in
:data:`FAMILIES`); a band ``[lo, hi)`` of ``u`` (``data.synthetic_unseen_range``) is held out, so a
seen family has parameter values that training never shows (rotations by 144-180 degrees for the
default band, one mirror axis, one channel order, ...). Each instance gets a role:

- ``train``: a seen family, ``u`` outside the band; all its samples go to train.jsonl;
- ``seen``: a seen family, ``u`` outside the band, a new instance (new parameters, new scenes); all its
  samples go to test_seen.jsonl;
- ``unseen``: ``u`` inside the band of a seen family, or any ``u`` of a held-out family
  (``data.synthetic_unseen_families``); all its samples go to test_unseen.jsonl.

Task names are ``<family>-<role>-<n>``; ``raw/families.json`` lists every instance's family, role,
``u`` and parameters. ``compose`` applies two other seen families in turn, each with its own ``u``
drawn from the instance's range. Same arguments -> byte-identical files.
"""

from __future__ import annotations

import colorsys
import json
import math
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageFilter

from ..errors import RelationError
from .synthetic import MIN_VISIBLE_CHANGE, RGB, Scene, random_scene, render

ROLES = ("train", "seen", "unseen")
DEFAULT_UNSEEN_RANGE = (0.4, 0.5)
# A pair is drawn again when its edit is invisible (MIN_VISIBLE_CHANGE) or its pixels repeat another pair's.
MAX_DRAWS = 200

MIRRORS = (
    ("left to right", Image.Transpose.FLIP_LEFT_RIGHT),
    ("upside down", Image.Transpose.FLIP_TOP_BOTTOM),
    ("through the centre (a half turn)", Image.Transpose.ROTATE_180),
    ("across the main diagonal", Image.Transpose.TRANSPOSE),
    ("across the other diagonal", Image.Transpose.TRANSVERSE),
)
PERMUTATIONS = ((0, 2, 1), (1, 0, 2), (1, 2, 0), (2, 0, 1), (2, 1, 0))
"""The five channel orders other than RGB: output channel c takes input channel PERMUTATIONS[i][c]."""


@dataclass(frozen=True)
class Params:
    """One instance's parameters: ``u`` in [0, 1) sets the family's main parameter, ``v`` a second one
    drawn freely (shift's vertical offset, frame width), ``w`` a third one drawn only for the families of
    :data:`THIRD_PARAMETER` (tinted_frame's tint; 0 for the others); ``parts`` only for compose."""

    u: float
    v: float = 0.0
    parts: tuple[tuple[str, Params], ...] = ()
    w: float = 0.0


Apply = Callable[[Scene, Image.Image, int, Params], Image.Image]


@dataclass(frozen=True)
class Family:
    describe: Callable[[Params, int], str]  # the edit instruction, parameters spelled out
    apply: Apply
    mapping: str  # what u sets, for the documentation


def hue_colour(u: float) -> RGB:
    """A saturated colour of hue ``u`` (turns): HSV(u, 0.85, 0.95) in 0-255."""
    r, g, b = colorsys.hsv_to_rgb(u % 1.0, 0.85, 0.95)
    return round(r * 255), round(g * 255), round(b * 255)


def two_sided(u: float, low: tuple[float, float], high: tuple[float, float]) -> float:
    """u in [0, 0.5) -> ``low`` linearly, u in [0.5, 1) -> ``high``: a factor that is never near 1."""
    (a, b), t = (low, 2 * u) if u < 0.5 else (high, 2 * u - 1)
    return a + (b - a) * t


def shift_offset(p: Params, size: int) -> tuple[int, int]:
    """(dx, dy) in pixels (y down): direction 360 u degrees counter-clockwise from +x, length
    (1/8 + v * 5/24) * size, i.e. size/8 to size/3."""
    angle, length = 2 * math.pi * p.u, (1 / 8 + p.v * 5 / 24) * size
    return round(length * math.cos(angle)), -round(length * math.sin(angle))


def _shift(scene: Scene, im: Image.Image, size: int, p: Params) -> Image.Image:
    dx, dy = shift_offset(p, size)
    out = Image.new("RGB", im.size, scene.bg())
    out.paste(im, (dx, dy))
    return out


def rotate_degrees(p: Params) -> float:
    """Counter-clockwise angle in degrees: 15 + 330 u (never close to no turn)."""
    return 15.0 + 330.0 * p.u


def _rotate(scene: Scene, im: Image.Image, size: int, p: Params) -> Image.Image:
    return im.rotate(rotate_degrees(p), resample=Image.NEAREST, fillcolor=scene.bg())


def _recolour(scene: Scene, im: Image.Image, size: int, p: Params) -> Image.Image:
    return render(replace(scene, colours=tuple((s.colour, hue_colour(p.u)) for s in scene.shapes)), size)


def hue_turn(p: Params) -> float:
    """Hue turn in degrees: 20 + 320 u."""
    return 20.0 + 320.0 * p.u


def _hue(scene: Scene, im: Image.Image, size: int, p: Params) -> Image.Image:
    h, s, v = im.convert("HSV").split()
    turn = round(256 * hue_turn(p) / 360) % 256
    return Image.merge("HSV", (h.point(lambda x: (x + turn) % 256), s, v)).convert("RGB")


def brightness_factor(p: Params) -> float:
    """0.25 to 0.8 for u < 0.5, 1.25 to 1.8 above (:func:`two_sided`)."""
    return two_sided(p.u, (0.25, 0.8), (1.25, 1.8))


def contrast_factor(p: Params) -> float:
    """0.2 to 0.7 for u < 0.5, 1.4 to 2.0 above (PIL's ImageEnhance.Contrast: 0 is flat grey at the
    mean, 1 unchanged)."""
    return two_sided(p.u, (0.2, 0.7), (1.4, 2.0))


def scale_factor(p: Params) -> float:
    """0.5 to 0.8 for u < 0.5, 1.25 to 2.0 above, about the centre."""
    return two_sided(p.u, (0.5, 0.8), (1.25, 2.0))


def _scale(scene: Scene, im: Image.Image, size: int, p: Params) -> Image.Image:
    f, c = scale_factor(p), size / 2
    # output pixel (x, y) reads input (c + (x - c) / f, c + (y - c) / f)
    matrix = (1 / f, 0, c - c / f, 0, 1 / f, c - c / f)
    return im.transform(im.size, Image.AFFINE, matrix, resample=Image.NEAREST, fillcolor=scene.bg())


def blur_radius(p: Params, size: int) -> float:
    """Gaussian radius in pixels: (0.6 + 2.0 u) * size / 32."""
    return (0.6 + 2.0 * p.u) * size / 32


def frame_width(p: Params, size: int) -> int:
    """1 to size / 8 pixels, from v."""
    return 1 + int(p.v * (size // 8))


def _frame(scene: Scene, im: Image.Image, size: int, p: Params) -> Image.Image:
    """``im`` with a frame of :func:`frame_width` pixels inside its edge, in :func:`tinted_colour` (``frame``'s
    instances have w = 0: hue u's own colour)."""
    out = im.copy()
    box = [0, 0, size - 1, size - 1]
    ImageDraw.Draw(out).rectangle(box, outline=tinted_colour(p), width=frame_width(p, size))
    return out


def _describe_frame(p: Params, size: int) -> str:
    return "Add a frame {} pixels wide in RGB {}.".format(frame_width(p, size), tinted_colour(p))


MAX_TINT = 0.6
"""tinted_frame mixes its hue with at most this share of white: its lightest frames are pastels, never white."""


def tinted_colour(p: Params) -> RGB:
    """:func:`hue_colour` of hue ``u`` mixed with white by ``MAX_TINT * w`` (0 to 0.6), in 0-255: HSV
    saturation 0.85 down to 0.34 and a hue's darkest channel (36) up to 36 + 219 * 0.6 = 167, so no frame is white."""
    t = MAX_TINT * p.w
    return tuple(round(c + (255 - c) * t) for c in hue_colour(p.u))  # type: ignore[return-value]


OVERLAY_GREYS = 0.25
"""The top quarter of overlay's ``u`` paints greys, black to white; the rest saturated hues."""


def overlay_colour(u: float) -> RGB:
    """u in [0, 0.75): :func:`hue_colour` of hue u / 0.75; u in [0.75, 1): grey 255 (u - 0.75) / 0.25."""
    top = 1.0 - OVERLAY_GREYS
    if u < top:
        return hue_colour(u / top)
    grey = round(255 * (u - top) / OVERLAY_GREYS)
    return grey, grey, grey


def overlay_box(p: Params, size: int) -> tuple[int, int, int, int]:
    """The overlay's rectangle (x0, y0, x1, y1), inclusive pixels: sides size/4 to size/2 (large enough for a
    visible edit, MIN_VISIBLE_CHANGE, on any background) and a place, all drawn from a generator seeded by v."""
    rng = np.random.default_rng(int(p.v * 2**31))
    low = max(4, size // 4)
    w, h = (low + int(t * (size // 2 - low + 1)) for t in rng.uniform(0.0, 1.0, 2))
    x0, y0 = (int(t * (size - s + 1)) for t, s in zip(rng.uniform(0.0, 1.0, 2), (w, h)))
    return x0, y0, x0 + w - 1, y0 + h - 1


def _overlay(scene: Scene, im: Image.Image, size: int, p: Params) -> Image.Image:
    out = im.copy()
    ImageDraw.Draw(out).rectangle(list(overlay_box(p, size)), fill=overlay_colour(p.u))
    return out


def _channels(scene: Scene, im: Image.Image, size: int, p: Params) -> Image.Image:
    bands = im.split()
    return Image.merge("RGB", tuple(bands[c] for c in PERMUTATIONS[choice(p, len(PERMUTATIONS))]))


def choice(p: Params, n: int) -> int:
    """The discrete parameter of mirror and channels: floor(n u)."""
    return min(n - 1, int(p.u * n))


def _mirror(scene: Scene, im: Image.Image, size: int, p: Params) -> Image.Image:
    return im.transpose(MIRRORS[choice(p, len(MIRRORS))][1])


def _compose(scene: Scene, im: Image.Image, size: int, p: Params) -> Image.Image:
    for name, part in p.parts:
        im = FAMILIES[name].apply(scene, im, size, part)
    return im


def _describe_compose(p: Params, size: int) -> str:
    return " Then: ".join(FAMILIES[name].describe(part, size) for name, part in p.parts)


FAMILIES: dict[str, Family] = {
    "shift": Family(lambda p, n: "Move everything by ({}, {}) pixels.".format(*shift_offset(p, n)), _shift,
                    "direction 360 u degrees; length size/8 to size/3 from v"),
    "rotate": Family(lambda p, n: f"Rotate the image {rotate_degrees(p):.1f} degrees counter-clockwise.", _rotate,
                     "angle 15 + 330 u degrees"),
    "recolour": Family(lambda p, n: "Paint every shape in RGB {}.".format(hue_colour(p.u)), _recolour,
                       "hue u of the new colour"),
    "hue": Family(lambda p, n: f"Turn every hue by {hue_turn(p):.0f} degrees.", _hue, "hue turn 20 + 320 u degrees"),
    "brightness": Family(lambda p, n: f"Scale the brightness by {brightness_factor(p):.2f}.",
                         lambda s, im, n, p: ImageEnhance.Brightness(im).enhance(brightness_factor(p)),
                         "factor 0.25-0.8 (u < 0.5), 1.25-1.8"),
    "contrast": Family(lambda p, n: f"Scale the contrast by {contrast_factor(p):.2f}.",
                       lambda s, im, n, p: ImageEnhance.Contrast(im).enhance(contrast_factor(p)),
                       "factor 0.2-0.7 (u < 0.5), 1.4-2.0"),
    "scale": Family(lambda p, n: f"Scale the image by {scale_factor(p):.2f} about its centre.", _scale,
                    "factor 0.5-0.8 (u < 0.5), 1.25-2.0"),
    "blur": Family(lambda p, n: f"Blur the image with radius {blur_radius(p, n):.2f} pixels.",
                   lambda s, im, n, p: im.filter(ImageFilter.GaussianBlur(blur_radius(p, n))),
                   "Gaussian radius (0.6 + 2.0 u) * size / 32"),
    "frame": Family(_describe_frame, _frame, "hue u of the frame; width from v"),
    "tinted_frame": Family(_describe_frame, _frame, "hue u of the frame, mixed with white by 0.6 w; width from v"),
    "overlay": Family(lambda p, n: "Paint the rectangle from ({}, {}) to ({}, {}) in RGB {}.".format(
                          *overlay_box(p, n), overlay_colour(p.u)), _overlay,
                      "colour: hue u / 0.75, or grey for u >= 0.75; a filled rectangle from v"),
    "channels": Family(lambda p, n: "Reorder the colour channels as {}.".format(
                           "".join("RGB"[c] for c in PERMUTATIONS[choice(p, 5)])), _channels,
                       "one of the 5 channel orders, floor(5 u)"),
    "mirror": Family(lambda p, n: f"Mirror the image {MIRRORS[choice(p, 5)][0]}.", _mirror,
                     "one of 5 mirror axes, floor(5 u)"),
    "compose": Family(_describe_compose, _compose, "two other seen families, each with its own u"),
}  # fmt: skip


FRAMES = frozenset({"frame", "tinted_frame"})
"""Families that draw a frame; compose never applies two of them."""

THIRD_PARAMETER = frozenset({"tinted_frame"})
"""Families whose instances also draw ``w`` (after ``u`` and ``v``, so the others' draws are unchanged)."""

# ------------------------------------------------------------------------------------------ instances


def in_band(u: float, band: tuple[float, float]) -> bool:
    return band[0] <= u < band[1]


def draw_u(rng: np.random.Generator, band: tuple[float, float], inside: bool) -> float:
    """``u`` uniform in the band (``inside``) or uniform over [0, 1) without it."""
    lo, hi = band
    if inside:
        return float(rng.uniform(lo, hi))
    u = float(rng.uniform(0.0, 1.0 - (hi - lo)))
    return u if u < lo else u + (hi - lo)


def draw_params(family: str, rng: np.random.Generator, band: tuple[float, float], inside: bool,
                parts_from: Sequence[str]) -> Params:  # fmt: skip
    """One instance's parameters; compose draws two distinct families of ``parts_from`` and theirs."""
    if family in THIRD_PARAMETER:
        return Params(draw_u(rng, band, inside), float(rng.uniform(0.0, 1.0)), w=float(rng.uniform(0.0, 1.0)))
    if family != "compose":
        return Params(draw_u(rng, band, inside), float(rng.uniform(0.0, 1.0)))
    names = rng.choice(list(parts_from), size=2, replace=False)
    while set(names) <= FRAMES:  # a second frame as wide would hide the first: drawn again
        names = rng.choice(list(parts_from), size=2, replace=False)
    parts = tuple((str(n), draw_params(str(n), rng, band, inside, parts_from)) for n in names)
    return Params(parts[0][1].u, 0.0, parts)


@dataclass(frozen=True)
class Instance:
    task: str
    family: str
    role: str
    params: Params


def plan_instances(families: Sequence[str], unseen_families: Sequence[str], train: int, test: int,
                   band: tuple[float, float], seed: int) -> list[Instance]:  # fmt: skip
    """Every instance: per seen family ``train`` train, ``test`` seen and ``test`` held-out-range
    ones; per held-out family ``test`` unseen ones. Parameters from a generator keyed by (seed, task)."""
    seen = [f for f in families if f not in unseen_families and f != "compose"]
    out = []
    for family in families:
        counts = {"unseen": test} if family in unseen_families else {"train": train, "seen": test, "unseen": test}
        for role, count in counts.items():
            inside = role == "unseen" and family not in unseen_families
            for i in range(count):
                task = f"{family}-{role}-{i:04d}"
                rng = np.random.default_rng([seed, zlib.crc32(task.encode())])
                out.append(Instance(task, family, role, draw_params(family, rng, band, inside, seen)))
    return out


def check_families(families: Sequence[str], unseen_families: Sequence[str], band: Sequence[float]) -> None:
    """Raises RelationError on unknown names, a held-out family not generated, a bad band, or nothing
    left to train on."""
    for name in [*families, *unseen_families]:
        if name not in FAMILIES:
            raise RelationError(f"synthetic family '{name}': unknown; choose from {', '.join(FAMILIES)}")
    for key, names in (("synthetic_families", families), ("synthetic_unseen_families", unseen_families)):
        if twice := sorted({f for f in names if list(names).count(f) > 1}):
            raise RelationError(f"data.{key}: '{twice[0]}' is listed twice")
    missing = [f for f in unseen_families if f not in families]
    if missing:
        raise RelationError(f"data.synthetic_unseen_families: '{missing[0]}' is not in data.synthetic_families")
    if len(band) != 2 or not 0.0 <= band[0] < band[1] <= 1.0 or band[1] - band[0] >= 1.0:
        raise RelationError(f"data.synthetic_unseen_range {list(band)}: needs 0 <= lo < hi <= 1 and hi - lo < 1")
    seen = [f for f in families if f not in unseen_families and f != "compose"]
    if not seen and "compose" not in families:
        raise RelationError("data.synthetic_unseen_families holds out every family: nothing is left to train on")
    if "compose" in families and len(seen) < 2:
        have = f"{len(seen)}: {', '.join(seen)}" if seen else "0"
        raise RelationError(f"data.synthetic_families: compose needs at least 2 seen families besides compose (have {have})")
    if "compose" in families and set(seen) <= FRAMES:
        raise RelationError("data.synthetic_families: compose needs a seen family besides frame and tinted_frame "
                            "(it never applies two frames)")


# ------------------------------------------------------------------------------------------- writing


def draw_pair(instance: Instance, rng: np.random.Generator, size: int, taken: set[bytes]) -> tuple[Image.Image, Scene]:
    """One before|after image (2*size x size) of a new scene whose edit is visible and whose pixels no
    earlier pair of the run has (prepare refuses duplicates). Raises RelationError after MAX_DRAWS tries."""
    family = FAMILIES[instance.family]
    for _ in range(MAX_DRAWS):
        scene = random_scene(rng, size)
        before = render(scene, size)
        after = family.apply(scene, before, size, instance.params)
        change = np.abs(np.asarray(before, np.int16) - np.asarray(after, np.int16)).mean()
        pair = Image.new("RGB", (2 * size, size))
        pair.paste(before, (0, 0))
        pair.paste(after, (size, 0))
        if change >= MIN_VISIBLE_CHANGE and pair.tobytes() not in taken:
            taken.add(pair.tobytes())
            return pair, scene
    raise RelationError(f"synthetic task '{instance.task}': no visible edit in {MAX_DRAWS} scenes")


def params_json(p: Params) -> dict:
    return {"u": p.u, "v": p.v, **({"w": p.w} if p.w else {}), **({"parts": [[n, params_json(q)] for n, q in p.parts]} if p.parts else {})}


def make_families(
    root: str | Path, instances: Sequence[Instance], pairs_per_task: int, seed: int = 0, size: int = 32,
    advance: Callable[[int], None] | None = None,
) -> dict[str, str]:  # fmt: skip
    """Write ``pairs_per_task`` pairs of every instance under ``root`` (Relation252K layout) and
    ``root/families.json``. Returns task -> role. ``root`` must not exist or be empty."""
    root = Path(root)
    if root.exists() and any(root.iterdir()):
        raise RelationError(f"synthetic output '{root}': already exists and is not empty")
    taken: set[bytes] = set()
    for instance in instances:
        rng = np.random.default_rng([seed, zlib.crc32(instance.task.encode()), 1])
        folder = root / instance.task / "Group1"
        folder.mkdir(parents=True)
        labels = [_write_pair(folder, i, instance, rng, size, taken) for i in range(pairs_per_task)]
        (folder / "labels.json").write_text(json.dumps(labels, indent=2) + "\n", encoding="utf-8")
        if advance:
            advance(pairs_per_task)
    listing = {i.task: {"family": i.family, "role": i.role, **params_json(i.params)} for i in instances}
    (root / "families.json").write_text(json.dumps(listing, indent=2) + "\n", encoding="utf-8")
    return {i.task: i.role for i in instances}


def _write_pair(folder: Path, i: int, instance: Instance, rng: np.random.Generator, size: int,
                taken: set[bytes]) -> dict:  # fmt: skip
    image, scene = draw_pair(instance, rng, size, taken)
    name = f"{i:05d}.png"
    image.save(folder / name, format="PNG")
    description = scene.describe()
    instruction = FAMILIES[instance.family].describe(instance.params, size)
    return {
        "left_image_description": description,
        "right_image_description": f"{description}, edited: {instruction}",
        "edit_instruction": instruction,
        "img_name": name,
    }
