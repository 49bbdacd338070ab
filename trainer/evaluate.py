"""Evaluating an adapter against its base: held-out loss, generation metrics, forgetting, collapse.

Everything is measured twice on the same inputs, once with the adapter and once with it
disabled (the base), so the recorded numbers compare like with like.
"""

from __future__ import annotations

import logging
import math
from contextlib import nullcontext
from pathlib import Path

from .config import EvalConfig, TrainConfig
from .metrics import compute_generation_metrics, overfitting_flag, perplexity

logger = logging.getLogger(__name__)

DEFAULT_GENERAL_TEXT = Path(__file__).resolve().parent.parent / "examples" / "general.txt"


def _no_progress(n: int) -> None:
    pass


class EvalProgress:
    """One bar per model evaluated ("evaluating adapter: 40/120 examples"), on stderr like the training bar;
    `advance(n)` is what the measuring loops call. Disabled, it prints nothing."""

    def __init__(self, desc: str, total: int, enabled: bool = True):
        self.bar = None
        if enabled and total:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, desc=desc, unit="example", dynamic_ncols=True)

    def advance(self, n: int) -> None:
        if self.bar is not None:
            self.bar.update(n)

    def __enter__(self) -> "EvalProgress":
        return self

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.close()


def general_lines(text_path: Path) -> list[str]:
    return [ln.strip() for ln in text_path.read_text().splitlines() if ln.strip()]


def mean_loss(model, features, collator, batch_size: int = 8, advance=_no_progress) -> float:
    """Token-weighted mean cross-entropy over the labelled (response) tokens."""
    import torch

    if not features:
        return float("nan")
    total, count = 0.0, 0
    device = next(model.parameters()).device
    with torch.no_grad():
        for start in range(0, len(features), batch_size):
            batch = collator(features[start:start + batch_size])
            batch = {k: v.to(device) for k, v in batch.items()}
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.float()
            shift_logits, shift_labels = logits[:, :-1], batch["labels"][:, 1:]
            loss = torch.nn.functional.cross_entropy(
                shift_logits.reshape(-1, shift_logits.size(-1)), shift_labels.reshape(-1), ignore_index=-100, reduction="sum"
            )
            total += float(loss)
            count += int((shift_labels != -100).sum())
            advance(len(features[start:start + batch_size]))
    return total / max(count, 1)


def general_text_loss(model, tokenizer, text_path: Path, max_tokens: int = 256, advance=_no_progress) -> float:
    """Mean loss over a small general-English text, one line per sequence: forgetting shows as a rise."""
    import torch

    lines = general_lines(text_path)
    device = next(model.parameters()).device
    total, count = 0.0, 0
    with torch.no_grad():
        for line in lines:
            advance(1)
            ids = tokenizer(line, return_tensors="pt", add_special_tokens=True)["input_ids"][:, :max_tokens].to(device)
            if ids.shape[1] < 2:
                continue
            out = model(input_ids=ids, labels=ids)
            total += float(out.loss) * (ids.shape[1] - 1)
            count += ids.shape[1] - 1
    return total / max(count, 1)


def prompt_text(example, tokenizer) -> str:
    if example.raw_prompt is not None or not tokenizer.chat_template:
        return example.raw_prompt if example.raw_prompt is not None else "\n".join(m["content"] for m in example.messages)
    return tokenizer.apply_chat_template(example.messages, add_generation_prompt=True, tokenize=False)


def generate_answers(model, tokenizer, examples, max_new_tokens: int, batch_size: int = 16, advance=_no_progress) -> list[str]:
    """Greedy answers for the examples' prompts (left-padded batches)."""
    import torch

    device = next(model.parameters()).device
    answers: list[str] = []
    old_side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    try:
        for start in range(0, len(examples), batch_size):
            prompts = [prompt_text(e, tokenizer) for e in examples[start:start + batch_size]]
            enc = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=not tokenizer.chat_template).to(device)
            with torch.no_grad():
                out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                                     pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
            for row in out[:, enc["input_ids"].shape[1]:]:
                answers.append(tokenizer.decode(row, skip_special_tokens=True).strip())
            advance(len(prompts))
    finally:
        tokenizer.padding_side = old_side
    return answers


def measure(model, tokenizer, examples, features, collator, settings: EvalConfig, general_text: Path,
            label: str = "model", progress: bool = False) -> tuple[dict, list[str]]:
    """`label`'s metrics on the examples; with `progress`, a bar counts the examples scored (loss, answers, general text)."""
    sample = examples[: settings.max_examples]
    total = len(features) + len(sample) + len(general_lines(general_text))
    with EvalProgress(f"evaluating {label}", total, enabled=progress) as bar:
        loss = mean_loss(model, features, collator, advance=bar.advance)
        answers = generate_answers(model, tokenizer, sample, settings.max_new_tokens, advance=bar.advance) if sample else []
        general_loss = general_text_loss(model, tokenizer, general_text, advance=bar.advance)
    metrics = {"loss": loss, "perplexity": perplexity(loss) if not math.isnan(loss) else None, "examples": len(features)}
    if sample:
        gen = compute_generation_metrics(answers, [e.response for e in sample], task_metric=settings.task_metric)
        metrics.update({k: v for k, v in gen.items() if k != "task_metric"})
    metrics["general_perplexity"] = perplexity(general_loss)
    return metrics, answers


