"""One error type for bad input files: it names the file, the line and the problem."""

from __future__ import annotations


class DataError(ValueError):
    """Bad input data. `str(error)` reads "path:line: problem" (or "path: problem")."""

    def __init__(self, path, line, problem):
        self.path, self.line, self.problem = str(path), line, problem
        where = f"{self.path}:{line}" if line is not None else self.path
        super().__init__(f"{where}: {problem}")
