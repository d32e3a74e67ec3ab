"""The benchmark scripts' argument parser: argparse, with a usage error said in one line as ``relation`` says it.

argparse's own ``error`` prints the whole usage block and exits with status 2; the scripts beside this one
are run by hand and from ``make``, where a wrong flag should read like ``relation``'s own usage errors:
``error: <argparse's message> (see <script> --help)`` on stderr, exit status 1. As in ``relation`` (click), a
flag that no parser knows is named first, before any missing argument: argparse alone would answer
``tool.py --bogus`` with the missing arguments and never mention ``--bogus``.

:func:`run_main` runs a script's ``main`` so that a reader that stops early (``tool.py | head``) ends the
script quietly with status 1, as ``relation`` (click) does, instead of a ``BrokenPipeError`` traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
from contextlib import contextmanager
from typing import Callable, Iterator, NoReturn, Sequence


class Parser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` whose usage errors are one line and exit 1 (subparsers inherit it:
    ``add_subparsers`` makes them of the parent's class), and which names an unknown flag before a missing
    argument."""

    def error(self, message: str) -> NoReturn:
        """Print ``error: message (see PROG --help)`` to stderr and exit with status 1 (argparse: 2)."""
        self.exit(1, f"error: {message} (see {self.prog} --help)\n")

    def parse_args(self, args: Sequence[str] | None = None, namespace=None):  # type: ignore[override]
        """argparse's ``parse_args``, after a first pass with every argument optional that stops at a flag no
        parser (this one or the chosen subcommand's) knows: ``error: unrecognized arguments: --bogus``.

        Raises SystemExit(1) on a usage error (:meth:`error`)."""
        argv = list(sys.argv[1:] if args is None else args)
        with _all_optional(self):
            _, extras = self.parse_known_args(argv, argparse.Namespace())
        flags = [a for a in extras if a.startswith("-") and a != "-"]
        if flags:
            self.error("unrecognized arguments: " + " ".join(flags))
        return super().parse_args(argv, namespace)


@contextmanager
def _all_optional(parser: argparse.ArgumentParser) -> Iterator[None]:
    """Mark every argument of ``parser`` and of its subcommands' parsers not required, for the block."""
    changed: list[argparse.Action] = []
    stack = [parser]
    while stack:
        for action in stack.pop()._actions:
            if action.required:
                action.required = False
                changed.append(action)
            if isinstance(action, argparse._SubParsersAction):
                stack.extend(action.choices.values())
    try:
        yield
    finally:
        for action in changed:
            action.required = True


def positive_int(text: str) -> int:
    """argparse ``type``: a whole number of at least 1 (a count of repeats, rows, steps, pixels)."""
    return _number(text, int, 1, "a whole number of at least 1")


def non_negative_int(text: str) -> int:
    """argparse ``type``: a whole number of at least 0 (a seed, warm-up steps)."""
    return _number(text, int, 0, "a whole number of at least 0")


def positive_float(text: str) -> float:
    """argparse ``type``: a number above 0 (seconds)."""
    value = _number(text, float, 0.0, "a number above 0")
    if value <= 0 or value != value or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} is not a number above 0")
    return value


def _number(text: str, kind: type, least, what: str):
    """``kind(text)`` when it is at least ``least``; argparse says ``argument --x: 'text' is not <what>``."""
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not {what}") from None
    if value < least:
        raise argparse.ArgumentTypeError(f"{text!r} is not {what}")
    return value


def run_main(main: Callable[..., int | None], *args) -> NoReturn:
    """Exit with ``main(*args)``'s status (None: 0). When stdout's reader has gone (``BrokenPipeError``, as
    after ``| head``), exit 1 without a traceback: stdout is pointed at ``os.devnull`` first, so the
    interpreter's final flush of the buffered rest cannot raise again (the recipe of Python's ``signal``
    documentation, "Note on SIGPIPE"; click's ``BaseCommand.main`` does the same for ``relation``).

    Raises SystemExit always."""
    try:
        code = main(*args)
        sys.stdout.flush()  # a broken pipe found here, inside the try, not in the interpreter's shutdown
    except BrokenPipeError:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        raise SystemExit(1) from None
    raise SystemExit(code)
