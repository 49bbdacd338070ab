"""Logging: every package logs through `logging.getLogger(__name__)`; `reg --log-level/--log-format` sets where it goes."""

from __future__ import annotations

import ast
import json
import logging
from pathlib import Path

import pytest
from conftest import run_reg

from cli import logs

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def configured():
    yield logs.configure
    logs.configure("info", "text")  # what `reg` sets up by default, for the tests after this one


def test_json_lines_carry_time_level_logger_message_and_the_traceback(configured, capsys):
    configured("debug", "json")
    logging.getLogger("server.app").debug("loading base %s", "tiny")
    try:
        raise ValueError("boom")
    except ValueError:
        logging.getLogger("trainer.train").exception("step failed")
    first, second = (json.loads(line) for line in capsys.readouterr().err.splitlines())
    assert {k: first[k] for k in ("level", "logger", "message")} == {"level": "debug", "logger": "server.app",
                                                                     "message": "loading base tiny"}
    assert first["time"].endswith("Z") and "T" in first["time"]
    assert second["level"] == "error" and "ValueError: boom" in second["exception"]


def test_the_level_hides_what_is_less_severe_in_text_lines(configured, capsys):
    configured("warning", "text")
    logging.getLogger("registry.store").info("not shown")
    logging.getLogger("server.auth").warning("denied %s", "Generate")
    err = capsys.readouterr().err
    assert "not shown" not in err and "WARNING server.auth: denied Generate" in err


def test_a_library_logger_is_not_turned_up(configured, capsys):
    configured("debug", "text")
    logging.getLogger("urllib3.connectionpool").debug("library chatter")
    assert "library chatter" not in capsys.readouterr().err


@pytest.mark.parametrize("args, message", [
    (["--log-level", "loud"], "--log-level 'loud': expected one of debug, info, warning, error"),
    (["--log-format", "xml"], "--log-format 'xml': expected one of text, json"),
])
def test_a_bad_log_option_is_one_line(capsys, home, args, message):
    code, out, err = run_reg(capsys, *args, "ls", "--home", str(home))
    assert code == 2 and err.strip() == f"error: {message}" and out == ""


def test_no_module_prints_its_progress_or_passes_a_log_callback():
    """Status lines go through loggers: no `log=print` callbacks, no bare print() outside the CLI's own output."""
    offenders = []
    for package in ("registry", "trainer", "server"):
        for path in sorted((ROOT / package).rglob("*.py")):
            if "rpc" in path.parts:
                continue
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "print":
                    offenders.append(f"{path.relative_to(ROOT)}:{node.lineno} print()")
                if isinstance(node, ast.arg) and node.arg == "log":
                    offenders.append(f"{path.relative_to(ROOT)}:{node.lineno} a `log` parameter")
    assert offenders == []
