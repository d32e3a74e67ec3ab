"""The plan of `relation eval`: split names, wrong-exemplar donors, jobs, and their split across processes."""

from __future__ import annotations

import json
import threading
from contextlib import contextmanager
from unittest.mock import patch

import pytest

from eval_helpers import write_test_file
from relation_cli.config import RelationConfig, load_config
from relation_cli.errors import RelationError
from relation_cli.evaluate.generate import generate
from relation_cli.evaluate.plan import load_splits, methods_of, plan_jobs, split_name
from relation_cli.images import save_output


def test_split_names():
    from pathlib import Path

    assert [split_name(Path(p)) for p in ("d/test_seen.jsonl", "test_unseen.jsonl", "mine.jsonl", "test_.jsonl")] == [
        "seen", "unseen", "mine", "test_",
    ]  # fmt: skip


def test_donors_are_of_another_task_and_deterministic(tmp_path):
    path = write_test_file(tmp_path, rows=6, tasks=3)
    section = RelationConfig().eval
    (split,) = load_splits([path], section)
    assert all(split.donors[r.index].task != r.task for r in split.rows)
    again = load_splits([path], section.model_copy(update={"limit": 2}))[0]
    assert {i: d.index for i, d in again.donors.items()} == {i: split.donors[i].index for i in (0, 1)}
    other_seed = load_splits([path], section.model_copy(update={"seed": 5}))[0]
    assert all(d.task != split.rows[i].task for i, d in other_seed.donors.items())


def test_limit_takes_rows_spread_over_the_tasks(tmp_path):
    """A file sorted by task (as prepare writes it): the first N rows would all be of one task."""
    path = write_test_file(tmp_path, rows=9, tasks=3)
    lines = path.read_text().splitlines()
    path.write_text("".join(line + "\n" for line in sorted(lines, key=lambda l: json.loads(l)["task"])))
    section = RelationConfig().eval
    (split,) = load_splits([path], section.model_copy(update={"limit": 4}))
    assert [(r.index, r.task) for r in split.rows] == [(0, "task0"), (1, "task0"), (3, "task1"), (6, "task2")]
    assert split.total == 9 and load_splits([path], section.model_copy(update={"limit": 4}))[0].rows == split.rows
    assert len(load_splits([path], section)[0].rows) == 9


def test_jobs_cover_every_method_and_row(tmp_path):
    path = write_test_file(tmp_path, rows=3, tasks=2)
    cfg = load_config(None, ["eval.limit=2"])
    splits = load_splits([path], cfg.eval)
    jobs = plan_jobs(splits, methods_of(cfg.eval), tmp_path / "out")
    assert [(j.method, j.row.index) for j in jobs] == [
        (m, i) for m in ("relation", "copy_query", "adapter_off", "wrong_exemplar") for i in (0, 1)
    ]
    assert jobs[0].output == tmp_path / "out" / "seen" / "relation" / "000000.png"
    assert all(j.exemplar.task != j.row.task for j in jobs if j.method == "wrong_exemplar")


@pytest.mark.parametrize("use_text", [True, False])
def test_use_text_false_leaves_the_prompt_empty(tmp_path, use_text):
    from relation_cli.evaluate.generate import job_inputs

    path = write_test_file(tmp_path, rows=2, tasks=2)
    cfg = load_config(None, [f"eval.use_text={use_text}"])
    job = plan_jobs(load_splits([path], cfg.eval), ["relation"], tmp_path / "out")[1]
    assert job_inputs(cfg, job).prompt == ("edit number 1" if use_text else "")


def test_two_inputs_with_one_split_name_are_refused(tmp_path):
    a = write_test_file(tmp_path / "a", rows=2)
    b = write_test_file(tmp_path / "b", rows=2)
    with pytest.raises(RelationError, match="both split 'seen'"):
        load_splits([a, b], RelationConfig().eval)


class FakeState:
    """accelerate.PartialState as process ``index`` of ``count`` sees it (contiguous shares, like accelerate)."""

    def __init__(self, index: int, count: int, barrier: threading.Barrier):
        self.process_index, self.num_processes, self.barrier = index, count, barrier
        self.is_main_process = index == 0

    @contextmanager
    def split_between_processes(self, items):
        per, extra = divmod(len(items), self.num_processes)
        start = self.process_index * per + min(self.process_index, extra)
        yield items[start : start + per + (self.process_index < extra)]

    def wait_for_everyone(self):
        self.barrier.wait(timeout=60)


def test_processes_share_the_missing_outputs(tmp_path):
    path = write_test_file(tmp_path / "data", rows=5, tasks=2)
    cfg = load_config(None, ["eval.baselines=[copy_query]"])
    jobs = plan_jobs(load_splits([path], cfg.eval), ["copy_query"], tmp_path / "out")
    jobs[1].output.parent.mkdir(parents=True)
    jobs[1].output.write_bytes(b"kept")  # already there: reused, not redone
    barrier, written, results = threading.Barrier(2), {}, {}

    def save(image, path):  # records which process wrote what
        written[path.name] = int(threading.current_thread().name)
        return save_output(image, path)

    def process(rank: int) -> None:
        results[rank] = generate(cfg, jobs, FakeState(rank, 2, barrier))

    # Real processes each import diffusers alone; two threads importing it at once race in its lazy module
    # ("cannot import name 'AutoencoderKL'" in one of them, about half the runs here), so import it first.
    from diffusers import AutoencoderKL  # noqa: F401

    threads = [threading.Thread(target=process, args=(rank,), name=str(rank)) for rank in (0, 1)]
    with patch("relation_cli.evaluate.generate.save_output", save):
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert written == {"000000.png": 0, "000002.png": 0, "000003.png": 1, "000004.png": 1}
    assert results[0] == results[1] and (results[0].written, results[0].reused) == (4, 1)
    assert jobs[1].output.read_bytes() == b"kept"
