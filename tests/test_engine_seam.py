"""The seam between the inference service and its engine, and the service without a transport (issue 13).

The service must reach an engine only through `server.engines.Engine`, so a second engine (vLLM) is added
without touching it; and it must take and return plain dataclasses, so the HTTP API can call it as the gRPC
servicer does. Real parts: the tiny Llama, a real registry, the native engine.
"""

from __future__ import annotations

import ast
import inspect
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import TINY_BASE, make_adapter_dir
from forward_gate import ForwardGate, wait_until

from registry import Registry
from registry.errors import DeadlineExceeded, NotFound
from server.engines import AdapterSlots, Engine, EngineRequest, EngineResult, EngineStats, Handle, Sampling
from server.errors import BadRequest
from server.options import ServerOptions
from server.service_types import GenerateRequest, GenerateResult, SamplingParams, ServerStats, WeightedAdapter

ROOT = Path(__file__).resolve().parent.parent
# What the transport-free layer must never load: an engine's own code, torch, or a wire format.
ENGINE_OR_WIRE = ("server.engines.native", "server.engines.sampler", "server.lora", "server.rpc",
                  "server.status", "server.servicer", "torch", "transformers", "grpc", "google.protobuf")


def protocol_members(protocol: type) -> set[str]:
    """The names a class must have to implement `protocol`: its annotations, methods and properties."""
    names = set(getattr(protocol, "__annotations__", {}))
    names |= {n for n, v in vars(protocol).items() if not n.startswith("_") and (callable(v) or isinstance(v, property))}
    return names


def assert_implements(cls: type, protocol: type) -> None:
    """Every member of `protocol` is on `cls`, each method taking the same parameters (by name, in order)."""
    for name in sorted(protocol_members(protocol)):
        wanted = getattr(protocol, name, None)
        if callable(wanted) and not isinstance(wanted, property):
            got = getattr(cls, name, None)
            assert callable(got), f"{cls.__name__}.{name} is missing (wanted by {protocol.__name__})"
            assert list(inspect.signature(got).parameters) == list(inspect.signature(wanted).parameters), name


@pytest.fixture(scope="module")
def service(tmp_path_factory, tiny_base_dir):
    """The inference service on the tiny base, built as `reg serve` builds it, with no gRPC server around it."""
    from server.app import load_service

    home, work = tmp_path_factory.mktemp("seam-home"), tmp_path_factory.mktemp("seam-adapters")
    reg = Registry(home)
    reg.add_base(str(tiny_base_dir), TINY_BASE)
    reg.push(make_adapter_dir(tiny_base_dir, work / "a0", "lora", seed=10), "a0")
    reg.push(make_adapter_dir(tiny_base_dir, work / "a1", "lora-all", seed=11), "a1")
    options = ServerOptions(base=TINY_BASE, quant="none", port=0, max_batch_size=4, max_adapters=4,
                            default_max_new_tokens=8)
    service = load_service(options, reg)
    yield service
    service.stop(0)


def test_the_native_engine_implements_the_engine_protocol(service):
    from server.engines.native import NativeEngine, NativeHandle
    from server.lora import MultiLoraModel

    engine = service.engine
    assert isinstance(engine, NativeEngine) and isinstance(engine, Engine)
    assert isinstance(engine.slots, MultiLoraModel) and isinstance(engine.slots, AdapterSlots)
    assert_implements(NativeEngine, Engine)
    assert_implements(NativeHandle, Handle)
    assert_implements(MultiLoraModel, AdapterSlots)
    ids = engine.tokenizer("hello world")["input_ids"]
    handle = engine.submit(EngineRequest("seam-direct", ids, Sampling(max_new_tokens=3)))
    assert isinstance(handle, Handle)
    result = handle.result(timeout=60)
    assert isinstance(result, EngineResult) and result.finish_reason in ("stop", "length") and result.error is None
    assert "".join(handle.deltas(timeout=5)) == result.text and 1 <= result.completion_tokens <= 3  # all of it streamed
    stats = engine.stats()
    assert isinstance(stats, EngineStats) and stats.slot_memory_bytes == engine.slots.nbytes > 0


