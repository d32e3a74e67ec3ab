"""Synthetic relation families (data.synthetic_families): exact transforms, seeded bytes, leak-free splits."""

from __future__ import annotations

import hashlib
import json
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageEnhance, ImageFilter
from prepare_helpers import leftovers, read_splits, tree_bytes

from relation_cli.cli import main
from relation_cli.config import load_config
from relation_cli.prepare import prepare
from relation_cli.prepare.families import (
    FAMILIES,
    MIRRORS,
    MAX_TINT,
    Params,
    draw_params,
    hue_colour,
    in_band,
    make_families,
    overlay_box,
    overlay_colour,
    plan_instances,
)
from relation_cli.prepare.synthetic import Scene, Shape, render

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import family_table  # noqa: E402

SIZE = 32
BAND = (0.4, 0.5)
SCENE = Scene("navy", (Shape("square", "green", 10, 12, 5, False), Shape("triangle", "yellow", 22, 20, 6, False)))
FAMILY_KEYS = [
    "data.workers=1", "data.synthetic_pairs=4", "data.synthetic_size=32", "data.test_per_task=2",
    "data.synthetic_families=[shift,rotate,recolour,mirror,channels,frame,compose]",
    "data.synthetic_unseen_families=[frame]", "data.synthetic_instances=3", "data.synthetic_test_instances=2",
]  # fmt: skip


def edit(family: str, params: Params, scene: Scene = SCENE) -> tuple[np.ndarray, np.ndarray]:
    before = render(scene, SIZE)
    return np.asarray(before), np.asarray(FAMILIES[family].apply(scene, before, SIZE, params))


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    out = tmp_path_factory.mktemp("families") / "out"
    prepare(load_config(None, FAMILY_KEYS), None, out)
    return out


# ----------------------------------------------------------------------------------------- transforms


def test_shift_moves_every_pixel_by_its_offset():
    before, after = edit("shift", Params(0.5, 0.0))  # direction 180 degrees (left), length size / 8 = 4
    assert FAMILIES["shift"].describe(Params(0.5, 0.0), SIZE) == "Move everything by (-4, 0) pixels."
    assert np.array_equal(after[:, :-4], before[:, 4:])
    assert (after[:, -4:] == SCENE.bg()).all()


@pytest.mark.parametrize("index, flip", [(0, np.fliplr), (1, np.flipud), (2, lambda a: a[::-1, ::-1]),
                                         (3, lambda a: a.transpose(1, 0, 2))])  # fmt: skip
def test_mirror_axes(index, flip):
    before, after = edit("mirror", Params((index + 0.5) / len(MIRRORS)))
    assert np.array_equal(after, flip(before))


def test_rotate_by_a_quarter_turn_is_exact():
    u = (90 - 15) / 330  # angle 15 + 330 u = 90 degrees counter-clockwise
    before, after = edit("rotate", Params(u))
    assert np.array_equal(after, np.rot90(before))


def test_channels_recolour_and_frame():
    before, after = edit("channels", Params(0.1))  # floor(5 u) = 0: order R, B, G
    assert np.array_equal(after, before[..., [0, 2, 1]])
    before, after = edit("recolour", Params(0.3))
    changed = (before != after).any(-1)
    assert changed.any() and (after[changed] == hue_colour(0.3)).all()
    assert (before[~changed] == SCENE.bg()).all()  # only the shapes change
    before, after = edit("frame", Params(0.7, 0.99))  # width 1 + int(0.99 * 4) = 4
    assert (after[:4] == hue_colour(0.7)).all() and (after[:, -4:] == hue_colour(0.7)).all()
    assert np.array_equal(after[4:-4, 4:-4], before[4:-4, 4:-4])


