"""Paths that come from outside, checked before anything is written (STYLE.md 15: hostile until checked).

- File names in a version's manifest (from the local database, a remote registry's answer, or a pushing
  client) are plain top-level names: `check_file_name` is the one rule, used by push and by every pull.
- A directory that a command replaces (`pull --force`, `export --force`) is never the registry home, inside
  it, or above it, symlinks resolved: `check_replaceable` is the one rule, used by `replace_dir`,
  `write_version_dir` and export. The home's `cache/` holds materialised copies (an inference server's
  pulled adapters), which are the one thing inside the home that may be replaced.
"""

from __future__ import annotations

from pathlib import Path

from .errors import Conflict, LoradockError, shown

MAX_FILE_NAME = 255
CACHE_DIR = "cache"  # under the home: materialised copies that may be replaced (server/service.py's adapter cache)


def file_name_problem(name: object) -> str | None:
    """Why `name` cannot be a file of a version (None if it can): one path component, printable, not hidden."""
    if not isinstance(name, str) or not name:
        return "empty"
    if len(name) > MAX_FILE_NAME:
        return f"longer than {MAX_FILE_NAME} characters"
    if any(c in name for c in "/\\\0") or not name.isprintable():
        return "not a plain file name (a '/', '\\', NUL or control character)"
    if name.startswith("."):
        return "hidden, or '.'/'..'"
    return None


def check_file_name(name: object, error: type[LoradockError], where: str) -> str:
    """`name` if it is a plain file name that stays inside the directory it is written to; else `error` naming it."""
    problem = file_name_problem(name)
    if problem:
        raise error(f"{where}: file name {shown(name)} is {problem}; a version holds top-level file names only, "
                    f"so nothing was written")
    return name  # type: ignore[return-value]


def confined(directory: Path, name: str) -> Path:
    """`directory / name`, checked once more after symlinks are resolved to lie directly inside `directory`."""
    path = directory / name
    if path.resolve().parent != directory.resolve():
        raise Conflict(f"{path} resolves to {path.resolve()}, outside {directory}; nothing was written")
    return path


def check_replaceable(out: Path | str, home: Path | str) -> None:
    """Refuse (Conflict, naming both paths) to replace `out` when it is, lies inside, or contains the registry home."""
    target, protected = Path(out).resolve(), Path(home).resolve()
    if target == protected:
        relation = "is"
    elif protected.is_relative_to(target):
        relation = "contains"
    elif target.is_relative_to(protected) and not _inside_cache(target, protected):
        relation = "lies inside"
    else:
        return
    shown_out = f"{out} (that is {target})" if Path(out) != target else str(out)
    raise Conflict(f"refusing to replace {shown_out}: it {relation} the registry home {protected}, so --force would "
                   f"replace the registry home (its database and blobs); choose an --out outside the home")


def _inside_cache(target: Path, home: Path) -> bool:
    cache = home / CACHE_DIR
    return target != cache and target.is_relative_to(cache)
