"""benchmarks/compositions.py: compositions of two fixed relations, held out in both orders, scored against
the composed target and each relation alone (issue 18)."""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

from relation_cli.infer import row_record
from relation_cli.prepare.synthetic import TASKS, make_synthetic
from relation_cli.rows import parse_rows

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import compositions  # noqa: E402


def test_compositions_are_new_relations_held_out_in_both_orders():
    pairs = compositions.compositions()
    assert len(pairs) == 89 and len(set(pairs)) == 89
    assert all(a != b and b not in compositions.REDRAWN for a, b in pairs)
    assert not {"flip_vertical", "frame", "swap_colours"} & {p for pair in pairs for p in pair}
    held = [p for p in pairs if compositions.held_out(*p)]
    assert len(held) == 18 and ("mirror", "invert") in held and ("invert", "mirror") in held
    relation = compositions.composed_relations()["invert+mirror"]
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8))
    assert relation.edit(None, image, 32).tobytes() == ImageOps.mirror(ImageOps.invert(image)).tobytes()
    assert "invert+mirror" not in TASKS  # the fixed relations are left as they are


def prepared_row(tmp_path: Path, root: Path, task: str = "invert+mirror") -> tuple[Path, np.ndarray]:
    """A prepared folder whose one test_unseen row uses the first pair of ``task`` under ``root``."""
    labels = json.loads((root / task / "Group1" / "labels.json").read_text())
    pair = np.asarray(Image.open(root / task / "Group1" / labels[0]["img_name"]))
    data = tmp_path / "data"
    (data / "images").mkdir(parents=True)
    for i, half in enumerate((pair[:, :32], pair[:, 32:])):
        Image.fromarray(half).save(data / "images" / f"{i}.png")
    row = {"cond1": "images/0.png", "cond2": "images/1.png", "source": "images/0.png", "target": "images/1.png",
           "task": task}  # fmt: skip
    (data / "test_seen.jsonl").write_text("")
    (data / "test_unseen.jsonl").write_text(json.dumps(row) + "\n")
    return data, pair


def eval_run(folder: Path, outputs: dict[int, Image.Image], data: Path, source: Path | None = None) -> Path:
    """A relation eval output_dir: ``unseen/relation/<i>.png`` and the generation.json recording each one as eval
    does (``row_record`` with the target) for row i of ``data``'s test_unseen.jsonl, its query replaced by
    ``source`` when given (a run of other rows)."""
    (folder / "unseen" / "relation").mkdir(parents=True)
    rows, parsed = {}, parse_rows(data / "test_unseen.jsonl", need_target=True)
    for i, image in outputs.items():
        image.save(folder / "unseen" / "relation" / f"{i:06d}.png")
        row = parsed[i] if source is None else dataclasses.replace(parsed[i], source=source)
        rows[f"unseen/relation/{i:06d}.png"] = row_record(row, {}, with_target=True)
    (folder / "generation.json").write_text(json.dumps({"rows": rows}))
    return folder


def test_make_removes_pairs_equal_to_a_test_image_and_score_finds_composed_outputs(tmp_path, capsys):
    root = tmp_path / "raw"
    assert compositions.main(["make", str(root), "--pairs", "2"]) == 0
    assert capsys.readouterr().out.strip().endswith("89 compositions (18 held out), 2 pairs each")
    data, pair = prepared_row(tmp_path, root)
    labels = json.loads((root / "invert+mirror" / "Group1" / "labels.json").read_text())
    assert compositions.avoid(root, compositions.test_images(data)) == 1
    left = json.loads((root / "invert+mirror" / "Group1" / "labels.json").read_text())
    assert [x["img_name"] for x in left] == [labels[1]["img_name"]]
    assert not (root / "invert+mirror" / "Group1" / labels[0]["img_name"]).exists()
    # An output equal to the composed target is nearest it; one equal to invert alone is nearest that.
    run = eval_run(tmp_path / "run", {0: Image.fromarray(pair[:, 32:])}, data)
    table, scored, total = compositions.score(data, run)
    assert (scored, total) == (1, 1)
    assert table["invert+mirror"]["composed"] == 0 and table["invert+mirror"]["as invert"] > 0
    assert compositions.main(["score", str(data), str(run)]) == 0
    assert "1 of 1 held-out compositions" in capsys.readouterr().out
    ImageOps.invert(Image.fromarray(pair[:, :32])).save(run / "unseen" / "relation" / "000000.png")
    table, _, _ = compositions.score(data, run)
    assert table["invert+mirror"]["as invert"] == 0 < table["invert+mirror"]["composed"]
    # An output of another size than its target (eval without infer.output_size: query) is refused in one line.
    Image.new("RGB", (16, 16)).save(run / "unseen" / "relation" / "000000.png")
    assert compositions.main(["score", str(data), str(run)]) == 1
    err = capsys.readouterr().err
    assert "is 16x16, its target 32x32" in err and err.count("\n") == 1
    # A target replaced since the output was made: the record no longer matches.
    Image.new("RGB", (32, 32)).save(data / "images" / "1.png")
    assert compositions.main(["score", str(data), str(run)]) == 1
    assert "changed or were removed since it was made" in capsys.readouterr().err


