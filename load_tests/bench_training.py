"""Fine-tuning cost and quality on this machine: QLoRA vs LoRA vs full fine-tuning of one base.

    python load_tests/bench_training.py [--base smollm2-135m-instruct] [--steps 60] [--json out.json]

Each method trains the shipped arithmetic task (examples/arith.yaml: same data, split, seed, batch and
steps) in a fresh subprocess, so peak memory (max RSS on CPU, max allocated on GPU) belongs to that
method alone. Reported: seconds per optimizer step (median over the steps after the first few),
peak memory, held-out loss and exact match, and each method's quality as a fraction of full
fine-tuning's. The methods run one after another; the machine should otherwise be idle.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# Full fine-tuning moves every weight, so it wants a much smaller learning rate than an adapter.
METHODS = {
    "qlora": ["adapter=qlora", "learning_rate=0.001"],
    "lora": ["adapter=lora", "load_in_4bit=false", "learning_rate=0.001"],
    "full": ["adapter=lora", "load_in_4bit=false", "learning_rate=0.00005"],
}


def run_one(method: str, home: str, steps: int, max_examples: int) -> dict:
    """Train one method in this process (called in a subprocess) and return its measurements."""
    import torch
    from transformers import Trainer, TrainerCallback, TrainingArguments, set_seed

    from registry import Registry
    from registry.modeling.loading import load_base_model
    from trainer import data as data_mod
    from trainer.config import load_config
    from trainer.environment import peak_memory_mb
    from trainer.evaluate import DEFAULT_GENERAL_TEXT, measure
    from trainer.train import build_peft_config

    torch.set_num_threads(os.cpu_count() or 1)
    overrides = METHODS[method] + [f"max_steps={steps}", f"evaluation.max_examples={max_examples}", "eval_steps=1000000"]
    config = load_config(ROOT / "examples" / "arith.yaml", overrides)
    registry = Registry(home)
    base = registry.resolve_base(config.base_model)
    report = data_mod.load_datasets([data_mod.DatasetSpec(d.path, d.type) for d in config.datasets])
    dedup = data_mod.deduplicate(report.examples, seed=config.seed)
    train_ex, val_ex = data_mod.split_examples(dedup.kept, config.val_set_size, config.seed)
    set_seed(config.seed)
    loaded = load_base_model(base, config.quantization, for_training=True)
    tok = loaded.tokenizer
    train_f, _ = data_mod.prepare_features(train_ex, tok, config.sequence_len)
    val_f, _ = data_mod.prepare_features(val_ex, tok, config.sequence_len)
    collator = data_mod.CausalCollator(tok.pad_token_id)
    if method == "full":
        model = loaded.model
        for p in model.parameters():
            p.requires_grad_(True)
    else:
        from peft import get_peft_model

        model = get_peft_model(loaded.model, build_peft_config(config))
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)

    step_times: list[float] = []

    class StepTimer(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            self.t = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            step_times.append(time.perf_counter() - self.t)

    class _DS:
        def __len__(self):
            return len(train_f)

        def __getitem__(self, i):
            return train_f[i]

    with tempfile.TemporaryDirectory() as out:
        args = TrainingArguments(
            output_dir=out, per_device_train_batch_size=config.micro_batch_size, max_steps=steps,
            learning_rate=config.learning_rate, lr_scheduler_type=config.lr_scheduler, warmup_steps=config.warmup_steps,
            save_strategy="no", eval_strategy="no", logging_steps=10, report_to=[], seed=config.seed,
            disable_tqdm=True, use_cpu=not torch.cuda.is_available(), remove_unused_columns=False,
        )
        trainer = Trainer(model=model, args=args, train_dataset=_DS(), data_collator=collator, callbacks=[StepTimer()])
        trainer.train()
    model.eval()
    settings = config.evaluation
    settings.max_examples = max_examples
    metrics, _ = measure(model, tok, val_ex, val_f, collator, settings, DEFAULT_GENERAL_TEXT)
    warm = sorted(step_times[3:] or step_times)
    return {
        "method": method, "quantization": config.quantization, "trainable_parameters": trainable,
        "seconds_per_step": warm[len(warm) // 2], "steps": len(step_times), "batch": config.micro_batch_size,
        "peak_memory_mb": peak_memory_mb(), "heldout_loss": metrics["loss"], "exact_match": metrics.get("exact_match"),
        "general_perplexity": metrics["general_perplexity"],
    }


def main() -> None:
    from load_tests import use_offline_hub

    use_offline_hub()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--home", default=os.environ.get("LORADOCK_HOME") or str(Path.home() / ".loradock"),
                        help="registry home holding (or to hold) the default base")
    parser.add_argument("--steps", type=int, default=60, help="optimizer steps per method (batch 8)")
    parser.add_argument("--max-examples", type=int, default=64, help="held-out examples to generate answers for")
    parser.add_argument("--methods", default="qlora,lora,full", help="comma-separated subset of qlora,lora,full")
    parser.add_argument("--json", dest="json_out", help="also write the results here")
    parser.add_argument("--_one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args._one:
        print(json.dumps(run_one(args._one, args.home, args.steps, args.max_examples)))
        return
    results = []
    for method in args.methods.split(","):
        print(f"training {method} for {args.steps} steps ...", flush=True)
        cmd = [sys.executable, __file__, "--_one", method, "--home", args.home, "--steps", str(args.steps),
               "--max-examples", str(args.max_examples)]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            sys.exit(f"{method} failed:\n{done.stderr[-3000:]}")
        results.append(json.loads(done.stdout.strip().splitlines()[-1]))
    full = next((r for r in results if r["method"] == "full"), None)
    print(f"\n{'method':<7} {'trainable':>12} {'s/step':>7} {'peak MB':>8} {'val loss':>9} {'exact':>6} {'vs full':>8}")
    for r in results:
        rel = f"{r['exact_match'] / full['exact_match']:.0%}" if full and full["exact_match"] else "-"
        print(f"{r['method']:<7} {r['trainable_parameters']:>12,} {r['seconds_per_step']:>7.2f} {r['peak_memory_mb']:>8.0f} "
              f"{r['heldout_loss']:>9.4f} {r['exact_match']:>6.3f} {rel:>8}")
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":  # `python load_tests/bench_training.py`: make the repository importable first (only when run so)
    sys.path.insert(0, str(ROOT))
    main()
