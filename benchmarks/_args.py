"""The benchmark scripts' argument parser: argparse, with a usage error said in one line as ``relation`` says it.

argparse's own ``error`` prints the whole usage block and exits with status 2; the scripts beside this one
are run by hand and from ``make``, where a wrong flag should read like ``relation``'s own usage errors:
``error: <argparse's message> (see <script> --help)`` on stderr, exit status 1.
"""

from __future__ import annotations

import argparse
from typing import NoReturn


class Parser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` whose usage errors are one line and exit 1 (subparsers inherit it:
    ``add_subparsers`` makes them of the parent's class)."""

    def error(self, message: str) -> NoReturn:
        """Print ``error: message (see PROG --help)`` to stderr and exit with status 1 (argparse: 2)."""
        self.exit(1, f"error: {message} (see {self.prog} --help)\n")
