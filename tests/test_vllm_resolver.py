"""The vLLM resolver plugin (integrations/vllm): a plain `vllm serve --enable-lora` serves NAME, NAME:N and NAME@ALIAS
from a loradock registry.

The resolver's own logic runs here, in loradock's environment, against a real registry through the real `reg` (it
imports vLLM only when vLLM calls it). The end-to-end test runs a real `vllm serve` from vLLM's own virtualenv (`make
vllm` makes it; without it that test is skipped and says so) with the plugin installed there, on a tiny Llama, and
checks each ref's answer against PEFT's log-probabilities for the same tokens.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from conftest import TINY_BASE, make_adapter_dir
from registry import Registry
from tiny import build_tiny_llama

REPO = Path(__file__).resolve().parent.parent
PLUGIN = REPO / "integrations" / "vllm"
sys.path.insert(0, str(PLUGIN))

from loradock_vllm.resolver import LoradockResolver  # noqa: E402

REG = str(Path(sys.executable).parent / "reg")
OTHER_BASE = "tiny-llama-wide"
LOGPROB_TOLERANCE = 1e-3  # fp32 on both sides; different kernels, so not bit-equal


@pytest.fixture(scope="module")
def served_home(tmp_path_factory):
    """A registry with `va` v1 and v2 (different weights, `prod` -> v1) on a tiny Llama whose heads vLLM's CPU
    attention supports (head size 64), and `wide` on another base."""
    tmp = tmp_path_factory.mktemp("vllm-resolver")
    base = build_tiny_llama(tmp / "base", seed=0, hidden=256)
    other = build_tiny_llama(tmp / "other", seed=1, hidden=128)
    reg = Registry(tmp / "home")
    reg.add_base(str(base), TINY_BASE)
    reg.add_base(str(other), OTHER_BASE)
    for seed in (1, 2):
        reg.push(make_adapter_dir(base, tmp / f"va-{seed}", "lora-all", seed=seed), "va")
    reg.push(make_adapter_dir(other, tmp / "wide", "lora", seed=3), "wide")
    reg.set_alias("va", "prod", 1)
    reg.close()
    return {"home": tmp / "home", "base": base, "tmp": tmp}


def test_refs_resolve_to_exact_versions_pulled_once_and_verified(served_home, tmp_path, monkeypatch):
    monkeypatch.setenv("LORADOCK_HOME", str(served_home["home"]))
    r = LoradockResolver(reg=REG, cache_dir=tmp_path / "cache", base=TINY_BASE)
    latest, exact, alias = (asyncio.run(r.fetch(ref)) for ref in ("va", "va:1", "va@prod"))
    assert latest[0] == "va:2" and exact[0] == alias[0] == "va:1"
    assert exact[1] == alias[1] == tmp_path / "cache" / "va" / "1"
    reg = Registry(served_home["home"])
    try:
        digests = {f.path: f.sha256 for f in reg.resolve("va:1").files}
    finally:
        reg.close()
    import hashlib

    assert {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in exact[1].iterdir()} == digests
    before = (exact[1] / "adapter_config.json").stat().st_mtime_ns
    asyncio.run(r.fetch("va:1"))  # in the cache: not pulled again
    assert (exact[1] / "adapter_config.json").stat().st_mtime_ns == before


@pytest.mark.parametrize("ref", ["nope", "va:9", "va@missing", "--help", "../../etc", "Va"])
def test_what_the_registry_does_not_hold_is_not_resolved(served_home, tmp_path, monkeypatch, ref):
    monkeypatch.setenv("LORADOCK_HOME", str(served_home["home"]))
    r = LoradockResolver(reg=REG, cache_dir=tmp_path / "cache", base=TINY_BASE)
    assert asyncio.run(r.fetch(ref)) is None
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").rglob("*.safetensors"))


def test_a_version_for_another_base_is_refused_and_not_pulled(served_home, tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("LORADOCK_HOME", str(served_home["home"]))
    r = LoradockResolver(reg=REG, cache_dir=tmp_path / "cache", base=TINY_BASE)
    assert asyncio.run(r.fetch("wide")) is None
    assert f"trained on base {OTHER_BASE}" in caplog.text
    assert not (tmp_path / "cache" / "wide").exists()


def test_a_missing_reg_is_one_clear_log_line(tmp_path, caplog):
    r = LoradockResolver(reg=str(tmp_path / "no-such-reg"), cache_dir=tmp_path / "cache")
    assert asyncio.run(r.fetch("va")) is None
    assert "cannot run loradock's reg" in caplog.text and "LORADOCK_REG" in caplog.text


# --- a real `vllm serve` with the plugin ------------------------------------------------------------------------------


def vllm_python() -> Path:
    from load_tests.peer import installed_vllm

    python = installed_vllm()
    if python is None:
        pytest.skip("vLLM's virtualenv is not there (`make vllm` makes it; `make test` tries to): "
                    "the vLLM resolver is not tested end to end")
    return python


def post(url: str, body: dict, timeout: float = 300) -> tuple[int, dict]:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as reply:
            return reply.status, json.loads(reply.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


@pytest.fixture(scope="module")
def vllm_server(served_home):
    from load_tests import free_ports
    from load_tests.peer import install_plugin

    python = vllm_python()
    install_plugin(python)  # the plugin as this checkout has it
    [port] = free_ports(1)
    tmp = served_home["tmp"]
    env = {**os.environ, "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "1", "LORADOCK_REG": REG,
           "LORADOCK_HOME": str(served_home["home"]), "LORADOCK_VLLM_CACHE": str(tmp / "vllm-cache"),
           "LORADOCK_BASE": TINY_BASE, "VLLM_TARGET_DEVICE": "cpu", "VLLM_CPU_KVCACHE_SPACE": "1",
           "VLLM_CPU_OMP_THREADS_BIND": f"0-{os.cpu_count() - 1}", "HF_HUB_OFFLINE": "1"}
    log = (tmp / "vllm.log").open("w")
    proc = subprocess.Popen(
        [str(python), "-m", "loradock_vllm.serve", "serve", str(served_home["base"]),
         "--served-model-name", TINY_BASE, "--dtype", "float32", "--port", str(port), "--host", "127.0.0.1",
         "--enable-lora", "--max-loras", "2", "--max-lora-rank", "8", "--max-num-seqs", "4", "--max-model-len", "256"],
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 900
        while True:
            try:
                with urllib.request.urlopen(url + "/health", timeout=5) as reply:
                    if reply.status == 200:
                        break
            except OSError:
                pass
            assert proc.poll() is None, f"vllm serve exited {proc.returncode}:\n{(tmp / 'vllm.log').read_text()[-3000:]}"
            assert time.monotonic() < deadline, "vllm serve did not answer within 900 s"
            time.sleep(0.5)
        yield url
    finally:
        os.killpg(proc.pid, 15)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            proc.wait()
        log.close()


PROMPT = [5, 17, 42, 99, 7, 23]
NEW_TOKENS = 6


def vllm_completion(url: str, model: str) -> tuple[int, dict]:
    return post(url + "/v1/completions", {"model": model, "prompt": PROMPT, "max_tokens": NEW_TOKENS,
                                          "temperature": 0.0, "logprobs": 1})


def peft_logprobs(served_home, ref: str, tokens: list[int]):
    """PEFT's log-probabilities (fp32) at each step along `tokens`, and its best log-probability there."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    reg = Registry(served_home["home"])
    try:
        _, adapter_dir = reg.pull(ref, served_home["tmp"] / f"peft-{ref.replace(':', '-')}")
    finally:
        reg.close()
    model = AutoModelForCausalLM.from_pretrained(served_home["base"], torch_dtype=torch.float32)
    model = PeftModel.from_pretrained(model, adapter_dir).eval()
    ids = torch.tensor([PROMPT + tokens])
    with torch.inference_mode():
        logprobs = torch.log_softmax(model(ids).logits[0].float(), dim=-1)
    steps = range(len(PROMPT) - 1, len(PROMPT) + len(tokens) - 1)
    return [float(logprobs[i, t]) for i, t in zip(steps, tokens)], [float(logprobs[i].max()) for i in steps]


