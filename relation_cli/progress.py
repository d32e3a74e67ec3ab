"""Rich progress bars and quiet library logging, shared by every command."""

from __future__ import annotations

import logging
import os
import sys
import warnings
from contextlib import contextmanager
from typing import Iterator

from rich.console import Console

console = Console(stderr=True, soft_wrap=True)  # no hard wraps: messages stay greppable in logs


QUIET_ENV = {
    "TRANSFORMERS_VERBOSITY": "error",
    "DIFFUSERS_VERBOSITY": "error",
    "HF_HUB_VERBOSITY": "error",  # huggingface_hub's "Retrying in 1s [Retry 1/5]" lines
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "TQDM_DISABLE": "1",  # diffusers' "Loading pipeline components" bars (tqdm reads it when imported)
}
"""Settings the libraries read when they are imported; a user's own values win."""


def quiet_libraries() -> None:
    """Silence the progress bars and advisory warnings of diffusers/transformers/huggingface_hub/datasets.

    Imports none of them: environment variables and logger levels only, so a command calls this first
    and its cheap checks still answer before the ML stack is imported. Libraries already imported
    (tests, benchmarks) are quieted through their own switches.
    """
    for name, value in QUIET_ENV.items():
        os.environ.setdefault(name, value)
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=UserWarning, module=r"(diffusers|transformers|peft|torch)\..*")
    for name in ("diffusers", "transformers", "peft", "accelerate", "datasets", "huggingface_hub"):
        logging.getLogger(name).setLevel(logging.ERROR)
    for name in ("diffusers.utils.logging", "transformers.utils.logging"):
        if name in sys.modules:
            sys.modules[name].set_verbosity_error()
            sys.modules[name].disable_progress_bar()


def make_progress(*extra_columns):
    """A rich ``Progress`` on stderr (imported here: quiet_libraries callers need not pay for it)."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TaskProgressColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TaskProgressColumn(),
        *extra_columns,
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=False,
        disable=os.environ.get("RELATION_NO_PROGRESS") == "1",
    )


@contextmanager
def progress_bar(description: str, total: int) -> Iterator:
    """``with progress_bar("denoising", 24) as advance: advance()``."""
    with make_progress() as progress:
        task = progress.add_task(description, total=total)
        yield lambda n=1: progress.advance(task, n)


@contextmanager
def working(description: str) -> Iterator[None]:
    """``with working("loading model.base 'x'"): ...``: a spinner with ``description`` on stderr while the block
    runs, for steps with no count to show (loading weights, building a model); rich's ``Console.status``, so
    only on a terminal and in the main process of a launch (``RANK`` 0 or unset, as accelerate sets it): logs and
    pipes get nothing, and ``RELATION_NO_PROGRESS=1`` turns it off as it does the bars. The line goes when the
    block ends."""
    if os.environ.get("RELATION_NO_PROGRESS") == "1" or os.environ.get("RANK", "0") != "0" or not console.is_terminal:
        yield
        return
    with console.status(description):
        yield
