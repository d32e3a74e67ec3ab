"""benchmarks/grid_probe.py: prepared rows as in-context grids [A | A' | B] -> [A | A' | B'], and the score of
the last third of relation eval's outputs (issue 18, tenth experiment)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

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
                Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(data / names[key])
            rows.append({**names, "text": "", "task": task})
        (data / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return data


def pixels(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"), np.float32) / 255


def eval_run(folder: Path, split: str, grids: dict[int, tuple[Path, Path]]) -> Path:
    """A relation eval output_dir whose ``split`` output i is a copy of an image, made from a query: i -> (query,
    image)."""
    (folder / split / "relation").mkdir(parents=True)
    rows = {}
    for i, (query, image) in grids.items():
        Image.open(image).save(folder / split / "relation" / f"{i:06d}.png")
        rows[f"{split}/relation/{i:06d}.png"] = {"source": str(query.resolve())}
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
    assert query.shape == (8, 24, 3)
    a, a2, b, b2 = (pixels(data / src[0][k]) for k in ("cond1", "cond2", "source", "target"))
    assert np.array_equal(query, np.concatenate([a, a2, b], axis=1))
    assert np.array_equal(target, np.concatenate([a, a2, b2], axis=1))
    assert np.array_equal(pixels(out / row["cond1"]), a)  # the adapter gets the same pair, inside the folder
    wrong = json.loads((out / "test_unseen_wrong.jsonl").read_text().splitlines()[0])
    assert wrong["task"] == "red" and np.array_equal(pixels(out / wrong["cond1"]), pixels(data / src[1]["cond1"]))
    assert np.array_equal(pixels(out / wrong["source"])[:, 16:], b)  # another task's pair, the same query


def test_score_reads_the_last_third_and_refuses_other_rows(tmp_path, capsys):
    data = prepared(tmp_path)
    out = tmp_path / "grid"
    grid_probe.make(data, out)
    rows = [json.loads(x) for x in (out / "test_unseen.jsonl").read_text().splitlines()]
    wrong_rows = [json.loads(x) for x in (out / "test_unseen_wrong.jsonl").read_text().splitlines()]
    run = eval_run(tmp_path / "run", "unseen", {i: (out / r["source"], out / r["target"]) for i, r in enumerate(rows)})
    table = grid_probe.score(out, run, None, "unseen")
    assert table["mean"]["true pair"] == 0 and "wrong pair" not in table["mean"]
    b, b2 = pixels(out / rows[1]["source"])[:, 16:], pixels(out / rows[1]["target"])[:, 16:]
    assert table["blue"]["copy"] == pytest.approx(float(((b - b2) ** 2).mean()))
    # A "wrong" run whose outputs are the queries: its MSE is copying's.
    wrong_run = eval_run(tmp_path / "wrong", "unseen_wrong", {i: (out / r["source"],) * 2 for i, r in enumerate(wrong_rows)})
    table = grid_probe.score(out, run, wrong_run, "unseen")
    assert table["mean"]["wrong pair"] == pytest.approx(table["mean"]["copy"])
    assert grid_probe.main(["score", str(out), str(run), str(wrong_run)]) == 0
    assert "| mean | 0.0000 |" in capsys.readouterr().out
    # Outputs made from other rows (the wrong rows' queries under the unseen name) are refused in one line.
    other = eval_run(tmp_path / "other", "unseen", {0: (out / wrong_rows[0]["source"],) * 2})
    assert grid_probe.main(["score", str(out), str(other)]) == 1
    assert "was not made from the grid rows" in capsys.readouterr().err


def test_make_refuses_a_split_of_one_task_and_leaves_nothing(tmp_path, capsys):
    data = prepared(tmp_path)
    rows = (data / "test_seen.jsonl").read_text().splitlines()
    (data / "test_seen.jsonl").write_text(rows[0] + "\n" + rows[2] + "\n")  # both "red"
    assert grid_probe.main(["make", str(data), str(tmp_path / "grid")]) == 1
    assert "no wrong pair" in capsys.readouterr().err
    assert not (tmp_path / "grid").exists()
