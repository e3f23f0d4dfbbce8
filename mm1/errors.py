"""Failures the user can fix, told apart from bugs.

A `UserFacingError` means "your config, data, files, ports or cluster need attention": the CLI prints its
message and what to do, and exits non-zero, with no traceback on the console (the run folder's step log keeps
it). Any other exception is a bug in this package and keeps its traceback. Ray re-raises a task's exception
as a subclass of its original class, so an error raised on a worker node is recognized here too.
"""

from __future__ import annotations


class UserFacingError(Exception):
    """A failure the user can act on; `hint` says what to do (may be empty)."""

    hint: str = ""

    def __init__(self, *args: object, hint: str = "") -> None:
        super().__init__(*args)
        if hint:
            self.hint = hint