def test_tinted_frame_mixes_its_hue_with_white_and_is_never_white():
    params = Params(0.7, 0.3, w=0.5)  # tint 0.3; width 1 + int(0.3 * 4) = 2
    colour = tuple(round(c + (255 - c) * 0.3) for c in hue_colour(0.7))
    before, after = edit("tinted_frame", params)
    assert (after[:2] == colour).all() and (after[:, -2:] == colour).all()
    assert np.array_equal(after[2:-2, 2:-2], before[2:-2, 2:-2])
    assert FAMILIES["tinted_frame"].describe(params, SIZE) == f"Add a frame 2 pixels wide in RGB {colour}."
    lightest = [min(FAMILIES["tinted_frame"].apply(SCENE, render(SCENE, SIZE), SIZE, Params(u / 20, 0.0, w=0.999))
                    .getpixel((0, 0))) for u in range(20)]  # fmt: skip
    # the darkest channel of a hue is 36; tinted, at most 36 + 219 * 0.6: a pastel, never white
    assert 150 < max(lightest) <= 36 + (255 - 36) * MAX_TINT + 1 < 255
    rng = lambda: np.random.default_rng([0, 7])
    # w is drawn after u and v, for tinted_frame alone: every other family's parameters are unchanged
    tinted, plain = draw_params("tinted_frame", rng(), BAND, False, []), draw_params("frame", rng(), BAND, False, [])
    assert (tinted.u, tinted.v) == (plain.u, plain.v) and plain.w == 0.0 and 0.0 <= tinted.w < 1.0


def test_overlay_paints_one_filled_rectangle_of_its_colour():
    params = Params(0.95, 0.3)  # u >= 0.75: grey 255 * 0.2 / 0.25 = 204
    assert overlay_colour(0.95) == (204, 204, 204) and overlay_colour(0.0) == hue_colour(0.0)
    x0, y0, x1, y1 = overlay_box(params, SIZE)
    assert 8 <= x1 - x0 + 1 <= SIZE // 2 and 8 <= y1 - y0 + 1 <= SIZE // 2 and x1 < SIZE and y1 < SIZE
    before, after = edit("overlay", params)
    inside = np.zeros((SIZE, SIZE), bool)
    inside[y0 : y1 + 1, x0 : x1 + 1] = True
    assert (after[inside] == 204).all() and np.array_equal(after[~inside], before[~inside])
    assert FAMILIES["overlay"].describe(params, SIZE) == (
        f"Paint the rectangle from ({x0}, {y0}) to ({x1}, {y1}) in RGB (204, 204, 204).")
    assert {overlay_box(Params(0.5, v / 50), SIZE) for v in range(50)}.__len__() > 40  # v varies the place


def test_compose_never_applies_two_frames():
    """A second frame at least as wide would cover the first: the instruction would name an edit the image hides."""
    instances = plan_instances(["frame", "tinted_frame", "shift", "compose"], [], 60, 2, BAND, seed=0)
    parts = [tuple(name for name, _ in i.params.parts) for i in instances if i.family == "compose"]
    assert parts and not any(set(p) == {"frame", "tinted_frame"} for p in parts)
    assert any("frame" in p for p in parts) and any("tinted_frame" in p for p in parts)


def test_colour_factors_blur_and_compose_are_the_named_pil_operations():
    image = render(SCENE, SIZE)
    _, after = edit("brightness", Params(0.0))  # factor 0.25
    assert np.array_equal(after, np.asarray(ImageEnhance.Brightness(image).enhance(0.25)))
    _, after = edit("blur", Params(0.5))  # radius (0.6 + 1.0) * 32 / 32
    assert np.array_equal(after, np.asarray(image.filter(ImageFilter.GaussianBlur(1.6))))
    _, after = edit("scale", Params(0.999))  # factor about 2: the centre half, each pixel drawn twice
    assert np.abs(after[::2, ::2].astype(int) - np.asarray(image)[8:24, 8:24]).max() == 0
    parts = (("mirror", Params(0.0)), ("channels", Params(0.1)))
    before, after = edit("compose", Params(0.0, 0.0, parts))
    assert np.array_equal(after, np.fliplr(before)[..., [0, 2, 1]])


def test_hue_turn_of_a_third_takes_red_to_green():
    red = Image.new("RGB", (4, 4), (255, 0, 0))
    out = FAMILIES["hue"].apply(SCENE, red, 4, Params((120 - 20) / 320))
    r, g, b = np.asarray(out)[0, 0]
    assert g == 255 and r <= 6 and b <= 6


# ------------------------------------------------------------------------------------ instances, files


