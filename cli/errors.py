"""The one place where loradock errors become CLI messages and exit codes.

The exit codes themselves are the error table's (`exit_code` on each class, registry/errors.py), documented
in README.md ("Exit codes"); scripts may rely on them.
"""

from __future__ import annotations

import sys

from registry.errors import LoradockError, class_for_status

MAX_MESSAGE_CHARS = 2000


def exit_code_for(error: LoradockError) -> int:
    return error.exit_code


def exit_code_for_status(status: str) -> int:
    """The exit code of an inference command (`reg generate`, `feedback`, `stats`) that ended with gRPC `status`."""
    return class_for_status(status, inference=True).exit_code


def report(error: LoradockError) -> int:
    """Print `error: <message>` as one line on stderr; return the exit code for it."""
    message = " ".join(str(error).split())
    if len(message) > MAX_MESSAGE_CHARS:  # values are cut where they are echoed (registry.errors.shown); this bounds the line
        message = message[:MAX_MESSAGE_CHARS] + "… (cut)"
    sys.stderr.write(f"error: {message}\n")
    return exit_code_for(error)
