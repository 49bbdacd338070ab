"""One error table (issue 13): every LoradockError class in the code base has a CLI exit code, a gRPC status and an
HTTP status (class attributes, registry/errors.py), and every mapping reads them."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import grpc
import pytest
from test_imports import ROOT, project_modules

from cli.errors import exit_code_for, exit_code_for_status
from registry.errors import LoradockError, class_for_status, error_class_named
from server.status import status_for

# Every module imported (in a fresh interpreter: some change the process at import), then the table printed.
_DUMP_TABLE = """
import importlib, json, sys
for name in sys.argv[1:]:
    importlib.import_module(name)
from registry.errors import error_classes
print(json.dumps([[c.__module__, c.__name__, c.exit_code, c.grpc_status, c.http_status] for c in error_classes()]))
"""


@pytest.fixture(scope="module")
def table() -> list[tuple[str, str, int, str, int]]:
    done = subprocess.run([sys.executable, "-c", _DUMP_TABLE, *sorted(project_modules())], cwd=ROOT, capture_output=True,
                          text=True, timeout=600, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    return [tuple(row) for row in json.loads(done.stdout.splitlines()[-1])]


def readme_exit_codes() -> dict[int, str]:
    text = (ROOT / "README.md").read_text()
    section = text.split("### Exit codes", 1)[1].split("\n#", 1)[0]
    return {int(code): meaning for code, meaning in re.findall(r"^\| (\d+) \| (.+) \|$", section, re.M)}


def test_every_error_class_in_the_code_base_has_an_exit_code_a_grpc_status_and_an_http_status(table):
    modules = {module for module, *_ in table}
    assert {"registry.errors", "registry.modeling.errors", "server.errors", "trainer.config"} <= modules, (
        "every package was imported")
    for module, name, exit_code, grpc_status, http_status in table:
        where = f"{module}.{name}"
        assert isinstance(exit_code, int) and 1 <= exit_code <= 125, where
        assert grpc_status in grpc.StatusCode.__members__ and grpc_status != "OK", where
        assert isinstance(http_status, int) and 400 <= http_status <= 599, where
    names = [name for _, name, *_ in table]
    assert len(names) == len(set(names)), "class names are unique: a status's `loradock-error` metadata names one class"


def test_the_readme_lists_every_exit_code(table):
    documented = readme_exit_codes()
    assert {exit_code for _, _, exit_code, _, _ in table} | {0} == set(documented)


# The table as it stood when the four copies were merged into it (exit codes and gRPC statuses unchanged).
PINNED = {
    "LoradockError": (1, "INTERNAL", 500), "InvalidInput": (2, "INVALID_ARGUMENT", 400),
    "InvalidName": (2, "INVALID_ARGUMENT", 400), "InvalidRef": (2, "INVALID_ARGUMENT", 400),
    "NotFound": (3, "NOT_FOUND", 404), "AdapterNotFound": (3, "NOT_FOUND", 404), "VersionNotFound": (3, "NOT_FOUND", 404),
    "AliasNotFound": (3, "NOT_FOUND", 404), "BaseNotFound": (3, "NOT_FOUND", 404), "RolloutNotFound": (3, "NOT_FOUND", 404),
    "InvalidAdapter": (2, "FAILED_PRECONDITION", 422), "BaseMismatch": (5, "FAILED_PRECONDITION", 422),
    "IntegrityError": (6, "DATA_LOSS", 500), "DatabaseCorrupt": (14, "DATA_LOSS", 500),
    "Conflict": (4, "FAILED_PRECONDITION", 409), "BlobsMissing": (6, "FAILED_PRECONDITION", 412),
    "TooLarge": (7, "RESOURCE_EXHAUSTED", 413), "StorageFull": (12, "RESOURCE_EXHAUSTED", 507),
    "NotWritable": (13, "FAILED_PRECONDITION", 500), "Unauthenticated": (10, "UNAUTHENTICATED", 401),
    "PermissionDenied": (11, "PERMISSION_DENIED", 403), "Unavailable": (9, "UNAVAILABLE", 503),
    "DeadlineExceeded": (8, "DEADLINE_EXCEEDED", 504),
    "QueueFull": (1, "RESOURCE_EXHAUSTED", 429), "BadRequest": (2, "INVALID_ARGUMENT", 400),
    "ServerShuttingDown": (1, "UNAVAILABLE", 503), "AdapterIncompatible": (1, "FAILED_PRECONDITION", 422),
    "MergeError": (2, "INVALID_ARGUMENT", 400), "ConfigError": (2, "INVALID_ARGUMENT", 400),
    "DataError": (2, "INVALID_ARGUMENT", 400), "ModelLoadError": (1, "INTERNAL", 500),
}


def test_the_pinned_entries_and_every_mapping_that_reads_them(table):
    by_name = {name: (exit_code, grpc_status, http_status) for _, name, exit_code, grpc_status, http_status in table}
    assert {name: by_name.get(name) for name in PINNED} == PINNED
    import importlib

    for module in ("server.errors", "registry.modeling.errors", "trainer.config", "trainer.data"):
        importlib.import_module(module)  # their classes join the table

    for name, (exit_code, grpc_status, _) in PINNED.items():
        error = error_class_named(name)("x")
        assert exit_code_for(error) == exit_code and status_for(error) == grpc.StatusCode[grpc_status], name
    assert status_for(ValueError("not ours")) == grpc.StatusCode.INTERNAL


def test_a_status_without_a_class_name_maps_as_it_always_did():
    # a remote registry client raises these (registry/remote/client.py)
    assert {s: class_for_status(s).__name__ for s in ("NOT_FOUND", "INVALID_ARGUMENT", "FAILED_PRECONDITION", "DATA_LOSS",
            "RESOURCE_EXHAUSTED", "UNAUTHENTICATED", "PERMISSION_DENIED", "UNAVAILABLE", "DEADLINE_EXCEEDED", "ABORTED")} == {
        "NOT_FOUND": "NotFound", "INVALID_ARGUMENT": "InvalidInput", "FAILED_PRECONDITION": "Conflict",
        "DATA_LOSS": "IntegrityError", "RESOURCE_EXHAUSTED": "TooLarge", "UNAUTHENTICATED": "Unauthenticated",
        "PERMISSION_DENIED": "PermissionDenied", "UNAVAILABLE": "Unavailable", "DEADLINE_EXCEEDED": "Unavailable",
        "ABORTED": "LoradockError"}
    # `reg generate`, `feedback` and `stats` exit with these (README: 5 = does not fit the base, 8 = deadline)
    assert {s: exit_code_for_status(s) for s in ("INVALID_ARGUMENT", "NOT_FOUND", "FAILED_PRECONDITION", "RESOURCE_EXHAUSTED",
            "DEADLINE_EXCEEDED", "UNAVAILABLE", "UNAUTHENTICATED", "PERMISSION_DENIED", "DATA_LOSS", "INTERNAL")} == {
        "INVALID_ARGUMENT": 2, "NOT_FOUND": 3, "FAILED_PRECONDITION": 5, "RESOURCE_EXHAUSTED": 7, "DEADLINE_EXCEEDED": 8,
        "UNAVAILABLE": 9, "UNAUTHENTICATED": 10, "PERMISSION_DENIED": 11, "DATA_LOSS": 1, "INTERNAL": 1}
    assert issubclass(class_for_status("INTERNAL"), LoradockError)