def test_instances_keep_the_held_out_band_and_families_out_of_training():
    instances = plan_instances(["rotate", "mirror", "hue", "compose"], ["hue"], 50, 5, BAND, seed=0)
    for i in instances:
        us = [q.u for _, q in i.params.parts] or [i.params.u]
        if i.role in ("train", "seen"):
            assert i.family != "hue" and not any(in_band(u, BAND) for u in us)
        elif i.family != "hue":
            assert all(in_band(u, BAND) for u in us)
        assert all(name != "hue" for name, _ in i.params.parts)  # compose only of seen families
    roles = defaultdict(int)
    for i in instances:
        roles[i.family, i.role] += 1
    assert roles["rotate", "train"] == 50 and roles["rotate", "unseen"] == 5 and roles["hue", "unseen"] == 5
    assert ("hue", "train") not in roles and ("hue", "seen") not in roles


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path):
    instances = plan_instances(["shift", "blur"], [], 2, 1, BAND, seed=4)
    make_families(tmp_path / "a", instances, 3, seed=4, size=16)
    make_families(tmp_path / "b", instances, 3, seed=4, size=16)
    assert tree_bytes(tmp_path / "a") == tree_bytes(tmp_path / "b")
    other = plan_instances(["shift", "blur"], [], 2, 1, BAND, seed=5)
    make_families(tmp_path / "c", other, 3, seed=5, size=16)
    assert tree_bytes(tmp_path / "a") != tree_bytes(tmp_path / "c")


def test_prepared_splits_follow_the_roles_and_nothing_leaks(prepared):
    listing = json.loads((prepared / "raw" / "families.json").read_text())
    splits = read_splits(prepared)
    role_of_split = {"train": "train", "test_seen": "seen", "test_unseen": "unseen"}
    for split, rows in splits.items():
        assert rows and {listing[r["task"]]["role"] for r in rows} == {role_of_split[split]}
    for r in splits["train"] + splits["test_seen"]:
        entry = listing[r["task"]]
        us = [q["u"] for _, q in entry.get("parts", [])] or [entry["u"]]
        assert entry["family"] != "frame" and not any(in_band(u, BAND) for u in us)
    digest = lambda path: hashlib.sha256((prepared / path).read_bytes()).hexdigest()
    train_images = {digest(r[k]) for r in splits["train"] for k in ("cond1", "cond2", "source", "target")}
    test_images = {digest(r[k]) for s in ("test_seen", "test_unseen") for r in splits[s] for k in ("source", "target")}
    assert not train_images & test_images  # no test query or target, as pixels, anywhere in training
    assert len(splits["train"]) == 6 * 3 * 12 and len(splits["test_seen"]) == 6 * 2 * 2
    assert len(splits["test_unseen"]) == 7 * 2 * 2
    # the new instances of seen families are test-only by design: no "seen task got no training sample"
    assert "warnings" not in json.loads((prepared / "manifest.json").read_text())


def test_default_still_writes_todays_data(tmp_path):
    """The fixed relations without synthetic_families: sha256 of every file but config.yaml, computed with
    the code before families existed (commit 158f361)."""
    out = tmp_path / "o"
    prepare(load_config(None, ["data.workers=1", "data.synthetic_pairs=3", "data.synthetic_size=16",
                               "data.test_per_task=1", "data.unseen_task_names=[frame]"]), None, out)  # fmt: skip
    h = hashlib.sha256()
    for f in sorted(p for p in out.rglob("*") if p.is_file() and p.name != "config.yaml"):
        h.update(f.relative_to(out).as_posix().encode())
        h.update(f.read_bytes())
    assert h.hexdigest() == "a1d8f06dcc4f4930d7cff91b53d2bdc8b550cc45fae2dd3fd8d33f311eed3b3a"