def _imported_modules(path: Path) -> set[str]:
    """Every module `path` imports, function-local imports included, relative ones made absolute."""
    package = ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            out |= {base} | {f"{base}.{a.name}" for a in node.names}
    return out


@pytest.mark.parametrize("module", ["server/service.py", "server/service_types.py", "server/engines/__init__.py"])
def test_the_service_and_the_seam_import_no_engine_and_no_wire_type(module):
    imported = _imported_modules(ROOT / module)
    bad = sorted(m for m in imported if any(m == f or m.startswith(f + ".") for f in ENGINE_OR_WIRE))
    assert not bad, f"{module} imports {bad}"


def test_importing_the_service_loads_no_engine_torch_or_grpc():
    code = ("import sys; import server.service; "
            f"print(sorted(m for m in sys.modules if any(m == f or m.startswith(f + '.') for f in {ENGINE_OR_WIRE!r})))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]", out


def test_a_plain_request_is_served_without_a_transport(service):
    request = GenerateRequest(prompt="hello world", adapter="a0", params=SamplingParams(max_new_tokens=6))
    result = service.submit(request).result()
    assert isinstance(result, GenerateResult)
    assert result.adapter_version == "a0:1" and result.variant == "" and result.finish_reason in ("stop", "length")
    assert 1 <= result.usage.completion_tokens <= 6 and result.timing.total_ms >= result.timing.ttft_ms > 0
    streamed = service.submit(request)
    assert "".join(streamed.deltas()) == result.text and streamed.result().text == result.text
    merged = service.submit(GenerateRequest(prompt="hello world", params=SamplingParams(max_new_tokens=4),
                                            merge=[WeightedAdapter("a0", 0.7), WeightedAdapter("a1", 0.3)])).result()
    assert merged.adapter_version == "merge(a0:1*0.7+a1:1*0.3,cat)"
    stats = service.server_stats()
    assert isinstance(stats, ServerStats) and stats.base == TINY_BASE and stats.batch_size == 0
    assert {a.version: a.requests for a in stats.adapters}["a0:1"] >= 2
    assert {a.name: a.version for a in service.list_adapters()} == {"a0": "a0:1", "a1": "a1:1"}


@pytest.mark.parametrize("request_, error, message", [
    (GenerateRequest(prompt="hi", params=SamplingParams(temperature=7.0)), BadRequest,
     "params.temperature=7.0: allowed 0..5"),
    (GenerateRequest(prompt="hi", adapter="nope"), NotFound, "nope"),
    (GenerateRequest(), BadRequest, "empty request"),
    (GenerateRequest(prompt="hi", adapter="a0", merge=[WeightedAdapter("a1", 1.0)]), BadRequest, "not both"),
], ids=["out-of-range", "unknown-adapter", "empty", "adapter-and-merge"])
def test_bad_requests_raise_the_named_error_before_the_engine(service, request_, error, message):
    with pytest.raises(error, match=message):
        service.submit(request_)


def test_a_passed_deadline_cancels_the_request_and_frees_its_slot(service, monkeypatch):
    engine, handles = service.engine, []
    submit = engine.submit
    monkeypatch.setattr(engine, "submit", lambda request: handles.append(submit(request)) or handles[-1])
    with ForwardGate(engine.model) as gate:  # the request cannot make progress, let alone finish, by itself
        generation = service.submit(GenerateRequest(prompt="hello world", adapter="a1", timeout_s=0.05,
                                                    params=SamplingParams(max_new_tokens=200)))
        with pytest.raises(DeadlineExceeded, match="deadline exceeded; the request was cancelled"):
            generation.result()
        assert handles[0].cancelled and gate.forwards <= 1
    result = handles[0].result(timeout=60)
    assert result.finish_reason == "cancelled" and result.completion_tokens <= 1, result
    wait_until(lambda: engine.batch_size == 0 and engine.queue_depth == 0, what="the batch to empty")
