"""How every `lrlab` command ends: its exit statuses, and the one-line error it explains itself with."""

from __future__ import annotations

import sys

# 1 a run (or population) ended failed; 2 refused (bad input, an unknown id, a 4xx);
# 3 the service (or, for server commands, the database) could not be reached.
EXIT_FAILED, EXIT_REFUSED, EXIT_UNREACHABLE = 1, 2, 3


class CliError(Exception):
    """A failure the command explains in one line on stderr, exiting with `code`."""

    def __init__(self, message: str, code: int = EXIT_REFUSED) -> None:
        super().__init__(message)
        self.code = code


def say(line: str) -> None:
    """Prose for people, on stderr: stdout carries only what a script reads (ids, tables, JSON)."""
    print(line, file=sys.stderr, flush=True)
