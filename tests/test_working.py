"""Steps with no count to show (loading weights, building a model) show a spinner with what they do, on a terminal
only (relation_cli.progress.working)."""

from __future__ import annotations

import io
from contextlib import contextmanager

from conftest import EXAMPLES
from rich.console import Console

import relation_cli.progress as progress
from relation_cli.cli import main


def test_working_shows_on_a_terminal_and_nothing_in_a_pipe(monkeypatch):
    monkeypatch.delenv("RELATION_NO_PROGRESS", raising=False)  # the test session turns bars off
    for terminal, shown in ((True, True), (False, False)):
        out = io.StringIO()
        monkeypatch.setattr(progress, "console", Console(file=out, force_terminal=terminal, width=80))
        with progress.working("loading 'somewhere'"):
            pass
        assert ("loading 'somewhere'" in out.getvalue()) is shown
    for name, value in (("RANK", "1"), ("RELATION_NO_PROGRESS", "1")):  # another process of a launch; bars off
        monkeypatch.setenv(name, value)
        out = io.StringIO()
        monkeypatch.setattr(progress, "console", Console(file=out, force_terminal=True, width=80))
        with progress.working("loading"):
            pass
        assert out.getvalue() == ""
        monkeypatch.delenv(name)


def test_loading_and_init_model_say_what_they_do(monkeypatch, tmp_path, tiny_model):
    said = []

    @contextmanager
    def record(description):
        said.append(description)
        yield

    monkeypatch.setattr("relation_cli.model.working", record)
    monkeypatch.setattr(progress, "working", record)  # init-model imports it from here when it runs
    args = ["infer", "--exemplar", str(EXAMPLES / "exemplar_before.png"), str(EXAMPLES / "exemplar_after.png"),
            "--query", str(EXAMPLES / "query.png"), "-o", str(tmp_path / "o.png")]  # fmt: skip
    assert main(args) == 0
    assert main(["init-model", str(tmp_path / "m"), "--seed", "0"]) == 0
    data = tmp_path / "data"
    assert main(["prepare", "--synthetic", "2", "--output", str(data)]) == 0
    train = ["train", "--data", str(data / "train.jsonl"), "--output-dir", str(tmp_path / "run"), "--steps", "1",
             "--set", "train.validation_samples=0", "--set", f"model.base={tiny_model / 'base'}",
             "--set", f"model.image_encoder={tiny_model / 'image_encoder'}"]  # fmt: skip
    assert main(train) == 0
    assert said == ["loading the embedded demo model", f"building and writing {tmp_path / 'm'}",
                    f"loading '{tiny_model / 'base'}'"]  # fmt: skip
