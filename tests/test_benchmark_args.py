"""The benchmark scripts' usage errors: one line and exit status 1, as relation's own (benchmarks/_args.py)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))
from _args import Parser  # noqa: E402


def test_a_usage_error_is_one_line_with_the_help_to_read(capsys):
    parser = Parser(prog="tool.py")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("score").add_argument("data")
    for argv, said in [([], "the following arguments are required: command (see tool.py --help)"),
                       (["--bogus"], "unrecognized arguments: --bogus (see tool.py --help)"),  # named before `command`
                       (["score"], "the following arguments are required: data (see tool.py score --help)"),
                       (["score", "--x"], "unrecognized arguments: --x (see tool.py --help)"),  # before `data`
                       (["score", "d", "--x"], "unrecognized arguments: --x (see tool.py --help)"),
                       (["score", "d", "e"], "unrecognized arguments: e (see tool.py --help)")]:  # fmt: skip
        with pytest.raises(SystemExit) as stopped:
            parser.parse_args(argv)
        assert stopped.value.code == 1
        assert capsys.readouterr().err == f"error: {said}\n"
    assert parser.parse_args(["score", "d"]).data == "d"
    assert [a.required for a in parser._actions if a.dest == "command"] == [True]  # restored after each parse


def test_every_benchmark_parses_with_it():
    scripts = {p.name: p.read_text() for p in BENCHMARKS.glob("*.py") if p.name != "_args.py"}
    assert [name for name, text in scripts.items() if "ArgumentParser(" in text] == []
    parsing = [name for name, text in scripts.items() if "Parser(" in text]
    assert len(parsing) >= 14 and all(re.search(r"^from _args import Parser\b", scripts[name], re.M) for name in parsing)
    ends = {name: text.rstrip().splitlines()[-1].strip() for name, text in scripts.items() if "__main__" in text}
    assert len(ends) >= 14 and [name for name, end in ends.items() if not end.startswith("run_main(main")] == []
    for argv, said in [(["compositions.py", "score", "--bogus"],
                        "unrecognized arguments: --bogus (see compositions.py --help)"),
                       (["compositions.py", "score"],
                        "the following arguments are required: data, run (see compositions.py score --help)"),
                       (["gpu_check.py", "--bogus"], "unrecognized arguments: --bogus (see gpu_check.py --help)"),
                       (["code_size.py", "a", "b"], "unrecognized arguments: b (see code_size.py --help)"),
                       (["infer_speed.py", "--repeats", "0"],
                        "argument --repeats: '0' is not a whole number of at least 1 (see infer_speed.py --help)"),
                       (["prepare_speed.py", "--pairs", "-5"],
                        "argument --pairs: '-5' is not a whole number of at least 1 (see prepare_speed.py --help)"),
                       (["first_hour.py", "--timeout", "nan"],
                        "argument --timeout: 'nan' is not a number above 0 (see first_hour.py --help)"),
                       (["train_speed.py", "--warmup", "-1"],
                        "argument --warmup: '-1' is not a whole number of at least 0 (see train_speed.py --help)"),
                       (["code_size.py", "/nonexistent"], "'/nonexistent': no such folder"),
                       (["slim_wheel.py", "/nonexistent.whl", "x"], "'/nonexistent.whl': No such file or directory")]:  # fmt: skip
        proc = subprocess.run([sys.executable, str(BENCHMARKS / argv[0]), *argv[1:]], capture_output=True, text=True,
                              timeout=120)  # fmt: skip
        assert (proc.returncode, proc.stdout, proc.stderr) == (1, "", f"error: {said}\n")  # the whole of stderr


def test_a_reader_that_stops_early_ends_a_benchmark_quietly():
    """``code_size.py | head``: stdout's reader gone before the table is written -> exit 1, nothing on stderr (no
    ``BrokenPipeError`` traceback, not even the interpreter's "Exception ignored" line at its final flush)."""
    read_end, write_end = os.pipe()
    os.close(read_end)  # every write to the pipe now fails with EPIPE (Python ignores SIGPIPE)
    try:
        proc = subprocess.run([sys.executable, str(BENCHMARKS / "code_size.py")], stdout=write_end,
                              stderr=subprocess.PIPE, text=True, timeout=120)  # fmt: skip
    finally:
        os.close(write_end)
    assert (proc.returncode, proc.stderr) == (1, "")
    whole = subprocess.run([sys.executable, str(BENCHMARKS / "code_size.py")], capture_output=True, text=True,
                           timeout=120)  # fmt: skip
    assert (whole.returncode, whole.stderr) == (0, "") and "median function" in whole.stdout  # a reader that stays


def test_a_benchmark_runs_as_a_module_too():
    """``python -m benchmarks.X`` from the repository root finds ``_args`` as running the file does."""
    for command in (["-m", "benchmarks.family_table"], [str(BENCHMARKS / "family_table.py")]):
        proc = subprocess.run([sys.executable, *command, "--bogus", "x=y"], capture_output=True, text=True,
                              cwd=BENCHMARKS.parent, timeout=120)  # fmt: skip
        said = "error: unrecognized arguments: --bogus (see family_table.py --help)\n"
        assert (proc.returncode, proc.stderr) == (1, said)


def test_slim_wheel_drops_members_and_their_record_rows_or_leaves_the_wheel(tmp_path):
    import zipfile

    import slim_wheel

    wheel = tmp_path / "pkg-1-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("pkg/lib_cuda12.so", b"x" * 4096)
        z.writestr("pkg/keep.py", "print(1)\n")
        z.writestr("pkg-1.dist-info/RECORD", "pkg/lib_cuda12.so,sha256=a,4096\npkg/keep.py,sha256=b,9\n")
    assert slim_wheel.main([str(wheel), r"lib_cuda1[0-2]"]) == 0
    with zipfile.ZipFile(wheel) as z:
        assert sorted(z.namelist()) == ["pkg-1.dist-info/RECORD", "pkg/keep.py"]
        assert z.read("pkg-1.dist-info/RECORD") == b"pkg/keep.py,sha256=b,9\n"
    good = wheel.read_bytes()
    broken = bytearray(good)
    start = good.index(b"pkg/keep.py") + len("pkg/keep.py")  # keep.py's deflated bytes follow its local header
    broken[start : start + 8] = b"\xff" * 8
    wheel.write_bytes(bytes(broken))
    assert slim_wheel.main([str(wheel), "nothing"]) == 1
    assert wheel.read_bytes() == bytes(broken) and sorted(p.name for p in tmp_path.iterdir()) == [wheel.name]
