"""The server on the default base in NF4 (the shipped default), with a real LoRA adapter."""

from __future__ import annotations

import pytest

from registry import Registry
from server.app import create_server, shutdown
from server.client import LoradockClient
from server.options import ServerOptions

pytestmark = pytest.mark.slow


def test_nf4_default_base_serves_base_and_adapter_requests_together(default_base_home, tmp_path):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    reg = Registry(default_base_home)
    base = reg.get_base("smollm2-135m-instruct")
    model = AutoModelForCausalLM.from_pretrained(base.path, dtype=torch.float32)
    lora = get_peft_model(model, LoraConfig(r=16, target_modules="all-linear", task_type="CAUSAL_LM"))
    lora.save_pretrained(tmp_path / "nf4-demo")  # zero-initialised B: answers equal the base's
    reg.push(tmp_path / "nf4-demo", "nf4-demo")
    server, port, service = create_server(ServerOptions(port=0, quant="nf4", max_batch_size=4), reg)
    try:
        assert service.quantization == "nf4"
        with LoradockClient(f"127.0.0.1:{port}") as client:
            from concurrent.futures import ThreadPoolExecutor

            question = [{"role": "user", "content": "What is the capital of France?"}]
            with ThreadPoolExecutor(2) as pool:
                futures = [pool.submit(client.generate, messages=question, adapter=a, max_new_tokens=12) for a in ("", "nf4-demo")]
                base_answer, adapter_answer = (f.result() for f in futures)
            assert "Paris" in base_answer.text and base_answer.adapter_version == ""
            assert adapter_answer.text == base_answer.text and adapter_answer.adapter_version == "nf4-demo:1"
    finally:
        shutdown(server, service, 0)
