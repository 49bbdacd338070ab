"""The HTTP-vs-gRPC benchmark (`load_tests/bench_http.py --quick`) runs end to end on the tiny model.

CI's guard that the script does not break: one `reg serve` with both fronts, interleaved rounds over both
protocols, every request answered by the adapter it named, the table and the JSON written. Speed is not judged.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import TINY_BASE

from registry import Registry

pytestmark = pytest.mark.integration  # starts `reg serve` in a child process
REPO = Path(__file__).resolve().parents[1]


def test_quick_bench_runs_and_reports_both_protocols(tmp_path, tiny_base_dir):
    home = tmp_path / "home"
    reg = Registry(home)
    reg.add_base(str(tiny_base_dir), TINY_BASE)
    reg.close()
    out, md = tmp_path / "bench.json", tmp_path / "bench.md"
    proc = subprocess.run(
        [sys.executable, "load_tests/bench_http.py", "--quick", "--home", str(home), "--base", TINY_BASE, "--quant", "none",
         "--json", str(out), "--markdown", str(md)],
        cwd=REPO, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = json.loads(out.read_text())
    adapters = [f"load-0{i}" for i in range(4)]
    assert results["adapters"] == adapters
    assert [r["order"] for r in results["rounds"]] == [["grpc", "http"], ["http", "grpc"]]  # interleaved
    for r in results["rounds"]:
        for protocol in ("grpc", "http"):
            got = r[protocol]
            assert got["requests"] == got["ok"] > 0 and got["errors"] == {}, (protocol, got["error_examples"])
            assert set(got["versions"]) <= {f"{a}:1" for a in adapters} and got["versions"]
            assert got["ok_per_s"] > 0 and got["latency_ms"]["p50"] > 0
        assert math.isfinite(r["throughput_ratio"]) and r["throughput_ratio"] > 0
    totals = results["totals"]
    assert results["server_total_requests"] >= totals["grpc"]["requests"] + totals["http"]["requests"]
    table = md.read_text()
    assert table == proc.stdout
    assert "| grpc |" in table and "| http |" in table
    assert "throughput HTTP / gRPC" in table and "added p50 latency" in table
