"""CLI verbs that reach a running server: `reg feedback`, `reg stats`, `reg generate --top-k` (a real server on port 0)."""

from __future__ import annotations

import json
import sqlite3

import pytest
from conftest import TINY_BASE, make_adapter_dir, run_reg

from registry import Registry
from server.app import create_server, shutdown
from server.options import ServerOptions


@pytest.fixture(scope="module")
def served(tmp_path_factory, tiny_base_dir):
    home = tmp_path_factory.mktemp("verbs-home")
    reg = Registry(home)
    reg.add_base(str(tiny_base_dir), TINY_BASE)
    reg.push(make_adapter_dir(tiny_base_dir, tmp_path_factory.mktemp("verbs-adapter") / "a", "lora", seed=4), "demo")
    options = ServerOptions(base=TINY_BASE, quant="none", port=0, max_batch_size=4, max_adapters=2, default_max_new_tokens=6)
    server, port, service = create_server(options, reg)
    yield {"home": home, "target": f"127.0.0.1:{port}", "service": service}
    shutdown(server, service, 0)


def _generate(capsys, served, *args: str) -> dict:
    code, out, err = run_reg(capsys, "generate", "hello world", "--raw", "--target", served["target"], "--json",
                             "--max-new-tokens", "6", *args)
    assert code == 0, err
    return json.loads(out)


def test_generate_top_k_reaches_the_server(capsys, served):
    greedy = _generate(capsys, served, "--adapter", "demo")["text"]
    hot = ("--adapter", "demo", "--temperature", "5", "--seed", "3")
    assert _generate(capsys, served, *hot, "--top-k", "1")["text"] == greedy  # top-1 sampling is greedy
    assert _generate(capsys, served, *hot)["text"] != greedy  # at temperature 5 the tiny model's draws wander
    code, _, err = run_reg(capsys, "generate", "x", "--target", served["target"], "--top-k", "-1")
    assert code == 2 and err.startswith("error: INVALID_ARGUMENT") and err.count("\n") == 1


def test_feedback_is_recorded_for_a_served_request(capsys, served):
    request_id = _generate(capsys, served, "--adapter", "demo")["request_id"]
    code, out, err = run_reg(capsys, "feedback", request_id, "--score", "1", "--label", "good", "--target", served["target"])
    assert code == 0, err
    assert f"recorded feedback for {request_id}" in out
    served["service"].rollout_worker.flush()
    conn = sqlite3.connect(served["home"] / "registry.db")
    rows = conn.execute("SELECT adapter, version, score, label FROM feedback WHERE request_id=?", (request_id,)).fetchall()
    conn.close()
    assert rows == [("demo", 1, 1.0, "good")]


@pytest.mark.parametrize("args, code, needle", [
    (["no-such-request", "--score", "1"], 3, "error: NOT_FOUND: no recent request with id 'no-such-request'"),
    (["REQ", "--score", "nan"], 2, "error: INVALID_ARGUMENT"),
    (["REQ"], 2, "error: give --score X (a number) or --label L"),
])
def test_bad_feedback_is_one_line_with_its_exit_code(capsys, served, args, code, needle):
    if args[0] == "REQ":
        args = [_generate(capsys, served)["request_id"], *args[1:]]
    got, out, err = run_reg(capsys, "feedback", *args, "--target", served["target"])
    assert got == code and err.startswith(needle) and err.count("\n") == 1 and out == ""


def test_stats_as_a_table_and_as_json(capsys, served):
    _generate(capsys, served, "--adapter", "demo")
    code, out, err = run_reg(capsys, "stats", "--target", served["target"], "--json")
    assert code == 0, err
    stats = json.loads(out)
    assert stats["base"] == TINY_BASE and stats["quantization"] == "none"
    demo = next(a for a in stats["adapters"] if a["version"] == "demo:1")
    assert int(demo["requests"]) >= 1 and int(demo["completion_tokens"]) >= 1
    assert stats["cache"]["max_adapters"] == 2 and stats["max_batch_size"] == 4
    code, out, _ = run_reg(capsys, "stats", "--target", served["target"])
    assert code == 0
    assert f"{TINY_BASE} (none)" in out and "adapter cache: " in out
    assert "VERSION" in out and "demo:1" in out and "P95 MS" in out


def test_stats_of_an_unreachable_server_is_one_line(capsys, served):
    code, out, err = run_reg(capsys, "stats", "--target", "127.0.0.1:1", "--timeout", "5")
    assert code == 9 and err.startswith("error: UNAVAILABLE") and err.count("\n") == 1 and out == ""
