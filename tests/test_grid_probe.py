"""benchmarks/grid_probe.py: prepared rows as in-context grids [A | A' | B] -> [A | A' | B'], and the score of
the last third of relation eval's outputs (issue 18, tenth experiment)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import pixels
from PIL import Image

from relation_cli.infer import row_record
from relation_cli.rows import parse_rows

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import grid_probe  # noqa: E402


def prepared(tmp_path: Path) -> Path:
    """A prepared folder: 4 images per row (A, A', B, B' of random colours), 2 tasks in every split."""
    data, rng = tmp_path / "data", np.random.default_rng(0)
    (data / "images").mkdir(parents=True)
    for split in grid_probe.SPLITS:
        rows = []
        for i, task in enumerate(["red", "blue", "red"]):
            names = {}
            for key in ("cond1", "cond2", "source", "target"):
                names[key] = f"images/{split}_{i}_{key}.png"
                Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(data / names[key])
            rows.append({**names, "text": "", "task": task})
        (data / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return data


def eval_run(folder: Path, split: str, grids: dict[int, tuple[dict, Path]], data: Path) -> Path:
    """A relation eval output_dir whose ``split`` output i is a copy of an image, made from a grid row of
    ``data`` (test_unseen or test_unseen_wrong): i -> (row, image); ``generation.json`` records the row as eval
    does (``row_record`` with the target)."""
    (folder / split / "relation").mkdir(parents=True)
    parsed = {r.source.resolve(): r for name in ("test_unseen", "test_unseen_wrong") for r in parse_rows(data / f"{name}.jsonl")}
    rows = {}
    for i, (row, image) in grids.items():
        Image.open(image).save(folder / split / "relation" / f"{i:06d}.png")
        rows[f"{split}/relation/{i:06d}.png"] = row_record(parsed[(data / row["source"]).resolve()], {}, with_target=True)
    (folder / "generation.json").write_text(json.dumps({"rows": rows}))
    return folder


def test_make_writes_grids_with_the_pair_inside_and_a_wrong_pair_for_tests(tmp_path, capsys):
    data = prepared(tmp_path)
    assert grid_probe.main(["make", str(data), str(tmp_path / "grid")]) == 0
    assert "test_unseen_wrong.jsonl: 3 rows" in capsys.readouterr().out
    out = tmp_path / "grid"
    assert sorted(p.name for p in out.glob("*.jsonl")) == [
        "test_seen.jsonl", "test_seen_wrong.jsonl", "test_unseen.jsonl", "test_unseen_wrong.jsonl", "train.jsonl"]
    src = [json.loads(x) for x in (data / "test_unseen.jsonl").read_text().splitlines()]
    row = json.loads((out / "test_unseen.jsonl").read_text().splitlines()[0])
    query, target = pixels(out / row["source"]), pixels(out / row["target"])
    assert query.shape == (16, 48, 3)
    a, a2, b, b2 = (pixels(data / src[0][k]) for k in ("cond1", "cond2", "source", "target"))
    assert np.array_equal(query, np.concatenate([a, a2, b], axis=1))
    assert np.array_equal(target, np.concatenate([a, a2, b2], axis=1))
    assert np.array_equal(pixels(out / row["cond1"]), a)  # the adapter gets the same pair, inside the folder
    wrong = json.loads((out / "test_unseen_wrong.jsonl").read_text().splitlines()[0])
    assert wrong["task"] == "red" and np.array_equal(pixels(out / wrong["cond1"]), pixels(data / src[1]["cond1"]))
    assert np.array_equal(pixels(out / wrong["source"])[:, 32:], b)  # another task's pair, the same query


def test_score_reads_the_last_third_and_refuses_other_rows(tmp_path, capsys):
    data = prepared(tmp_path)
    out = tmp_path / "grid"
    grid_probe.make(data, out)
    rows = [json.loads(x) for x in (out / "test_unseen.jsonl").read_text().splitlines()]
    wrong_rows = [json.loads(x) for x in (out / "test_unseen_wrong.jsonl").read_text().splitlines()]
    run = eval_run(tmp_path / "run", "unseen", {i: (r, out / r["target"]) for i, r in enumerate(rows)}, out)
    table = grid_probe.score(out, run, None, "unseen")
    assert table["mean"]["true pair"] == 0 and "wrong pair" not in table["mean"]
    b, b2 = pixels(out / rows[1]["source"])[:, 32:], pixels(out / rows[1]["target"])[:, 32:]
    assert table["blue"]["copy"] == pytest.approx(float(((b - b2) ** 2).mean()))
    # A "wrong" run whose outputs are the queries: its MSE is copying's.
    wrong_run = eval_run(tmp_path / "wrong", "unseen_wrong", {i: (r, out / r["source"]) for i, r in enumerate(wrong_rows)},
                         out)
    table = grid_probe.score(out, run, wrong_run, "unseen")
    assert table["mean"]["wrong pair"] == pytest.approx(table["mean"]["copy"])
    assert grid_probe.main(["score", str(out), str(run), str(wrong_run)]) == 0
    assert "| mean | 3 | 0.0000 |" in capsys.readouterr().out
    # Outputs made from other rows (the wrong rows' queries under the unseen name) are refused in one line.
    other = eval_run(tmp_path / "other", "unseen", {0: (wrong_rows[0], out / wrong_rows[0]["source"])}, out)
    assert grid_probe.main(["score", str(out), str(other)]) == 1
    assert "was not made from the rows of the test_unseen.jsonl given" in capsys.readouterr().err


def test_make_refuses_a_split_of_one_task_and_leaves_nothing(tmp_path, capsys):
    data = prepared(tmp_path)
    rows = (data / "test_seen.jsonl").read_text().splitlines()
    (data / "test_seen.jsonl").write_text(rows[0] + "\n" + rows[2] + "\n")  # both "red"
    assert grid_probe.main(["make", str(data), str(tmp_path / "grid")]) == 1
    assert "test_seen.jsonl': every row is of one task" in capsys.readouterr().err
    assert not (tmp_path / "grid").exists()


def test_make_refuses_rows_outside_the_folder_and_images_of_other_sizes(tmp_path, capsys):
    data = prepared(tmp_path)
    rows = (data / "test_unseen.jsonl").read_text().splitlines()
    outside = json.loads(rows[0]) | {"cond1": "../elsewhere.png"}
    (data / "test_unseen.jsonl").write_text("\n".join([json.dumps(outside), *rows[1:]]) + "\n")
    assert grid_probe.main(["make", str(data), str(tmp_path / "grid")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "test_unseen.jsonl': row 1" in err and len(err.splitlines()) == 1
    (data / "test_unseen.jsonl").write_text("\n".join(rows) + "\n")
    Image.new("RGB", (24, 16)).save(data / json.loads(rows[1])["target"])
    assert grid_probe.main(["make", str(data), str(tmp_path / "grid")]) == 1
    assert "row 2: images of sizes 16x16, 16x16, 24x16" in capsys.readouterr().err
    Image.new("RGB", (1025, 1024)).save(data / json.loads(rows[1])["target"])  # the script's own limit, named
    assert grid_probe.main(["make", str(data), str(tmp_path / "grid")]) == 1
    assert "over the limit of 1,048,576 (grid_probe.py's MAX_PIXELS)" in capsys.readouterr().err
    assert not (tmp_path / "grid").exists()


def test_score_refuses_outputs_of_rows_remade_since_and_of_another_size(tmp_path, capsys):
    data = prepared(tmp_path)
    out = tmp_path / "grid"
    grid_probe.make(data, out)
    rows = [json.loads(x) for x in (out / "test_unseen.jsonl").read_text().splitlines()]
    run = eval_run(tmp_path / "run", "unseen", {i: (r, out / r["target"]) for i, r in enumerate(rows)}, out)
    Image.new("RGB", (48, 16), "white").save(out / rows[2]["target"])  # the folder remade under the same names
    assert grid_probe.main(["score", str(out), str(run)]) == 1
    assert "changed or were removed since it was made" in capsys.readouterr().err
    small = eval_run(tmp_path / "small", "unseen", {0: (rows[0], data / "images" / "test_unseen_0_source.png")}, out)
    assert grid_probe.main(["score", str(out), str(small)]) == 1
    assert "is 16x16, the grid rows are 48x16" in capsys.readouterr().err
