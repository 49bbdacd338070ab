"""How the CLI prints: rich tables for people, `--json` for scripts."""

from __future__ import annotations

import json
import sys
from dataclasses import asdict, is_dataclass

from rich.console import Console, ConsoleDimensions

# Wide enough for any table row: when stdout is a pipe or a file there is no screen to fit.
UNBOUNDED_WIDTH = 100_000


class _StdoutConsole(Console):
    """When stdout is not a terminal (`reg base ls | cat`, a file, a test), tables take their natural width,
    so no identifier is cut to fit an 80-column guess. `COLUMNS` still sets a width when given."""

    @property
    def size(self) -> ConsoleDimensions:
        dims = super().size
        if self._width is None and not self.is_terminal and not self._environ.get("COLUMNS", "").isdigit():
            return ConsoleDimensions(UNBOUNDED_WIDTH, dims.height)
        return dims

    @size.setter
    def size(self, new_size: tuple[int, int]) -> None:
        Console.size.fset(self, new_size)


console = _StdoutConsole(highlight=False, soft_wrap=True)
err_console = Console(stderr=True, highlight=False, soft_wrap=True, markup=False)


def print_json(data) -> None:
    def default(obj):
        if is_dataclass(obj):
            return asdict(obj)
        return str(obj)

    # Compact separators keep json's C encoder; `| jq` pretty-prints for people.
    sys.stdout.write(json.dumps(data, separators=(",", ":"), default=default) + "\n")


def human_size(n: int | None) -> str:
    if n is None:
        return "-"
    size = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GB"


def short(digest: str | None, n: int = 12) -> str:
    if not digest:
        return "-"
    algo, _, hexpart = digest.rpartition(":")
    return f"{algo + ':' if algo else ''}{hexpart[:n]}"


def table(*columns: str, title: str | None = None):
    from rich.table import Table

    t = Table(title=title, box=None, header_style="bold", pad_edge=False, title_justify="left")
    for c in columns:
        t.add_column(c, overflow="fold")  # on a narrow terminal a long name wraps onto the next line, never "name…"
    return t
