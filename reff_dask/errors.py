"""The exception types users see: bad input, and a numerical failure the run could not recover from."""

from __future__ import annotations

from pathlib import Path


class InputError(Exception):
    """A problem with a user's input file; the message names the file and the problem."""

    def __init__(self, path: str | Path, problem: str):
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


class NumericalError(Exception):
    """A computation gave non-finite numbers (an MD blow-up, a NaN CCC) and could not be recovered;
    the message names where (chain, iteration) and what was tried."""
