"""The working size (SPEC 6): one rule for the size the model works at, the line that says so, and the
result's size (``infer.output_size``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import tiny_overrides
from helpers import random_image
from PIL import Image

from relation_cli.cli import main
from relation_cli.config import DEMO_DEFAULTS, InferSection, load_config
from relation_cli.images import resize_result, working_size
from relation_cli.infer import edit_sizes

SIZES = [(4000, 3000), (3000, 4000), (6000, 2000), (1500, 1000), (1025, 1025), (600, 400), (8000, 1500)]


@pytest.mark.parametrize("multiple, max_area", [(16, 1024 * 1024), (8, 32 * 32), (16, 512 * 512)])
@pytest.mark.parametrize("size", SIZES)
def test_large_queries_shrink_to_max_area_with_their_aspect(size, multiple, max_area):
    w, h = working_size(*size, multiple, max_area)
    if size[0] * size[1] <= max_area:  # 600x400 under 1 MP keeps its size
        assert (w, h) == (size[0] // multiple * multiple, size[1] // multiple * multiple)
        return
    assert w % multiple == 0 and h % multiple == 0
    assert w * h <= max_area and w <= size[0] and h <= size[1]
    # Aspect ratio kept up to the flooring of each side to the multiple (at most one multiple per side).
    assert abs(w / h - size[0] / size[1]) <= size[0] / size[1] * (multiple / w + multiple / h)
    # About max_area: each side is at most one multiple short of the exact aspect-kept size.
    exact_w = (max_area * size[0] / size[1]) ** 0.5
    assert w > exact_w - multiple - 1


@pytest.mark.parametrize("size, working", [((3000, 16), (128, 8)), ((20000, 16), (128, 8)), ((16, 3000), (8, 128))])
def test_a_long_thin_query_stays_within_max_area(size, working):
    """Its short side would fall under the multiple: it gets that side and a long side within max_area (3000x16 was
    432x8, 3.4x over a max_area of 1,024), and the line says the aspect ratio changed instead of "kept"."""
    assert working_size(*size, 8, 1024) == working
    cap = InferSection(max_area=1024)
    w, h = size
    assert edit_sizes(cap, size, 8).note(cap) == (f"query resized from {w}x{h} to {working[0]}x{working[1]} (infer.max_area "
                                                  f"1,024 pixels, aspect ratio {w / h:.3g} -> {working[0] / working[1]:.3g})")  # fmt: skip
    assert edit_sizes(cap, (4000, 3000), 8).note(cap).endswith("aspect ratio kept)")  # 32x24, 4:3 as the query


def test_twelve_megapixels_at_flux_size():
    assert working_size(4000, 3000, 16, 1024 * 1024) == (1168, 880)  # Kontext's rule: round(sqrt(area * aspect))


@pytest.mark.parametrize("size", [(72, 56), (512, 512), (1024, 1024), (1000, 700), (32, 32)])
def test_small_queries_keep_their_size(size):
    """The reference cases are small: the cap changes nothing for them, only the floor to the multiple does."""
    floored = (size[0] // 16 * 16, size[1] // 16 * 16)
    assert working_size(*size, 16, 1024 * 1024) == working_size(*size, 16, None) == floored


def test_explicit_width_and_height():
    assert working_size(600, 400, 16, 1024, 512, 256) == (512, 256)  # both given: exactly, max_area ignored
    assert working_size(600, 400, 8, 1024, 300) == (296, 200)  # one given: the other keeps the aspect ratio
    assert working_size(600, 400, 8, None, None, 100) == (144, 96)
    assert working_size(600, 400, 16, None, 20, 20) == (16, 16)  # floored to the multiple


def test_resize_line_says_from_and_to_what():
    cap = InferSection(max_area=1024, output_size="query")
    assert edit_sizes(cap, (600, 400), 8).note(cap) == (
        "query resized from 600x400 to 32x24 (infer.max_area 1,024 pixels, aspect ratio 1.5 -> 1.33); "
        "the result goes back to 600x400 (infer.output_size: query)"
    )
    plain = InferSection()
    assert edit_sizes(plain, (64, 48), 16).note(plain) is None
    assert edit_sizes(plain, (72, 56), 16).note(plain) == "query resized from 72x56 to 64x48 (sides floored to a multiple of 16)"
    explicit = InferSection(width=32)
    sizes = edit_sizes(explicit, (64, 48), 16)
    assert (sizes.working, sizes.output) == ((32, 16), (32, 16))
    assert sizes.note(explicit) == ("query resized from 64x48 to 32x16 (infer.width 32, infer.height auto "
                                    "(--width/--height), sides floored to a multiple of 16, aspect ratio 1.33 -> 2)")  # 24 high asked
    both = InferSection(width=70, height=66)
    assert edit_sizes(both, (32, 32), 16).note(both) == (
        "query resized from 32x32 to 64x64 (infer.width 70, infer.height 66 (--width/--height), sides floored to a "
        "multiple of 16)")  # fmt: skip
    same = InferSection(width=36, height=36)  # floored back to the query's own size: still said
    assert edit_sizes(same, (32, 32), 8).note(same) == (
        "query kept at 32x32 (infer.width 36, infer.height 36 (--width/--height), sides floored to a multiple of 8)")
    assert edit_sizes(InferSection(width=32, height=32), (32, 32), 8).note(InferSection(width=32, height=32)) is None
    exact = InferSection(width=48, height=32)
    assert edit_sizes(exact, (64, 48), 16).note(exact) == (
        "query resized from 64x48 to 48x32 (infer.width 48, infer.height 32 (--width/--height))")


def test_an_explicit_size_far_over_max_area_is_said_to_be_slow():
    """--width/--height bypass infer.max_area; a size over 4x it (a photo's own size asked on the CPU) is said to be
    slow, in the resize line or alone when the query keeps its size; within 4x, nothing is added."""
    big = InferSection(width=96, height=96, max_area=1024)
    assert edit_sizes(big, (72, 56), 8).note(big) == (
        "query resized from 72x56 to 96x96 (infer.width 96, infer.height 96 (--width/--height)); the working size "
        "96x96 is 9.0x infer.max_area (1,024 pixels): each denoising step works on 9.0x the image tokens and its "
        "attention on 81x the pairs of them; expect it to be slow and to need more memory")  # fmt: skip
    own = InferSection(width=4000, height=3008, max_area=1024 * 1024)
    assert edit_sizes(own, (4000, 3008), 16).note(own) == (
        "the working size 4000x3008 is 11.5x infer.max_area (1,048,576 pixels): each denoising step works on 11.5x the "
        "image tokens and its attention on 132x the pairs of them; expect it to be slow and to need more memory")
    near = InferSection(width=64, height=64, max_area=1024)
    assert edit_sizes(near, (64, 64), 8).note(near) is None  # 4x: not said
    assert edit_sizes(InferSection(max_area=None, width=4000, height=3000), (10, 10), 16).note(
        InferSection(max_area=None, width=4000, height=3000)).endswith("multiple of 16)")  # no area to compare


def test_resize_result_keeps_float_values():
    arr = np.random.default_rng(0).random((24, 32, 3)).astype(np.float32)
    assert resize_result(arr, (32, 24)) is arr
    big = resize_result(arr, (600, 400))
    assert big.shape == (400, 600, 3) and big.dtype == np.float32 and 0 <= big.min() and big.max() <= 1
    assert abs(float(big.mean()) - float(arr.mean())) < 0.01


def test_demo_defaults_cap_at_its_training_size():
    cfg = load_config()
    assert (cfg.infer.max_area, cfg.infer.output_size) == (32 * 32, "query")
    assert load_config(overrides=["model.base=x/y"]).infer.max_area == 1024 * 1024
    root = Path(__file__).resolve().parents[1]
    assert (root / "configs" / "demo-defaults.yaml").read_bytes() == DEMO_DEFAULTS.read_bytes()  # the installed copy
    assert load_config(root / "configs" / "demo.yaml") == cfg  # "the defaults, written out"


def test_width_height_flags(monkeypatch, tmp_path):
    seen = {}
    monkeypatch.setattr("relation_cli.infer.infer_single", lambda cfg, *a: seen.setdefault("cfg", cfg) and tmp_path)
    assert main(["infer", "--exemplar", "a.png", "b.png", "--query", "q.png", "--width", "64", "--height", "48"]) == 0
    assert (seen["cfg"].infer.width, seen["cfg"].infer.height) == (64, 48)


@pytest.fixture()
def photo_inputs(tmp_path):
    return [random_image(tmp_path / f"{n}.png", size, seed=i) for i, (n, size) in enumerate(
        [("a", (48, 32)), ("b", (48, 32)), ("q", (300, 200))])]  # fmt: skip


@pytest.mark.parametrize("output_size, expected", [("working", (64, 48)), ("query", (300, 200))])
def test_cli_resizes_a_large_query_and_says_so(tiny_model, photo_inputs, tmp_path, capsys, output_size, expected):
    out = tmp_path / f"{output_size}.png"
    sets = [x for o in tiny_overrides(tiny_model) for x in ("--set", o)]
    args = ["infer", "--exemplar", *map(str, photo_inputs[:2]), "--query", str(photo_inputs[2]), "-o", str(out),
            "--steps", "1", "--set", "infer.max_area=4000", "--set", f"infer.output_size={output_size}", *sets]  # fmt: skip
    assert main(args) == 0
    assert Image.open(out).size == expected
    err = capsys.readouterr().err
    assert "query resized from 300x200 to 64x48 (infer.max_area 4,000 pixels, aspect ratio 1.5 -> 1.33)" in err
    assert ("goes back to 300x200" in err) == (output_size == "query")
    assert "embedded demo model" not in err  # the demo note is for model.base: demo only


def test_size_rules_are_read_without_loading_a_model(tiny_model):
    """eval's copy-query baseline needs the size step before (or without) loading a model: 8 for the demo
    model (a 3-level VAE), 16 for FLUX-like VAEs (4 levels), as the loaded pipeline has it; no smallest
    side on FLUX.1 (klein's 64 is in tests/test_klein.py)."""
    from relation_cli.model import size_rules
    from relation_cli.tiny import build_pipeline

    assert size_rules(load_config()) == (8, 0)
    pipe = build_pipeline()
    assert size_rules(load_config(overrides=tiny_overrides(tiny_model))) == (pipe.size_multiple, pipe.min_working_side) == (16, 0)


def test_a_base_with_a_smallest_side_enlarges_small_queries():
    """min_side (klein: 64): the short side is brought up to it, aspect ratio kept, sides rounded up to the
    multiple; larger queries and an explicit size are untouched by it."""
    assert working_size(32, 32, 16, None, min_side=64) == (64, 64)
    assert working_size(48, 32, 16, None, min_side=64) == (96, 64)
    assert working_size(50, 30, 16, None, min_side=64) == (112, 64)  # 106.7 x 64, rounded up
    assert working_size(120, 80, 16, None, min_side=64) == (112, 80)  # large enough: floored as before
    assert working_size(600, 400, 16, 1024, min_side=64) == (96, 64)  # max_area would give 32x16
    assert working_size(32, 32, 16, None, 32, 32, min_side=64) == (32, 32)  # explicit: kept (infer refuses it)
    small = InferSection(output_size="query")
    sizes = edit_sizes(small, (32, 32), 16, 64)
    assert (sizes.working, sizes.output) == ((64, 64), (32, 32))
    assert sizes.note(small) == ("query resized from 32x32 to 64x64 (this base works at 64 px a side or more, "
                                 "aspect ratio kept); the result goes back to 32x32 (infer.output_size: query)")


def test_demo_on_a_photo_says_what_it_is_and_keeps_the_photo_size(tmp_path, capsys):
    """The embedded model on a 600x400 photo: the note about what it was trained on, the resize line, and a
    result at the photo's size; a scene enlarged on request gets no such note."""
    examples = Path(__file__).resolve().parents[1] / "examples"
    query = random_image(tmp_path / "photo.jpg", (600, 400))
    out = tmp_path / "edited.png"
    args = ["infer", "--exemplar", str(examples / "exemplar_before.png"), str(examples / "exemplar_after.png"),
            "--query", str(query), "-o", str(out), "--steps", "1"]  # fmt: skip
    assert main(args) == 0
    err = capsys.readouterr().err
    assert "embedded demo model was trained on 32x32 synthetic scenes" in err and "FLUX.1-dev" in err
    assert "query resized from 600x400 to 32x24 (infer.max_area 1,024 pixels" in err
    assert Image.open(out).size == (600, 400)
    scene = random_image(tmp_path / "scene.png", (32, 32))  # enlarged on request: a scene, not a photo
    args = [*args[:5], str(scene), "-o", str(tmp_path / "big.png"), "--steps", "1", "--width", "64", "--height", "64"]
    assert main(args) == 0
    err = capsys.readouterr().err
    assert "query resized from 32x32 to 64x64" in err and "embedded demo model" not in err


def test_a_working_size_over_the_pixel_limit_is_refused_before_loading(photo_inputs, tmp_path, capsys, monkeypatch):
    """--width/--height cannot ask for more pixels than data.max_image_pixels (64 MP): both sides given are
    refused by the config checks, one side (the other follows the query) before the model loads."""
    def refuse(*a, **k):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr("relation_cli.model.load_pipeline", refuse)
    args = ["infer", "--exemplar", *map(str, photo_inputs[:2]), "--query", str(photo_inputs[2])]
    assert main([*args, "-o", str(tmp_path / "o.png"), "--width", "100000", "--height", "100000", "--dry-run"]) == 1
    assert ("error: infer.width 100000 x infer.height 100000 is 10,000,000,000 "
            "pixels, over the limit of 64,000,000 (data.max_image_pixels)") in capsys.readouterr().err
    assert main([*args, "-o", str(tmp_path / "o.png"), "--width", "30000"]) == 1  # 300x200 -> 30000x20000
    err = capsys.readouterr().err
    assert "working size 30000x20000 (infer.width 30000, infer.height auto (--width/--height)) is 600,000,000" in err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "o.png").exists()


def test_a_pair_of_two_shapes_is_noted_and_one_of_two_sizes_is_not(tiny_model, tmp_path, capsys):
    """A and A' of other aspect ratios (a crop given as A') are padded and squashed each on its own, so the pair
    shows a change of shape too: one line says so, for one edit and per row of a batch; A' at twice A's size
    (the same shape) gets no line. A pair of the same pixels (the same file twice) shows no edit: a line too."""
    import json

    from relation_cli.infer import EditInputs

    blank, red = Image.new("RGB", (48, 32)), Image.new("RGB", (48, 32), (255, 0, 0))
    assert EditInputs(blank, red.resize((96, 64)), blank, "").shape_note() is None
    assert EditInputs(blank, red, blank, "", ((blank, blank.resize((48, 48))),)).shape_note() == (
        "note: exemplar pair 2 A is 48x32 and A' 48x48, another shape: the image encoder sees each padded and "
        "squashed on its own, so the pair also shows that change of shape; give A' the shape of A unless it is "
        "part of the edit")  # fmt: skip
    a, b, q = (random_image(tmp_path / f"{n}.png", s) for n, s in (("a", (48, 32)), ("b", (32, 32)), ("q", (32, 32))))
    sets = [x for o in tiny_overrides(tiny_model) for x in ("--set", o)]
    assert main(["infer", "--exemplar", str(a), str(b), "--query", str(q), "-o", str(tmp_path / "o.png"),
                 "--steps", "1", *sets]) == 0  # fmt: skip
    assert "note: exemplar A is 48x32 and A' 32x32, another shape" in capsys.readouterr().err
    rows = tmp_path / "rows.jsonl"
    rows.write_text(json.dumps({"cond1": "a.png", "cond2": "a.png", "source": "q.png"}) + "\n"
                    + json.dumps({"cond1": "a.png", "cond2": "b.png", "source": "q.png"}) + "\n")  # fmt: skip
    assert main(["infer", "--input", str(rows), "--output-dir", str(tmp_path / "out"), "--steps", "1", *sets]) == 0
    err = " ".join(capsys.readouterr().err.split())
    assert "note: row 2: exemplar A is 48x32 and A' 32x32, another shape" in err, err
    assert "note: row 1: exemplar A and A' have the same pixels: the pair shows no edit" in err, err
    assert EditInputs(blank, blank.copy(), blank, "", ((blank, red),)).shape_note() == (
        "note: exemplar pair 1 A and A' have the same pixels: the pair shows no edit, so the result follows no "
        "relation; give the image after the edit as A'")  # fmt: skip
    assert EditInputs(blank, red, blank, "", ((blank, red),)).shape_note() is None


@pytest.mark.parametrize("beside, message", [
    ("folder", "its settings go to '{b}', which is a folder; move it or choose another output name"),
    ("my notes\n", "its settings go to '{b}', a file relation did not write, which the run would replace; move it "
                   "or choose another output name"),
])  # fmt: skip
def test_the_place_of_the_saved_settings_is_checked_before_the_edit(tmp_path, capsys, beside, message):
    """``edited.png.yaml`` gets the resolved config: a folder there would fail the run after the edit (leaving
    the image), a user's file would be replaced silently; both are refused first, --overwrite or not, and a
    config an earlier run saved there is replaced."""
    examples = Path(__file__).resolve().parents[1] / "examples"
    out, side = tmp_path / "edited.png", tmp_path / "edited.png.yaml"
    side.mkdir() if beside == "folder" else side.write_text(beside)
    args = ["infer", "--exemplar", str(examples / "exemplar_before.png"), str(examples / "exemplar_after.png"),
            "--query", str(examples / "query.png"), "-o", str(out), "--steps", "1"]  # fmt: skip
    for extra in ([], ["--dry-run"], ["--overwrite"]):
        assert main(args + extra) == 1
        assert capsys.readouterr().err.strip() == f"error: output '{out}': " + message.format(b=side)
        assert not out.exists() and (side.is_dir() or side.read_text() == beside)
    side.rmdir() if beside == "folder" else side.unlink()
    assert main(args) == 0 and side.is_file()
    out.unlink()
    assert main(args) == 0  # an earlier run's saved settings are its own: replaced


def test_an_output_its_format_cannot_store_is_refused_before_the_model_loads(tmp_path, capsys, monkeypatch):
    """A 20000x40 result (infer.output_size: query) is over WebP's 16383-pixel side: one line before any work
    (``--dry-run`` too), not an internal error after the whole generation; .png takes it."""
    import relation_cli.model as model

    def no_load(cfg):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(model, "load_pipeline", no_load)
    examples = Path(__file__).resolve().parents[1] / "examples"
    Image.new("RGB", (20000, 40), (200, 30, 30)).save(tmp_path / "wide.png")
    args = ["infer", "--exemplar", str(examples / "exemplar_before.png"), str(examples / "exemplar_after.png"),
            "--query", str(tmp_path / "wide.png"), "--steps", "1"]  # fmt: skip
    for name, limit, fmt in (("a.webp", 16383, "WebP"),):
        for extra in ([], ["--dry-run"]):  # the dry run says it too
            assert main([*args, "-o", str(tmp_path / name), *extra]) == 1
            assert capsys.readouterr().err == (f"error: output '{tmp_path / name}': a 20000x40 result is over {fmt}'s "
                                               f"limit of {limit} pixels a side; use .png\n")  # fmt: skip
    assert main([*args, "-o", str(tmp_path / "a.png"), "--dry-run"]) == 0
    from relation_cli.images import check_output_size

    check_output_size(tmp_path / "a.jpg", (65500, 10))  # at the limit: fine
    with pytest.raises(Exception, match="over JPEG's limit of 65500 pixels a side"):
        check_output_size(tmp_path / "a.JPEG", (65501, 10))
    check_output_size(tmp_path / "a.png", (100000, 10))


def test_an_input_is_never_the_output_and_a_result_never_replaces_another_commands(tmp_path, capsys, monkeypatch):
    """``-o`` naming an input (by any path) is refused, ``--overwrite`` too; a file another command wrote at the
    output's name while this one worked stays, and this result takes the next numbered name, with a note."""
    import shutil

    import relation_cli.infer as infer

    examples = Path(__file__).resolve().parents[1] / "examples"
    a, b, q = (str(shutil.copy(examples / n, tmp_path / n)) for n in ("exemplar_before.png", "exemplar_after.png", "query.png"))
    args = ["infer", "--exemplar", a, b, "--query", q, "--steps", "1"]
    before = Path(q).read_bytes()
    for extra in ([], ["--overwrite"], ["--overwrite", "--dry-run"]):
        assert main([*args, "-o", str(tmp_path / "." / "query.png"), *extra]) == 1
        assert capsys.readouterr().err == (f"error: output '{tmp_path / 'query.png'}': is an input of this edit ('{q}'); "
                                           "choose another output name (--overwrite never replaces an input)\n")  # fmt: skip
    assert Path(q).read_bytes() == before
    real_edit, out = infer.edit, tmp_path / "o.png"

    def edit_while_another_writes(*a, **k):
        out.write_bytes(b"theirs")  # another command's result, written while this one denoises
        return real_edit(*a, **k)

    monkeypatch.setattr(infer, "edit", edit_while_another_writes)
    (tmp_path / "o-1.png.yaml").write_text("my notes\n")  # a user's file where the first numbered name's settings go
    assert main([*args, "-o", str(out)]) == 0
    assert out.read_bytes() == b"theirs" and Image.open(tmp_path / "o-2.png").size == (32, 32)
    assert (tmp_path / "o-1.png.yaml").read_text() == "my notes\n" and not (tmp_path / "o-1.png").exists()
    assert (tmp_path / "o-2.png.yaml").is_file() and not (tmp_path / "o.png.yaml").exists()
    assert f"note: '{out}' was written by another command while this one worked; this result is '{tmp_path / 'o-2.png'}'" in (
        " ".join(capsys.readouterr().err.split()))  # fmt: skip
    assert list(tmp_path.glob(".o*")) == []  # no temporary file left


def test_a_link_to_nothing_at_the_output_name_is_an_existing_output(tmp_path, capsys):
    """A dangling symlink at ``-o`` takes the name as a file does: refused before any work (it was taken for a file
    another command wrote meanwhile, and the result went to a numbered name with a false note)."""
    examples = Path(__file__).resolve().parents[1] / "examples"
    (tmp_path / "o.png").symlink_to(tmp_path / "gone.png")
    args = ["infer", "--exemplar", str(examples / "exemplar_before.png"), str(examples / "exemplar_after.png"),
            "--query", str(examples / "query.png"), "--steps", "1", "-o", str(tmp_path / "o.png")]  # fmt: skip
    for extra in (["--dry-run"], []):
        assert main([*args, *extra]) == 1
        assert capsys.readouterr().err == (f"error: output '{tmp_path / 'o.png'}': already exists, a link to "
                                           f"'{tmp_path / 'gone.png'}', which does not exist (pass --overwrite to "
                                           "replace the link)\n")  # fmt: skip
    assert main([*args, "--overwrite"]) == 0
    assert not (tmp_path / "o.png").is_symlink() and Image.open(tmp_path / "o.png").size == (32, 32)


def test_an_output_in_a_folder_that_does_not_exist_yet(tmp_path, monkeypatch):
    """``-o outputs/first.png`` with no ``outputs/`` yet (the README's walk-through): the folders are made and
    the result and its settings written there."""
    examples = Path(__file__).resolve().parents[1] / "examples"
    monkeypatch.chdir(tmp_path)
    assert main(["infer", "--exemplar", str(examples / "exemplar_before.png"), str(examples / "exemplar_after.png"),
                 "--query", str(examples / "query.png"), "--steps", "1", "-o", "outputs/new/first.png"]) == 0  # fmt: skip
    assert sorted(p.name for p in (tmp_path / "outputs" / "new").iterdir()) == ["first.png", "first.png.yaml"]


@pytest.mark.parametrize("where", ["the image", "its settings"])
def test_a_full_disk_leaves_no_output_without_its_settings(tmp_path, capsys, monkeypatch, where):
    """The disk filling up while the result (an ``.npy``: numpy says so without an errno) or its ``.yaml`` is
    written: one line naming the output, and neither file, nor a temporary one, is left; with ``--overwrite``
    the earlier output and its settings stay as they were."""
    import pathlib

    import numpy as np

    examples = Path(__file__).resolve().parents[1] / "examples"
    out = tmp_path / "o.npy"
    args = ["infer", "--exemplar", str(examples / "exemplar_before.png"), str(examples / "exemplar_after.png"),
            "--query", str(examples / "query.png"), "--steps", "1", "-o", str(out)]  # fmt: skip
    assert main(args) == 0
    capsys.readouterr()
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    if where == "the image":
        def full(*a, **k):
            raise OSError("12288 requested and 4096 written")

        monkeypatch.setattr(np, "save", full)
    else:
        real_write_text = pathlib.Path.write_text

        def full(self, *a, **k):
            if self.name.endswith(".yaml"):
                raise OSError(28, "No space left on device", str(self))
            return real_write_text(self, *a, **k)

        monkeypatch.setattr(pathlib.Path, "write_text", full)
    for extra, name in (([], "new/sub/o-new.npy"), (["--overwrite"], "o.npy")):  # the folders made for it go too
        new = tmp_path / name
        assert main([*args[:-1], str(new), *extra]) == 1
        named = new if where == "the image" else Path(f"{new}.yaml")
        assert capsys.readouterr().err.splitlines()[-1] == (
            f"error: no space left on the disk (writing '{named}'); free some space or write elsewhere, then run again")
        assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before  # nothing new, nothing replaced


def test_the_saved_settings_name_the_input_images_and_still_load_as_a_config(tmp_path, capsys):
    """``<output>.yaml`` starts with comments naming each input (absolute path, sha256 of its bytes), per pair
    with k pairs, so it tells what the output was made from; the file still loads as a config."""
    import hashlib

    from relation_cli.infer import _a_saved_config

    examples = Path(__file__).resolve().parents[1] / "examples"
    a, b, q = (examples / n for n in ("exemplar_before.png", "exemplar_after.png", "query.png"))
    out = tmp_path / "o.png"
    assert main(["infer", "--exemplar", str(a), str(b), "--exemplar", str(b), str(a), "--query", str(q), "-o", str(out),
                 "--steps", "1"]) == 0  # fmt: skip
    digest = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in (a, b, q)}
    lines = (tmp_path / "o.png.yaml").read_text().splitlines()
    assert lines[:6] == ["# relation infer made this output from:",
                         f"#   exemplar pair 1 A: {a} (sha256 {digest[a]})", f"#   exemplar pair 1 A': {b} (sha256 {digest[b]})",
                         f"#   exemplar pair 2 A: {b} (sha256 {digest[b]})", f"#   exemplar pair 2 A': {a} (sha256 {digest[a]})",
                         f"#   query: {q} (sha256 {digest[q]})"]  # fmt: skip
    assert _a_saved_config(tmp_path / "o.png.yaml") and load_config(tmp_path / "o.png.yaml").infer.steps == 1


def test_a_header_line_with_a_newline_or_odd_bytes_stays_one_comment(tmp_path):
    """A path holding a newline (or a byte that is not UTF-8) must not become live YAML in the saved settings."""
    from relation_cli.config import save_config

    save_config(load_config(None, []), tmp_path / "c.yaml", ["query: /a\nmodel: x", "odd: /q\udcff.png"])
    lines = (tmp_path / "c.yaml").read_text().splitlines()
    assert lines[:2] == ["# query: /a\\nmodel: x", "# odd: /q\\udcff.png"]
    assert load_config(tmp_path / "c.yaml", []).model.base == "demo"
