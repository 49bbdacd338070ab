"""The resolver itself (see the package docstring); vLLM is imported only when vLLM registers it."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import zlib
from pathlib import Path

logger = logging.getLogger("vllm.loradock")  # under vLLM's logger, so its handlers print these lines

RESOLVER_NAME = "loradock"
REG_TIMEOUT_S = 600.0  # one `reg show` or `reg pull` (a pull of a large adapter over a slow link)


class LoradockResolver:
    """Resolves a request's `model` through loradock's `reg`; `resolve_lora` returns a LoRARequest or None."""

    def __init__(self, reg: str | None = None, cache_dir: str | Path | None = None, base: str | None = None):
        self.reg = reg or os.environ.get("LORADOCK_REG", "reg")
        self.cache_dir = Path(cache_dir or os.environ.get("LORADOCK_VLLM_CACHE") or
                              Path.home() / ".cache" / "loradock-vllm")
        self.base = base if base is not None else os.environ.get("LORADOCK_BASE") or None
        self._locks: dict[str, asyncio.Lock] = {}

    async def resolve_lora(self, base_model_name: str, lora_name: str):
        from vllm.lora.request import LoRARequest

        found = await self.fetch(lora_name)
        if found is None:
            return None
        exact, path = found
        # vLLM replaces the id with its own counter; a stable one keeps logs readable meanwhile
        return LoRARequest(lora_name=lora_name, lora_int_id=zlib.crc32(exact.encode()) or 1, lora_path=str(path))

    async def fetch(self, ref: str) -> tuple[str, Path] | None:
        """(NAME:N, its directory in the cache) for `ref`, pulled if not there yet; None when it is not ours to serve."""
        # after `--`, a `model` such as "--help" is a ref (refused by `reg` as a bad name), never an option
        shown = await self._reg("show", "--json", "--", ref)
        if shown is None:
            return None
        version = json.loads(shown)["version"]
        exact = f"{version['adapter']}:{version['number']}"
        if self.base and version["base_name"] != self.base:
            logger.warning("%s is %s, trained on base %s; this server serves %s: not loaded", ref, exact,
                           version["base_name"], self.base)
            return None
        path = self.cache_dir / version["adapter"] / str(version["number"])
        async with self._locks.setdefault(exact, asyncio.Lock()):
            if not (path / "adapter_config.json").exists():  # `reg pull` writes nothing there until all is verified
                path.parent.mkdir(parents=True, exist_ok=True)
                if await self._reg("pull", "--out", str(path), "--", exact) is None:
                    return None
        logger.info("resolved %s to %s at %s", ref, exact, path)
        return exact, path

    async def _reg(self, *args: str) -> str | None:
        """`reg ARGS` -> its stdout, or None (logged with its one-line error) when it fails."""
        try:
            proc = await asyncio.create_subprocess_exec(self.reg, *args, stdout=asyncio.subprocess.PIPE,
                                                        stderr=asyncio.subprocess.PIPE)
        except OSError as exc:
            logger.error("cannot run loradock's reg (%s): %s; set LORADOCK_REG", self.reg, exc)
            return None
        try:
            out, err = await asyncio.wait_for(proc.communicate(), REG_TIMEOUT_S)
        except asyncio.TimeoutError:
            proc.kill()
            logger.error("reg %s: no answer within %g s", " ".join(args), REG_TIMEOUT_S)
            return None
        if proc.returncode != 0:
            lines = err.decode(errors="replace").strip().splitlines()
            logger.warning("reg %s: %s", " ".join(args), lines[-1] if lines else f"exit {proc.returncode}")
            return None
        return out.decode()


def register() -> None:
    """vLLM's `vllm.general_plugins` entry point: runs in every vLLM process; registering twice is harmless."""
    from vllm.lora.resolver import LoRAResolver, LoRAResolverRegistry

    if RESOLVER_NAME in LoRAResolverRegistry.get_supported_resolvers():
        return
    resolver = type("LoradockLoRAResolver", (LoradockResolver, LoRAResolver), {})()
    LoRAResolverRegistry.register_resolver(RESOLVER_NAME, resolver)
