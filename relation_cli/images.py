"""Reading, checking and writing images: the only place user image files are opened or written.

Every check that is cheap runs before a model is loaded. Any mode PIL can open (palette, grayscale,
alpha, CMYK, 16-bit) comes back as 8-bit RGB, upright according to its EXIF orientation.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterable

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import RelationError, several
from .fs import atomic_file, check_writable, not_found

MIN_SIDE = 16
OUTPUT_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".npy")

log = logging.getLogger(__name__)


class _QuietPil:
    """PIL's warnings silenced while images are read, without touching the filters at import.

    data.max_image_pixels is the limit, checked before decoding: PIL's own warning (89 MP) would refuse
    images a higher configured limit allows. PIL's warnings about damaged metadata of an image that still
    decodes would print lines beside a command's one-line result. Warning filters are process-wide and
    images are read in threads, so nested and concurrent readers share one ``catch_warnings``: the first
    to enter installs it, the last to leave restores the filters as they were.
    """

    def __init__(self) -> None:
        self.lock, self.depth, self.guard = threading.Lock(), 0, None

    def __enter__(self) -> None:
        with self.lock:
            if self.depth == 0:
                self.guard = warnings.catch_warnings()
                self.guard.__enter__()
                warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)
                warnings.filterwarnings("ignore", category=UserWarning, module=r"PIL\.")
            self.depth += 1

    def __exit__(self, *exc) -> None:
        with self.lock:
            self.depth -= 1
            if self.depth == 0:
                self.guard.__exit__(None, None, None)


_quiet_pil = _QuietPil()
_alpha_noted = threading.Event()
_frames_noted = threading.Event()

# The aspect ratios exemplars are padded to (SPEC 2.1), as (width, height).
EXEMPLAR_RATIOS = ((3, 4), (4, 3), (1, 1), (16, 9), (9, 16))


def open_image(
    path: str | Path, role: str, max_pixels: int, min_side: int = MIN_SIDE, limit: str = "data.max_image_pixels"
) -> Image.Image:
    """Open, fully decode and check one image; returns an upright 8-bit RGB copy.

    ``role`` names the input in messages ("query", "exemplar A", "row 3 source", ...); ``limit`` names the
    setting ``max_pixels`` comes from, in the message of an image over it. Raises RelationError for a missing,
    unreadable, corrupt, over-size or too small image.
    """
    path = Path(path)
    where = f"{role} '{path}'"
    if not path.exists():
        raise RelationError(f"{where}: {not_found(path)}")
    if not path.is_file():
        raise RelationError(f"{where}: not a file")
    if path.stat().st_size == 0:
        raise RelationError(f"{where}: empty file (0 bytes)")
    try:
        with _quiet_pil, Image.open(path) as im:
            w, h = im.size
            if w * h > max_pixels:
                raise RelationError(
                    f"{where}: {w}x{h} is {w * h:,} pixels, over the limit of {max_pixels:,} ({limit})"
                )
            if getattr(im, "n_frames", 1) > 1:
                _note_once(_frames_noted, f"note: {where} has {im.n_frames} frames; the first is used")
            im.load()
            image = _to_rgb(ImageOps.exif_transpose(im), where)
    except RelationError:
        raise
    except UnidentifiedImageError:
        raise RelationError(f"{where}: not an image PIL can read") from None
    except Image.DecompressionBombError as e:  # PIL's own limit, met before the size can be read
        said = re.search(r"\((\d+) pixels\)", str(e))  # "Image size (N pixels) exceeds limit of ..."
        pil_limit = 2 * Image.MAX_IMAGE_PIXELS  # PIL refuses at twice its MAX_IMAGE_PIXELS (a warning below that)
        size = f"{int(said.group(1)):,} pixels" if said else f"over {pil_limit:,} pixels"
        over = f"{max_pixels:,} ({limit})" if max_pixels <= pil_limit else f"{pil_limit:,} (PIL's, 2 x Image.MAX_IMAGE_PIXELS)"
        raise RelationError(f"{where}: {size}, over the limit of {over}; refused before decoding (a decompression "
                            "bomb)") from None  # fmt: skip
    except PermissionError:
        raise RelationError(f"{where}: permission denied") from None
    except Exception as e:  # PIL's decoders raise many types on corrupt data (struct.error, EOFError, ...)
        raise RelationError(f"{where}: cannot decode image ({_short(e)}); the file may be truncated") from None
    if min(image.size) < min_side:
        raise RelationError(f"{where}: {image.width}x{image.height}, a side under {min_side} pixels (the least is {min_side}x{min_side})")
    return image


def check_images(images: Iterable[tuple[Path, str]], max_pixels: int, head: str = "") -> int:
    """Open and fully decode each distinct image of ``(path, role)`` once; returns how many there were.
    ``head`` starts the message (the rows file the roles' row numbers refer to).

    Commands call it before loading a model or writing a file, so bad files among thousands fail in
    seconds rather than hours into a run. Threads: PIL decodes without holding the GIL.

    Raises:
        RelationError: every image that cannot be used, in input order, in one line
            (:func:`relation_cli.errors.several`: the first 10 spelt out and a count).
    """
    unique: dict[Path, str] = {}
    for path, role in images:
        unique.setdefault(Path(path), role)

    def problem(item: tuple[Path, str]) -> str | None:
        try:
            open_image(item[0], item[1], max_pixels)
        except RelationError as e:
            return str(e)
        return None

    pool = ThreadPoolExecutor(min(8, os.cpu_count() or 1))
    try:
        with _quiet_pil:  # one installation of the filters for the whole pool
            problems = [p for p in pool.map(problem, unique.items()) if p is not None]
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    if problems:
        raise several(problems, "image", head)
    return len(unique)


def _short(err: Exception) -> str:
    return str(err).splitlines()[0][:120] if str(err) else type(err).__name__


def _to_rgb(im: Image.Image, where: str = "an image") -> Image.Image:
    """Convert to 8-bit RGB. 16/32-bit integer and float images are scaled, not clipped."""
    if im.mode == "RGB":
        return im.copy()
    if im.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        arr = np.asarray(im, dtype=np.float64)
        top = 65535.0 if im.mode.startswith("I;16") or arr.max() > 255 else 255.0
        arr = np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(arr, "L").convert("RGB")
    if im.mode == "F":
        arr = np.asarray(im, dtype=np.float64)
        top = 1.0 if arr.max() <= 1.0 else 255.0
        return Image.fromarray(np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8), "L").convert("RGB")
    if im.mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")
    # Alpha is dropped like the authors' ``Image.open(...).convert("RGB")`` does, so results match theirs.
    if im.mode in ("RGBA", "LA", "PA", "RGBa", "La") and im.getchannel("A").getextrema()[0] < 255:
        _note_alpha(where)
    return im.convert("RGB")


def _note_alpha(where: str) -> None:
    """Say once per process that transparency is dropped (the colour under transparent pixels shows)."""
    _note_once(_alpha_noted, f"note: {where} is transparent; its alpha is dropped as the authors' code does (the "
               "colours under transparent pixels are used; flatten it onto a background first to choose them)")  # fmt: skip


def _note_once(said: threading.Event, message: str) -> None:
    """``message`` as a warning, the first time ``said`` is not yet set in this process."""
    if not said.is_set():
        said.set()
        log.warning("%s", message)


def pad_exemplar(image: Image.Image, long_side: int = 512) -> Image.Image:
    """Pad with white to the nearest regular aspect ratio, centred, then resize the long side (bilinear).

    Matches the authors' ``resize_img(pad_to_regular=True, target_long_side=512)`` to the pixel.
    """
    w, h = image.size
    ratio = w / h
    rw, rh = min(EXEMPLAR_RATIOS, key=lambda r: abs(r[0] / r[1] - ratio))
    if ratio >= rw / rh:
        tw, th = w, int(w * rh / rw)
    else:
        tw, th = int(h * rw / rh), h
    canvas = Image.new("RGB", (tw, th), (255, 255, 255))
    canvas.paste(image, ((tw - w) // 2, (th - h) // 2))
    scale = long_side / max(tw, th)
    return canvas.resize((round(tw * scale), round(th * scale)), Image.BILINEAR)


def fit_for_display(image: Image.Image, side: int) -> Image.Image:
    """``image`` fitted into ``side`` x ``side`` for a grid: a small one is enlarged by a whole factor with
    nearest-neighbour (every pixel the model made stays a visible square), a large one shrunk (Lanczos)."""
    if max(image.size) * 2 <= side:
        k = side // max(image.size)
        image = image.resize((image.width * k, image.height * k), Image.NEAREST)
    if max(image.size) > side:
        image = ImageOps.contain(image, (side, side), Image.LANCZOS)
    return image


def working_size(
    width: int,
    height: int,
    multiple: int,
    max_area: int | None = None,
    target_width: int | None = None,
    target_height: int | None = None,
    min_side: int = 0,
) -> tuple[int, int]:
    """The ``(width, height)`` in pixels the model works at for a query of ``width x height``.

    The one place the output-size rule lives (every caller passes ``multiple = 2 * vae_scale_factor``,
    diffusers' Flux packing rule: 16 for FLUX, 8 for the demo model):

    - an explicit ``target_width`` and/or ``target_height`` (``--width/--height``) wins; a missing side
      follows the query's aspect ratio;
    - else a query over ``max_area`` pixels is scaled to about ``max_area``, aspect ratio kept (the size
      rule of diffusers' ``FluxKontextPipeline``: ``round(sqrt(max_area * aspect))``); a query so long and
      thin that its short side would fall under ``multiple`` gets that short side and a long side that
      keeps within ``max_area`` (the aspect ratio then cannot be kept);
    - else the query's own size (small queries are not enlarged), except that a short side under
      ``min_side`` (the base's smallest working side, ``pipe.min_working_side``: 64 for FLUX.2 [klein])
      is brought up to it, aspect ratio kept, and both sides rounded *up* to ``multiple``.

    Otherwise both sides are then floored to a multiple of ``multiple`` (at least ``multiple``). An
    explicit size under ``min_side`` is kept as given (the caller refuses it).
    """
    w, h = float(width), float(height)
    if target_width or target_height:
        w = target_width or target_height * width / height
        h = target_height or target_width * height / width
    elif max_area is not None and width * height > max_area:
        w, h = (max_area * width / height) ** 0.5, (max_area * height / width) ** 0.5
        if min(w, h) < multiple:  # a long thin query: the short side at its least, the long one within max_area
            long = min(max(width, height), max(multiple, max_area // multiple))
            w, h = (long, multiple) if width >= height else (multiple, long)
    if not (target_width or target_height) and min(w, h) < min_side:
        scale = min_side / min(w, h)
        w, h = max(min_side, round(w * scale)), max(min_side, round(h * scale))
        return -(-w // multiple) * multiple, -(-h // multiple) * multiple  # rounded up: never under min_side
    return max(multiple, round(w) // multiple * multiple), max(multiple, round(h) // multiple * multiple)


def resize_result(array: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A float32 ``HxWx3`` result in [0, 1] resized to ``size`` = ``(width, height)``: bicubic with
    antialiasing, in float (no 8-bit rounding), clipped to [0, 1]; returned as is when already that size.

    Pixel layout conversions are diffusers' ``VaeImageProcessor.numpy_to_pt`` / ``pt_to_numpy``.
    """
    if (array.shape[1], array.shape[0]) == tuple(size):
        return array
    import torch
    from diffusers.image_processor import VaeImageProcessor

    pt = VaeImageProcessor.numpy_to_pt(array[None])  # (1, 3, H, W)
    pt = torch.nn.functional.interpolate(pt, size=(size[1], size[0]), mode="bicubic", antialias=True)
    return VaeImageProcessor.pt_to_numpy(pt.clamp(0, 1))[0].astype(np.float32)


def check_output_path(path: str | Path, overwrite: bool) -> Path:
    """Refuse a bad output path before any work is done."""
    path = Path(path)
    if path.is_dir():
        raise RelationError(f"output '{path}': is a directory; give an image file name, e.g. '{path / 'edited.png'}'")
    if not path.suffix and path.name.lower() in OUTPUT_SUFFIXES:  # ".png": a hidden name with no extension
        raise RelationError(f"output '{path}': a name is needed before the extension, e.g. '{path.with_name('edited' + path.name)}'")
    if path.suffix.lower() not in OUTPUT_SUFFIXES:
        raise RelationError(f"output '{path}': unsupported extension, use one of {', '.join(OUTPUT_SUFFIXES)}")
    if path.is_symlink() and not path.exists() and not overwrite:  # a link to nothing: the name is taken all the same
        raise RelationError(f"output '{path}': already exists, a link to '{os.readlink(path)}', which does not exist "
                            "(pass --overwrite to replace the link)")  # fmt: skip
    if path.exists() and not overwrite:
        raise RelationError(f"output '{path}': already exists (pass --overwrite to replace it)")
    return check_writable(path)


MAX_SIDE = {".jpg": 65500, ".jpeg": 65500, ".webp": 16383}
"""The largest side, in pixels, each format can store (libjpeg; libwebp's WEBP_MAX_DIMENSION)."""


def check_output_size(path: str | Path, size: tuple[int, int]) -> None:
    """Refuse, before any work, a result of ``size`` (width, height) that ``path``'s format cannot store.

    Raises:
        RelationError: ``output 'a.webp': a 20000x40 result is over WebP's limit of 16383 pixels a side; ...``.
    """
    path, (w, h) = Path(path), size
    limit = MAX_SIDE.get(path.suffix.lower())
    if limit and max(w, h) > limit:
        name = "WebP" if path.suffix.lower() == ".webp" else "JPEG"
        raise RelationError(f"output '{path}': a {w}x{h} result is over {name}'s limit of {limit} pixels a side; "
                            "use .png")  # fmt: skip


def save_output(array: np.ndarray, path: str | Path, exclusive: bool = False) -> Path:
    """Write a float HxWx3 image in [0, 1] atomically; the format follows the extension.

    ``.npy`` keeps the float32 values unquantized, for exact comparisons. ``exclusive``: never replace a file
    another process wrote at ``path`` meanwhile (FileExistsError, see :func:`~relation_cli.fs.atomic_file`).
    """
    path = Path(path)
    suffix = path.suffix.lower()
    with atomic_file(path, exclusive) as tmp:
        if suffix == ".npy":
            np.save(tmp, np.asarray(array, dtype=np.float32))
        else:
            image = Image.fromarray((np.clip(array, 0, 1) * 255).round().astype(np.uint8))
            # PNG at zlib level 3, not PIL's 6: a 12-megapixel result saved in 1.6 s instead of 3.9 s
            # (2 CPU cores; 3.6 s and 1.4 s in a second run), the file 18% larger; pixels are the same.
            kwargs = {"quality": 95} if suffix in (".jpg", ".jpeg", ".webp") else {}
            kwargs = {"compress_level": 3} if suffix == ".png" else kwargs
            image.save(tmp, format={".jpg": "JPEG", ".jpeg": "JPEG"}.get(suffix, suffix[1:].upper()), **kwargs)
    return path
