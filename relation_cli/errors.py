"""The one exception type a user ever sees as a message instead of a traceback."""

from __future__ import annotations


class RelationError(Exception):
    """A problem with the user's input, files or settings.

    The CLI prints ``error: <message>`` on one line and exits with status 1; the message must name the
    input at fault and, where possible, say how to fix it.
    """


def first_line(err: BaseException, limit: int = 200) -> str:
    """The first line of an exception's text (or its type name), for one-line messages."""
    text = str(err).strip()
    return text.splitlines()[0][:limit] if text else type(err).__name__


def counted(n: int, noun: str, plural: str | None = None) -> str:
    """``n`` and the noun, singular for one: ``counted(1, "image")`` is "1 image", ``counted(2, "entry", "entries")``
    is "2 entries"."""
    return f"{n} {noun if n == 1 else plural or noun + 's'}"
