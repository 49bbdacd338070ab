"""The engine contract, held by both engines: `reg serve` with `--engine native` and with `--engine vllm` answer the
same requests the same way through the same gRPC API.

Each test runs against a real server of each engine over one registry (a tiny Llama with heads of 64, which vLLM's
CPU attention takes, and LoRA adapters on every linear layer): greedy answers equal PEFT's (fp32; a different kernel
may break an exact tie the other way, and only a tie), rows of a mixed batch equal their answers alone, a push and
an alias move are served on the next request, a rollout routes each key to one arm, a per-request merge equals PEFT
running the merged weights, and the errors carry the same codes. The vLLM server needs vLLM's own environment (`make
vllm`); without it the vLLM half is skipped and says so.
"""

from __future__ import annotations

import threading

import grpc
import pytest

from conftest import TINY_BASE, make_adapter_dir
from registry import Registry
from registry.rollouts import Arm
from server.app import create_server, shutdown
from server.client import LoradockClient
from server.options import ServerOptions
from tiny import build_tiny_llama

PROMPTS = ["Q: 12+30 A:", "hello", "The quick brown fox", "adapters are"]
NEW_TOKENS = 6
TIE = 1e-3  # logits of two tokens closer than this may come out in either order from another kernel


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("engines")
    base = build_tiny_llama(tmp / "base", seed=0, hidden=256)
    other = build_tiny_llama(tmp / "other", seed=1, hidden=128)
    reg = Registry(tmp / "home")
    reg.add_base(str(base), TINY_BASE)
    reg.add_base(str(other), "other-base")
    dirs = {seed: make_adapter_dir(base, tmp / f"a{seed}", "lora-all", seed=seed) for seed in (1, 2, 3)}
    reg.push(dirs[1], "ca")
    reg.push(dirs[2], "ca")
    reg.set_alias("ca", "prod", 1)
    reg.push(make_adapter_dir(other, tmp / "wide", "lora", seed=4), "wide")
    reg.push(make_adapter_dir(base, tmp / "dora", "dora", seed=5), "dora")
    reg.close()
    return {"tmp": tmp, "home": tmp / "home", "base": base, "dirs": dirs}


def vllm_python_or_skip() -> str:
    from load_tests.peer import install_plugin, installed_vllm

    python = installed_vllm()
    if python is None:
        pytest.skip("vLLM's virtualenv is not there (`make vllm` makes it; `make test` tries to): "
                    "the vLLM engine is not tested")
    install_plugin(python)
    return str(python)


@pytest.fixture(scope="module", params=["native", pytest.param("vllm", marks=pytest.mark.integration)])
def served(request, world):
    engine = request.param
    extra = {"vllm_python": vllm_python_or_skip()} if engine == "vllm" else {}
    reg = Registry(world["home"])
    options = ServerOptions(base=TINY_BASE, quant="none", engine=engine, port=0, max_adapters=3, lora_rank=16,
                            max_batch_size=4, default_max_new_tokens=NEW_TOKENS, **extra)
    server, port, service = create_server(options, reg)
    client = LoradockClient(f"127.0.0.1:{port}", timeout=300)
    yield {"engine": engine, "client": client, "reg": reg, "service": service}
    client.close()
    shutdown(server, service, 0)
    reg.close()


def ask(served, adapter: str = "", prompt: str = PROMPTS[0], **kwargs):
    return served["client"].generate(prompt, adapter=adapter, max_new_tokens=NEW_TOKENS, **kwargs)