@pytest.mark.slow
@pytest.mark.integration
def test_plain_vllm_serves_every_kind_of_ref_from_the_registry(vllm_server, served_home):
    answers = {}
    for ref in ("va", "va:1", "va:2", "va@prod"):
        status, body = vllm_completion(vllm_server, ref)
        assert status == 200, (ref, body)
        answers[ref] = body["choices"][0]["logprobs"]
    assert answers["va"]["token_logprobs"] == answers["va:2"]["token_logprobs"]  # the latest version
    assert answers["va@prod"]["token_logprobs"] == answers["va:1"]["token_logprobs"]  # the alias's version
    assert answers["va:1"]["token_logprobs"] != answers["va:2"]["token_logprobs"]  # two different adapters
    for ref in ("va:1", "va:2"):
        status, body = post(vllm_server + "/v1/completions", {"model": ref, "prompt": PROMPT, "max_tokens": NEW_TOKENS,
                                                               "temperature": 0.0, "return_token_ids": True})
        assert status == 200, body
        chosen = body["choices"][0]["token_ids"]
        assert len(chosen) == NEW_TOKENS, body
        ours, best = peft_logprobs(served_home, ref, chosen)
        theirs = answers[ref]["token_logprobs"]
        for step, (o, b, t) in enumerate(zip(ours, best, theirs)):
            assert abs(o - t) < LOGPROB_TOLERANCE, f"{ref} step {step}: PEFT {o} vs vLLM {t}"
            assert b - o < LOGPROB_TOLERANCE, f"{ref} step {step}: vLLM took a token PEFT ranks below its best"


@pytest.mark.slow
@pytest.mark.integration
def test_plain_vllm_answers_404_for_what_the_registry_does_not_hold(vllm_server):
    for model in ("nope", "va:9", "wide"):  # unknown; no such version; trained on another base
        status, body = vllm_completion(vllm_server, model)
        assert status == 404, (model, body)
