"""The one place where loradock errors become CLI messages and exit codes."""

from __future__ import annotations

import click

from registry.errors import (
    BaseMismatch, Conflict, IntegrityError, InvalidAdapter, InvalidName, InvalidRef, LoradockError, NotFound,
)

# Documented in README.md ("Exit codes"); scripts may rely on them.
EXIT_CODES: list[tuple[type[LoradockError], int]] = [
    (InvalidName, 2), (InvalidRef, 2), (InvalidAdapter, 2),
    (NotFound, 3),
    (Conflict, 4),
    (BaseMismatch, 5),
    (IntegrityError, 6),
    (LoradockError, 1),
]


class CliError(click.ClickException):
    """A loradock error shown as one line, `error: ...`, with its exit code."""

    def __init__(self, error: LoradockError):
        super().__init__(str(error))
        self.exit_code = next(code for cls, code in EXIT_CODES if isinstance(error, cls))

    def show(self, file=None) -> None:
        click.echo(f"error: {self.format_message()}", err=True)
