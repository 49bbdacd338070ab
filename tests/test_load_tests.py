"""The load generator (`python -m load_tests`) against a real server on the tiny Llama, with adapters from `prepare`,
over gRPC and over the OpenAI-compatible HTTP API of the same server."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from conftest import TINY_BASE

from load_tests.__main__ import main
from load_tests.presets import reg_command
from registry import Registry
from server.app import create_server, shutdown
from server.options import ServerOptions

pytestmark = pytest.mark.integration  # load generator runs against a real server for seconds at a time

ADAPTERS = ["load-00", "load-01", "load-02", "load-03"]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def start_server(home: Path, **overrides):
    reg = Registry(home)
    options = ServerOptions(**{"base": TINY_BASE, "quant": "none", "port": 0, "max_batch_size": 4, "max_adapters": 2,
                               "max_queue": 64, "default_max_new_tokens": 8, **overrides})
    server, port, service = create_server(options, reg)
    return server, service, f"127.0.0.1:{port}", reg


@pytest.fixture(scope="module")
def home(tmp_path_factory, tiny_base_dir) -> Path:
    """A registry on the tiny base, filled by `python -m load_tests prepare` (4 adapters and a two-version canary)."""
    path = tmp_path_factory.mktemp("load-home")
    reg = Registry(path)
    reg.add_base(str(tiny_base_dir), TINY_BASE)
    reg.close()
    assert main(["prepare", "--home", str(path), "--count", "4", "--base", TINY_BASE]) == 0
    return path


@pytest.fixture(scope="module")
def serving(home):
    """A server with 4 batch rows and a 2-adapter cache, gRPC and HTTP: (grpc target, http target)."""
    server, service, target, reg = start_server(home, http_port=0)
    yield target, f"127.0.0.1:{server.http_port}"
    shutdown(server, service, 0)
    reg.close()


@pytest.fixture(scope="module")
def served(serving):
    return serving[0]


@pytest.fixture(scope="module")
def served_http(serving):
    return serving[1]


def run(capsys, *args: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(["run", "--no-progress", *args])
    out, err = capsys.readouterr()
    return code, out, err


def load_report(out: Path) -> dict:
    return json.loads((out / "report.json").read_text())


def assert_consistent(report: dict, out: Path, adapters: list[str]) -> None:
    """Counts add up everywhere, the breakdowns cover the adapters asked for, and the plot and samples exist."""
    assert report["requests"] > 0
    assert report["requests"] == report["ok"] + sum(report["errors"].values())
    assert set(report["by_adapter"]) == set(adapters)
    assert sum(a["requests"] for a in report["by_adapter"].values()) == report["requests"]
    assert {v.split(":")[0] for v in report["by_version"]} <= set(adapters)
    assert sum(v["ok"] for v in report["by_version"].values()) == report["ok"]
    for group in report["by_adapter"].values():
        assert group["requests"] == group["ok"] + sum(group["errors"].values())
    assert (out / "latency.png").read_bytes()[:8] == PNG_MAGIC
    with (out / "samples.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == sum(p["requests"] for p in report["phases"])
    # The server counted exactly the requests we sent (rejections included): none vanished on the way.
    if report["protocol"] == "grpc":  # (the HTTP API has no ServerStats)
        assert report["server"]["delta"]["total_requests"] == len(rows)
    assert report["checks"]["server_alive_after"]


def test_prepare_made_real_adapters_and_is_idempotent(home, capsys):
    reg = Registry(home)
    try:
        names = {a.name: a.versions for a in reg.list_adapters()}
        assert names == {**{a: 1 for a in ADAPTERS}, "canary": 2}
        digests = {reg.resolve(f"{a}:1").manifest_digest for a in ADAPTERS}
        assert len(digests) == len(ADAPTERS)  # different seeds, different weights
    finally:
        reg.close()
    capsys.readouterr()
    assert main(["prepare", "--home", str(home), "--count", "4", "--base", TINY_BASE]) == 0
    assert capsys.readouterr().out.split() == [f"{a}:1" for a in ADAPTERS] + ["canary:1", "canary:2"]
    reg = Registry(home)
    assert {a.name: a.versions for a in reg.list_adapters()}["canary"] == 2
    reg.close()


def test_closed_loop_counts_add_up(served, tmp_path, capsys):
    adapters = ADAPTERS[:3]
    code, out, err = run(capsys, "--target", served, "--adapters", ",".join(adapters), "--concurrency", "4",
                         "--duration", "1.5", "--max-new-tokens", "4", "--keys", "50", "--out", str(tmp_path))
    assert code == 0, err
    report = load_report(tmp_path)
    assert_consistent(report, tmp_path, adapters)
    assert report["errors"] == {} and report["ok"] == report["requests"]
    assert report["phases"][0]["mode"] == "closed" and report["phases"][0]["concurrency"] == 4
    assert report["ttft_source"].startswith("server")
    assert report["output_tokens"] == sum(v["output_tokens"] for v in report["by_version"].values()) > 0
    assert report["server"]["before"]["cache"]["max_adapters"] == 2
    assert "latency ms" in out and "  load-00:1 " in out


def test_open_loop_poisson_arrivals(served, tmp_path, capsys):
    out_json = tmp_path / "open.json"
    code, _, err = run(capsys, "--target", served, "--adapters", "load-00=3,load-01", "--rate", "20", "--duration", "1.5",
                       "--max-new-tokens", "4", "--out", str(out_json))
    assert code == 0, err
    report = json.loads(out_json.read_text())
    assert report["phases"][0]["mode"] == "open" and report["phases"][0]["rate"] == 20
    assert report["requests"] == report["ok"] + sum(report["errors"].values()) > 0
    assert set(report["by_adapter"]) == {"load-00", "load-01"}
    assert (tmp_path / "open-latency.png").read_bytes()[:8] == PNG_MAGIC
    assert (tmp_path / "open-samples.csv").exists()


def test_streaming_measures_time_to_first_token_client_side(served, tmp_path, capsys):
    code, _, err = run(capsys, "--target", served, "--adapters", "load-02", "--concurrency", "2", "--duration", "1",
                       "--max-new-tokens", "6", "--stream", "--out", str(tmp_path))
    assert code == 0, err
    report = load_report(tmp_path)
    assert_consistent(report, tmp_path, ["load-02"])
    assert report["ttft_source"].startswith("client") and report["ok"] == report["requests"]
    with (tmp_path / "samples.csv").open() as f:
        timed = [r for r in csv.DictReader(f) if r["ttft_ms"]]
    assert timed and all(0 < float(r["ttft_ms"]) <= float(r["latency_ms"]) for r in timed)


def test_many_adapters_preset_evicts_and_loads_cold(served, tmp_path, capsys):
    code, _, err = run(capsys, "--target", served, "--preset", "many-adapters", "--concurrency", "2", "--duration", "1.5",
                       "--max-new-tokens", "2", "--out", str(tmp_path))
    assert code == 0, err
    report = load_report(tmp_path)
    assert report["notes"]["cache_size"] == 2 and report["options"]["mix"] == "round-robin"
    assert_consistent(report, tmp_path, report["adapters_requested"])
    assert len(report["adapters_requested"]) == 4  # twice the cache would be 4; the server lists 5 (canary too)
    delta = report["server"]["delta"]
    assert delta["cache_evictions"] > 0 and delta["cache_misses"] > 0


@pytest.mark.parametrize("protocol, rejected", [("grpc", "RESOURCE_EXHAUSTED"), ("http", "HTTP_429")])
def test_overload_rejects_the_excess_cleanly_and_completes_every_admitted_request(home, tmp_path, capsys, protocol, rejected):
    """One batch row and one queue place: 4x the measured capacity must get RESOURCE_EXHAUSTED (429) and nothing else."""
    server, service, target, reg = start_server(home, max_batch_size=1, max_queue=1, max_adapters=8, http_port=0)
    if protocol == "http":
        target = f"127.0.0.1:{server.http_port}"
    try:
        code, out, err = run(capsys, "--target", target, "--protocol", protocol, "--preset", "overload", "--adapters",
                             "load-00,load-01", "--calibrate", "1", "--duration", "2", "--max-new-tokens", "16",
                             "--concurrency", "1",  # calibration clients over HTTP, which has no ServerStats.max_batch_size
                             # fewer in flight than the server's handler threads (batch + queue + 16): beyond them gRPC
                             # itself refuses a call, before the service sees (and counts) it, as a starved CPU makes
                             # happen; the server's refusals (QueueFull) are what this test is about
                             "--max-in-flight", "12",
                             "--out", str(tmp_path))
    finally:
        shutdown(server, service, 0)
        reg.close()
    assert code == 0, err
    report = load_report(tmp_path)
    assert [p["name"] for p in report["phases"]] == ["calibrate", "overload"]
    assert report["phases"][0]["errors"] == {}
    assert_consistent(report, tmp_path, ["load-00", "load-01"])
    assert set(report["errors"]) == {rejected} and report["errors"][rejected] > 0
    checks = report["checks"]
    assert checks["lost"] == 0 and checks["admitted_completed"] == checks["admitted"] > 0
    overload = report["notes"]["overload"]
    assert overload["rate_rps"] == pytest.approx(4 * overload["capacity_rps"], rel=1e-3)
    assert f"rejected ({'HTTP 429' if protocol == 'http' else rejected})" in out


@pytest.mark.skipif(reg_command(["rollout", "--help"]).returncode != 0,
                    reason="`reg rollout` (issue 5) is not in this checkout yet")
def test_canary_raises_a_sticky_split_live(home, served, tmp_path, capsys):
    code, _, err = run(capsys, "--target", served, "--preset", "canary", "--home", str(home), "--concurrency", "4",
                       "--duration", "3", "--canary-steps", "5,50", "--keys", "200", "--max-new-tokens", "2",
                       "--out", str(tmp_path))
    assert code == 0, err
    report = load_report(tmp_path)
    assert set(report["by_version"]) <= {"canary:1", "canary:2"} and report["ok"] == report["requests"]
    assert [s["new_percent"] for s in report["canary"]["steps"]] == [5, 50]
    assert report["canary"]["keys_moved_back"] == 0


@pytest.mark.parametrize("args, code, needle", [
    (["--preset", "nope"], 2, "--preset 'nope'"),
    (["--adapters", "load-00", "--concurrency", "0"], 2, "--concurrency 0"),
    (["--adapters", "load-00", "--duration", "-1"], 2, "--duration -1"),
    (["--adapters", "load-00", "--rate", "0"], 2, "--rate 0"),
    (["--adapters", "load-00", "--target", "no-port"], 2, "--target 'no-port'"),
    (["--adapters", "Bad Name"], 2, "'Bad Name'"),
    (["--adapters", "load-00=-2"], 2, "'load-00=-2'"),
    (["--adapters", "nope"], 3, "adapter 'nope' is not served"),
    (["--preset", "many-adapters", "--adapters", "load-00,load-01"], 2, "more adapters than the cache holds (2)"),
    (["--preset", "steady"], 3, "mixes 8 adapters"),
    ([], 2, "give --adapters"),
])
def test_bad_input_names_the_value_and_exits_non_zero(served, tmp_path, capsys, args, code, needle):
    got, _, err = run(capsys, "--target", served, "--duration", "1", "--out", str(tmp_path), *args)
    assert got == code and needle in err, err
    assert not (tmp_path / "report.json").exists()


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_an_unreachable_target_is_named(tmp_path, capsys, protocol):
    got, _, err = run(capsys, "--target", "127.0.0.1:9", "--protocol", protocol, "--adapters", "load-00",
                      "--out", str(tmp_path))
    assert got == 9 and "'127.0.0.1:9'" in err and f"cannot reach a loradock server there over {protocol}" in err


# --- the same load over the OpenAI-compatible HTTP API -------------------------------------------


def test_closed_loop_over_http_is_served_by_the_adapters_named(served, served_http, tmp_path, capsys):
    adapters = ADAPTERS[:3]
    code, out, err = run(capsys, "--target", f"http://{served_http}/v1", "--protocol", "http", "--adapters",
                         ",".join(adapters), "--concurrency", "4", "--duration", "1.5", "--max-new-tokens", "4",
                         "--keys", "50", "--out", str(tmp_path))
    assert code == 0, err
    report = load_report(tmp_path)
    assert report["protocol"] == "http" and report["errors"] == {} and report["ok"] == report["requests"] > 0
    assert set(report["by_adapter"]) == set(adapters)
    assert set(report["by_version"]) == {f"{a}:1" for a in adapters}  # from X-Loradock-Version
    assert sum(v["ok"] for v in report["by_version"].values()) == report["ok"]
    assert report["output_tokens"] > 0 and report["ttft_ms"]["p50"] > 0  # usage and loradock.timing parsed
    assert 0 < report["overhead_ms"]["p50"] < report["latency_ms"]["p50"]
    assert report["checks"]["server_alive_after"] and report["server"]["delta"] is None  # no ServerStats over HTTP
    assert "over http" in out and "GET /health" in out


def test_streaming_over_http_reads_the_events_to_done(served_http, tmp_path, capsys):
    code, _, err = run(capsys, "--target", served_http, "--protocol", "http", "--adapters", "load-02",
                       "--concurrency", "2", "--duration", "1", "--max-new-tokens", "6", "--stream", "--out", str(tmp_path))
    assert code == 0, err
    report = load_report(tmp_path)
    assert report["ok"] == report["requests"] > 0 and set(report["by_version"]) == {"load-02:1"}
    assert report["ttft_source"].startswith("client") and report["output_tokens"] > 0  # include_usage
    with (tmp_path / "samples.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert all(r["finish_reason"] and 0 < float(r["ttft_ms"]) <= float(r["latency_ms"]) for r in rows)


@pytest.mark.parametrize("args, code, needle", [
    (["--protocol", "smtp"], 2, "--protocol 'smtp'"),
    (["--protocol", "http", "--target", "ftp://x:1"], 2, "--target 'ftp://x:1'"),
    (["--protocol", "http", "--adapters", "nope"], 3, "adapter 'nope' is not served"),
])
def test_bad_protocol_input_is_named(served_http, tmp_path, capsys, args, code, needle):
    got, _, err = run(capsys, "--target", served_http, "--adapters", "load-00", "--duration", "1",
                      "--out", str(tmp_path), *args)
    assert got == code and needle in err, err
