"""The defaults every registry client shares: where a local registry lives, and who is acting (recorded with each write)."""

from __future__ import annotations

import os
from pathlib import Path


def default_home() -> Path:
    return Path(os.environ.get("LORADOCK_HOME") or Path.home() / ".loradock")


def current_actor() -> str:
    user = os.environ.get("LORADOCK_USER")
    if user:
        return user
    import getpass
    import socket

    try:
        return f"{getpass.getuser()}@{socket.gethostname()}"
    except (KeyError, OSError):
        return "unknown"
