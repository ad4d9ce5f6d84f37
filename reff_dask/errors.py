"""The one exception type users see for bad input."""

from __future__ import annotations

from pathlib import Path


class InputError(Exception):
    """A problem with a user's input file; the message names the file and the problem."""

    def __init__(self, path: str | Path, problem: str):
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")