@pytest.fixture(scope="module")
def peft(world):
    """Greedy answers of PEFT (fp32) for an adapter directory, with the margins it decided each token by."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(world["base"])
    cache = {}

    def answer(adapter_dir, prompt: str) -> tuple[str, list[int], list[float]]:
        key = (str(adapter_dir), prompt)
        if key not in cache:
            model = AutoModelForCausalLM.from_pretrained(world["base"], torch_dtype=torch.float32)
            if adapter_dir is not None:
                model = PeftModel.from_pretrained(model, adapter_dir)
            model.eval()
            ids = tokenizer(prompt)["input_ids"]
            tokens, margins = [], []
            with torch.inference_mode():
                for _ in range(NEW_TOKENS):
                    logits = model(torch.tensor([ids + tokens])).logits[0, -1].float()
                    top = torch.topk(logits, 2).values
                    token = int(torch.argmax(logits))
                    if token == tokenizer.eos_token_id:
                        break
                    tokens.append(token)
                    margins.append(float(top[0] - top[1]))
            cache[key] = (tokenizer.decode(tokens, skip_special_tokens=True), tokens, margins)
        return cache[key]

    answer.tokenizer = tokenizer
    return answer


def assert_matches_peft(peft, adapter_dir, prompt: str, text: str) -> None:
    """`text` is PEFT's greedy answer, or parts from it only where PEFT's top two logits were a tie (< TIE apart).

    An answer cut off inside a multi-byte character ends in U+FFFD from the native engine (as `tokenizer.decode`
    gives it) and without it from vLLM, whose detokenizer holds back an incomplete character: compared without it."""
    expected, tokens, margins = peft(adapter_dir, prompt)
    if text.rstrip("\ufffd") == expected.rstrip("\ufffd"):
        return

    def decoded(n: int) -> str:
        return peft.tokenizer.decode(tokens[:n], skip_special_tokens=True).rstrip("\ufffd")

    step = next(i for i in range(len(tokens) + 1) if i == len(tokens) or not text.startswith(decoded(i + 1)))
    assert step < len(margins) and margins[step] < TIE, \
        f"{prompt!r}: engine said {text!r}, PEFT {expected!r}; they part at token {step}, which PEFT chose by " \
        f"{margins[step] if step < len(margins) else 'its end'} (a tie would be under {TIE})"


def test_greedy_answers_equal_pefts_for_the_base_and_each_adapter(served, world, peft):
    for adapter, adapter_dir in (("", None), ("ca:1", world["dirs"][1]), ("ca:2", world["dirs"][2])):
        for prompt in PROMPTS:
            reply = ask(served, adapter, prompt)
            assert reply.finish_reason in ("stop", "length")
            assert_matches_peft(peft, adapter_dir, prompt, reply.text)


def test_rows_of_a_mixed_batch_answer_as_they_do_alone(served):
    refs = ["", "ca:1", "ca:2", "ca@prod"]
    alone = {ref: ask(served, ref, PROMPTS[1]).text for ref in refs}
    together, threads = {}, []
    for ref in refs * 2:
        t = threading.Thread(target=lambda r=ref: together.setdefault(r, []).append(ask(served, r, PROMPTS[1]).text))
        threads.append(t)
        t.start()
    for t in threads:
        t.join(300)
    assert together == {ref: [alone[ref]] * 2 for ref in refs}
    assert alone["ca@prod"] == alone["ca:1"] != alone["ca:2"]


def test_a_push_and_an_alias_move_are_served_on_the_next_request(served, world):
    reg = served["reg"]
    before = ask(served, "ca").adapter_version
    pushed = reg.push(world["dirs"][3], "ca", message=f"{served['engine']} hot swap").version.ref
    try:
        assert ask(served, "ca").adapter_version == pushed != before
        reg.set_alias("ca", "prod", 2)
        assert ask(served, "ca@prod").adapter_version == "ca:2"
    finally:
        reg.set_alias("ca", "prod", 1)
        reg.remove_version(pushed)


def test_a_rollout_sends_each_key_to_one_arm(served):
    reg = served["reg"]
    reg.rollouts.set("ca", [Arm(1, 50), Arm(2, 50)], sticky=True, reason="contract")
    try:
        served["service"].rollout_worker.reload()
        seen = {}
        for i in range(24):
            versions = {ask(served, "ca", routing_key=f"user-{i}").adapter_version for _ in range(2)}
            assert len(versions) == 1, f"user-{i} got {versions}"
            seen[f"user-{i}"] = versions.pop()
        assert set(seen.values()) == {"ca:1", "ca:2"}
    finally:
        reg.rollouts.clear("ca", reason="contract")
        served["service"].rollout_worker.reload()


def test_a_per_request_merge_equals_peft_on_the_merged_weights(served, world, peft, tmp_path_factory):
    from registry.modeling.lora import read_lora
    from registry.modeling.merge import merge_adapters, write_lora_adapter

    merged = merge_adapters([(read_lora(world["dirs"][1], "merge"), 0.7), (read_lora(world["dirs"][2], "merge"), 0.3)],
                            "cat")
    merged_dir = write_lora_adapter(merged, tmp_path_factory.mktemp("merged") / "m", str(world["base"]))
    reply = served["client"].generate(PROMPTS[2], merge=[("ca:1", 0.7), ("ca:2", 0.3)], merge_method="cat",
                                      max_new_tokens=NEW_TOKENS)
    assert_matches_peft(peft, merged_dir, PROMPTS[2], reply.text)


def test_streamed_deltas_make_the_final_text(served):
    chunks = list(served["client"].stream(PROMPTS[3], adapter="ca:2", max_new_tokens=NEW_TOKENS))
    final = chunks[-1]
    assert final.done and "".join(c.text for c in chunks[:-1]) == ask(served, "ca:2", PROMPTS[3]).text
    assert final.usage.completion_tokens >= 1


@pytest.mark.parametrize("adapter,code", [
    ("nope", grpc.StatusCode.NOT_FOUND),              # no such adapter
    ("ca:9", grpc.StatusCode.NOT_FOUND),              # no such version
    ("wide", grpc.StatusCode.FAILED_PRECONDITION),    # trained on another base
    ("dora", grpc.StatusCode.FAILED_PRECONDITION),    # not plain LoRA: neither engine serves it exactly
])
def test_errors_carry_the_same_codes(served, adapter, code):
    with pytest.raises(grpc.RpcError) as caught:
        ask(served, adapter)
    assert caught.value.code() == code, caught.value.details()


def test_a_bad_parameter_is_invalid_argument_before_any_work(served):
    with pytest.raises(grpc.RpcError) as caught:
        ask(served, "ca:1", temperature=-1.0)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "temperature" in caught.value.details()
