"""`reg`: the loradock command line. It parses, calls the packages, and prints; no logic lives here.

Each group of commands lives in a module named for it (`registry_cmds`, `base_cmds`, `rollout`, `runs`,
`train_cmds`, `job_cmds`, `server_cmds`, `access_cmds`, `export`, `capture_cmds`); importing one registers its commands on `app`
(cli/common.py), in the order `reg --help` lists them. This module is the entry point.
"""

from __future__ import annotations

import sys

import typer

from registry import LoradockError

from . import errors
from . import registry_cmds, base_cmds, rollout, runs, train_cmds, job_cmds, server_cmds, access_cmds, export, capture_cmds  # noqa: F401  (register)
from . import loop_cmds  # noqa: F401  (register)
from .common import app

__all__ = ["app", "main", "run"]


def main(argv: list[str] | None = None) -> int:
    """Run `reg` with `argv`; return the exit code. Loradock errors become one-line messages here."""
    from registry.modeling.loading import quiet_libraries

    quiet_libraries()  # before any command imports transformers, peft or bitsandbytes
    command = typer.main.get_command(app)
    try:
        command.main(args=argv, prog_name="reg", standalone_mode=True)
    except SystemExit as exc:  # typer's own usage errors, --help and typer.Exit end here
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except LoradockError as exc:
        return errors.report(exc)
    return 0


def run() -> None:
    sys.exit(main())
