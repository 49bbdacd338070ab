"""Helpers for the remote registry and auth tests: servers on real ports, certificates, the `reg` CLI in a process."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from registry import Registry
from server.app import create_registry_server
from server.options import ServerOptions

ROOT = Path(__file__).resolve().parents[1]
REG = [sys.executable, "-c", "from cli.main import run; run()"]


def start_registry(home: Path, on_chunk=None, on_sent=None, **options):
    """A Registry-only server on a free localhost port; returns (server, url, servicer)."""
    opts = ServerOptions(port=0, **options)
    server, port, servicer = create_registry_server(opts, home, on_chunk=on_chunk, on_sent=on_sent)
    scheme = "grpcs" if opts.tls_cert else "grpc"
    host = "localhost" if opts.tls_cert else "127.0.0.1"
    return server, f"{scheme}://{host}:{port}", servicer


def reg_process(*args: str, env: dict | None = None, **kwargs) -> subprocess.Popen:
    """`reg ARGS...` as a real process (the client whose transfer a test kills)."""
    import os

    full_env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    return subprocess.Popen([*REG, *args], cwd=ROOT, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, **kwargs)


def big_adapter(small: Path, out: Path, rank: int) -> Path:
    """`small` (a real PEFT LoRA adapter) re-made with rank `rank`: same modules, random weights, a large file."""
    import shutil

    import torch
    from safetensors import safe_open
    from safetensors.torch import save_file

    shutil.copytree(small, out)
    tensors = {}
    generator = torch.Generator().manual_seed(0)
    with safe_open(str(small / "adapter_model.safetensors"), "pt") as fh:
        for key in fh.keys():
            shape = list(fh.get_tensor(key).shape)
            shape[0 if "lora_A" in key else 1] = rank
            tensors[key] = torch.randn(*shape, generator=generator) * 0.01
    save_file(tensors, str(out / "adapter_model.safetensors"), metadata={"format": "pt"})
    config = json.loads((out / "adapter_config.json").read_text())
    config["r"] = rank
    (out / "adapter_config.json").write_text(json.dumps(config))
    return out


def self_signed_cert(directory: Path) -> tuple[Path, Path]:
    """A self-signed certificate for localhost / 127.0.0.1, made by the `openssl` CLI; returns (cert.pem, key.pem)."""
    import shutil

    import pytest

    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("no openssl on PATH to make a test certificate")
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "1",
         "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
         "-keyout", str(key_path), "-out", str(cert_path)],
        check=True, capture_output=True, timeout=60,
    )
    return cert_path, key_path


def registry_with_base(home: Path, base_dir: Path, base_name: str) -> Registry:
    reg = Registry(home)
    reg.add_base(str(base_dir), base_name)
    return reg