def evaluate_run(model, tokenizer, val_examples, val_features, collator, config: TrainConfig, curves: dict,
                 progress: bool = False) -> dict:
    """Adapter vs base on the held-out split; applies the config's thresholds."""
    settings = config.evaluation
    general_text = Path(settings.general_text) if settings.general_text else DEFAULT_GENERAL_TEXT
    inputs = (model, tokenizer, val_examples, val_features, collator, settings, general_text)
    adapter_metrics, adapter_answers = measure(*inputs, label="adapter", progress=progress)
    with (model.disable_adapter() if hasattr(model, "disable_adapter") else nullcontext()):
        base_metrics, base_answers = measure(*inputs, label="base", progress=progress)
    overfit, why = overfitting_flag([tuple(p) for p in curves.get("train_loss", [])], [tuple(p) for p in curves.get("val_loss", [])])
    adapter_metrics["overfitting"] = overfit
    failures = check_thresholds(settings, adapter_metrics, base_metrics)
    if overfit:
        logger.warning(f"overfitting: {why}")
    samples = [
        {"prompt": e.messages[-1]["content"] if e.messages else e.raw_prompt, "reference": e.response, "adapter": a, "base": b}
        for e, a, b in zip(val_examples, adapter_answers, base_answers)
    ][:8]
    return {
        "adapter": adapter_metrics, "base": base_metrics, "task_metric": settings.task_metric,
        "overfitting": {"flag": overfit, "why": why}, "passed": not failures, "failures": failures, "samples": samples,
    }


def check_thresholds(settings: EvalConfig, adapter: dict, base: dict) -> list[str]:
    failures = []
    score, base_score = adapter.get("task_score"), base.get("task_score")
    name = settings.task_metric
    if settings.min_task_score is not None and score is not None and score < settings.min_task_score:
        failures.append(f"{name} {score:.3f} is below min_task_score {settings.min_task_score}")
    if settings.min_gain_over_base is not None and score is not None and base_score is not None:
        if score - base_score < settings.min_gain_over_base:
            failures.append(f"{name} gain over base {score - base_score:+.3f} is below min_gain_over_base {settings.min_gain_over_base}")
    ratio_limit = settings.max_general_ppl_ratio
    if ratio_limit is not None and base.get("general_perplexity"):
        ratio = adapter["general_perplexity"] / base["general_perplexity"]
        if ratio > ratio_limit:
            failures.append(f"general-text perplexity rose {ratio:.2f}x over the base (limit {ratio_limit}x): forgetting")
    if settings.min_distinct_ratio is not None and base.get("distinct_2"):
        ratio = adapter.get("distinct_2", 0) / base["distinct_2"]
        if ratio < settings.min_distinct_ratio:
            failures.append(f"distinct-2 fell to {ratio:.2f}x the base's (limit {settings.min_distinct_ratio}x): format collapse")
    return failures


def evaluate_version(
    registry, ref: str, data_path: Path, data_type: str = "alpaca", task_metric: str = "exact_match",
    max_examples: int = 64, quantization: str = "none", record: bool = True, sequence_len: int = 1024, progress: bool = False,
    max_new_tokens: int | None = None,
) -> dict:
    """`reg eval`: a registered version and its base on a data file; recorded with the version unless `record=False`."""
    import tempfile

    from peft import PeftModel

    from registry.modeling.loading import load_base_model

    from .config import validate_choice
    from .data import CausalCollator, DatasetSpec, load_datasets, prepare_features

    validate_choice("--task-metric", task_metric)
    version = registry.resolve(ref)
    base = registry.get_base(version.base_name)
    report = load_datasets([DatasetSpec(str(data_path), data_type)])
    loaded = load_base_model(base, quantization)
    features, _ = prepare_features(report.examples, loaded.tokenizer, sequence_len)
    with tempfile.TemporaryDirectory() as tmp:
        _, adapter_dir = registry.pull(version.ref, Path(tmp) / "adapter")
        model = PeftModel.from_pretrained(loaded.model, adapter_dir).eval()
    settings = EvalConfig(task_metric=task_metric, max_examples=max_examples, max_general_ppl_ratio=None,
                          **({"max_new_tokens": max_new_tokens} if max_new_tokens else {}))
    collator = CausalCollator(loaded.tokenizer.pad_token_id)
    inputs = (model, loaded.tokenizer, report.examples, features, collator, settings, DEFAULT_GENERAL_TEXT)
    adapter_metrics, adapter_answers = measure(*inputs, label="adapter", progress=progress)
    with model.disable_adapter():
        base_metrics, base_answers = measure(*inputs, label="base", progress=progress)
    samples = [
        {"prompt": e.messages[-1]["content"] if e.messages else e.raw_prompt, "reference": e.response, "adapter": a, "base": b}
        for e, a, b in zip(report.examples, adapter_answers, base_answers)
    ][:8]
    result = {"ref": version.ref, "data": str(data_path), "data_sha256": report.files[0]["sha256"], "adapter": adapter_metrics,
              "base": base_metrics, "task_metric": task_metric, "passed": None, "failures": [], "samples": samples}
    if record:
        registry.record_evaluation(version, f"eval:{Path(data_path).name}", "custom", adapter_metrics, base_metrics)
    return result
