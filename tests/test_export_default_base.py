"""`reg export` on the default base (SmolLM2-135M-Instruct): the merged model loads with plain transformers
and answers exactly as the server (--quant none) does with the unmerged adapter; a bf16 export passes its check."""

from __future__ import annotations

import pytest
from plain_transformers import plain_transformers_generate

from cli.main import main
from registry import Registry
from registry.bases import DEFAULT_BASE
from server.app import create_server, shutdown
from server.client import LoradockClient
from server.options import ServerOptions

pytestmark = pytest.mark.slow

CHATS = ["What is the capital of France?", "Write one sentence about the sea.", "What is 12 + 30?"]


def _nudged_lora(base_path: str, out) -> None:
    """A LoRA on every attention and MLP projection whose B is small noise: answers move, but stay fluent."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base_path, dtype=torch.float32)
    torch.manual_seed(0)  # lora_A's initialisation
    lora = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules="all-linear", task_type="CAUSAL_LM"))
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, param in lora.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.1)
    lora.save_pretrained(out)


def test_default_base_export_loads_with_plain_transformers_and_matches_the_server(default_base_home, tmp_path):
    reg = Registry(default_base_home)
    _nudged_lora(reg.get_base(DEFAULT_BASE).path, tmp_path / "src")
    reg.push(tmp_path / "src", "smol-nudge")
    home = ["--home", str(default_base_home)]
    assert main(["export", "smol-nudge", "--out", str(tmp_path / "fp32"), "--dtype", "fp32", *home]) == 0
    plain = plain_transformers_generate(tmp_path / "fp32", [], CHATS, 16, cwd=tmp_path)
    assert plain["dtype"] == "torch.float32"

    server, port, service = create_server(ServerOptions(port=0, quant="none", max_batch_size=4), reg)
    try:
        with LoradockClient(f"127.0.0.1:{port}", timeout=300) as client:
            ask = [{"role": "user", "content": c} for c in CHATS]
            served = [client.generate(messages=[m], adapter="smol-nudge", max_new_tokens=16).text for m in ask]
            base = [client.generate(messages=[m], max_new_tokens=16).text for m in ask]
    finally:
        shutdown(server, service, 0)
    assert plain["chats"] == served
    assert served != base, "the adapter should change at least one answer"
    assert "Paris" in served[0]

    assert main(["export", "smol-nudge", "--out", str(tmp_path / "bf16"), "--dtype", "bf16", *home]) == 0
    fp32_record, bf16_record = reg.exports(reg.resolve("smol-nudge").id)[-2:]
    assert fp32_record["fidelity"]["max_abs_diff"] < 1e-3 and fp32_record["fidelity"]["top1_agreement"] == 1.0
    assert bf16_record["status"] == "passed" and bf16_record["fidelity"]["top1_agreement"] >= 0.99
