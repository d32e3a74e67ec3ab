"""The one exception type a user ever sees as a message instead of a traceback."""

from __future__ import annotations


class RelationError(Exception):
    """A problem with the user's input, files or settings.

    The CLI prints ``error: <message>`` on one line and exits with status 1; the message must name the
    input at fault and, where possible, say how to fix it.
    """


class Stopped(KeyboardInterrupt):
    """A stop the user asked for (Ctrl-C, SIGTERM) after the command has said what it kept: the CLI exits with
    status 130 and prints nothing more (a bare KeyboardInterrupt prints ``error: interrupted``)."""


def first_line(err: BaseException, limit: int = 200) -> str:
    """The first line of an exception's text (or its type name), for one-line messages."""
    text = str(err).strip()
    return text.splitlines()[0][:limit] if text else type(err).__name__


def counted(n: int, noun: str, plural: str | None = None) -> str:
    """``n`` and the noun, singular for one: ``counted(1, "image")`` is "1 image", ``counted(2, "entry", "entries")``
    is "2 entries"."""
    return f"{n} {noun if n == 1 else plural or noun + 's'}"


def several(problems: list[str], noun: str, head: str = "", limit: int = 10) -> RelationError:
    """One error for every problem found, so that a user fixes them in one go: a lone problem as it is
    (after ``head``), more as ``"<head>: 3 <noun>s cannot be used: <first>; <second>; ... and 1 more"`` with at
    most ``limit`` of them spelt out. ``problems`` must not be empty."""
    if len(problems) == 1:
        return RelationError(f"{head} {problems[0]}" if head else problems[0])
    more = f"; ... and {len(problems) - limit} more" if len(problems) > limit else ""
    lead = f"{head}: " if head else ""
    return RelationError(f"{lead}{counted(len(problems), noun)} cannot be used: " + "; ".join(problems[:limit]) + more)
