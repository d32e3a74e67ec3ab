"""Property-based tests (hypothesis) of the three parsers that meet untrusted text and bytes first:
the config override parser, the dataset entry parsers (prepare's sources, run-ready rows) and the image loader.
Whatever the input, each either returns something valid or raises RelationError (one line for the user).
"""

from __future__ import annotations

import io
import json
import os
import struct
import tempfile
import zlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from PIL import Image

from relation_cli.config import load_config, parse_override
from relation_cli.errors import RelationError
from relation_cli.images import open_image
from relation_cli.prepare.sources import read_source
from relation_cli.rows import FIELDS, parse_rows

FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
LIMIT = 1_000_000


def one_line(err: RelationError) -> bool:
    return bool(str(err)) and "\n" not in str(err)


# ------------------------------------------------------------------------------------------ config overrides

KEYS = st.sampled_from(["infer.steps", "infer.prompt", "train.batch_size", "model.base", "data.nope", "eval.inputs",
                        "a.b.c", "infer", "infer.steps.x", ".steps", "infer..steps", "lora.targets"])  # fmt: skip


@FAST
@given(st.one_of(st.text(), st.builds(lambda k, v: f"{k}={v}", KEYS, st.text())))
@example("infer.prompt=2001-02-30")  # PyYAML's date constructor raises ValueError
@example("infer.prompt=" + "[" * 600)  # nesting deep enough to exhaust the recursion limit
@example("model.base.x=1")
def test_any_override_is_a_config_or_one_relation_error(text):
    try:
        parse_override(text)
        cfg = load_config(None, [text])
    except RelationError as e:
        assert one_line(e)
    else:
        assert cfg.model_dump()  # a validated configuration


# What YAML can hold in a double-quoted scalar: no control characters (JSON escapes them), surrogates,
# non-characters, or the line and paragraph separators that YAML folds.
PRINTABLE = st.characters(blacklist_categories=("Cs", "Cc", "Cn", "Zl", "Zp"))
# (key, strategy of valid values): each value written as YAML must come back unchanged.
FIELDS_ROUND_TRIP = [
    ("infer.steps", st.integers(1, 1000)),
    ("infer.seed", st.integers(0, 2**63 - 1)),
    ("train.batch_size", st.integers(1, 10**6)),
    ("eval.limit", st.integers(1, 10**9)),
    ("infer.guidance", st.floats(0, 1e6, allow_nan=False)),
    ("adapter.scale", st.floats(0, 10, allow_nan=False)),
    ("train.learning_rate", st.floats(1e-12, 1.0)),
    ("infer.overwrite", st.booleans()),
    ("eval.fid", st.booleans()),
    ("infer.prompt", st.text(PRINTABLE)),
    ("train.output_dir", st.text(PRINTABLE, min_size=1)),
    ("lora.targets", st.lists(st.text(PRINTABLE), min_size=1, max_size=4)),
]


@FAST
@given(st.sampled_from(FIELDS_ROUND_TRIP).flatmap(lambda kv: st.tuples(st.just(kv[0]), kv[1])))
def test_valid_overrides_round_trip(key_value):
    key, value = key_value
    text = json.dumps(value, ensure_ascii=False)  # JSON is a YAML flow value: strings quoted, floats exact
    section, name = key.split(".")
    assert getattr(getattr(load_config(None, [f"{key}={text}"]), section), name) == value


@FAST
@given(st.one_of(st.text(), st.binary()))
@example(b"model: 5\n")  # a section that is not a mapping
@example("infer:\n  steps: 2001-02-30\n")
def test_any_config_file_is_a_config_or_one_relation_error(content):
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "c.yaml"
        path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8", "surrogatepass"))
        try:
            load_config(path)
        except RelationError as e:
            assert one_line(e)


# ------------------------------------------------------------------------------------------ dataset entries

PATHS = st.sampled_from(["a.png", "sub/b.png", "/etc/passwd", "../up.png", "a/../../x.png", "link.png", "", " ", "\x00",
                         "sub", "a" * 300])  # fmt: skip
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True), st.text(max_size=20), PATHS)
JSON = st.recursive(
    SCALARS,
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=8), inner, max_size=3)),
    max_leaves=8,
)
ENTRY_KEYS = st.sampled_from([*FIELDS, "img_name", "edit_instruction", "left_image_description",
                              "right_image_description", "txt", "id"])  # fmt: skip
