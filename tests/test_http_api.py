"""The OpenAI-compatible HTTP API: a real `reg serve`-style server (gRPC + HTTP on port 0), the real openai client.

Every HTTP answer is compared with the gRPC answer of the same server for the same greedy request: the two
fronts share one service and one engine, so they must agree token for token.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import openai
import pytest
from conftest import TINY_BASE, make_adapter_dir
from forward_gate import wait_until
from prometheus_client.parser import text_string_to_metric_families

from registry import Registry
from registry.rollouts import Arm
from server.app import create_server, shutdown
from server.client import LoradockClient
from server.options import ServerOptions
from server.router import RolloutRouter

PROMPTS = ["Q: 12+30 A:", "hello world", "The quick brown fox"]
ADAPTERS = ["a0", "a1", "a2", "a3"]


def start(tmp, tiny_base_dir, other_base_dir=None, **options):
    """A registry with adapters a0..a3 (a1, a3 on every linear layer), `support` (2 versions), and, given the
    other base, `wide` trained on it; a server with gRPC and HTTP on free ports. Returns a dict of parts."""
    reg = Registry(tmp / "home")
    reg.add_base(str(tiny_base_dir), TINY_BASE)
    for i, name in enumerate(ADAPTERS):
        reg.push(make_adapter_dir(tiny_base_dir, tmp / name, "lora-all" if i % 2 else "lora", seed=20 + i), name)
    for seed in (31, 32):
        reg.push(make_adapter_dir(tiny_base_dir, tmp / f"support{seed}", "lora", seed=seed), "support")
    if other_base_dir is not None:
        reg.add_base(str(other_base_dir), "tiny-wide")
        reg.push(make_adapter_dir(other_base_dir, tmp / "wide", "lora", seed=1), "wide")
    settings = dict(base=TINY_BASE, quant="none", port=0, http_port=0, max_batch_size=8, max_adapters=4,
                    default_max_new_tokens=8)
    server, port, service = create_server(ServerOptions(**{**settings, **options}), reg)
    return {"reg": reg, "server": server, "service": service, "grpc": LoradockClient(f"127.0.0.1:{port}", timeout=60),
            "http_port": server.http_port, "url": f"http://127.0.0.1:{server.http_port}"}


def stop(parts) -> None:
    parts["grpc"].close()
    shutdown(parts["server"], parts["service"], 0)
    parts["reg"].close()


def openai_client(parts, token: str = "no-auth", timeout: float = 60) -> openai.OpenAI:
    return openai.OpenAI(base_url=parts["url"] + "/v1", api_key=token, max_retries=0, timeout=timeout)


def call(parts, method: str, path: str, body: dict | bytes | None = None, token: str | None = None,
         headers: dict | None = None) -> tuple[int, dict, bytes]:
    """A plain HTTP request (what curl sends): (status, headers, body bytes)."""
    data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
    request = urllib.request.Request(parts["url"] + path, data=data, method=method, headers=headers or {})
    if data is not None:
        request.add_header("Content-Type", "application/json")
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=60) as reply:
            return reply.status, dict(reply.headers), reply.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


@pytest.fixture(scope="module")
def served(tmp_path_factory, tiny_base_dir, other_base_dir):
    parts = start(tmp_path_factory.mktemp("http"), tiny_base_dir, other_base_dir)
    parts["client"] = openai_client(parts)
    yield parts
    stop(parts)


def grpc_text(parts, model: str, prompt: str | None = None, messages=None, max_tokens: int = 8, **kwargs) -> str:
    adapter = "" if model == TINY_BASE else model
    return parts["grpc"].generate(prompt, adapter=adapter, messages=messages, max_new_tokens=max_tokens, **kwargs).text


def test_models_lists_the_base_and_every_servable_name(served):
    served["reg"].set_alias("a0", "prod", 1)
    cards = {m.id: m.model_dump() for m in served["client"].models.list().data}
    assert cards[TINY_BASE]["parent"] is None and cards[TINY_BASE]["loradock"]["loaded"] is True
    for name in ADAPTERS:
        assert {name, f"{name}:1"} <= set(cards)
    assert {"support", "support:1", "support:2", "a0@prod"} <= set(cards)
    assert not any(i.startswith("wide") for i in cards)  # trained on another base: not servable here
    card = cards["a0@prod"]
    assert (card["object"], card["root"], card["parent"], card["owned_by"]) == ("model", "a0:1", TINY_BASE, "loradock")
    assert card["loradock"]["version"] == "a0:1" and card["loradock"]["base_digest"].startswith("sha256:")
    assert cards["support"]["root"] == "support:2" and cards["support:1"]["root"] == "support:1"
    assert isinstance(card["created"], int) and card["created"] > 0


def test_completion_and_chat_equal_the_grpc_answer(served):
    client = served["client"]
    for model in [TINY_BASE, "a0", "a1"]:
        for prompt in PROMPTS[:2]:
            raw = client.completions.with_raw_response.create(model=model, prompt=prompt, max_tokens=8, temperature=0)
            reply = raw.parse()
            assert reply.choices[0].text == grpc_text(served, model, prompt), (model, prompt)
            assert reply.object == "text_completion" and reply.model == model and reply.id.startswith("cmpl-")
            assert reply.choices[0].finish_reason in ("stop", "length") and reply.usage.completion_tokens <= 8
            version = "" if model == TINY_BASE else f"{model}:1"
            assert reply.loradock["adapter_version"] == version and raw.headers.get("x-loradock-version", "") == version
            messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": prompt}]
            chat = client.chat.completions.create(model=model, messages=messages, max_completion_tokens=8, temperature=0)
            assert chat.choices[0].message.content == grpc_text(served, model, messages=messages), (model, prompt)
            assert chat.choices[0].message.role == "assistant" and chat.object == "chat.completion"


def test_a_stream_equals_the_non_stream_answer(served):
    client = served["client"]
    for model in ["a2", TINY_BASE]:
        whole = client.completions.create(model=model, prompt=PROMPTS[0], max_tokens=8, temperature=0)
        chunks = list(client.completions.create(model=model, prompt=PROMPTS[0], max_tokens=8, temperature=0, stream=True,
                                                stream_options={"include_usage": True}))
        assert "".join(c.choices[0].text for c in chunks if c.choices) == whole.choices[0].text
        assert chunks[-1].choices == [] and chunks[-1].usage.model_dump() == whole.usage.model_dump()
        assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == whole.choices[0].finish_reason
        messages = [{"role": "user", "content": PROMPTS[1]}]
        chat = client.chat.completions.create(model=model, messages=messages, max_tokens=8)
        stream = client.chat.completions.create(model=model, messages=messages, max_tokens=8, stream=True)
        deltas = [c.choices[0].delta for c in stream]
        assert deltas[0].role == "assistant" and "".join(d.content or "" for d in deltas) == chat.choices[0].message.content
        assert all(c.usage is None for c in chunks[:-1])


def test_mixed_http_and_grpc_requests_over_several_adapters_equal_their_solo_answers(served):
    client = served["client"]
    names = [TINY_BASE, *ADAPTERS]
    solo = {(m, p): grpc_text(served, m, p) for m in names for p in PROMPTS}
    jobs = [(front, m, p) for front in ("http", "grpc", "http-stream") for m in names for p in PROMPTS]

    def run(job):
        front, model, prompt = job
        if front == "grpc":
            return grpc_text(served, model, prompt)
        if front == "http":
            return client.completions.create(model=model, prompt=prompt, max_tokens=8).choices[0].text
        return "".join(c.choices[0].text for c in client.completions.create(model=model, prompt=prompt, max_tokens=8,
                                                                             stream=True))

    with ThreadPoolExecutor(len(jobs)) as pool:
        answers = list(pool.map(run, jobs))
    wrong = [job for job, text in zip(jobs, answers) if text != solo[job[1:]]]
    assert not wrong, wrong


def test_rollout_by_user_is_sticky_and_reported_in_body_and_headers(served):
    reg, service, client = served["reg"], served["service"], served["client"]
    revision = reg.rollouts.set("support", [Arm(1, 50), Arm(2, 50)], sticky=True)
    current = lambda: service.router.current("support")  # noqa: E731  (the server polls rollouts twice a second)
    wait_until(lambda: current() is not None and current().revision == revision.revision, what="the rollout to arrive")
    router = RolloutRouter()
    router.load(reg.rollouts.all_current())
    keys = [f"customer-{i}" for i in range(16)]
    want = {k: (f"support:{c.version}", c.arm) for k in keys for c in [router.pick_arm("support", k)]}
    assert {arm for _, arm in want.values()} == {"A", "B"}
    messages = [{"role": "user", "content": "hello"}]
    for key in keys:
        for _ in range(2):  # sticky: the same user, the same arm
            raw = client.chat.completions.with_raw_response.create(model="support", messages=messages, user=key, max_tokens=2)
            body = raw.parse().loradock
            assert (body["adapter_version"], body["variant"]) == want[key], key
            assert (raw.headers["x-loradock-version"], raw.headers["x-loradock-variant"]) == want[key]
        by_header = client.completions.create(model="support", prompt="hello", max_tokens=2,
                                              extra_headers={"X-Routing-Key": key})
        assert (by_header.loradock["adapter_version"], by_header.loradock["variant"]) == want[key]
    reg.rollouts.clear("support")


def test_a_merge_in_the_loradock_extension_equals_the_grpc_merge(served):
    merge = [{"adapter": "a0", "weight": 0.7}, {"adapter": "a2", "weight": 0.3}]
    reply = served["client"].completions.create(model=TINY_BASE, prompt=PROMPTS[1], max_tokens=8,
                                                extra_body={"loradock": {"merge": merge, "merge_method": "cat"}})
    want = served["grpc"].generate(PROMPTS[1], merge=[("a0", 0.7), ("a2", 0.3)], merge_method="cat", max_new_tokens=8)
    assert reply.choices[0].text == want.text and reply.loradock["adapter_version"] == want.adapter_version
    with pytest.raises(openai.BadRequestError, match="set model to the base's name"):
        served["client"].completions.create(model="a0", prompt="x", extra_body={"loradock": {"merge": merge}})


def test_load_and_unload_lora_adapter_and_feedback(served):
    status, _, body = call(served, "POST", "/v1/load_lora_adapter", {"lora_name": "a3", "pin": True})
    reply = json.loads(body)
    assert status == 200 and reply["version"] == "a3:1" and reply["pinned"] is True
    assert "a3:1" in served["service"].cache.entries
    assert {m.id: m for m in served["client"].models.list().data}["a3:1"].loradock["loaded"] is True
    status, _, body = call(served, "POST", "/v1/load_lora_adapter", {"lora_name": "a3", "lora_path": "/tmp"})
    assert status == 400 and "--allow-path-adapters" in json.loads(body)["error"]["message"]
    assert call(served, "POST", "/v1/unload_lora_adapter", {"lora_name": "a3:1"})[0] == 200
    status, _, body = call(served, "POST", "/v1/unload_lora_adapter", {"lora_name": "a3:1"})
    assert status == 404 and "is not loaded" in json.loads(body)["error"]["message"]
    done = served["client"].completions.create(model="a1", prompt="hi", max_tokens=2)
    status, _, body = call(served, "POST", "/v1/feedback", {"request_id": done.id, "score": 1, "label": "good"})
    assert status == 200 and json.loads(body)["adapter"] == "a1" and json.loads(body)["version"] == 1
    status, _, body = call(served, "POST", "/v1/feedback", {"request_id": "cmpl-never-served", "score": 1})
    assert status == 404 and json.loads(body)["error"]["code"] == "NotFound"


def test_health_and_metrics(served):
    status, _, body = call(served, "GET", "/health")
    assert status == 200 and json.loads(body)["status"] == "serving"
    served["client"].completions.create(model="a0", prompt="hi", max_tokens=2)
    status, headers, body = call(served, "GET", "/metrics")
    assert status == 200 and headers["content-type"].startswith("text/plain")
    families = {f.name: f for f in text_string_to_metric_families(body.decode())}
    http = [s for s in families["loradock_requests"].samples if s.labels.get("protocol") == "http"]
    assert http and sum(s.value for s in http if s.labels["version"] == "a0:1") >= 1
