"""The side-by-side benchmark (`python -m load_tests bench --quick`) runs end to end on tiny models.

CI's guard that the benchmark script does not break: every expected cell is there with positive numbers and
our multi-LoRA batch computes the same logits as PEFT's. Speed is not judged here.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration  # runs the benchmark script in child processes
REPO = Path(__file__).resolve().parents[1]
QUICK_CELLS = {(1, 1), (4, 1), (4, 4)}  # B in {1, 4} x K in {1, 4}, without K > B


def run_bench(command: list[str], tmp_path: Path) -> tuple[dict, str]:
    out = tmp_path / "bench.json"
    md = tmp_path / "bench.md"
    proc = subprocess.run(
        [sys.executable, *command, "--quick", "--json", str(out), "--markdown", str(md)],
        cwd=REPO, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads(out.read_text()), md.read_text()


def positive_numbers(tree, where: str = "") -> None:
    """Every number in `tree` (timings, rates, ratios) is finite and > 0."""
    if isinstance(tree, dict):
        for key, value in tree.items():
            positive_numbers(value, f"{where}.{key}")
    elif isinstance(tree, list):
        for i, value in enumerate(tree):
            positive_numbers(value, f"{where}[{i}]")
    elif isinstance(tree, (int, float)) and not isinstance(tree, bool):
        assert math.isfinite(tree) and tree > 0, f"{where} = {tree}"


def check_results(payload: dict, quants: list[str]) -> None:
    assert [r["quant"] for r in payload["results"]] == quants
    assert payload["skipped_cells"] == [{"batch": 1, "adapters": 4}]
    positive_numbers(payload["machine"]["peaks"], "peaks")
    for result in payload["results"]:
        assert {(c["batch"], c["adapters"]) for c in result["cells"]} == QUICK_CELLS
        assert result["check_slot0_vs_bare"] < 1e-6  # slot 0 is the bare base exactly
        for cell in result["cells"]:
            where = f"{result['quant']} B={cell['batch']} K={cell['adapters']}"
            assert set(cell["variants"]) == {"bare", "ours", "peft_mixed", "peft_one_by_one"}, where
            for part in ("variants", "ours_x_one_by_one", "ours_x_peft_mixed", "roofline"):
                positive_numbers(cell[part], f"{where} {part}")
            check = cell["check"]
            assert check["max_abs_logit_diff_ours_vs_peft_prefill"] < 1e-3, (where, check)
            assert check["max_abs_logit_diff_ours_vs_peft_decode"] < 1e-3, (where, check)
            assert check["max_abs_logit_diff_ours_vs_bare_prefill"] > 1e-3, (where, check)  # the adapters do something
        hot = dict(result["hot_swap"])
        assert math.isfinite(hot.pop("ours_switch_overhead_ms"))  # a difference of two timings: may be <= 0 on tiny shapes
        positive_numbers(hot, f"{result['quant']} hot_swap")
        positive_numbers(result["cold_load"], f"{result['quant']} cold_load")
        positive_numbers(result["engine"], f"{result['quant']} engine")


def test_bench_quick_on_a_base_dir(tiny_base_dir, home, tmp_path):
    payload, md = run_bench(["-m", "load_tests", "bench", "--base", str(tiny_base_dir), "--home", str(home)], tmp_path)
    check_results(payload, ["none"])
    assert "| quant | B | K | phase | bare |" in md and "python -m load_tests bench" in md


@pytest.mark.parametrize("quant", ["nf4"])
def test_bench_quick_on_a_random_llama_as_a_script(quant, home, tmp_path):
    """`--random-llama` (here the tiny shape, NF4 on CPU) through `python load_tests/bench.py`."""
    payload, _ = run_bench(["load_tests/bench.py", "--random-llama", "tiny", "--quant", quant, "--home", str(home)], tmp_path)
    check_results(payload, [quant])
    assert payload["machine"]["base"] == "random-llama-tiny"