ENTRIES = st.dictionaries(ENTRY_KEYS, st.one_of(PATHS, JSON), max_size=7)
LINES = st.lists(st.one_of(ENTRIES.map(json.dumps), JSON.map(json.dumps), st.text(max_size=30),
                           st.binary(max_size=30).map(lambda b: b.decode("utf-8", "replace"))), max_size=6)  # fmt: skip


def dataset_folder() -> tempfile.TemporaryDirectory:
    folder = tempfile.TemporaryDirectory()
    root = Path(folder.name) / "data"
    (root / "sub").mkdir(parents=True)
    outside = Path(folder.name) / "outside.png"
    outside.write_bytes(b"x")
    (root / "link.png").symlink_to(outside)
    return folder


def inside(path: Path, root: Path) -> bool:
    return os.path.realpath(path).startswith(os.path.join(os.path.realpath(root), ""))


@FAST
@given(LINES, st.booleans())
@example(['{"cond1": "a.png", "cond2": "a.png", "source": "a.png", "text": "x\u2028y"}'], False)  # U+2028 in JSON
@example(["[" * 100_000], False)
def test_run_ready_rows_parse_or_one_relation_error(lines, need_target):
    with dataset_folder() as folder:
        path = Path(folder) / "data" / "rows.jsonl"
        path.write_text("\n".join(lines), encoding="utf-8", errors="surrogatepass")
        try:
            rows = parse_rows(path, need_target)
        except RelationError as e:
            assert one_line(e)
            return
        assert rows
        for row in rows:
            assert isinstance(row.text, str) and isinstance(row.task, str)
            assert all(inside(p, path.parent) for p in (row.cond1, row.cond2, row.source, row.target) if p is not None)


@FAST
@given(LINES, st.sampled_from([".jsonl", ".json"]))
@example(['{"img_name": "a.png", "edit_instruction": "x", "task": "t"}'], ".jsonl")
def test_prepare_entries_become_pairs_or_problems(lines, suffix):
    with dataset_folder() as folder:
        path = Path(folder) / "data" / f"pairs{suffix}"
        text = "\n".join(lines) if suffix == ".jsonl" else "[" + ", ".join(lines) + "]"
        path.write_text(text, encoding="utf-8", errors="surrogatepass")
        try:
            source = read_source(path)
        except RelationError as e:
            assert one_line(e)
            return
        for pair in source.pairs:  # usable: an instruction, a task name, images inside the root
            assert pair.text and isinstance(pair.task, str) and pair.images
            assert all(inside(p, path.parent) for p in pair.images)
        for problem in source.problems:
            assert problem.reason and "\n" not in str(problem)
        if suffix == ".jsonl" and not any(p.where == "file" for p in source.problems):  # one per non-blank line
            read = path.read_text(encoding="utf-8")  # as the reader sees it: universal newlines
            assert len(source.pairs) + len(source.problems) == sum(1 for line in read.split("\n") if line.strip())


# ------------------------------------------------------------------------------------------ images

FORMATS = {"PNG": ".png", "JPEG": ".jpg", "WEBP": ".webp", "BMP": ".bmp", "TIFF": ".tiff", "GIF": ".gif"}
MODES = ["RGB", "RGBA", "L", "LA", "P", "CMYK", "1", "I;16", "I", "F"]
SAVES = {"RGB": list(FORMATS), "RGBA": ["PNG", "WEBP", "TIFF"], "L": list(FORMATS), "LA": ["PNG", "TIFF"],
         "P": ["PNG", "GIF", "BMP", "TIFF"], "CMYK": ["JPEG", "TIFF"], "1": ["PNG", "BMP", "TIFF", "GIF"],
         "I;16": ["PNG", "TIFF"], "I": ["TIFF"], "F": ["TIFF"]}  # fmt: skip
"""The formats PIL writes each mode in."""


