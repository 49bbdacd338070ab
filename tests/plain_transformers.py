"""Load an exported model directory with nothing but transformers, in a fresh process, and generate greedily."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

# The loradock packages are made unimportable, so the export must stand on its own.
SCRIPT = r"""
import json, sys
for name in ("registry", "server", "trainer", "cli"):
    sys.modules[name] = None
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

path, prompts, chats, max_new = sys.argv[1], json.loads(sys.argv[2]), json.loads(sys.argv[3]), int(sys.argv[4])
tok = AutoTokenizer.from_pretrained(path)
model = AutoModelForCausalLM.from_pretrained(path).eval()

def generate(ids):
    with torch.no_grad():
        out = model.generate(torch.tensor([ids]), max_new_tokens=max_new, do_sample=False,
                             pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
    return tok.decode(out[0, len(ids):], skip_special_tokens=True)

chat_ids = [tok.apply_chat_template([{"role": "user", "content": c}], add_generation_prompt=True, tokenize=True,
                                    return_dict=True)["input_ids"] for c in chats]
print(json.dumps({"texts": [generate(tok(p)["input_ids"]) for p in prompts],
                  "chats": [generate(list(ids)) for ids in chat_ids], "dtype": str(model.dtype)}))
"""


def plain_transformers_generate(path: Path, prompts: list[str], chats: list[str], max_new_tokens: int, cwd: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run([sys.executable, "-c", SCRIPT, str(path), json.dumps(prompts), json.dumps(chats),
                           str(max_new_tokens)], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])