def test_score_refuses_a_run_of_other_rows_and_scores_a_limited_one(tmp_path, capsys):
    root = tmp_path / "raw"
    compositions.make(root, 2, 11, set())
    data, pair = prepared_row(tmp_path, root)
    other = eval_run(tmp_path / "other", {0: Image.fromarray(pair[:, 32:])}, data, data / "images" / "1.png")
    assert compositions.main(["score", str(data), str(other)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "was not made from" in err and err.count("\n") == 1
    # Two rows, outputs for the first only (relation eval --limit): scored, and said.
    lines = (data / "test_unseen.jsonl").read_text()
    (data / "test_unseen.jsonl").write_text(lines * 2)
    limited = eval_run(tmp_path / "limited", {0: Image.fromarray(pair[:, 32:])}, data)
    assert compositions.main(["score", str(data), str(limited)]) == 0
    assert "(1 of the 2 rows have outputs: made with --limit?)" in capsys.readouterr().out
    assert compositions.main(["score", str(data), str(limited), "--split", "seen"]) == 1
    assert "test_seen.jsonl': no rows" in capsys.readouterr().err
    (data / "test_seen.jsonl").write_text(lines)
    assert compositions.main(["score", str(data), str(limited), "--split", "seen"]) == 1
    assert "no seen outputs" in capsys.readouterr().err
    (data / "test_unseen.jsonl").write_text(lines.replace("invert+mirror", "frame"))
    assert compositions.main(["score", str(data), str(limited)]) == 1
    assert "task 'frame' is not one of the compositions a+b" in capsys.readouterr().err
    for task in ("foo+bar", "recolour+outline", "invert+mirror+blur", "frame+flip_vertical"):
        (data / "test_unseen.jsonl").write_text(lines.replace("invert+mirror", task))
        assert compositions.main(["score", str(data), str(limited)]) == 1
        assert f"task '{task}' is not one of the compositions" in capsys.readouterr().err
    # An output key eval does not write (a path out of the run folder) is refused, not read.
    (data / "test_unseen.jsonl").write_text(lines)
    record = json.loads((limited / "generation.json").read_text())
    record["rows"]["unseen/relation/../../000000.png"] = record["rows"].pop("unseen/relation/000000.png")
    (limited / "generation.json").write_text(json.dumps(record))
    assert compositions.main(["score", str(data), str(limited)]) == 1
    assert "records an output 'unseen/relation/../../000000.png' that relation eval does not write" in capsys.readouterr().err


def test_make_is_all_or_nothing(tmp_path, monkeypatch, capsys):
    # A prepared folder holding every first pair: removing them leaves compositions a single pair.
    root = tmp_path / "raw"
    compositions.make(root, 2, 11, set())
    taken = {np.asarray(Image.open(p))[:, :32].tobytes() for p in root.glob("*/Group1/00000.png")}
    with pytest.raises(Exception, match="keeps 1 of 2 pairs .* choose another --seed"):
        compositions.make(tmp_path / "again", 2, 11, taken)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["raw"]

    def interrupted(*args, advance, **kwargs):
        advance(1)
        raise KeyboardInterrupt

    monkeypatch.setattr(compositions, "make_synthetic", interrupted)
    assert compositions.main(["make", str(tmp_path / "stopped"), "--pairs", "2"]) == 130
    assert capsys.readouterr().err.strip().endswith("error: interrupted")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["raw"]


def test_make_synthetic_takes_other_relations(tmp_path):
    relations = {"invert+mirror": compositions.composed_relations()["invert+mirror"]}
    make_synthetic(tmp_path / "raw", 2, size=32, relations=relations)
    assert [p.name for p in (tmp_path / "raw").iterdir()] == ["invert+mirror"]
    with pytest.raises(Exception, match="unknown; choose from invert\\+mirror"):
        make_synthetic(tmp_path / "other", 2, size=32, tasks=["mirror"], relations=relations)


def test_bad_folders_are_one_line_and_a_bad_avoid_writes_nothing(tmp_path, capsys):
    assert compositions.main(["make", str(tmp_path / "raw"), "--pairs", "2", "--avoid", str(tmp_path / "none")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "test_seen.jsonl" in err
    assert not (tmp_path / "raw").exists()
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("")
    assert compositions.main(["make", str(tmp_path / "full"), "--pairs", "2"]) == 1
    assert "already exists and is not an empty folder (it holds 'x')" in capsys.readouterr().err
    assert compositions.main(["score", str(tmp_path / "none"), str(tmp_path / "run")]) == 1
    assert "no test_unseen.jsonl; give the folder relation prepare wrote" in capsys.readouterr().err
    assert compositions.main(["score", str(tmp_path / "full"), str(tmp_path / "run")]) == 1
    (tmp_path / "full" / "test_unseen.jsonl").write_text("")
    assert compositions.main(["score", str(tmp_path / "full"), str(tmp_path / "run")]) == 1
    assert "test_unseen.jsonl': no rows" in capsys.readouterr().err
    Image.new("RGB", (32, 32)).save(tmp_path / "full" / "a.png")
    row = {"cond1": "a.png", "cond2": "a.png", "source": "a.png", "target": "a.png", "task": "invert+mirror"}
    (tmp_path / "full" / "test_unseen.jsonl").write_text(json.dumps(row) + "\n")
    assert compositions.main(["score", str(tmp_path / "full"), str(tmp_path / "run")]) == 1
    assert "no generation.json; give the output_dir of relation eval" in capsys.readouterr().err
