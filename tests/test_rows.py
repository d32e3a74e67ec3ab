"""Rows files: a row is named by its line in the file, and a line that gives one key twice is refused."""

from __future__ import annotations

import pytest

from relation_cli.errors import RelationError
from relation_cli.rows import parse_rows, read_jsonl

GOOD = '{"cond1": "a.png", "cond2": "b.png", "source": "q.png"}'


def rows_file(tmp_path, *lines: str):
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(line + "\n" for line in lines))
    return path


def test_a_blank_line_does_not_shift_row_numbers(tmp_path):
    missing = '{"cond1": "a.png", "cond2": "b.png"}'
    with pytest.raises(RelationError) as e:
        parse_rows(rows_file(tmp_path, GOOD, "", missing))
    assert str(e.value) == f"'{tmp_path / 'rows.jsonl'}': row 3: missing or empty source"  # line 3, as JSON errors say
    with pytest.raises(RelationError) as e:
        parse_rows(rows_file(tmp_path, GOOD, "", "{"))
    assert str(e.value).startswith(f"'{tmp_path / 'rows.jsonl'}': line 3: malformed JSON")


def test_rows_know_their_index_and_their_line(tmp_path):
    rows = parse_rows(rows_file(tmp_path, "", GOOD, "   ", "", GOOD))
    assert [(r.index, r.line) for r in rows] == [(0, 2), (1, 5)]  # index counts rows (output names); line is the file's


@pytest.mark.parametrize(
    "line, key",
    [('{"cond1": "a.png", "cond1": "b.png", "cond2": "b.png", "source": "q.png"}', "cond1"),
     ('{"cond1": "a.png", "cond2": "b.png", "source": "q.png", "text": "x", "text": "y"}', "text")],
)  # fmt: skip
def test_a_key_given_twice_is_refused_with_its_file_and_line(tmp_path, line, key):
    path = rows_file(tmp_path, GOOD, line)
    for read in (read_jsonl, parse_rows):
        with pytest.raises(RelationError) as e:
            read(path)
        assert str(e.value) == f"'{path}': line 2: duplicate key '{key}': give each field once"


def test_only_lines_with_a_key_twice_are_still_named_one_by_one(tmp_path):
    twice = '{"cond1": "a.png", "cond1": "b.png", "cond2": "b.png", "source": "q.png"}'
    for lines in ([twice], [twice, twice]):  # not "one JSON document", not "not a JSON Lines file"
        path = rows_file(tmp_path, *lines)
        with pytest.raises(RelationError) as e:
            read_jsonl(path)
        listed = "; ".join(f"line {n}: duplicate key 'cond1': give each field once" for n in range(1, len(lines) + 1))
        assert str(e.value) == f"'{path}': {listed}"


def test_commands_name_a_bad_image_by_its_line_in_the_file(tmp_path):
    """infer's batch check and training's image check say ``row 4`` for a row on line 4 after blank lines,
    the number an editor shows, not its position among the rows (2)."""
    from helpers import random_image

    from relation_cli.config import RelationConfig
    from relation_cli.infer import check_rows
    from relation_cli.train.data import load_rows

    for name in ("a", "b", "q", "t"):
        random_image(tmp_path / f"{name}.png", (32, 32))
    bad = '{"cond1": "a.png", "cond2": "gone.png", "source": "q.png", "target": "t.png"}'
    path = rows_file(tmp_path, GOOD.replace("}", ', "target": "t.png"}'), "", "", bad)
    for check in (lambda: load_rows(path, 10**8), lambda: check_rows(RelationConfig(), path, parse_rows(path))):
        with pytest.raises(RelationError) as e:
            check()
        assert "row 4 cond2" in str(e.value) and "row 2" not in str(e.value), str(e.value)


def test_a_csv_with_blank_lines_counts_the_lines_it_read(tmp_path):
    """Blank lines are skipped, so the message counts the non-blank ones (and says so)."""
    path = tmp_path / "rows.csv"
    path.write_text("cond1,cond2\n\na.png,b.png\n\n\n")
    with pytest.raises(RelationError, match="none of its 2 non-blank lines is a JSON object"):
        read_jsonl(path)
