"""What a user sees on stderr: progress for long work, no library noise they cannot act on (real processes)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from test_trainer import write_config

from trainer.evaluate import DEFAULT_GENERAL_TEXT, general_lines

ROOT = Path(__file__).resolve().parent.parent
NOISE = ("Loading weights", "Writing model shards", "FutureWarning", "warnings.warn", "[transformers]", "gemm_4bit_forward")


def quiet_env(home: Path) -> dict:
    env = {**os.environ, "LORADOCK_HOME": str(home), "OMP_NUM_THREADS": "1"}
    env.pop("TRANSFORMERS_VERBOSITY", None)
    return env


@pytest.mark.integration
def test_model_loading_prints_nothing_the_user_cannot_act_on(tiny_base_dir, tmp_path):
    code = "\n".join([
        "import logging",
        "from registry.modeling.loading import load_base_model",
        f"load_base_model({str(tiny_base_dir)!r}, 'nf4', for_training=True)",
        # What bitsandbytes logs at import on AVX512-BF16 CPUs (not this one): the same logger, the same call.
        "logging.getLogger('bitsandbytes.backends.cpu.ops').warning("
        "'Failed to load CPU gemm_4bit_forward from kernels-community: %s', \"No module named 'kernels'\")",
        "print('loaded')",
    ])
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, env=quiet_env(tmp_path))
    assert done.returncode == 0 and done.stdout == "loaded\n", done.stderr[-2000:]
    assert done.stderr == ""


@pytest.mark.integration
def test_reg_train_shows_evaluation_progress_and_no_library_noise(tmp_path, tiny_base_dir, home):
    path = write_config(tmp_path, tiny_base_dir, adapter="qlora", max_steps=2, evaluation={
        "max_examples": 4, "max_new_tokens": 2, "max_general_ppl_ratio": None})
    done = subprocess.run([str(Path(sys.executable).parent / "reg"), "train", str(path), "--no-push"],
                          capture_output=True, text=True, env=quiet_env(home))
    assert done.returncode == 0, done.stderr[-2000:]
    err = done.stderr.replace("\r", "\n")
    total = 24 + 4 + len(general_lines(DEFAULT_GENERAL_TEXT))  # held-out losses, generated answers, general text
    for label in ("adapter", "base"):
        assert re.search(rf"^evaluating {label}: 100%.* {total}/{total} \[", err, re.MULTILINE), err[-3000:]
    assert [n for n in NOISE if n in err] == [], err[-3000:]


def test_the_registry_and_its_modeling_and_export_rooms_import_no_torch():
    """`reg ls` answers instantly, and the error table, the CLI and the server's limits import these modules:
    torch, transformers, peft and safetensors come in only when a model or an adapter's tensors are used."""
    code = ("import sys, registry, registry.modeling.loading, registry.modeling.lora, registry.modeling.merge, "
            "registry.modeling.plain_lora, registry.modeling.errors, registry.export.exporter, registry.export.records; "
            "print(sorted(m for m in ('torch', 'transformers', 'peft', 'safetensors') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0 and done.stdout == "[]\n", done.stderr[-2000:] + done.stdout