@pytest.mark.parametrize(
    "keys, message",
    [
        (["data.synthetic_families=[spin]"], "synthetic family 'spin': unknown"),
        (["data.synthetic_families=[shift]", "data.synthetic_unseen_families=[blur]"], "'blur' is not in"),
        (["data.synthetic_families=[shift]", "data.synthetic_unseen_range=[0.5,0.4]"], "needs 0 <= lo < hi"),
        (["data.synthetic_families=[shift,blur]", "data.synthetic_unseen_families=[shift,blur]"], "every family"),
        (["data.synthetic_families=[shift]", "data.unseen_task_names=[shift-unseen-0000]"], "leave unseen_tasks"),
        (["data.synthetic_families=[shift,shift]"], "data.synthetic_families: 'shift' is listed twice"),
        (["data.synthetic_families=[shift,rotate]", "data.synthetic_unseen_families=[rotate,rotate]"], "listed twice"),
        (["data.synthetic_families=[shift,compose]"], "compose needs at least 2 seen families besides compose (have 1: shift)"),
        (["data.synthetic_families=[shift,rotate,compose]", "data.synthetic_unseen_families=[shift]"], "(have 1: rotate)"),
        (["data.synthetic_families=[frame,tinted_frame,compose]"], "compose needs a seen family besides frame and tinted_frame"),
    ],
)
def test_bad_family_settings_are_one_line_and_leave_nothing(tmp_path, capsys, keys, message):
    args = [a for k in ["data.synthetic_pairs=2", *keys] for a in ("--set", k)]
    code = main(["prepare", *args, "--output", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip()
    assert code == 1 and err.startswith("error: ") and "\n" not in err and message in err, err
    assert leftovers(tmp_path, "out") == []


def test_family_table_weights_each_task_by_its_rows(tmp_path, capsys):
    csv = tmp_path / "per_task.csv"
    csv.write_text("split,task,method,n,mse\n"
                   "seen,rotate-seen-0000,relation,1,0.1\nseen,rotate-seen-0001,relation,3,0.5\n"
                   "unseen,frame-unseen-0000,relation,2,0.2\nunseen,frame-unseen-0000,copy_query,2,0.3\n")  # fmt: skip
    assert family_table.family_means(csv)[("seen", "rotate", "relation")] == pytest.approx(0.4)
    assert family_table.main([f"a={csv}"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "| split | family | a copy_query | a relation |"
    assert lines[2:] == ["| seen | rotate |  | 0.4000 |", "| unseen | frame | 0.3000 | 0.2000 |"]
    for argv, said in (([], "required: LABEL=per_task.csv"), (["no-label"], "'no-label' is not LABEL=per_task.csv"),
                       ([f"={csv}"], "is not LABEL=per_task.csv"), ([f"a={csv}", f"a={csv}"], "label 'a' given twice")):
        with pytest.raises(SystemExit) as stopped:
            family_table.main(argv)
        err = capsys.readouterr().err
        assert stopped.value.code == 1 and err.startswith("error: ") and said in err and err.count("\n") == 1, err
    # A missing file (an eval still running) or another CSV: one line, no traceback.
    (tmp_path / "other.csv").write_text("a,b\n1,2\n")
    (tmp_path / "n0.csv").write_text("split,task,method,n,mse\nseen,rotate-seen-0000,relation,0,0.1\n")
    (tmp_path / "nan.csv").write_text("split,task,method,n,mse\nseen,rotate-seen-0000,relation,1,nan\n")
    (tmp_path / "header.csv").write_text("split,task,method,n,mse\n")
    for path, said in ((tmp_path / "none.csv", "No such file or directory"), (tmp_path / "other.csv", "not a per_task.csv"),
                       (tmp_path / "n0.csv", "n >= 1"), (tmp_path / "nan.csv", "a finite mse"), (tmp_path / "header.csv", "no rows")):
        assert family_table.main([f"a={path}"]) == 1
        err = capsys.readouterr().err
        assert err.startswith(f"error: '{path}': ") and said in err and err.count("\n") == 1, err


@pytest.mark.parametrize("size", [32, 64])
def test_overlay_prepares_at_the_default_counts(tmp_path, size):
    """Every overlay instance finds a scene where its rectangle is a visible edit (sides of 4 pixels at size 64
    could not reach MIN_VISIBLE_CHANGE: prepare failed with 'no visible edit in 200 scenes')."""
    out = tmp_path / "ov"
    assert main(["prepare", "--synthetic", "4", "--output", str(out), "--set", "data.synthetic_families=[overlay]",
                 "--set", f"data.synthetic_size={size}", "--workers", "1"]) == 0  # fmt: skip
    assert len(read_splits(out)["train"]) == 2400
