"""The synthetic relation set: Relation252K layout, exact relations, visible edits, deterministic bytes."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from prepare_helpers import tree_bytes

from relation_cli.errors import RelationError
from relation_cli.prepare import SUGGESTED_UNSEEN, TASKS, make_synthetic
from relation_cli.prepare.sources import read_source

SIZE = 32


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
    return make_synthetic(tmp_path_factory.mktemp("syn") / "raw", pairs_per_task=4, seed=5, size=SIZE)


def halves(path):
    arr = np.asarray(Image.open(path)).astype(np.int16)
    assert arr.shape == (SIZE, 2 * SIZE, 3)
    return arr[:, :SIZE], arr[:, SIZE:]


def test_layout_and_labels(raw):
    assert len(TASKS) >= 12 and set(SUGGESTED_UNSEEN) <= set(TASKS)
    assert sorted(p.name for p in raw.iterdir()) == sorted(TASKS)
    for task in TASKS:
        labels = json.loads((raw / task / "Group1" / "labels.json").read_text())
        assert len(labels) == 4
        for entry in labels:
            assert set(entry) == {"left_image_description", "right_image_description", "edit_instruction", "img_name"}
            assert entry["edit_instruction"].endswith(".") and (raw / task / "Group1" / entry["img_name"]).is_file()
    source = read_source(raw)  # the same reader as the real dataset
    assert not source.problems and len(source.pairs) == 4 * len(TASKS) and source.tasks == sorted(TASKS)


EXACT = {
    "mirror": lambda a: a[:, ::-1],
    "flip_vertical": lambda a: a[::-1],
    "rotate90": lambda a: np.rot90(a, k=-1),
    "invert": lambda a: 255 - a,
    "darken": lambda a: a // 2,
    "channel_cycle": lambda a: a[..., [2, 0, 1]],
}


@pytest.mark.parametrize("task", sorted(EXACT))
def test_pixel_relations_are_exact(raw, task):
    for path in sorted((raw / task / "Group1").glob("*.png")):
        before, after = halves(path)
        assert np.array_equal(EXACT[task](before), after)


@pytest.mark.parametrize("task", sorted(TASKS))
def test_every_edit_is_visible(raw, task):
    for path in sorted((raw / task / "Group1").glob("*.png")):
        before, after = halves(path)
        assert np.abs(before - after).mean() >= 2.0


def test_scene_relations(raw):
    for path in (raw / "recolour" / "Group1").glob("*.png"):
        _, after = halves(path)
        colours = {tuple(c) for c in after.reshape(-1, 3)}
        assert (230, 20, 20) in colours and len(colours) == 2  # background + red shapes
    for path in (raw / "frame" / "Group1").glob("*.png"):
        _, after = halves(path)
        assert (after[0] == 255).all() and (after[:, -1] == 255).all()


def test_deterministic_and_seeded(raw, tmp_path):
    again = make_synthetic(tmp_path / "again", pairs_per_task=4, seed=5, size=SIZE)
    assert tree_bytes(again) == tree_bytes(raw)
    other = make_synthetic(tmp_path / "other", pairs_per_task=4, seed=6, size=SIZE, tasks=["mirror"])
    assert (other / "mirror/Group1/00000.png").read_bytes() != (raw / "mirror/Group1/00000.png").read_bytes()
    subset = make_synthetic(tmp_path / "subset", pairs_per_task=4, seed=5, size=SIZE, tasks=["mirror"])
    assert tree_bytes(subset / "mirror") == tree_bytes(raw / "mirror")  # a task does not depend on the others


@pytest.mark.parametrize(
    "kwargs, message",
    [({"pairs_per_task": 1}, "at least 2"), ({"size": 8}, "16-pixel minimum"), ({"tasks": ["sepia"]}, "unknown")],
)
def test_bad_arguments(tmp_path, kwargs, message):
    with pytest.raises(RelationError, match=message):
        make_synthetic(tmp_path / "x", **{"pairs_per_task": 2, **kwargs})