def encode(mode: str, fmt: str, size: tuple[int, int], seed: int, orientation: int = 1) -> bytes:
    rgb = Image.fromarray(np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
    image = rgb.convert("L").convert(mode) if mode in ("I;16", "I", "F") else rgb.convert(mode)
    buffer = io.BytesIO()
    kwargs = {}
    if orientation != 1:
        exif = Image.Exif()
        exif[0x0112] = orientation
        kwargs["exif"] = exif
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


IMAGES = st.sampled_from(MODES).flatmap(
    lambda mode: st.tuples(st.just(mode), st.sampled_from(SAVES[mode]), st.integers(16, 48), st.integers(16, 48),
                           st.integers(0, 2**16))  # fmt: skip
)


def load(data: bytes, suffix: str = ".png"):
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"x{suffix}"
        path.write_bytes(data)
        return open_image(path, "query", LIMIT)


@FAST
@given(IMAGES)
def test_every_mode_and_size_comes_back_rgb_at_its_size(spec):
    mode, fmt, w, h, seed = spec
    image = load(encode(mode, fmt, (w, h), seed), FORMATS[fmt])
    assert image.mode == "RGB" and image.size == (w, h)


@FAST
@given(st.sampled_from(["JPEG", "PNG", "WEBP", "TIFF"]), st.integers(1, 8), st.integers(16, 40), st.integers(16, 40))
def test_exif_orientation_makes_it_upright(fmt, orientation, w, h):
    image = load(encode("RGB", fmt, (w, h), 0, orientation), FORMATS[fmt])
    assert image.mode == "RGB" and image.size == ((h, w) if orientation >= 5 else (w, h))


@FAST
@given(st.binary(max_size=2000))
def test_arbitrary_bytes_are_an_image_or_one_relation_error(data):
    try:
        image = load(data)
    except RelationError as e:
        assert one_line(e) and str(e).startswith("query '")
    else:
        assert image.mode == "RGB" and min(image.size) >= 16 and image.width * image.height <= LIMIT


@FAST
@given(IMAGES, st.data())
def test_damaged_images_are_an_image_or_one_relation_error(spec, data):
    """Valid files cut short or with bytes overwritten: the decoders' own exceptions never escape."""
    mode, fmt, w, h, seed = spec
    raw = bytearray(encode(mode, fmt, (w, h), seed))
    if data.draw(st.booleans(), label="truncate"):
        raw = raw[: data.draw(st.integers(0, len(raw) - 1), label="keep")]
    for _ in range(data.draw(st.integers(0, 8), label="flips")):
        if raw:
            raw[data.draw(st.integers(0, len(raw) - 1), label="at")] = data.draw(st.integers(0, 255), label="byte")
    try:
        image = load(bytes(raw), FORMATS[fmt])
    except RelationError as e:
        assert one_line(e)
    else:
        assert image.mode == "RGB" and min(image.size) >= 16


def test_pixel_limit_is_the_configured_one_not_pils(tmp_path, monkeypatch):
    """An image over PIL's own warning threshold but within data.max_image_pixels opens (the configuration
    decides); one over the configured limit is refused before decoding."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # PIL warns above 1,000 pixels, errs above 2,000
    path = tmp_path / "x.png"
    path.write_bytes(encode("RGB", "PNG", (40, 40), 0))  # 1,600 pixels
    assert open_image(path, "query", 10_000).size == (40, 40)
    with pytest.raises(RelationError, match="over the limit of 1,500"):
        open_image(path, "query", 1_500)


def test_a_decompression_bomb_is_refused_with_its_own_size(tmp_path):
    """PIL refuses a header of 100000x100000 before the image's size can be read: the message gives the size
    PIL read (10,000,000,000 pixels), not PIL's own limit."""
    path = tmp_path / "bomb.png"
    raw = bytearray(encode("RGB", "PNG", (16, 16), 0))
    raw[16:24] = struct.pack(">II", 100_000, 100_000)
    raw[29:33] = struct.pack(">I", zlib.crc32(bytes(raw[12:29])))
    path.write_bytes(bytes(raw))
    with pytest.raises(RelationError, match=r"bomb\.png': 10,000,000,000 pixels, over the limit of 64,000,000 "):
        open_image(path, "query", 64_000_000)
