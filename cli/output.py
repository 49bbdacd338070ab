"""How the CLI prints: rich tables for people, `--json` for scripts."""

from __future__ import annotations

import json
import sys
from dataclasses import asdict, is_dataclass

from rich.console import Console

console = Console(highlight=False, soft_wrap=True)
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
        t.add_column(c)
    return t
