"""Where the project's log records go: one stderr handler, plain text or JSON lines, set up once per `reg` run.

Every module logs through `logging.getLogger(__name__)`, so a record's logger names its package
(`server.engines.native`, `trainer.train`, `registry.store` ...). Nothing below the CLI configures logging:
a library user (or a test) who imports `server` gets the standard library's defaults and decides.
"""

from __future__ import annotations

import json
import logging
import sys
import time

from registry.errors import InvalidInput

LEVELS = ("debug", "info", "warning", "error")
FORMATS = ("text", "json")
PACKAGES = ("registry", "trainer", "server", "cli", "load_tests")


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever `sys.stderr` is when a record is emitted (pytest's capture swaps it per test)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, _value):  # StreamHandler.__init__ assigns it; the property always answers sys.stderr
        pass


class JsonLines(logging.Formatter):
    """One JSON object a line: time (UTC, ISO 8601), level, logger, message, and the traceback when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        line = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False)


TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def configure(level: str = "info", fmt: str = "text") -> None:
    """Send the project's records at `level` and above to stderr as `fmt`; calling it again replaces the setup."""
    if level not in LEVELS:
        raise InvalidInput(f"--log-level {level!r}: expected one of {', '.join(LEVELS)}")
    if fmt not in FORMATS:
        raise InvalidInput(f"--log-format {fmt!r}: expected one of {', '.join(FORMATS)}")
    handler = _StderrHandler()
    handler.setFormatter(JsonLines() if fmt == "json" else logging.Formatter(TEXT_FORMAT, "%H:%M:%S"))
    for name in PACKAGES:
        logger = logging.getLogger(name)
        for old in [h for h in logger.handlers if isinstance(h, _StderrHandler)]:
            logger.removeHandler(old)
        logger.addHandler(handler)
        logger.setLevel(level.upper())
