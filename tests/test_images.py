"""Image loading: every mode becomes upright 8-bit RGB; every bad file is one clear error."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import random_image, truncated_copy
from PIL import Image

from relation_cli.errors import RelationError
from relation_cli.images import open_image, pad_exemplar, save_output, working_size

LIMIT = 10_000_000


@pytest.mark.parametrize("mode", ["P", "L", "LA", "RGBA", "CMYK", "1", "I;16", "I", "F"])
def test_modes_become_rgb(tmp_path, mode):
    rgb = Image.fromarray(np.random.default_rng(0).integers(0, 256, (20, 30, 3), dtype=np.uint8))
    im = rgb.convert("L").convert(mode) if mode in ("I;16", "I", "F") else rgb.convert(mode)
    path = tmp_path / ("x.tiff" if mode in ("CMYK", "I", "F") else "x.png")
    im.save(path)
    out = open_image(path, "query", LIMIT)
    assert out.mode == "RGB" and out.size == (30, 20)


def test_sixteen_bit_is_scaled_not_clipped(tmp_path):
    arr = np.full((20, 20), 32768, dtype=np.uint16)
    Image.fromarray(arr).save(tmp_path / "16.png")
    out = np.asarray(open_image(tmp_path / "16.png", "query", LIMIT))
    assert 126 <= out.mean() <= 129


def test_exif_orientation_is_applied(tmp_path):
    im = Image.new("RGB", (40, 20), (255, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    im.save(tmp_path / "r.jpg", exif=exif)
    assert open_image(tmp_path / "r.jpg", "query", LIMIT).size == (20, 40)


def _write(path, data: bytes):
    path.write_bytes(data)
    return path


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda d: d / "missing.png", "file not found"),
        (lambda d: _write(d / "empty.png", b""), "empty file"),
        (lambda d: _write(d / "text.png", b"hello"), "not an image"),
        (lambda d: truncated_copy(random_image(d / "full.png", (64, 64)), d / "cut.png"), "cannot decode"),
        (lambda d: random_image(d / "small.png", (15, 40)), "a side under 16 pixels"),
        (lambda d: random_image(d / "big.png", (4000, 3000)), "over the limit"),
        (lambda d: d, "not a file"),
    ],
)
def test_bad_images(tmp_path, make, message):
    with pytest.raises(RelationError, match=message) as err:
        open_image(make(tmp_path), "query", LIMIT)
    assert str(err.value).startswith("query '") and "\n" not in str(err.value)


def test_the_limit_is_named_as_the_caller_says(tmp_path):
    big = random_image(tmp_path / "big.png", (4000, 3000))
    with pytest.raises(RelationError, match=r"over the limit of 1,000 \(data.max_image_pixels\)$"):
        open_image(big, "query", 1000)
    with pytest.raises(RelationError, match=r"over the limit of 1,000 \(tool.py's MAX_PIXELS\)$"):
        open_image(big, "query", 1000, limit="tool.py's MAX_PIXELS")


def test_a_decompression_bomb_names_the_limit_that_refused_it(tmp_path, monkeypatch):
    big = random_image(tmp_path / "big.png", (100, 100))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # PIL refuses over 2,000 pixels, before the size is read
    with pytest.raises(RelationError, match=r"10,000 pixels, over the limit of 1,500 \(data.max_image_pixels\); refused"):
        open_image(big, "query", 1500)
    with pytest.raises(RelationError, match=r"10,000 pixels, over the limit of 2,000 \(PIL's, 2 x Image.MAX_IMAGE_PIXELS\)"):
        open_image(big, "grid image", 10**9, limit="unused")  # report, judge, ui: their 10**9 is not what refused it


@pytest.mark.parametrize(
    "size, expected", [((60, 44), (512, 384)), ((40, 52), (386, 512)), ((100, 100), (512, 512)), ((300, 100), (512, 287))]
)
def test_exemplar_padding_sizes(size, expected):
    """Sizes the authors' resize_img gives (the first two are recorded in the fixture's case.json)."""
    assert pad_exemplar(Image.new("RGB", size, (0, 0, 0))).size == expected


def test_exemplar_padding_is_white_and_centred():
    out = np.asarray(pad_exemplar(Image.new("RGB", (100, 50), (0, 0, 0)), long_side=100))
    assert out.shape == (56, 100, 3)  # 16:9 is closest to 2:1; int(100 * 9 / 16) = 56
    assert (out[0] == 255).all() and (out[-1] == 255).all() and (out[28] == 0).all()


def test_working_size_floors_to_the_multiple():
    assert working_size(72, 56, 16) == (64, 48) and working_size(512, 512, 16) == (512, 512)
    assert working_size(36, 20, 8) == (32, 16) and working_size(5, 30, 8) == (8, 24)


@pytest.mark.parametrize("suffix", [".png", ".jpg", ".webp", ".npy"])
def test_save_output_formats(tmp_path, suffix):
    arr = np.random.default_rng(0).random((16, 32, 3)).astype(np.float32)
    path = save_output(arr, tmp_path / f"o{suffix}")
    if suffix == ".npy":
        assert np.array_equal(np.load(path), arr)
    else:
        assert Image.open(path).size == (32, 16)
    assert [p.name for p in tmp_path.iterdir()] == [f"o{suffix}"]  # no temporary file left behind


def test_fit_for_display_keeps_small_pixels_square_and_shrinks_large_ones():
    from relation_cli.images import fit_for_display

    small = Image.fromarray(np.arange(32 * 16 * 3, dtype=np.uint8).reshape(16, 32, 3))
    big = fit_for_display(small, 156)
    assert big.size == (128, 64)  # enlarged 4x, the largest whole factor that fits
    assert np.array_equal(np.asarray(big)[::4, ::4], np.asarray(small))  # every pixel a 4x4 square
    assert fit_for_display(Image.new("RGB", (300, 600)), 156).size == (78, 156)
    assert fit_for_display(Image.new("RGB", (100, 50)), 156).size == (100, 50)  # fits, not 2x: kept


@pytest.mark.parametrize("stored, typed", [
    ("Query.png", "query.png"),  # letter case
    ("cafe\u0301.png", "caf\u00e9.png"),  # é stored decomposed (macOS), typed as one code point
])  # fmt: skip
def test_a_missing_file_names_the_one_the_folder_has_under_another_spelling(tmp_path, stored, typed):
    random_image(tmp_path / stored, (32, 32))
    with pytest.raises(RelationError) as err:
        open_image(tmp_path / typed, "query", LIMIT)
    assert str(err.value) == f"query '{tmp_path / typed}': file not found; the folder has '{tmp_path / stored}'"
    random_image(tmp_path / stored.upper(), (32, 32))  # two candidates: no guess
    if (tmp_path / stored.upper()).exists() and len(list(tmp_path.iterdir())) == 2:
        with pytest.raises(RelationError, match="file not found$"):
            open_image(tmp_path / typed, "query", LIMIT)
