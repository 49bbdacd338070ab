"""`reg serve --engine vllm` from the command line: its settings are checked before anything starts, and the vLLM
process it starts lives and dies with it. What it serves is checked in tests/test_engines_contract.py."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import TINY_BASE, run_reg
from registry import Registry
from tiny import build_tiny_llama

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("flags,message", [
    (["--quant", "nf4"], "--engine vllm serves the base's own weights: give --quant none (not nf4)"),
    (["--quant", "none", "--vllm-python", "/no/such/python"], "--vllm-python /no/such/python: cannot import vLLM"),
    (["--quant", "none", "--vllm-dtype", "fp8"], "--vllm-dtype 'fp8': use float32, bfloat16, float16 or auto"),
    (["--engine", "tensorrt"], "--engine 'tensorrt': use native or vllm"),
])
def test_bad_vllm_settings_are_one_line_before_anything_starts(registry, capsys, monkeypatch, flags, message):
    monkeypatch.delenv("LORADOCK_VLLM_PYTHON", raising=False)
    args = ["serve", "--base", TINY_BASE, "--port", "0", "--engine", "vllm", *flags]
    code, out, err = run_reg(capsys, *args)
    errors = [line for line in err.splitlines() if line.startswith("error")]
    assert code == 2 and len(errors) == 1 and message in errors[0] and "Traceback" not in err, err


def test_no_vllm_python_names_the_option_and_the_variable(registry, capsys, monkeypatch):
    monkeypatch.delenv("LORADOCK_VLLM_PYTHON", raising=False)
    code, _, err = run_reg(capsys, "serve", "--base", TINY_BASE, "--port", "0", "--engine", "vllm", "--quant", "none")
    assert code == 2 and "--engine vllm needs --vllm-python PATH (or $LORADOCK_VLLM_PYTHON)" in err


def processes_with(marker: str) -> list[int]:
    """Pids whose environment holds `marker` (this test's vLLM and everything it started)."""
    found = []
    for environ in Path("/proc").glob("[0-9]*/environ"):
        try:
            if marker.encode() in environ.read_bytes():
                found.append(int(environ.parent.name))
        except OSError:
            continue
    return found


@pytest.mark.slow
@pytest.mark.integration
def test_a_killed_server_takes_its_vllm_with_it(tmp_path):
    from load_tests import free_ports
    from load_tests.peer import install_plugin, installed_vllm
    from server.client import LoradockClient

    python = installed_vllm()
    if python is None:
        pytest.skip("vLLM's virtualenv is not there (`make vllm` makes it): the vLLM engine is not tested")
    install_plugin(python)
    base = build_tiny_llama(tmp_path / "base", seed=0, hidden=256)
    reg = Registry(tmp_path / "home")
    reg.add_base(str(base), TINY_BASE)
    reg.close()
    [port] = free_ports(1)
    marker = f"LORADOCK_TEST_MARKER=vllm-{os.getpid()}-{time.monotonic_ns()}"
    env = {**os.environ, marker.split("=")[0]: marker.split("=")[1], "LORADOCK_VLLM_PYTHON": str(python)}
    server = subprocess.Popen(
        [sys.executable, "-c", "from cli.main import run; run()", "serve", "--home", str(tmp_path / "home"),
         "--base", TINY_BASE, "--engine", "vllm", "--quant", "none", "--port", str(port), "--lora-rank", "8"],
        cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=(tmp_path / "serve.log").open("w"))
    try:
        with LoradockClient(f"127.0.0.1:{port}", timeout=60) as client:
            deadline = time.monotonic() + 900
            while True:
                assert server.poll() is None, (tmp_path / "serve.log").read_text()[-2000:]
                try:
                    reply = client.generate("hello", max_new_tokens=3)
                    break
                except Exception:  # noqa: BLE001 - not up yet
                    assert time.monotonic() < deadline, "reg serve --engine vllm did not answer within 900 s"
                    time.sleep(1.0)
        assert reply.completion_tokens >= 1
        assert len(processes_with(marker)) > 1  # the server and its vLLM (and vLLM's engine process)
        server.send_signal(signal.SIGKILL)
        server.wait(60)
        deadline = time.monotonic() + 120
        while processes_with(marker):
            assert time.monotonic() < deadline, f"vLLM outlived its server: {processes_with(marker)}"
            time.sleep(0.5)
    finally:
        if server.poll() is None:
            server.kill()
        for pid in processes_with(marker):
            os.kill(pid, signal.SIGKILL)
