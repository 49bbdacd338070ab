"""Shared fixtures: a real registry home per test, a tiny seeded Llama base, real PEFT adapters."""

from __future__ import annotations

import logging
import os
import sys
import threading
from contextlib import contextmanager
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from tiny import build_tiny_llama  # noqa: E402

from registry import Registry  # noqa: E402

TINY_BASE = "tiny-llama"

# pytest-timeout (900 s, pyproject.toml) is a backstop for a hung test, never a measure of speed. A `slow`
# test trains or serves the default base for a few minutes on an idle machine; on a machine whose cores are
# all busy it took up to four times as long, so its backstop is an hour, within CI's 90 minutes.
SLOW_TEST_TIMEOUT_S = 3600


def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.get_closest_marker("slow") and not item.get_closest_marker("timeout"):
            item.add_marker(pytest.mark.timeout(SLOW_TEST_TIMEOUT_S))


@pytest.fixture(scope="session")
def tiny_base_dir(tmp_path_factory) -> Path:
    """A tiny Llama (2 layers, hidden 64) written once per test session."""
    return build_tiny_llama(tmp_path_factory.mktemp("bases") / "tiny-llama", seed=0)


@pytest.fixture(scope="session")
def other_base_dir(tmp_path_factory) -> Path:
    """A second tiny Llama with different shapes (hidden 128), for mismatch tests."""
    return build_tiny_llama(tmp_path_factory.mktemp("bases") / "tiny-llama-wide", seed=1, hidden=128)


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    path = tmp_path / "home"
    monkeypatch.setenv("LORADOCK_HOME", str(path))
    return path


@pytest.fixture
def registry(home, tiny_base_dir) -> Registry:
    """A fresh registry with the tiny base registered as `tiny-llama`."""
    reg = Registry(home)
    reg.add_base(str(tiny_base_dir), TINY_BASE)
    yield reg
    reg.close()


def _peft_config(kind: str):
    from peft import IA3Config, LoraConfig, PrefixTuningConfig

    if kind == "lora":
        return LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM", init_lora_weights=False)
    if kind == "lora-all":
        return LoraConfig(r=8, lora_alpha=16, target_modules="all-linear", task_type="CAUSAL_LM", init_lora_weights=False)
    if kind == "dora":
        return LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], use_dora=True, task_type="CAUSAL_LM")
    if kind == "ia3":
        return IA3Config(task_type="CAUSAL_LM")
    if kind == "prefix":
        return PrefixTuningConfig(num_virtual_tokens=4, task_type="CAUSAL_LM")
    raise ValueError(kind)


def make_adapter_dir(base_dir: Path, out: Path, kind: str = "lora", seed: int = 0) -> Path:
    """Save a real PEFT adapter of `kind` for the model at `base_dir`; different seeds give different weights."""
    import torch
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base_dir)
    torch.manual_seed(seed)
    peft_model = get_peft_model(model, _peft_config(kind))
    peft_model.save_pretrained(out)
    return out


@pytest.fixture
def make_adapter(tmp_path, tiny_base_dir):
    """Factory: make_adapter(kind="lora", seed=0, base_dir=None) -> a PEFT adapter directory."""
    counter = iter(range(10_000))

    def make(kind: str = "lora", seed: int = 0, base_dir: Path | None = None) -> Path:
        return make_adapter_dir(base_dir or tiny_base_dir, tmp_path / f"adapter-{kind}-{seed}-{next(counter)}", kind, seed)

    return make


def snapshot(home: Path) -> dict:
    """Everything a bad command must leave unchanged: every table's rows and every blob."""
    import sqlite3

    state: dict = {}
    db = home / "registry.db"
    if db.exists():
        conn = sqlite3.connect(db)
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table' ORDER BY name")]
        for t in tables:
            state[t] = conn.execute(f"SELECT * FROM {t} ORDER BY 1").fetchall()
        conn.close()
    blobs = home / "blobs" / "sha256"
    state["blobs"] = sorted(p.name for p in blobs.rglob("*") if p.is_file()) if blobs.exists() else []
    tmp = home / "blobs" / "tmp"
    state["tmp"] = sorted(p.name for p in tmp.iterdir()) if tmp.exists() else []
    return state


@pytest.fixture(scope="session")
def default_base_home(tmp_path_factory) -> Path:
    """A registry home with the default base (SmolLM2-135M-Instruct) prepared; slow (~30 s, once)."""
    home = tmp_path_factory.mktemp("default-home")
    reg = Registry(home)
    reg.fetch_default_base()
    reg.close()
    return home


@contextmanager
def log_lines(name: str):
    """The messages logger `name` (and its children) emits inside the block, as a growing list of strings."""
    lines: list[str] = []
    handler = logging.Handler(logging.DEBUG)
    handler.emit = lambda record: lines.append(record.getMessage())
    logger = logging.getLogger(name)
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        yield lines
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def wait_until(condition, what: str, rounds: int = 1200) -> None:
    """Poll `condition` every 0.1 s, `rounds` times at most: a bound against hanging, never a timing assertion
    (servers write outcomes and poll rollouts twice a second)."""
    for _ in range(rounds):
        if condition():
            return
        threading.Event().wait(0.1)
    raise AssertionError(f"gave up waiting: {what}")


def run_reg(capsys, *args: str) -> tuple[int, str, str]:
    """`reg ARGS` in this process: (exit code, stdout, stderr), with output captured before it dropped."""
    from cli.main import main

    capsys.readouterr()
    code = main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err
