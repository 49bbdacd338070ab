"""The shipped arithmetic example on the default base: the adapter must clearly beat the base."""

from __future__ import annotations

from pathlib import Path

import pytest

from registry import Registry
from trainer.config import load_config
from trainer.train import train

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parent.parent


def test_arith_qlora_beats_the_base_on_held_out_exact_match(default_base_home):
    config = load_config(ROOT / "examples" / "arith.yaml", ["evaluation.max_examples=48"])
    assert config.load_in_4bit and config.base_model == "smollm2-135m-instruct"
    result = train(config, Registry(default_base_home), progress=False)
    adapter, base = result.evaluation["adapter"], result.evaluation["base"]
    assert adapter["exact_match"] >= base["exact_match"] + 0.4, (adapter["exact_match"], base["exact_match"])
    assert adapter["loss"] < base["loss"]
    version = Registry(default_base_home).resolve(result.version_ref)
    assert version.run_id == result.run_id and version.base_name == "smollm2-135m-instruct"
